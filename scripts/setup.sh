#!/usr/bin/env bash
# Create ./.venv with a matched torch/torchvision pair from PyPI and regla installed editable with all extras.
# Usage: bash scripts/setup.sh            (idempotent: reuses .venv if it is already complete)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.15.0 torchvision==0.29.2"}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision must be a pair built together; install them first, explicitly, from the registry.
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, torchvision, timm, regla; print('regla', regla.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__)"
