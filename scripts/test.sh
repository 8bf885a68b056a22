#!/usr/bin/env bash
# The project's checks: lint, then the whole test suite. Run after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests
.venv/bin/python -m pytest -q
