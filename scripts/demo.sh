#!/usr/bin/env bash
# The main job: a short Fashion-MNIST run, full data against Random* pruning. Extra arguments go to
# examples/fashion_mnist_demo.py (e.g. --prune-ratio 0.7 --method rs2 --epochs 8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/fashion_mnist_demo.py "$@"
