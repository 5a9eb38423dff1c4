#!/usr/bin/env bash
# The paper's WMT analysis on fairseq's pretrained wmt14.en-fr.joined-dict.transformer
# (transformer_vaswani_wmt_en_fr_big, 6+6 layers, 16 heads): importance on
# newstest2009-2012, evaluation on newstest2013 with tokenized (Moses) BLEU, MTNT as the
# out-of-domain set. Steps: data -> importance -> single-head ablation (newstest2013 and
# MTNT, cross-domain r) -> keep-one-head table -> global and per-kind pruning curves
# -> export at 20/40/60% -> speed -> report. Each step resumes/skips when done.
set -euo pipefail
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
  --out DIR            work folder (default: runs/wmt14-en-fr)
  --local-model DIR    offline model folder (model.pt, dict.en.txt, dict.fr.txt, bpecodes)
  --local-tests DIR    offline newstest2009-2013 (newstestYYYY.en/.fr)
  --local-mtnt PATH    offline MTNT (tarball, MTNT/ folder, tsv, or test.en + test.fr)
  --cpu                run on CPU (default: GPU when torch sees one)
  --beam N             beam size (default 5, as the paper); --lenpen 1
  --max-tokens N       tokens per batch (default 8000)
  --importance-sentences N   newstest2009-2012 sentences for importance (default: all)
  --kinds K            attention kinds to ablate (default E,A,D: all 288 heads)
  --tiny               smoke mode for CI: 20 test sentences, beam 2, coarse curves,
                       two ablated heads, short speed run
Online (no --local-*): downloads the model and newstest with sacrebleu, and MTNT.
EOF
}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/.." && pwd)
OUT=runs/wmt14-en-fr LOCAL_MODEL="" LOCAL_TESTS="" LOCAL_MTNT="" CPU=() BEAM=5 MAXTOK=8000
IMP_SENT="" KINDS=E,A,D TINY=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --local-model) LOCAL_MODEL=$2; shift 2 ;;
    --local-tests) LOCAL_TESTS=$2; shift 2 ;;
    --local-mtnt) LOCAL_MTNT=$2; shift 2 ;;
    --cpu) CPU=(--cpu); shift ;;
    --beam) BEAM=$2; shift 2 ;;
    --max-tokens) MAXTOK=$2; shift 2 ;;
    --importance-sentences) IMP_SENT=$2; shift 2 ;;
    --kinds) KINDS=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; echo "wmt14-en-fr-analysis.sh: error: unknown option '$1'" >&2; exit 2 ;;
  esac
done
step() { echo; echo "=== [wmt14-en-fr] $*"; }
trap 'echo "wmt14-en-fr-analysis.sh: error: step failed (line $LINENO); see above" >&2' ERR
python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || CPU=(--cpu)

DATA="$OUT/data"; RES="$OUT/results"; mkdir -p "$RES"
prep=(--out "$DATA"); mtnt=(--wmt "$DATA" --out "$OUT/mtnt")
[ -n "$LOCAL_MODEL" ] && prep+=(--local-model "$LOCAL_MODEL")
[ -n "$LOCAL_TESTS" ] && prep+=(--local-tests "$LOCAL_TESTS")
[ -n "$LOCAL_MTNT" ] && mtnt+=(--local "$LOCAL_MTNT")
STEP=0.1 EXPORTS="0.2 0.4 0.6" ABLATE=(--kinds "$KINDS") BENCH=() IMP=()
[ -n "$IMP_SENT" ] && IMP=(--importance-max-sentences "$IMP_SENT")
if [ "$TINY" = 1 ]; then
  prep+=(--max-test 20); mtnt+=(--max-test 20); BEAM=2; STEP=0.5; EXPORTS="0.4"
  ABLATE=(--heads "A:1:1-2"); BENCH=(--batch-sizes 1,4 --beams 1 --bench-sentences 8 --repeats 1 --warmup 0)
fi

step "1/8 data: pretrained model, newstest2009-2013, MTNT (Moses tokenization, the model's BPE)"
bash "$root/data-prep/prepare-wmt14-en-fr.sh" "${prep[@]}"
bash "$root/data-prep/prepare-mtnt.sh" "${mtnt[@]}"
CKPT="$DATA/model/model.pt"
[ -e "$CKPT" ] || { echo "wmt14-en-fr-analysis.sh: error: no checkpoint at $CKPT" >&2; exit 1; }
GEN=("$DATA/bin" --path "$CKPT" --beam "$BEAM" --lenpen 1 --remove-bpe --max-tokens "$MAXTOK"
     "${CPU[@]}" --results-dir "$RES")

step "2/8 importance on newstest2009-2012 (subset valid)"
[ -f "$RES/importance.json" ] || fairseq-headprune importance "${GEN[@]}" --importance-subset valid "${IMP[@]}"

step "3/8 single-head ablation on newstest2013 (test) and MTNT (test1), cross-domain"
fairseq-headprune ablate "${GEN[@]}" --gen-subset test,test1 "${ABLATE[@]}"

step "4/8 keep only the best head per layer (Table 2)"
fairseq-headprune one-head "${GEN[@]}" --gen-subset test

step "5/8 pruning curves by importance: all kinds and E, A, D"
fairseq-headprune curve "${GEN[@]}" --gen-subset test --importance "$RES/importance.json" \
  --per-kind --prune-step "$STEP"

step "6/8 export with 20/40/60% of the heads removed"
for r in $EXPORTS; do
  pct=$(python -c "print(int(round($r*100)))")
  [ -f "$RES/pruned$pct.pt" ] || fairseq-headprune export "${GEN[@]}" --prune-ratio "$r" \
    --importance "$RES/importance.json" --out "$RES/pruned$pct.pt"
done

step "7/8 speed: full, masked, removed (50% of heads by importance)"
fairseq-headprune bench "${GEN[@]}" --gen-subset test --prune-ratio 0.5 \
  --importance "$RES/importance.json" "${BENCH[@]}"

step "8/8 report"
fairseq-headprune report "$RES"
echo "[wmt14-en-fr] done: $RES/report.md"
