#!/usr/bin/env bash
# Installs what the project needs on a fresh machine: Debian's Fashion-MNIST and a venv in .venv.
# Idempotent: a second run only checks. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && [ ! -d "${FASHION_MNIST_DIR:-/nonexistent}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Exact pins for a reproducible dev/CI install (a range lets pip pick gigabytes of other CUDA wheels);
# the library itself states ranges in pyproject.toml.
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
STAMP=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
# pip's output (build-backend notices, this machine's local-index warnings) goes to a log that is
# shown only when an install fails.
quiet_pip() { .venv/bin/pip install -q "$@" >>.venv/pip.log 2>&1 || { cat .venv/pip.log; exit 1; }; }
if [ ! -f "$STAMP" ]; then
  echo "setting up .venv (torch, lightning, this package) ..."
  python3 -m venv .venv
  quiet_pip --upgrade pip
  quiet_pip $TORCH_PIN
  quiet_pip -e ".[dev,vision,docs,streaming]"
  rm -f .venv/.installed-*; touch "$STAMP"
fi
