#!/usr/bin/env bash
# README command 2: a virtual environment with every extra the tests need, a real OpenSearch
# node for the OpenSearch tests, then lint and tests.
#
# RERANKER_SKIP_OPENSEARCH=1 opts out of the OpenSearch tests (they are skipped, and say so);
# otherwise a server that cannot be started is a failure. Likewise RERANKER_SKIP_BROWSER=1 for the
# web demo's test in Debian's Chromium, which this script installs when it is missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TEST_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# A CPU build of torch avoids the multi-GB CUDA wheel. pip prefers the newest torch on the index
# over an older CPU wheel in a --find-links folder, so a local CPU wheel (../shared/wheels on the
# project's machines, or any torch-*.whl in $PIP_FIND_LINKS) is installed first, by path; the
# extras' "torch>=2.2" is then already met. Without one, pip installs PyPI's default build.
links=()
wheel_dirs=()
if [ -d ../shared/wheels ]; then
  links=(--find-links ../shared/wheels)
  wheel_dirs+=(../shared/wheels)
fi
[ -n "${PIP_FIND_LINKS:-}" ] && wheel_dirs+=("$PIP_FIND_LINKS")
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  py_tag=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  cpu_wheel=$(for d in "${wheel_dirs[@]}"; do ls -1 "$d"/torch-*+cpu-"$py_tag"-*linux*_x86_64.whl; done \
    2>/dev/null | sort -V | tail -n 1 || true)
  if [ "$(uname -m)" = x86_64 ] && [ -n "$cpu_wheel" ]; then
    echo "test.sh: installing the local CPU torch wheel $cpu_wheel"
    "$VENV/bin/python" -m pip install -q "$cpu_wheel"
  fi
fi
"$VENV/bin/python" -m pip install -q "${links[@]}" -e ".[train,opensearch,serve,dev]"

chromium=${RERANKER_CHROMIUM:-/usr/bin/chromium}
if [ "${RERANKER_SKIP_BROWSER:-0}" != 1 ] && [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test.sh: the web demo test needs Chromium at $chromium (Debian: apt-get install" \
         "chromium); set RERANKER_CHROMIUM, or RERANKER_SKIP_BROWSER=1 to opt out" >&2
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/ruff" check .

if [ "${RERANKER_SKIP_OPENSEARCH:-0}" != 1 ]; then
  export OPENSEARCH_PORT=${OPENSEARCH_PORT:-9200}
  export OPENSEARCH_URL="http://127.0.0.1:$OPENSEARCH_PORT"
  if ! bash scripts/opensearch.sh status; then
    bash scripts/opensearch.sh start
    trap 'bash scripts/opensearch.sh stop' EXIT
  fi
fi
"$VENV/bin/python" -m pytest -q "$@"
