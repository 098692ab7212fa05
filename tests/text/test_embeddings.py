"""Textual-inversion embeddings: every file layout loads, and an embedding equal to a word's token embedding
reproduces that word's conditioning exactly."""

import pytest
import torch
from safetensors.torch import save_file

import athena
from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.embeddings import find_embedding
from athena.errors import ConfigError
from athena.models.unet import TINY_SD1, TINY_SDXL
from athena.text import clip_tokenizer


def word_vectors(encoder, words: str):
    tok = clip_tokenizer()
    ids = tok.tokenize(words)
    return encoder.model.text_model.embeddings.token_embedding.weight[ids].detach().clone()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd1")
    path = random_checkpoint(tmp / "m.safetensors", "sd1", TINY_SD1, None, {"clip_l": (64, 2)}, dtype=torch.float32)
    (tmp / "embeddings" / "nested").mkdir(parents=True)
    pipe = athena.load(path, embeddings=tmp / "embeddings")
    vec = word_vectors(pipe.text.encoders[0], "cat")
    two = word_vectors(pipe.text.encoders[0], "tabby cat")
    save_file({"emb_params": vec}, tmp / "embeddings" / "a1111.safetensors")  # A1111 safetensors
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": two}, "name": "pair", "step": 3000},
               tmp / "embeddings" / "nested" / "pair.pt")  # A1111 .pt, a safe pickle
    save_file({"emb_params": torch.zeros(1, 32)}, tmp / "embeddings" / "narrow.safetensors")
    return pipe


@pytest.mark.parametrize("prompt, same_as", [
    ("a photo of embedding:a1111", "a photo of cat"),
    ("a photo of embedding:a1111, on a mat", "a photo of cat, on a mat"),
    ("a photo of (embedding:a1111:1.4)", "a photo of (cat:1.4)"),
    ("a photo of a embedding:pair", "a photo of a tabby cat"),
])
def test_embedding_reproduces_the_word(sd1, prompt, same_as):
    got, want = sd1.encode_prompt(prompt), sd1.encode_prompt(same_as)
    assert torch.allclose(got.context, want.context, atol=1e-6)
    assert torch.allclose(got.pooled, want.pooled, atol=1e-6)  # the EOS position is found past the extra ids


def test_unknown_or_unfit_embeddings_name_the_problem(sd1):
    with pytest.raises(ConfigError, match=r"embedding:missing was not found .*available: .*a1111"):
        sd1.encode_prompt("a embedding:missing cat")
    with pytest.raises(ConfigError, match="embedding:narrow does not fit the clip_l text encoder"):
        sd1.encode_prompt("embedding:narrow")
    with pytest.raises(ConfigError, match="was not found"):
        find_embedding(sd1.text.embeddings_dir, "../m")  # names never leave the embeddings folder
    assert sd1.encode_prompt("embedding:../m").context.shape == (1, 77, 64)  # not a name: plain text


def test_sdxl_embedding_pairs(tmp_path):
    path = random_checkpoint(tmp_path / "xl.safetensors", "sdxl", TINY_SDXL, None, {"clip_l": (64, 2), "clip_g": (96, 2)},
                             dtype=torch.float32)
    (tmp_path / "emb").mkdir()
    pipe = athena.load(path, embeddings=tmp_path / "emb")
    l_enc, g_enc = pipe.text.encoders
    save_file({"clip_l": word_vectors(l_enc, "red fox"), "clip_g": word_vectors(g_enc, "red fox")}, tmp_path / "emb" / "fox.safetensors")
    got, want = pipe.encode_prompt("a embedding:fox in snow"), pipe.encode_prompt("a red fox in snow")
    assert got.context.shape == (1, 77, 64 + 96)
    assert torch.allclose(got.context, want.context, atol=1e-6) and torch.allclose(got.y, want.y, atol=1e-6)
