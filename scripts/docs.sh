#!/usr/bin/env bash
# Builds the documentation into site/ with warnings as errors (mkdocs + mkdocstrings, API from docstrings).
# Installs the docs tools into .venv first if they are missing. Extra arguments go to `mkdocs build`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c "import mkdocs, mkdocstrings_handlers.python" >/dev/null 2>&1; then
  .venv/bin/pip install -q -e ".[docs]"
fi
exec .venv/bin/mkdocs build --strict --clean --site-dir site "$@"
