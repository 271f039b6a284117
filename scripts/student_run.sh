#!/usr/bin/env bash
# Students on the full-scale teacher's committed scores (issue 15): no teacher needed, only
# training/results/teacher/. Every step is skipped when its output exists, and a student killed
# mid-way resumes from its checkpoint: rerun after a kill.
#   nohup bash scripts/student_run.sh > student_run.log 2>&1 &
#
# PHASE=shipped  the candidates for the two shipped profiles, trained on all of train's scores
#                (minus the held-out slice, kept for calibration) and the augmented shards:
#                late-f48 (the "fast" default's architecture, title + attributes, 48 tokens)
#                and cross-f64 (the "accurate" profile: a full MiniLM-L6 cross-encoder).
# PHASE=controls the same late architecture trained directly on the judged labels (labels-bce,
#                no teacher): on the study's part and on all of train. The cross-encoder's
#                control is the teacher run's MiniLM member (the same model, text and data).
# PHASE=study    the paper's claim: the default architecture on a seeded eighth of train's
#                labelled pairs (6,123) plus x0, x1, x2, x4, x8 as many augmented pairs, SEEDS seeds
#                each, evaluated in fp32 (int8 alone moves pair accuracy by ~0.006). Run two
#                copies with different SEEDS and THREADS=1 to use both cores.
# PHASE=loss     the triples loss against all pairs of a list (the study's x2 point, same seeds).
# PHASE=cascade  the default profile's form: FIRST (a late student) on every candidate, SECOND (a
#                cross-encoder) on its best SECOND_K; evaluated in int8 (judged and end to end).
set -euo pipefail
{ # read whole before it runs, so that editing the file cannot change a run in progress
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/homedepot}
ART=${ART:-/work/kd-artifacts}
ST=${ST:-$ART/st}
TEACHER=${TEACHER:-training/results/teacher}
OUTDIR=${OUTDIR:-training/results/students}
AUG=${AUG:-$TEACHER/augmented-*.parquet}
PHASE=${PHASE:-shipped}
ARCHS=${ARCHS:-"late cross"}                      # PHASE=shipped: which of the two
SEEDS=${SEEDS:-"13 14 15"}
SEED=${SEED:-13}                          # PHASE=shipped: the run's seed (initialisation, order, augmented draw)
LAYERS=${LAYERS:-}                        # PHASE=shipped: keep only the first N transformer layers (e.g. 3)
STUDY_SIZES=${STUDY_SIZES:-"0 1 2 4 8"}
STUDY_PART=${STUDY_PART:-0.125}           # of the members' queries: x8 fits in 2 cores x 1 hour
THREADS=${THREADS:-2}
TAG=${TAG:-}                              # PHASE=shipped: appended to the run names (e.g. -a251k)
AUG_SIZE=${AUG_SIZE:-}                    # PHASE=shipped: cut the augmented pairs (time), e.g. 200000
PRECISION=${PRECISION:-auto}
LOSS=${LOSS:-listwise}                    # PHASE=shipped: listwise (margin-MSE) or listwise-kl
TEMPERATURE=${TEMPERATURE:-}              # PHASE=shipped, LOSS=listwise-kl: its temperature
FIELDS=${FIELDS-brand,color,material}     # the attributes the students read after the title ("": the title alone)
FIRST=${FIRST:-late-f48}                  # PHASE=cascade: runs under $ST (exported: NAME-onnx)
SECOND=${SECOND:-cross-f64}
SECOND_K=${SECOND_K:-20}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$ST" "$OUTDIR"
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
into() { local f=$1; shift; "$@" > "$f.tmp" && mv "$f.tmp" "$f"; }
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0))" >> "$OUTDIR/wall_seconds.txt"; }

LATE=(--arch late --fields "$FIELDS" --max-length 48 --query-max-length 16)
CROSS=(--arch cross --fields "$FIELDS" --max-length 64)

step "index of the catalog (BM25 only)"
[ -f "$ART/index/CURRENT" ] || reranker index "$DATA/products.parquet" --index-dir "$ART/index" --no-tokens -q

step "train split: the held-out slice of the teacher run (5% of queries) and a seeded part"
[ -f "$ST/scores_part.parquet" ] || python -m reranker.training.holdout "$DATA/train.parquet" "$ST" \
  --fraction 0.05 --seed 13 --scores "$TEACHER/scores_train.parquet" --part "$STUDY_PART"

# export NAME EXTRA...: ONNX (fp32 + per-channel int8, int8 ranking checked on dev)
export_student() {
  local name=$1; shift
  [ -f "$ST/$name-onnx/reranker.json" ] || reranker export "$ST/$name" --output "$ST/$name-onnx" \
    --per-channel --check-judged "$DATA/dev.parquet" --catalog "$DATA/products.parquet" "$@"
}
# evaluate NAME VARIANT [--e2e]
evaluate() {
  local name=$1 variant=$2; shift 2
  [ -f "$OUTDIR/eval_$name-$variant.json" ] || into "$OUTDIR/eval_$name-$variant.json" reranker eval \
    --judged "$DATA/dev.parquet" --index-dir "$ART/index" --model "$ST/$name-onnx" \
    --variant "$variant" --json "$@"
}

