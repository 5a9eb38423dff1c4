#!/usr/bin/env bash
# The README's main job: the paper's analysis chain on Multi30k de->en, on CPU.
#   data prep (sacremoses + subword-nmt + fairseq-preprocess) -> fairseq-train of a
#   6-layer, 8-head Transformer -> fairseq-generate full / --mask-heads / --prune-heads
#   -> importance -> pruning curves (global and per kind) -> keep-one-head table
#   -> single-head ablation -> export of a pruned checkpoint -> speed -> report.
# Every stage skips work that is already done, so an interrupted demo resumes.
set -euo pipefail
usage() {
  cat <<EOF
usage: $(basename "$0") [--quick|--tiny] [--out DIR] [--data DIR] [--model CKPT --bin DIR]
  --quick        ~5 minutes: less data (60 test sentences), a short training, coarse curves
  --tiny         a smoke test of every stage (CI), well under a minute of work
  --out DIR      work folder (default: runs/demo or runs/demo-quick)
  --data DIR     Multi30k raw folder (default: ../shared/data/multi30k, else download)
  --model CKPT   analyse this trained translation checkpoint instead of training one
                 (skips data preparation and training; needs --bin)
  --bin DIR      with --model: its fairseq-binarized data (dictionaries, a test split;
                 importance on its train split, else valid)
Default: 29k training pairs, 1000 updates (~10 minutes of training on 2 cores).
EOF
}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
QUICK=0 TINY=0 OUT="" DATA_RAW="" MODEL="" BIN="" SELECT=() MODES="full mask prune"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; shift ;;
    --tiny) TINY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA_RAW=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "demo.sh: error: unknown option '$1'" >&2; exit 2 ;;
  esac
done
step() { echo; echo "=== [demo] $*"; }
fail() { echo "demo.sh: error: $*" >&2; exit 1; }
trap 'fail "stage failed (line $LINENO); see the output above"' ERR
if [ -n "$MODEL" ]; then
  [ -f "$MODEL" ] || fail "--model $MODEL does not exist (allowed: a fairseq checkpoint file)"
  [ -n "$BIN" ] || fail "--model needs --bin DIR, the binarized data the checkpoint was trained on"
  ls "$BIN"/dict.*.txt >/dev/null 2>&1 || fail "--bin $BIN has no fairseq dictionaries (dict.*.txt)"
  ls "$BIN"/test.*.idx >/dev/null 2>&1 || fail "--bin $BIN has no test split (test.*.idx)"
elif [ -n "$BIN" ]; then
  fail "--bin is for --model (the demo prepares its own data otherwise)"
fi

# ABLATE: the heads to ablate one at a time; EVAL: sentences each ablation decodes;
# SELECT: keep-one-head chooses each layer's head on fewer sentences (--quick).
# The speed run decodes a fixed number of tokens per sentence, so that the full, masked
# and pruned models (which translate differently) do the same number of steps.
if [ -n "$MODEL" ] && [ -z "$OUT" ]; then OUT=runs/demo-model; fi
if [ "$TINY" = 1 ]; then  # CI smoke test: every stage, tiny sizes
  OUT=${OUT:-runs/demo-tiny}; MAX_TRAIN=500; MERGES=500; MAX_TEST=30
  UPDATES=30; WARMUP=10; STEP=0.5; DIM=32; ABLATE="A:6:1-2"; EVAL=20; KINDS_1H=A
  IMP_SENT=2000; MAX_TOKENS=4096
  BENCH=(--batch-sizes 1,4 --beams 1 --bench-sentences 8 --repeats 1 --warmup 1 --fixed-length 8)
elif [ "$QUICK" = 1 ]; then
  OUT=${OUT:-runs/demo-quick}; MAX_TRAIN=8000; MERGES=4000; MAX_TEST=60
  UPDATES=150; WARMUP=60; STEP=0.25; DIM=64; ABLATE="A:6:*"; EVAL=60; KINDS_1H=A
  IMP_SENT=1000; MAX_TOKENS=2048; SELECT=(--select-sentences 10)
  MODES="mask prune"  # (the full model's BLEU is the curves' 0% point)
  BENCH=(--batch-sizes 16 --beams 5 --bench-sentences 16 --repeats 2 --fixed-length 20)
