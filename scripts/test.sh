#!/usr/bin/env bash
# Install Athena with its test-only reference oracles, then run the suite (CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[test]'
# CLIP's BPE vocabulary ships in these packages; --no-deps keeps their torchvision requirement out.
python -m pip install --quiet --no-deps open_clip_torch==3.3.0 clip-anytorch==2.6.0
# k-diffusion is the samplers' oracle; its declared dependencies include torchvision, so it too goes in --no-deps
# (its sampling.py needs only torchsde, scipy and torchdiffeq).
python -m pip install --quiet --no-deps k-diffusion==0.1.1.post1 torchdiffeq==0.2.5
python -m pytest tests "$@"
