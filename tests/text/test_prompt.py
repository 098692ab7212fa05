"""The prompt language: the weight grammar, long prompts and BREAK, and the weights' effect on the conditioning."""

import pytest
import torch

import athena
from athena.checkpoints.build import random_checkpoint
from athena.errors import ConfigError
from athena.models.unet import TINY_SD1
from athena.text import clip_tokenizer
from athena.text.prompt import parse_weights, windows
from tests.text.corpus import corpus

T = 1.1


@pytest.mark.parametrize("text, want", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat) on", [("a ", 1.0), ("cat", T), (" on", 1.0)]),
    ("((cat))", [("cat", T * T)]),
    ("[cat]", [("cat", 1 / T)]),
    ("[[cat]]", [("cat", 1 / T / T)]),
    ("(cat:1.3)", [("cat", 1.3)]),
    ("(red cat:0.5), dog", [("red cat", 0.5), (", dog", 1.0)]),
    ("(a (b:1.5) c)", [("a ", T), ("b", 1.5), (" c", T)]),  # an explicit weight is absolute, as in ComfyUI
    ("((a):2)", [("a", 2 * T)]),
    ("\\(cat\\)", [("(cat)", 1.0)]),
    ("\\[x\\]", [("[x]", 1.0)]),
    ("(unclosed cat", [("(unclosed cat", 1.0)]),
    ("stray) cat", [("stray) cat", 1.0)]),
    ("(cat:abc)", [("cat:abc", T)]),  # not a number: the colon is text
    ("(:1.5)", [(":1.5", T)]),
    ("(a [b) c]", [("(a ", 1.0), ("b) c", 1 / T)]),
    ("", []),
])
def test_weight_grammar(text, want):
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want])


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_windows_break_and_long_prompts(tok):
    cat = tok.tokenize("cat")[0]
    two_hundred = windows(" ".join(["cat"] * 200), tok, pad=tok.eos)
    assert len(two_hundred) == 3
    assert all(len(w.tokens) == 77 and w.tokens[0] == tok.bos for w in two_hundred)
    assert [w.tokens.count(cat) for w in two_hundred] == [75, 75, 50]
    assert two_hundred[2].tokens[51:] == [tok.eos] * 26  # EOS, then padded with EOS (SD1)

    broken = windows("a cat BREAK a dog", tok, pad=0)
    assert len(broken) == 2
    assert broken[0].tokens[:4] == [tok.bos, *tok.tokenize("a cat"), tok.eos] and broken[0].tokens[4:] == [0] * 73
    assert broken[1].tokens[:4] == [tok.bos, *tok.tokenize("a dog"), tok.eos]
    assert len(windows("BREAK a cat", tok, pad=0)) == 1  # nothing before it: no empty window
    assert len(windows("break a cat", tok, pad=0)) == 1 and tok.tokenize("break")[0] in windows("break", tok, pad=0)[0].tokens


def test_words_stay_whole_but_long_words_straddle(tok):
    filler = " ".join(["cat"] * 74)
    word = "astronaut"  # 1 token: fits exactly
    assert len(windows(f"{filler} {word}", tok, pad=0)) == 1
    short = "photorealistic"  # 2+ tokens, under 8: moves whole to the next window
    n = len(tok.tokenize(short))
    assert 1 < n < 8
    w = windows(f"{filler} {short}", tok, pad=0)
    assert len(w) == 2 and w[1].tokens[1:1 + n] == tok.tokenize(short)
    long_word = "x" * 60  # many tokens: fills the window and continues in the next
    ids = tok.tokenize(long_word)
    assert len(ids) >= 8
    w = windows(f"{filler} {long_word}", tok, pad=0)
    assert w[0].tokens[75] == ids[0] and w[1].tokens[1:len(ids)] == ids[1:]


def test_weights_follow_tokens(tok):
    w = windows("a (cat:1.5) [dog]", tok, pad=0)[0]
    assert w.weights[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / T, 1.0])


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = random_checkpoint(tmp_path_factory.mktemp("sd1") / "m.safetensors", "sd1", TINY_SD1, None,
                             {"clip_l": (64, 2)}, dtype=torch.float32)
    return athena.load(path)


def test_comfy_weights_move_tokens_away_from_the_empty_prompt(sd1):
    plain = sd1.encode_prompt("a cat on a mat").context
    assert torch.equal(sd1.encode_prompt("a (cat:1.0) on a mat").context, plain)
    weighted = sd1.encode_prompt("a (cat:1.5) on a mat").context
    empty = sd1.encode_prompt("").context
    cat = 2  # BOS, "a", "cat"
    assert torch.allclose(weighted[0, cat], empty[0, cat] + (plain[0, cat] - empty[0, cat]) * 1.5, atol=1e-6)
    others = [i for i in range(77) if i != cat]
    assert torch.equal(weighted[0, others], plain[0, others])


def test_a1111_weights_scale_and_keep_the_mean(sd1):
    plain = sd1.encode_prompt("a cat on a mat").context
    weighted = sd1.encode_prompt("a (cat:1.5) on a mat", weighting="a1111").context
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    ratio = weighted[0, 2] / plain[0, 2]
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), atol=1e-4)
    assert abs(ratio.mean().item() - 1.5) < 0.5 and not torch.allclose(weighted, plain)
    with pytest.raises(ConfigError, match="weighting"):
        sd1.encode_prompt("a cat", weighting="nai")


def test_long_prompt_and_break_shapes(sd1):
    assert sd1.encode_prompt(" ".join(["cat"] * 200)).context.shape == (1, 3 * 77, 64)
    two = sd1.encode_prompt("a cat BREAK a dog").context
    assert two.shape == (1, 154, 64)
    assert torch.equal(two[:, 77:], sd1.encode_prompt("a dog").context)  # windows are encoded independently


def test_clip_skip(sd1):
    assert torch.equal(sd1.encode_prompt("a cat", clip_skip=-1).context, sd1.encode_prompt("a cat").context)
    assert not torch.allclose(sd1.encode_prompt("a cat", clip_skip=-2).context, sd1.encode_prompt("a cat").context)
    with pytest.raises(ConfigError, match="CLIPSetLastLayer"):
        sd1.encode_prompt("a cat", clip_skip=1)


def test_malformed_prompts_never_crash(sd1):
    """Every corpus prompt encodes; those naming an embedding (and no embeddings folder is set) get the named error."""
    named = 0
    for text in corpus(60, seed=7):
        try:
            c = sd1.encode_prompt(text).context
        except ConfigError as e:
            assert "embedding:" in text and "embedding:style is used in the prompt but no embeddings folder" in str(e)
            named += 1
            continue
        assert c.shape[1] % 77 == 0 and torch.isfinite(c).all()
    assert named > 0
