"""A seeded corpus of prompts that exercises every branch of CLIP's cleaning and pre-tokenisation, and the same
vocabulary written as a Hugging Face tokenizer folder for the reference tokenizer."""

import json
import random
from pathlib import Path

WORDS = ["a", "photo", "of", "cat", "dog's", "they're", "we'll", "I'd", "you've", "isn't", "masterpiece", "best",
         "quality", "portrait", "HDR", "4k", "8K", "1girl", "sci-fi", "f/1.8", "50mm", "café", "naïve", "Ærøskøbing",
         "Straße", "İstanbul", "ΟΔΟΣ", "Σίσυφος", "東京", "夜景", "한국어", "日本語のテキスト", "Привет", "مرحبا", "שלום",
         "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "★", "→", "½", "Ⅻ", "²", "٣", "１２３", "ＡＢＣ", "e\u0301", "A\u030a", "ﬁ", "™",
         "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "embedding:style", "BREAK", "ok'S", "'", "''", "\"quoted\"",
         "http://x.y/z?q=1&b=2", "user@mail.com", "$100", "#tag", "snake_case", "CamelCase", "a.b.c", "...", "!!!", "?!",
         "(", ")", "[", "]", "{", "}", "\\(", "\\)", ":", "::", "1.3", "0.5", "-2"]
SEPARATORS = [" ", " ", " ", "  ", ", ", ",", "\t", "\n", "\r\n", " \u00a0", "\u3000", "\u2003", "\x1c", "\x0b", ""]
WEIGHTED = ["(masterpiece:1.2)", "((best quality))", "[blurry]", "(red hair:0.8)", "(a (nested:1.5) thing)", "\\(escaped\\)",
            "(unbalanced", "unbalanced)", "[[low]]", "(word:abc)", "(:1.1)", "()"]


def long_word(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzéü東😀"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(40, 300)))


def prompt(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 40)):
        r = rng.random()
        parts.append(long_word(rng) if r < 0.03 else rng.choice(WEIGHTED) if r < 0.2 else str(rng.randint(0, 10**rng.randint(1, 12)))
                     if r < 0.27 else rng.choice(WORDS))
        parts.append(rng.choice(SEPARATORS))
    text = "".join(parts)
    return text.upper() if rng.random() < 0.05 else text


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    fixed = ["", " ", "\t\n", "a photo of a cat", "A PHOTO OF A CAT", "x" * 1000, "🙂" * 50, "1234567890" * 5]
    return fixed + [prompt(rng) for _ in range(n - len(fixed))]


def write_hf_files(tok, folder: Path) -> Path:
    """The same vocabulary as a Hugging Face tokenizer folder (vocab.json, merges.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False))
    merges = sorted(tok.ranks, key=tok.ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return folder