if [ "$PHASE" = shipped ]; then
  for arch in $ARCHS; do
    if [ $arch = late ]; then name=late-f48$TAG; args=("${LATE[@]}"); else name=cross-f64$TAG; args=("${CROSS[@]}"); fi
    step "$name: all of train's scores (minus the held-out slice) + the augmented shards"
    [ -f "$ST/$name/distill_args.json" ] || timed "$name" reranker distill \
      --labelled "$ST/scores_members.parquet" --augmented "$AUG" ${AUG_SIZE:+--augment-size "$AUG_SIZE"} \
      --loss "$LOSS" ${TEMPERATURE:+--temperature "$TEMPERATURE"} \
      --catalog "$DATA/products.parquet" "${args[@]}" ${LAYERS:+--layers "$LAYERS"} --epochs 1 --seed "$SEED" --threads "$THREADS" --precision "$PRECISION" --output "$ST/$name"
    export_student "$name"
    evaluate "$name" int8 --e2e
    evaluate "$name" fp32
  done
fi

if [ "$PHASE" = controls ]; then
  for which in part members; do
    name=control-late-$which
    step "$name: labels-bce on scores_$which (judged labels only)"
    [ -f "$ST/$name/distill_args.json" ] || timed "$name" reranker distill --loss labels-bce \
      --labelled "$ST/scores_$which.parquet" --catalog "$DATA/products.parquet" "${LATE[@]}" \
      --epochs 1 --threads "$THREADS" --precision "$PRECISION" --output "$ST/$name"
    [ -f "$ST/$name-onnx/reranker.json" ] || reranker export "$ST/$name" --output "$ST/$name-onnx" --no-int8
    evaluate "$name" fp32
  done
fi

if [ "$PHASE" = study ]; then
  part=$(python -c "import pyarrow.parquet as pq; print(pq.read_metadata('$ST/scores_part.parquet').num_rows)")
  for seed in $SEEDS; do
    for times in $STUDY_SIZES; do
      name="study-late-x$times-s$seed"
      aug=()
      [ "$times" = 0 ] || aug=(--augmented "$AUG" --augment-size $((times * part)))
      step "$name"
      [ -f "$ST/$name/distill_args.json" ] || timed "$name" reranker distill \
        --labelled "$ST/scores_part.parquet" "${aug[@]}" --catalog "$DATA/products.parquet" \
        "${LATE[@]}" --epochs 1 --seed "$seed" --threads "$THREADS" --precision "$PRECISION" \
        --output "$ST/$name"
      [ -f "$ST/$name-onnx/reranker.json" ] || reranker export "$ST/$name" --output "$ST/$name-onnx" --no-int8
      evaluate "$name" fp32
    done
  done
fi
if [ "$PHASE" = loss ]; then
  part=$(python -c "import pyarrow.parquet as pq; print(pq.read_metadata('$ST/scores_part.parquet').num_rows)")
  for seed in $SEEDS; do
    name="study-triples-x2-s$seed"
    step "$name"
    [ -f "$ST/$name/distill_args.json" ] || timed "$name" reranker distill --loss triples \
      --labelled "$ST/scores_part.parquet" --augmented "$AUG" --augment-size $((2 * part)) \
      --catalog "$DATA/products.parquet" "${LATE[@]}" --epochs 1 --seed "$seed" \
      --threads "$THREADS" --precision "$PRECISION" --output "$ST/$name"
    [ -f "$ST/$name-onnx/reranker.json" ] || reranker export "$ST/$name" --output "$ST/$name-onnx" --no-int8
    evaluate "$name" fp32
  done
fi
if [ "$PHASE" = cascade ]; then
  name="cascade-$FIRST-$SECOND-k$SECOND_K"
  step "$name"
  [ -f "$ST/$name/reranker.json" ] || reranker cascade "$ST/$FIRST-onnx" "$ST/$SECOND-onnx" \
    --second-k "$SECOND_K" --output "$ST/$name"
  # an index holding the first stage's states, so that end to end reads them (as served)
  [ -f "$ART/index-$FIRST/CURRENT" ] || reranker index "$DATA/products.parquet" \
    --index-dir "$ART/index-$FIRST" --model "$ST/$FIRST-onnx" -q
  [ -f "$OUTDIR/eval_$name-int8.json" ] || into "$OUTDIR/eval_$name-int8.json" reranker eval \
    --judged "$DATA/dev.parquet" --index-dir "$ART/index-$FIRST" --model "$ST/$name" --variant int8 \
    --json --e2e
fi
step "done"
exit
}
