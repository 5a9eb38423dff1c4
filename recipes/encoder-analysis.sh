#!/usr/bin/env bash
# The paper's BERT experiments on a fairseq encoder classifier, on CPU: a small
# RoBERTa-architecture model (fairseq's roberta_base at small dimensions) trained from
# scratch by stock fairseq-train (--task sentence_prediction) on a sentence-pair task
# built from Multi30k ("is B the English translation of the German A?",
# data-prep/prepare-pairs.sh; test = flickr 2016, test2 = mscoco 2017: the MNLI
# matched/mismatched analogue), then:
#   importance (training examples) -> curve by importance and in random order (3 seeds,
#   Fig. 3-4) -> keep-one-head per layer (Table 3) -> single-head ablation of every head
#   on both domains, paired bootstrap and t-test, cross-domain comparison (Fig. 1-2) ->
#   export of 50% and speed at batch 1..64 (Table 4) -> budgets without retraining ->
#   report.md and findings.md (the paper's BERT findings against ours).
# A user with real GLUE data (fairseq's RoBERTa GLUE preprocessing) and a fine-tuned
# checkpoint runs the same commands on them: see the README. Every stage skips work
# already done; --gallery DIR copies the report, plots and results files (no
# checkpoints, no data) to DIR.
set -euo pipefail
usage() {
  cat <<EOF
usage: $(basename "$0") [--tiny] [--out DIR] [--data DIR] [--epochs E] [--dim D] [--gallery DIR]
  --tiny          smoke test of every stage (CI): a few hundred pairs, 2 layers, 3 epochs
  --out DIR       work folder (default runs/encoder-analysis[-tiny])
  --data DIR      Multi30k raw folder (default ../shared/data/multi30k, else download)
  --epochs E      training epochs (default 2: ~10 min each on 2 CPU cores)
  --dim D         model dimension (default 64; 4 layers, 8 heads, FFN 4*D)
  --gallery DIR   copy report.md, findings.md, the plots and the results files there
EOF
}
ARGS="$*"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
TINY=0 OUT="" DATA_RAW="" EPOCHS=2 DIM=64 GALLERY=""
source "$here/lib.sh"
gallery_args "$@"
trap 'fail "stage failed (line $LINENO); see the output above"' ERR

LAYERS=4 HEADS=8
if [ "$TINY" = 1 ]; then
  OUT=${OUT:-runs/encoder-analysis-tiny}; MAX_TRAIN=300; MERGES=500; MAX_TEST=30
  EPOCHS=3; DIM=32; LAYERS=2; HEADS=4; IMP=100; STEP=0.25; CAL=50; BOOT=200; LR=3e-3; WARMUP=10
  BENCH=(--batch-sizes 4 --bench-sentences 8 --repeats 1 --warmup 1)
  BUDGETS=(--budgets heads:50% --repairs none,lstsq --order-seed 1,2)
else
  OUT=${OUT:-runs/encoder-analysis}; MAX_TRAIN=0; MERGES=8000; MAX_TEST=0
  IMP=5000; STEP=0.1; CAL=2000; BOOT=1000; LR=1e-3; WARMUP=500
  BENCH=(--batch-sizes 1,4,16,64 --bench-sentences 256 --repeats 5)
  BUDGETS=(--budgets heads:25%,heads:50%,heads:75%)
fi
DATA="$OUT/data"; BIN="$DATA/bin"; SAVE="$OUT/checkpoints"; RES="$OUT/results"
CKPT="$SAVE/checkpoint_best.pt"
EVAL=(--cpu --batch-size 32)
HP=(fairseq-headprune)
T0=$(date +%s)

step "1/8 data: sentence pairs from Multi30k (BPE $MERGES merges, fairseq-preprocess)"
prep=(--out "$DATA" --max-train "$MAX_TRAIN" --max-test "$MAX_TEST" --bpe-merges "$MERGES" --workers 2)
[ -n "$DATA_RAW" ] && prep+=(--local "$DATA_RAW")
bash "$root/data-prep/prepare-pairs.sh" "${prep[@]}"

