"""`athena train`: every TrainConfig field is a flag (`--lr=1e-4`); `--config` starts from a saved config.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from athena.errors import ConfigError
from athena.training.config import TrainConfig, add_flags, from_mapping, overrides
from athena.training.loop import CHECKPOINT, train

EXAMPLES = """examples:
  athena train --task=vae --out=runs/vae --steps=3000
  athena train --task=t2i --vae=runs/vae/model.safetensors --out=runs/t2i
  athena train --task=ddpm --dataset=fashion-mnist --out=runs/ddpm --lr=2e-4
  athena train --lora --dataset=stars/ --out=runs/star --steps=400 --lr=1e-3     # a LoRA of athena-tiny (--base)
  athena train --textual-inversion --ti-token='<teal>' --dataset=teal/ --out=runs/teal
  athena train --out=runs/t2i --resume          # continue a run from its checkpoint and config.json
  bash scripts/train_athena_tiny.sh              # the bundled model, from scratch"""


def add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ap = sub.add_parser("train", help="train a DDPM, a VAE or a text-to-image model from scratch, or a LoRA / embedding",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="a config.json to start from (flags override it)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--lora", dest="task", action="store_const", const="lora", default=argparse.SUPPRESS,
                    help="train a LoRA of --base (same as --task=lora)")
    ap.add_argument("--textual-inversion", dest="task", action="store_const", const="ti", default=argparse.SUPPRESS,
                    help="train a textual-inversion embedding for --base (same as --task=ti)")
    add_flags(ap)
    ap.set_defaults(fn=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    flags = overrides(args)
    base = TrainConfig.load(args.config) if args.config else None
    if args.resume and base is None:
        out = Path(flags.get("out", TrainConfig().out))
        saved = out / "config.json"
        if not (out / CHECKPOINT).is_file() or not saved.is_file():
            raise ConfigError(f"--resume: {out} has no {CHECKPOINT} and config.json to continue from; "
                              f"start the run without --resume")
        base = TrainConfig.load(saved)
    cfg = from_mapping(flags, base)
    print(train(cfg, resume=args.resume, quiet=args.quiet))
    return 0
