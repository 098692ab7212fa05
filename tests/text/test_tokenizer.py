"""The tokenizer against transformers' CLIPTokenizer on the same vocabulary: identical ids on a generated corpus."""

import importlib.util
import sys
from pathlib import Path

import pytest

from athena.errors import ConfigError
from athena.text import clip_tokenizer
from athena.text.bpe import ClipTokenizer, default_vocab_file
from tests.text.corpus import corpus, write_hf_files

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return clip_tokenizer()


@pytest.fixture(scope="module")
def hf_folder(tok, tmp_path_factory) -> Path:
    return write_hf_files(tok, tmp_path_factory.mktemp("tokenizer"))


def test_known_ids(tok):
    assert len(tok) == 49408 and (tok.bos, tok.eos) == (49406, 49407)
    assert tok.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.encode("") == [49406, 49407]


def test_vocabulary_matches_openai_reference(tok):
    """The vocabulary derived from the BPE file equals the one OpenAI's own tokenizer derives (clip-anytorch)."""
    spec = importlib.util.find_spec("clip")
    pytest.importorskip("ftfy")
    if spec is None or spec.origin is None:
        pytest.skip("clip-anytorch is not installed")
    path = Path(spec.origin).parent / "simple_tokenizer.py"  # loaded by path: importing `clip` pulls torchvision
    module_spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    ref = module.SimpleTokenizer(str(default_vocab_file()))
    assert ref.encoder == tok.vocab
    assert ref.bpe_ranks == tok.ranks


def test_corpus_parity_with_transformers(tok, hf_folder):
    ref = transformers.CLIPTokenizer.from_pretrained(hf_folder)
    prompts = corpus(600)
    assert len(prompts) >= 500
    mismatches = [(p, tok.encode(p), ref(p)["input_ids"]) for p in prompts if tok.encode(p) != ref(p)["input_ids"]]
    assert not mismatches, f"{len(mismatches)} prompts differ; first: {mismatches[0]}"


def test_hf_folder_gives_the_same_tokenizer(tok, hf_folder):
    other = clip_tokenizer(hf_folder)
    assert other.vocab == tok.vocab and other.ranks == tok.ranks
    assert other.encode("an astronaut riding a horse, 4k") == tok.encode("an astronaut riding a horse, 4k")


def test_decode_round_trips_cleaned_text(tok):
    assert tok.decode(tok.encode("A Photo of  a CAT,\tin 東京 😀")) == "a photo of a cat , in 東京 😀"


def test_bad_paths_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="vocab.json and merges.txt"):
        clip_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match="no such tokenizer file"):
        clip_tokenizer(tmp_path / "missing.txt.gz")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="cannot read"):
        clip_tokenizer(tmp_path / "bad.txt.gz")


def test_unicode_table_matches_this_python():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import unicode_tables
    finally:
        sys.path.pop(0)
    assert (ROOT / "athena" / "text" / "unicode_tables.py").read_text() == unicode_tables.render()
