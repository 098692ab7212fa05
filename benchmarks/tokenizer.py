"""CLIP tokenizer throughput: Athena's plain-Python BPE vs transformers' fast (Rust) CLIPTokenizer and the slow
pure-Python reference, on the same vocabulary and the same generated prompts, in one run.

    python benchmarks/tokenizer.py [--prompts 2000] [--runs 7]

transformers 5 dropped its slow `CLIPTokenizer`; the slow reference is OpenAI's `SimpleTokenizer` (which the
slow one was a port of), loaded by path from the `clip-anytorch` package so that `clip`'s torchvision import is
never run. Each tokenizer keeps its own word cache, as in use; each run encodes every prompt once.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from common import fmt_table, timed_pair  # noqa: E402

from athena.text import clip_tokenizer  # noqa: E402
from athena.text.bpe import default_vocab_file  # noqa: E402
from tests.text.corpus import corpus, write_hf_files  # noqa: E402


def openai_simple_tokenizer() -> ModuleType | None:
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None or importlib.util.find_spec("ftfy") is None:
        return None
    module_spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", Path(spec.origin).parent / "simple_tokenizer.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    prompts = corpus(args.prompts, seed=1)
    ours = clip_tokenizer()
    refs: dict[str, object] = {}
    from transformers import CLIPTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        fast = CLIPTokenizer.from_pretrained(write_hf_files(ours, Path(tmp)))
    refs["transformers fast (Rust)"] = lambda: [fast(p)["input_ids"] for p in prompts]
    simple = openai_simple_tokenizer()
    if simple is not None:
        slow = simple.SimpleTokenizer(str(default_vocab_file()))
        refs["OpenAI SimpleTokenizer (slow)"] = lambda: [[49406, *slow.encode(p), 49407] for p in prompts]
    else:
        print("(slow reference skipped: `pip install --no-deps clip-anytorch` and `pip install ftfy`)")
    run_ours = lambda: [ours.encode(p) for p in prompts]  # noqa: E731
    rows = []
    for name, ref in refs.items():
        t_ours, t_ref = timed_pair(run_ours, ref, runs=args.runs)  # type: ignore[arg-type]
        rows.append([name, f"{len(prompts) / t_ours:,.0f}", f"{len(prompts) / t_ref:,.0f}", f"{t_ref / t_ours:.2f}"])
    print(f"{len(prompts)} prompts, median of {args.runs} runs after warm-up\n")
    print(fmt_table(["reference", "Athena prompts/s", "reference prompts/s", "speed vs reference (x)"], rows))


if __name__ == "__main__":
    main()