else
  OUT=${OUT:-runs/demo}; MAX_TRAIN=0; MERGES=8000; MAX_TEST=500
  UPDATES=1000; WARMUP=300; STEP=0.1; DIM=64; ABLATE="A:*:*"; EVAL=200; KINDS_1H=A
  IMP_SENT=2000; MAX_TOKENS=4096
  BENCH=(--batch-sizes 1,4,16,64 --beams 1,5 --bench-sentences 64 --repeats 3 --fixed-length 20)
fi
if [ -n "$MODEL" ]; then  # a user's model: every A head ablated
  ABLATE="A:*:*"
fi
mkdir -p "$OUT"
DATA="$OUT/data"; CKPT_DIR="$OUT/checkpoints"; RES="$OUT/results"
CKPT="$CKPT_DIR/checkpoint_last.pt"; DATA_BIN="$DATA/bin"; IMP_SUBSET=train
# the stage-3 spec: heads of the demo's own 6+6-layer, 8-head model, or of any model
SPEC="E:1:1-4 A:6:5-8 D:2:*"
if [ -n "$MODEL" ]; then
  CKPT=$MODEL; DATA_BIN=$BIN; SPEC="E:1:1 A:1:1 D:1:1"
  ls "$BIN"/train.*.idx >/dev/null 2>&1 || IMP_SUBSET=valid
fi
USER_DIR="$root/fairseq_headprune"
# Hypotheses at most 1.2 x source + 10 tokens (as the epoch curves; 12 in --tiny mode): a
# weak or heavily masked model babbles up to fairseq's default limit of 200 otherwise.
GEN=(--gen-subset test --beam 5 --remove-bpe --cpu --max-tokens 4000)
if [ "$TINY" = 1 ]; then GEN+=(--max-len-a 0 --max-len-b 12); else GEN+=(--max-len-a 1.2 --max-len-b 10); fi
# fairseq-generate batches by multiples of 8 sentences and drops the remainder of the
# last batch unless told otherwise; the commands below always score every sentence
FGEN=("${GEN[@]}" --required-batch-size-multiple 1)
T0=$(date +%s)

if [ -n "$MODEL" ]; then
step "1-2/8 given: $MODEL on $BIN (no data preparation, no training)"
else
step "1/8 data: Multi30k de->en, Moses tokenization, BPE ($MERGES merges), fairseq-preprocess"
prep=(--out "$DATA" --max-train "$MAX_TRAIN" --max-test "$MAX_TEST" --bpe-merges "$MERGES" --workers 2)
[ -n "$DATA_RAW" ] && prep+=(--local "$DATA_RAW")
bash "$root/data-prep/prepare-multi30k.sh" "${prep[@]}"

step "2/8 fairseq-train: 6+6 layers, 8 heads, d=$DIM, $UPDATES updates (task translation_headprune)"
fi
if [ -n "$MODEL" ]; then
  :
elif [ ! -f "$CKPT" ] || ! grep -q "done training" "$CKPT_DIR/train.log" 2>/dev/null; then
  mkdir -p "$CKPT_DIR"
  fairseq-train "$DATA/bin" --user-dir "$USER_DIR" --task translation_headprune \
    --arch transformer_iwslt_de_en --encoder-layers 6 --decoder-layers 6 \
    --encoder-attention-heads 8 --decoder-attention-heads 8 \
    --encoder-embed-dim "$DIM" --decoder-embed-dim "$DIM" \
    --encoder-ffn-embed-dim $((4 * DIM)) --decoder-ffn-embed-dim $((4 * DIM)) \
    --share-decoder-input-output-embed \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt \
    --warmup-updates "$WARMUP" --dropout 0.1 --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens "$MAX_TOKENS" --max-update "$UPDATES" --save-dir "$CKPT_DIR" --no-epoch-checkpoints \
    --cpu --seed 1 --log-format simple --log-interval 100 2>&1 | tee "$CKPT_DIR/train.log" \
    | grep -E "train \| epoch|valid \| epoch|done training" || true
  grep -q "done training" "$CKPT_DIR/train.log" || fail "fairseq-train did not finish (see $CKPT_DIR/train.log)"
else
  echo "skip (done): $CKPT"
fi