step "2/8 fairseq-train: roberta_base with $LAYERS layers, $HEADS heads, d=$DIM, $EPOCHS epochs"
mkdir -p "$SAVE" "$RES"
if [ ! -f "$SAVE/.done" ]; then
  fairseq-train "$BIN" --task sentence_prediction --arch roberta_base \
    --encoder-layers $LAYERS --encoder-attention-heads $HEADS --encoder-embed-dim "$DIM" \
    --encoder-ffn-embed-dim $((4 * DIM)) --max-positions 256 --num-classes 2 \
    --init-token 0 --separator-token 2 --criterion sentence_prediction \
    --dropout 0.1 --attention-dropout 0.1 --weight-decay 0.01 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr "$LR" --lr-scheduler inverse_sqrt \
    --warmup-updates "$WARMUP" --batch-size 32 --max-epoch "$EPOCHS" \
    --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
    --save-dir "$SAVE" --no-epoch-checkpoints --cpu --seed 1 --num-workers 0 \
    --log-format simple --log-interval 200 >> "$SAVE/train.log" 2>&1 \
    || { tail -20 "$SAVE/train.log" >&2; fail "fairseq-train failed; see $SAVE/train.log"; }
  touch "$SAVE/.done"
fi
grep -E "valid on 'valid'" "$SAVE/train.log" | tail -3 || true

step "3/8 importance: on $IMP training examples"
[ -f "$RES/importance.json" ] || "${HP[@]}" importance "$BIN" --path "$CKPT" "${EVAL[@]}" \
  --results-dir "$RES" --importance-subset train --importance-max-sentences "$IMP"
IMPF=(--importance "$RES/importance.json")

step "4/8 curves: by importance (Fig. 3) and in random order, 3 seeds (Fig. 4)"
"${HP[@]}" curve "$BIN" --path "$CKPT" "${EVAL[@]}" --results-dir "$RES" "${IMPF[@]}" \
  --prune-step "$STEP"
"${HP[@]}" curve "$BIN" --path "$CKPT" "${EVAL[@]}" --results-dir "$RES/random" --order random \
  --order-seed 1,2,3 --prune-step "$STEP"

step "5/8 keep-one-head: keep only the best head of one layer (Table 3)"
"${HP[@]}" one-head "$BIN" --path "$CKPT" "${EVAL[@]}" --results-dir "$RES" \
  --bootstrap-samples "$BOOT"

step "6/8 ablation: every single head masked on test (flickr) and test2 (mscoco)"
"${HP[@]}" ablate "$BIN" --path "$CKPT" "${EVAL[@]}" --results-dir "$RES" --gen-subset test,test2 \
  --bootstrap-samples "$BOOT"

step "7/8 export: 50% of the heads removed by importance; speed of full, masked, removed"
[ -f "$RES/pruned50.pt" ] || "${HP[@]}" export "$BIN" --path "$CKPT" --cpu --results-dir "$RES" \
  --prune-ratio 0.5 "${IMPF[@]}" --out "$RES/pruned50.pt"
[ -f "$RES/bench.json" ] || "${HP[@]}" bench "$BIN" --path "$CKPT" --cpu --results-dir "$RES" \
  --prune-heads "@$RES/pruned50.heads.json" --gen-subset test "${BENCH[@]}"

step "8/8 budgets: without retraining; report and the paper's BERT findings against ours"
"${HP[@]}" compare-budgets "$BIN" --path "$CKPT" "${EVAL[@]}" --results-dir "$RES" "${IMPF[@]}" \
  --calibration-sentences "$CAL" "${BUDGETS[@]}" > /dev/null
python -m fairseq_headprune.report.findings "$RES" --random "$RES/random" > /dev/null
provenance "$RES/findings.md" "$ARGS" "$(grep -c "valid on 'valid'" "$SAVE/train.log")"
"${HP[@]}" report "$RES" --title "Are sixteen heads really better than one? The BERT experiments on a $LAYERS-layer x $HEADS-head fairseq encoder (d=$DIM), Multi30k sentence pairs" > /dev/null
[ -z "$GALLERY" ] || copy_gallery "$RES" "$GALLERY"
echo "[encoder-analysis] done in $(( $(date +%s) - T0 )) s: $RES/report.md, $RES/findings.md"
