#!/usr/bin/env bash
# Train the bundled model athena-tiny from scratch on fashion-colors (needs `apt-get install dataset-fashion-mnist`),
# then copy it, in fp16, to athena/assets/. CPU or CUDA (auto); pass extra flags to both stages, e.g. --device=cpu.
#   bash scripts/train_athena_tiny.sh [RUNS_DIR] [extra athena train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs}"
shift || true
athena train --task=vae --out="$RUNS/vae" --steps=3000 --batch-size=16 --lr=5e-4 --warmup-steps=100 \
  --vae-ch=64 --vae-ch-mult=1,1,2,2 --vae-res-blocks=1 --sample-every=500 --save-every=250 --log-every=25 "$@"
# a warm restart of the same VAE: a second cosine cycle, on fashion-colors drawn with another seed (new colourings)
athena train --task=vae --vae="$RUNS/vae/model.safetensors" --out="$RUNS/vae2" --seed=1 --steps=4000 --batch-size=16 \
  --lr=2e-4 --warmup-steps=100 --sample-every=1000 --save-every=250 --log-every=25 "$@"
athena train --task=t2i --vae="$RUNS/vae2/model.safetensors" --out="$RUNS/t2i" --limit=30000 --steps=3000 \
  --batch-size=64 --lr=1e-3 --warmup-steps=200 --model-channels=64 --channel-mult=1,2 --num-res-blocks=1 \
  --attention=1,1 --text-width=64 --text-layers=2 --sample-every=500 --save-every=250 --log-every=25 "$@"
mkdir -p athena/assets
cp "$RUNS/t2i/model.safetensors" athena/assets/athena-tiny.safetensors
echo "athena/assets/athena-tiny.safetensors"
