#!/usr/bin/env bash
# The paper's §6 (Fig. 6): train IWSLT14 de->en (6+6 layers, 8 heads, the paper's
# optimiser settings) with a pruning curve at the end of every epoch, then plot how the
# curves evolve. Each epoch appends one JSON line to SAVE/head_dynamics.jsonl; a killed
# run re-run with the same command resumes from checkpoint_last.pt.
set -euo pipefail
usage() {
  cat <<EOF
usage: $(basename "$0") [options] [-- extra fairseq-train flags]
  --out DIR            work folder (default: runs/iwslt14-de-en)
  --local PATH         offline IWSLT14 (extracted de-en/ folder or de-en.tgz)
  --local-tok DIR      offline, already tokenized {train,valid,test}.{de,en}
  --max-epoch N        epochs (default 40, as the paper's Fig. 6)
  --curve-sentences N  validation sentences decoded per curve point (default 500)
  --cpu                train on CPU (default: GPU when torch sees one)
  --tiny               smoke mode for CI: 2 epochs of a tiny model, 3-point curves
Online (no --local*): downloads IWSLT14 as fairseq's prepare-iwslt14.sh does.
EOF
}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
OUT=runs/iwslt14-de-en LOCAL=() EPOCHS=40 CURVE_SENT=500 CPU=() TINY=0 EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --local) LOCAL=(--local "$2"); shift 2 ;;
    --local-tok) LOCAL=(--local-tok "$2"); shift 2 ;;
    --max-epoch) EPOCHS=$2; shift 2 ;;
    --curve-sentences) CURVE_SENT=$2; shift 2 ;;
    --cpu) CPU=(--cpu); shift ;;
    --tiny) TINY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "iwslt14-de-en-dynamics.sh: error: unknown option '$1'" >&2; exit 2 ;;
  esac
done
step() { echo; echo "=== [iwslt14-de-en] $*"; }
trap 'echo "iwslt14-de-en-dynamics.sh: error: step failed (line $LINENO); see above" >&2' ERR
python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || CPU=(--cpu)

DATA="$OUT/data"; SAVE="$OUT/checkpoints"; RES="$OUT/results"
# The paper's IWSLT setup (PAPER.md, Setups).
MODEL=(--arch transformer_iwslt_de_en --encoder-attention-heads 8 --decoder-attention-heads 8
       --share-decoder-input-output-embed)
OPTIM=(--optimizer adam --adam-betas '(0.9, 0.98)' --lr 5e-4 --lr-scheduler inverse_sqrt
       --warmup-updates 4000 --dropout 0.3 --weight-decay 0.0001
       --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 4000)
CURVE=(--prune-curve-every-epoch --prune-curve-sentences "$CURVE_SENT" --prune-curve-beam 5
       --prune-curve-importance-sentences 2000)
prep=(--out "$DATA" "${LOCAL[@]}")
if [ "$TINY" = 1 ]; then
  EPOCHS=2; prep+=(--max-train 400 --max-test 40 --bpe-merges 500)
  MODEL=(--arch transformer_iwslt_de_en --encoder-layers 2 --decoder-layers 2
         --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-ffn-embed-dim 64
         --decoder-ffn-embed-dim 64 --encoder-attention-heads 4 --decoder-attention-heads 4)
  OPTIM=(--optimizer adam --lr 1e-3 --criterion label_smoothed_cross_entropy
         --label-smoothing 0.1 --max-tokens 2000)
  CURVE=(--prune-curve-every-epoch --prune-curve-sentences 10 --prune-curve-beam 1
         --prune-curve-importance-sentences 50 --prune-curve-step 0.5)
fi

step "1/3 data: IWSLT14 de-en (Moses tokenization, lowercase, clean, BPE 10k, fairseq-preprocess)"
bash "$root/data-prep/prepare-iwslt14.sh" "${prep[@]}"

step "2/3 fairseq-train, $EPOCHS epochs, pruning curve at every epoch -> $SAVE/head_dynamics.jsonl"
mkdir -p "$SAVE"
fairseq-train "$DATA/bin" --user-dir "$root/fairseq_headprune" --task translation_headprune \
  "${MODEL[@]}" "${OPTIM[@]}" "${CURVE[@]}" --max-epoch "$EPOCHS" --save-dir "$SAVE" \
  --keep-last-epochs 2 --seed 1 --log-format simple --log-interval 100 "${CPU[@]}" "${EXTRA[@]}"

step "3/3 plots (paper Fig. 6) and report"
fairseq-headprune plot-dynamics "$SAVE" --out-dir "$RES"
fairseq-headprune report "$RES"
echo "[iwslt14-de-en] done: $RES/report.md"
