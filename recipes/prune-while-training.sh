#!/usr/bin/env bash
# Prune while training, against the alternatives, with the same number of training
# epochs (so updates) for every arm. Multi30k de->en, 6+6 layers, 8 heads, CPU:
#   (a) full model, E epochs
#   (b) (a), then the SHARE least important heads removed (importance on training
#       sentences; fairseq-headprune export), no fine-tuning
#   (c) (a)'s checkpoint after E-F epochs, the same removal, then F epochs of fine-tuning
#   (d) pruned gradually during training: --prune-schedule all:SHARE% over epochs 1..E-F
#       (cubic ramp, importance from the training steps), then F more epochs
#   (e) a model with half the heads per layer (4), trained from scratch for E epochs
# then BLEU (test, beam 5, tokenized), heads, parameters and measured decode speed of
# each (fairseq-headprune bench on (a) with the arm's heads removed: beam 5, batch 16,
# a fixed 20 tokens), one table and one plot: OUT/report/report.md, bleu_vs_heads.png.
# Every stage skips work already done, so an interrupted run resumes.
set -euo pipefail
usage() {
  cat <<EOF
usage: $(basename "$0") [--tiny] [--out DIR] [--data DIR] [--epochs E] [--finetune-epochs F]
                        [--share PERCENT] [--dim D]
  --tiny               smoke test of every stage (CI): small data and model, 3 epochs
  --out DIR            work folder (default runs/prune-while-training[-tiny])
  --data DIR           Multi30k raw folder (default ../shared/data/multi30k, else download)
  --bin DIR            an already binarized de-en folder (train/valid/test): skips data prep
  --epochs E           training epochs of every arm (default 12)
  --finetune-epochs F  epochs after the removal for (c) and (d) (default 4)
  --share PERCENT      heads removed (default 50)
  --dim D              model dimension (default 128; 6+6 layers, 8 heads, FFN 4*D)
EOF
}
ARGS="$*"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
TINY=0 OUT="" DATA_RAW="" BIN_GIVEN="" EPOCHS=12 FT=4 SHARE=50 DIM=128
while [ $# -gt 0 ]; do
  case $1 in
    --tiny) TINY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA_RAW=$2; shift 2 ;;
    --bin) BIN_GIVEN=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --finetune-epochs) FT=$2; shift 2 ;;
    --share) SHARE=$2; shift 2 ;;
    --dim) DIM=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "prune-while-training.sh: error: unknown option '$1'" >&2; exit 2 ;;
  esac
done
fail() { echo "prune-while-training.sh: error: $*" >&2; exit 1; }
step() { echo; echo "=== [prune-while-training] $*"; }
int() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 '$2' is not a whole number"; }
int --epochs "$EPOCHS"; int --finetune-epochs "$FT"; int --share "$SHARE"; int --dim "$DIM"
[ "$FT" -lt "$EPOCHS" ] || fail "--finetune-epochs $FT must be less than --epochs $EPOCHS"
[ "$SHARE" -ge 1 ] && [ "$SHARE" -le 99 ] || fail "--share $SHARE is not a percentage from 1 to 99"
trap 'fail "stage failed (line $LINENO); see the output above"' ERR

LAYERS=6 HEADS=8 HALF=4
if [ "$TINY" = 1 ]; then
  OUT=${OUT:-runs/prune-while-training-tiny}; MAX_TRAIN=600; MERGES=500; MAX_TEST=30
  EPOCHS=3; FT=1; DIM=32; LAYERS=2; HEADS=4; HALF=2; IMP_SENT=100; WARMUP=10
  BENCH=(--bench-sentences 8 --repeats 1 --warmup 1 --fixed-length 8 --batch-sizes 4)
  GEN_LIMIT=(--max-len-a 0 --max-len-b 12)
else
  OUT=${OUT:-runs/prune-while-training}; MAX_TRAIN=0; MERGES=8000; MAX_TEST=0
  IMP_SENT=5000; WARMUP=400
  BENCH=(--bench-sentences 64 --repeats 3 --fixed-length 20 --batch-sizes 16)
  GEN_LIMIT=()
fi
PRE=$((EPOCHS - FT))
DATA="$OUT/data"; BIN=${BIN_GIVEN:-$DATA/bin}; USER_DIR="$root/fairseq_headprune"
TASK=(--user-dir "$USER_DIR" --task translation_headprune -s de -t en)
arch() {  # $1 = heads per layer
  echo --arch transformer --encoder-layers $LAYERS --decoder-layers $LAYERS \
    --encoder-attention-heads "$1" --decoder-attention-heads "$1" \
    --encoder-embed-dim $DIM --decoder-embed-dim $DIM \
    --encoder-ffn-embed-dim $((4 * DIM)) --decoder-ffn-embed-dim $((4 * DIM)) \
    --share-decoder-input-output-embed
}
TRAIN=(--optimizer adam --adam-betas '(0.9, 0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt
       --warmup-updates $WARMUP --criterion label_smoothed_cross_entropy --label-smoothing 0.1
       --dropout 0.1 --max-tokens 4096 --cpu --seed 1 --no-progress-bar --log-interval 50
       --num-workers 0)
GEN=(--gen-subset test --beam 5 --remove-bpe --cpu --max-tokens 4000 "${GEN_LIMIT[@]}")
T0=$(date +%s)

