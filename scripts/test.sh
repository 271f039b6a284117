#!/usr/bin/env bash
# README command 2: a virtual environment with every extra the tests need, then lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TEST_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# A CPU build of torch avoids the multi-GB CUDA wheel: use a local wheel folder when there is one
# (../shared/wheels on the project's machines, or PIP_FIND_LINKS=DIR of your own).
links=()
if [ -d ../shared/wheels ]; then
  links=(--find-links ../shared/wheels)
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${links[@]}" -e ".[train,dev]"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -q "$@"
