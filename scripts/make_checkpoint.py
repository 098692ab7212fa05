"""Build a random-weight checkpoint in the exact SD1.x single-file layout (nothing is downloaded).

    python scripts/make_checkpoint.py out/demo.safetensors            # tiny (a few MB)
    python scripts/make_checkpoint.py out/sd15.safetensors --preset sd15   # full SD1.5 size (~2 GB in fp16)
"""

import argparse
from pathlib import Path

from athena.checkpoints.build import random_checkpoint
from athena.checkpoints.load import dtype_of
from athena.models.unet import UNET_PRESETS
from athena.models.vae import VAE_PRESETS

SIZES = {"tiny": ("tiny_sd1", "tiny", 32, 2), "sd15": ("sd15", "sd", 768, 12)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    unet, vae, width, layers = SIZES[args.preset]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    random_checkpoint(args.out, "sd1", UNET_PRESETS[unet], VAE_PRESETS[vae], {"clip_l": (width, layers)}, dtype=dtype_of(args.dtype), seed=args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
