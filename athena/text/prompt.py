"""The prompt language: weights, long prompts, BREAK and textual-inversion embeddings, as ComfyUI and A1111 read it.

Grammar (ComfyUI's, plus A1111's square brackets):
- `(text)` multiplies the weight of `text` by 1.1 and `[text]` divides it by 1.1; groups nest.
- `(text:1.3)` sets the weight of `text` to 1.3, whatever surrounds it (ComfyUI; A1111 would multiply).
- `\\(`, `\\)`, `\\[`, `\\]` are literal brackets. A bracket without its partner is literal text, never an error.
- `embedding:name` inserts the vectors of the textual-inversion embedding `name` (letters, digits, `_`, `-`, `.`);
  anything glued after the name, such as a comma, is text.
- `BREAK` (upper case, a word of its own) ends the current 77-token window.

Long prompts: each window is BOS + 75 tokens + EOS, padded to 77. Words are split on whitespace and kept whole
within a window; a word of 8 or more tokens may straddle two windows, as in ComfyUI.

The encoder turns windows into embeddings; how a weight acts on them (ComfyUI: move each token away from the
empty prompt's embedding; A1111: scale, then restore the mean) is the conditioning's business, not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from athena.text.bpe import ClipTokenizer

WINDOW = 77
LARGE_WORD = 8  # tokens; smaller words move whole to the next window
EMBEDDING_PREFIX = "embedding:"
BREAK = "BREAK"
UP, DOWN = 1.1, 1 / 1.1
ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]"}
PIECES = re.compile(r"\\[()\[\]]|[()\[\]]|[^\\()\[\]]+|\\")
EMBEDDING_NAME = re.compile(rf"{EMBEDDING_PREFIX}([\w.\-]*[\w\-])")
NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*")


@dataclass(frozen=True)
class Embedding:
    """Row `row` of the textual-inversion embedding `name`: a token that is a vector rather than an id."""

    name: str
    row: int


Token = int | Embedding


@dataclass
class Window:
    tokens: list[Token] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, token: Token, weight: float = 1.0) -> None:
        self.tokens.append(token)
        self.weights.append(weight)


# --------------------------------------------------------------------------- weights


@dataclass
class _Group:
    opener: str
    children: list[_Group | str] = field(default_factory=list)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """`text` as (segment, weight) pairs, adjacent segments of equal weight merged."""
    root = _Group("")
    stack = [root]
    for piece in PIECES.findall(text):
        top = stack[-1]
        if piece in ("(", "["):
            stack.append(_Group(piece))
        elif piece in (")", "]") and len(stack) > 1 and {"(": ")", "[": "]"}[top.opener] == piece:
            stack.pop()
            stack[-1].children.append(top)
        else:
            top.children.append(ESCAPES.get(piece, piece))
    while len(stack) > 1:  # unclosed groups are literal text
        top = stack.pop()
        stack[-1].children += [top.opener, *top.children]
    out: list[tuple[str, float]] = []
    _flatten(root, 1.0, out)
    return out


def _flatten(group: _Group, weight: float, out: list[tuple[str, float]]) -> None:
    children = list(group.children)
    if group.opener == "(":
        weight *= UP
        last = children[-1] if children else None
        if isinstance(last, str) and ":" in last:
            head, _, tail = last.rpartition(":")
            if NUMBER.fullmatch(tail) and (head or len(children) > 1):
                weight = float(tail)
                children[-1] = head
    elif group.opener == "[":
        weight *= DOWN
    for child in children:
        if isinstance(child, _Group):
            _flatten(child, weight, out)
        elif child:
            if out and out[-1][1] == weight:
                out[-1] = (out[-1][0] + child, weight)
            else:
                out.append((child, weight))


# --------------------------------------------------------------------------- windows


def windows(text: str, tokenizer: ClipTokenizer, *, pad: int,
            embedding_rows: Callable[[str], int] | None = None) -> list[Window]:
    """Split a prompt into 77-token windows of (token, weight). `embedding_rows(name)` gives an embedding's
    vector count and raises for an unknown name; without it, `embedding:` words are ordinary text."""
    groups: list[list[tuple[Token, float]] | None] = []  # None = BREAK
    for segment, weight in parse_weights(text):
        for word in segment.split():
            if word == BREAK:
                groups.append(None)
                continue
            named = EMBEDDING_NAME.match(word)
            if named and embedding_rows is not None:
                name = named.group(1)
                groups.append([(Embedding(name, r), weight) for r in range(embedding_rows(name))])
                word = word[named.end():]  # text glued to the name ("embedding:style,") stays text
                if not word:
                    continue
            groups.append([(t, weight) for t in tokenizer.tokenize(word)])

    out = [Window()]
    out[0].add(tokenizer.bos)
    room = WINDOW - 1  # tokens a window holds before its EOS

    def close() -> None:
        w = out[-1]
        w.add(tokenizer.eos)
        while len(w.tokens) < WINDOW:
            w.add(pad)
        out.append(Window())
        out[-1].add(tokenizer.bos)

    for group in groups:
        if group is None:
            if len(out[-1].tokens) > 1:
                close()
            continue
        large = len(group) >= LARGE_WORD
        while group:
            free = room - len(out[-1].tokens)
            if len(group) <= free:
                for t, w in group:
                    out[-1].add(t, w)
                break
            if large and free > 0:
                for t, w in group[:free]:
                    out[-1].add(t, w)
                group = group[free:]
            close()
    last = out[-1]
    last.add(tokenizer.eos)
    while len(last.tokens) < WINDOW:
        last.add(pad)
    return out
