"""CLIP's byte-level BPE tokenizer, in plain Python.

Text is cleaned as the Hugging Face CLIP tokenizer does it (NFC, runs of whitespace to one space, lower case),
split by CLIP's pre-tokenisation pattern (`'s|'t|...|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`), mapped byte by byte to
printable characters, and merged by rank with `</w>` marking the end of each word. `<|startoftext|>` and
`<|endoftext|>` written exactly in the text are their special ids. Other spellings (`<|EndOfText|>`) are lower-cased to
a piece of their own, which the reference's byte-level stage splits again into `<|`, the name and `|>`.

The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (49,408 tokens), found in the `open_clip_torch` or
`clip-anytorch` package without importing it, or a `vocab.json` + `merges.txt` pair (a diffusers `tokenizer/`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import unicodedata
from itertools import pairwise
from pathlib import Path

from athena.errors import ConfigError
from athena.text.unicode_tables import LETTERS, NUMBERS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_PACKAGES = ("open_clip", "clip")  # PyPI open_clip_torch, clip-anytorch
MERGES_IN_VOCAB_FILE = 49152 - 256 - 2  # the merges CLIP's vocabulary uses; the file holds more
# Unicode White_Space, which is what the reference's `\s` means (Python's `\s` also takes U+001C..U+001F).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
CACHE_LIMIT = 100_000


def _char_class(flat: tuple[int, ...]) -> str:
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in zip(flat[::2], flat[1::2]))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (printable Latin-1 bytes map to themselves).

    The order (printable bytes first, then the rest) is the order of the vocabulary's first 256 tokens."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


class ClipTokenizer:
    """`encode(text)` gives CLIP's ids with BOS and EOS, unpadded and untruncated; `tokenize` gives them bare."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab = vocab
        self.decoder = {i: t for t, i in vocab.items()}
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.bos, self.eos = vocab[BOS], vocab[EOS]
        table = bytes_to_unicode()
        self.byte_chars = [table[b] for b in range(256)]
        self.byte_of = {c: b for b, c in enumerate(self.byte_chars)}
        letters, numbers = _char_class(LETTERS), _char_class(NUMBERS)
        self.specials = re.compile(f"({re.escape(BOS)}|{re.escape(EOS)})")
        self.whitespace = re.compile(f"[{WHITESPACE}]+")
        self.pattern = re.compile(
            rf"{re.escape(BOS)}|{re.escape(EOS)}|'s|'t|'re|'ve|'m|'ll|'d|[{letters}]+|[{numbers}]|[^{WHITESPACE}{letters}{numbers}]+")
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_bpe_file(cls, path: str | Path) -> ClipTokenizer:
        """OpenAI's gzipped merges file; the vocabulary is derived from it exactly as CLIP derives it."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read CLIP's BPE file ({e})") from None
        merges = [_pair(line, path) for line in lines[1:1 + MERGES_IN_VOCAB_FILE]]
        chars = list(bytes_to_unicode().values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
        return cls({t: i for i, t in enumerate(tokens)}, merges)

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path) -> ClipTokenizer:
        """A Hugging Face `vocab.json` + `merges.txt` pair."""
        try:
            vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
            lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the tokenizer files {vocab_json}, {merges_txt} ({e})") from None
        merges = [_pair(line, merges_txt) for line in lines if line and not line.startswith("#version")]
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if not isinstance(vocab, dict) or missing:
            raise ConfigError(f"{vocab_json}: not a CLIP vocabulary (no {missing or 'token -> id map'})")
        return cls(vocab, merges)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.bos, *self.tokenize(text), self.eos]

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self.specials.split(text)):
            if i % 2:  # a special token written out, matched before any cleaning as the reference does
                ids.append(self.vocab[part])
                continue
            for piece in self.pattern.findall(self.clean(part)):
                words = (piece[:2], piece[2:-2], piece[-2:]) if piece in (BOS, EOS) else (piece,)
                for word in words:
                    ids += self._word_ids(word)
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self.cache.get(word)
        if cached is None:
            cached = self._bpe_ids(word)
            if len(self.cache) < CACHE_LIMIT:
                self.cache[word] = cached
        return cached

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder.get(i, "") for i in ids if i not in (self.bos, self.eos))
        raw = bytes(self.byte_of.get(c, 32) for c in text.replace("</w>", " "))
        return raw.decode("utf-8", errors="replace").strip()

    def clean(self, text: str) -> str:
        text = self.whitespace.sub(" ", unicodedata.normalize("NFC", text))
        # Lower-case letter by letter, as the reference does: str.lower() alone would give a final sigma.
        return "".join(c.lower() for c in text) if "Σ" in text else text.lower()

    def _bpe_ids(self, word: str) -> list[int]:
        symbols = [self.byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, len(ranks)
            for pair in pairwise(symbols):
                r = ranks.get(pair)
                if r is not None and r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        unk = self.eos  # the reference's unknown token; never reached with CLIP's byte-complete vocabulary
        return [self.vocab.get(s, unk) for s in symbols]


def _pair(line: str, source: str | Path) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise ConfigError(f"{source}: malformed merge line {line!r}; expected two symbols separated by a space")
    return parts[0], parts[1]


def default_vocab_file() -> Path:
    """CLIP's BPE file from an installed `open_clip_torch` or `clip-anytorch`, located without importing them."""
    for package in VOCAB_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None and (Path(spec.origin).parent / VOCAB_FILE).is_file():
            return Path(spec.origin).parent / VOCAB_FILE
    raise ConfigError(f"CLIP's vocabulary ({VOCAB_FILE}) was not found. Install it with "
                      "`pip install --no-deps open_clip_torch`, or pass a tokenizer folder with vocab.json and merges.txt")


def clip_tokenizer(path: str | Path | None = None) -> ClipTokenizer:
    """CLIP's tokenizer from `path` (a `bpe_simple_vocab_16e6.txt.gz`, or a folder with `vocab.json` and
    `merges.txt`), or from the installed vocabulary file when `path` is None."""
    if path is None:
        return ClipTokenizer.from_bpe_file(default_vocab_file())
    p = Path(path)
    if p.is_dir():
        if not (p / "vocab.json").is_file() or not (p / "merges.txt").is_file():
            raise ConfigError(f"{p}: a tokenizer folder needs vocab.json and merges.txt")
        return ClipTokenizer.from_files(p / "vocab.json", p / "merges.txt")
    if not p.is_file():
        raise ConfigError(f"{p}: no such tokenizer file; pass CLIP's {VOCAB_FILE} or a folder with vocab.json and merges.txt")
    return ClipTokenizer.from_bpe_file(p)