step "3/8 fairseq-generate: ${MODES// /, } (--mask-heads and --prune-heads with one spec: same hypotheses)"
mkdir -p "$RES"
# (side by side: most of each run is Python's start-up)
pids=()
for mode in $MODES; do
  out="$RES/generate.$mode.txt"
  [ -s "$out" ] && { echo "skip (done): $out"; continue; }
  extra=()
  [ "$mode" = mask ] && extra=(--mask-heads "$SPEC")
  [ "$mode" = prune ] && extra=(--prune-heads "$SPEC")
  { fairseq-generate "$DATA_BIN" --path "$CKPT" --user-dir "$USER_DIR" --task translation_headprune \
      "${FGEN[@]}" "${extra[@]}" 2>/dev/null > "$out.tmp" && mv "$out.tmp" "$out"; } &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "fairseq-generate failed (run it by hand to see why)"; done
for mode in $MODES; do
  printf "%-6s %s\n" "$mode" "$(tail -n 1 "$RES/generate.$mode.txt")"
done
if cmp -s <(grep ^H- "$RES/generate.mask.txt") <(grep ^H- "$RES/generate.prune.txt"); then
  echo "masked and pruned hypotheses are identical"
else
  fail "masked and pruned hypotheses differ"
fi

HP=(fairseq-headprune)
step "4/8 importance on $IMP_SENT $IMP_SUBSET sentences; pruning curves by importance: E, A, D, all"
# (one command: the curve estimates the importance it ranks by and saves importance.json)
"${HP[@]}" curve "$DATA_BIN" --path "$CKPT" "${GEN[@]}" --results-dir "$RES" --per-kind \
  --prune-step "$STEP" --importance-subset "$IMP_SUBSET" --importance-max-sentences "$IMP_SENT"

step "5/8 keep only the best head per layer, $KINDS_1H (paper Table 2)"
"${HP[@]}" one-head "$DATA_BIN" --path "$CKPT" "${GEN[@]}" --results-dir "$RES" \
  --kinds "$KINDS_1H" --max-eval-sentences "$EVAL" "${SELECT[@]}"

step "6/8 single-head ablation of $ABLATE with paired bootstrap (paper Table 1)"
"${HP[@]}" ablate "$DATA_BIN" --path "$CKPT" "${GEN[@]}" --results-dir "$RES" --heads "$ABLATE" \
  --max-eval-sentences "$EVAL"

step "7/8 export: remove 50% of the heads by importance; speed of full, masked, removed"
[ -f "$RES/pruned50.pt" ] || "${HP[@]}" export "$DATA_BIN" --path "$CKPT" --cpu \
  --results-dir "$RES" --prune-ratio 0.5 --importance "$RES/importance.json" --out "$RES/pruned50.pt"
fairseq-generate "$DATA_BIN" --path "$RES/pruned50.pt" --user-dir "$USER_DIR" \
  --task translation_headprune "${FGEN[@]}" 2>/dev/null > "$RES/generate.pruned50.txt"
echo "pruned50.pt: $(tail -n 1 "$RES/generate.pruned50.txt")"
# its hypotheses scored with sacrebleu as the curve scores them (tokenized BLEU) == the 50%
# point: an independent re-derivation, and sacrebleu imports in 0.2 s (the package: 9 s)
python - "$RES/curve.json" "$RES/generate.pruned50.txt" <<'PY' || fail "pruned50.pt scores differently from the curve's 50% point"
import json, sys
from sacrebleu.metrics import BLEU
out = {"H": {}, "T": {}}
for line in open(sys.argv[2], encoding="utf-8"):
    f = line.rstrip("\n").split("\t")
    if line[:2] in ("H-", "T-"):
        out[line[0]][int(f[0][2:])] = f[-1]
ids = sorted(out["T"])
bleu = BLEU(tokenize="none", force=True).corpus_score([out["H"][i] for i in ids],
                                                      [[out["T"][i] for i in ids]]).score
half = [p["bleu"] for p in json.load(open(sys.argv[1]))["curves"]["all"]
        if abs(p["share_masked"] - 0.5) < 1e-9]
if half:
    assert abs(bleu - half[0]) < 1e-9, (bleu, half[0])
    print(f"its hypotheses score {bleu:.2f} BLEU (sacrebleu, tokenized), the curve's 50% point, "
          f"where those heads were masked")
PY
[ -f "$RES/bench.json" ] || "${HP[@]}" bench "$DATA_BIN" --path "$CKPT" --cpu --results-dir "$RES" \
  --prune-heads "@$RES/pruned50.heads.json" --gen-subset test "${BENCH[@]}"

step "8/8 report"
"${HP[@]}" report "$RES"
echo
echo "[demo] done in $(( $(date +%s) - T0 )) s; report: $RES/report.md"