train() {  # $1 = save dir, $2 = log, rest = extra flags; skipped when finished
  local save=$1 log=$2; shift 2
  if [ -f "$save/.done" ]; then echo "(done: $save)"; return; fi
  fairseq-train "$BIN" "${TASK[@]}" "${TRAIN[@]}" --save-dir "$save" "$@" > "$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "fairseq-train failed; see $log"; }
  touch "$save/.done"
}
bleu() {  # $1 = checkpoint, $2 = output file: tokenized BLEU of fairseq-generate
  [ -s "$2" ] || fairseq-generate "$BIN" --path "$1" "${TASK[@]}" "${GEN[@]}" > "$2.tmp" 2>/dev/null
  [ -s "$2" ] || mv "$2.tmp" "$2"
  grep -oP 'BLEU4 = \K[0-9.]+' "$2"
}
importance_export() {  # $1 = checkpoint, $2 = out dir: importance on training sentences, export
  [ -f "$2/pruned.pt" ] && return
  fairseq-headprune importance "$BIN" --path "$1" "${TASK[@]}" --cpu --results-dir "$2/importance" \
    --importance-subset train --importance-max-sentences $IMP_SENT --max-tokens 4000 >/dev/null
  fairseq-headprune export "$BIN" --path "$1" "${TASK[@]}" --cpu --prune-ratio "0.$(printf %02d "$SHARE")" \
    --importance "$2/importance/importance.json" --out "$2/pruned.pt" > "$2/export.txt"
}

step "1/7 data: Multi30k de->en (Moses tokenization, BPE $MERGES merges, fairseq-preprocess)"
if [ -n "$BIN_GIVEN" ]; then
  [ -f "$BIN/dict.de.txt" ] && [ -f "$BIN/dict.en.txt" ] || fail "--bin $BIN has no dict.de.txt/dict.en.txt"
  echo "(given: $BIN)"
else
  prep=(--out "$DATA" --max-train "$MAX_TRAIN" --max-test "$MAX_TEST" --bpe-merges "$MERGES" --workers 2)
  [ -n "$DATA_RAW" ] && prep+=(--local "$DATA_RAW")
  bash "$root/data-prep/prepare-multi30k.sh" "${prep[@]}"
fi
mkdir -p "$OUT/arms"

step "2/7 (a) full model: $LAYERS+$LAYERS layers, $HEADS heads, d=$DIM, $EPOCHS epochs"
train "$OUT/a" "$OUT/a.log" $(arch $HEADS) --max-epoch "$EPOCHS" --keep-last-epochs $((FT + 1)) \
  --accumulate-head-importance
step "3/7 (b) (a) with $SHARE% of heads removed by importance, no fine-tuning"
mkdir -p "$OUT/b"; importance_export "$OUT/a/checkpoint_last.pt" "$OUT/b"
step "4/7 (c) (a) after $PRE epochs, $SHARE% removed, $FT epochs of fine-tuning"
mkdir -p "$OUT/c"; importance_export "$OUT/a/checkpoint$PRE.pt" "$OUT/c"
train "$OUT/c/ft" "$OUT/c.log" $(arch $HEADS) --finetune-from-model "$OUT/c/pruned.pt" --max-epoch "$FT"
step "5/7 (d) pruned during training to $SHARE% (epochs 1-$PRE, cubic ramp), $EPOCHS epochs in all"
train "$OUT/d" "$OUT/d.log" $(arch $HEADS) --max-epoch "$EPOCHS" --prune-schedule "all:$SHARE%" \
  --prune-start-epoch 1 --prune-end-epoch "$PRE" --prune-ramp cubic --no-epoch-checkpoints
step "6/7 (e) $HALF heads per layer from scratch, $EPOCHS epochs"
train "$OUT/e" "$OUT/e.log" $(arch $HALF) --max-epoch "$EPOCHS" --no-epoch-checkpoints

step "7/7 BLEU, heads, parameters, decode speed of every arm -> $OUT/report"
declare -A CK=([a]="$OUT/a/checkpoint_last.pt" [b]="$OUT/b/pruned.pt" [c]="$OUT/c/ft/checkpoint_last.pt"
               [d]="$OUT/d/checkpoint_last.pt" [e]="$OUT/e/checkpoint_last.pt")
# speed: the arm's heads removed from (a), timed against (a) in one process
python -m fairseq_headprune.cli.arm_summary removed "$BIN" b="${CK[b]}" c="${CK[c]}" d="${CK[d]}" \
  > "$OUT/arms/removed.txt"
while read -r arm spec; do
  [ -f "$OUT/arms/$arm.bench/bench.json" ] && continue
  fairseq-headprune bench "$BIN" --path "${CK[a]}" "${TASK[@]}" --cpu --gen-subset test \
    --prune-heads "$spec" --variants full,removed --parts decode --beams 5 "${BENCH[@]}" \
    --results-dir "$OUT/arms/$arm.bench" > "$OUT/arms/$arm.bench.log" 2>&1 \
    || { tail -5 "$OUT/arms/$arm.bench.log" >&2; fail "bench failed"; }
done < "$OUT/arms/removed.txt"
ARMS=()
for arm in a b c d e; do
  ARMS+=("$arm=${CK[$arm]},$(bleu "${CK[$arm]}" "$OUT/arms/$arm.gen.txt"),$OUT/arms/$arm.bench/bench.json")
done
python -m fairseq_headprune.cli.arm_summary arms "$BIN" "${ARMS[@]}" --out "$OUT/arms/json"
python -m fairseq_headprune.report.train_pruning "$OUT/arms/json" --out "$OUT/report" \
  --train-importance "$OUT/a/head_importance.jsonl" --eval-importance "$OUT/b/importance/importance.json" \
  --command "bash recipes/prune-while-training.sh $ARGS" --seconds $(( $(date +%s) - T0 ))
echo "report: $OUT/report/report.md"
