"""Text: CLIP's BPE tokenizer and the prompt language (weights, long prompts, BREAK, embeddings). No torch."""

from athena.text.bpe import ClipTokenizer, clip_tokenizer

__all__ = ["ClipTokenizer", "clip_tokenizer"]
