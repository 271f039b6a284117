#!/usr/bin/env bash
# README command 1: a fresh environment with the serving runtime, the demo catalog indexed,
# and a few example searches.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DEMO_VENV:-.venv-demo}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q .
RERANKER="$VENV/bin/reranker"

"$RERANKER" --version
"$RERANKER" index demo/products.parquet --index-dir demo/index --overwrite

flags=()
if ! "$VENV/bin/python" -c "import sys; from reranker import default_model_dir; sys.exit(0 if default_model_dir() else 1)"; then
  echo
  echo "NOTE: no trained reranker model is installed yet, so these results are BM25 order only"
  echo "      (--no-rerank). Pass --model DIR to rerank with a model written by 'reranker export'."
  flags=(--no-rerank)
fi

for query in "led light bulb 60 watt" "white elongated toilet seat" "cordless drill"; do
  echo
  "$RERANKER" search "$query" --index-dir demo/index -n 10 "${flags[@]}"
done
