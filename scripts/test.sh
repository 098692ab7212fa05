#!/usr/bin/env bash
# Install Athena with its test-only reference oracles, then run the suite (CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[test]'
python -m pytest tests "$@"
