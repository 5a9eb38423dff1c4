#!/usr/bin/env bash
# A real sentence-pair classification task from Multi30k, in fairseq's
# sentence_prediction layout: is sentence B (English) the translation of sentence A
# (German)? Positives are the corpus' own pairs; negatives other captions, half at
# random and half near misses (the most word-overlapping of 100 random captions):
# balanced labels, deterministic (make_pairs.py). Tokenization and joint BPE as
# prepare-multi30k.sh does them; A and B share one dictionary.
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
  --out DIR          output folder (default data/pairs.de-en); binarized data in DIR/bin
                     (input0/, input1/, label/, as fairseq's RoBERTa GLUE instructions)
  --local DIR        Multi30k raw files (default ../shared/data/multi30k, else download)
  --bpe-merges N     BPE merge operations (default 8000)
  --max-train N      the first N training pairs (default all 29,000)
  --max-test N       the first N pairs of each valid/test set (default all)
  --seed S           seed of the negatives (default 1)
  --workers N        processes (default 1)
Subsets: train, valid (val), test (test_2016_flickr, in domain), test1 (test_2017_flickr),
test2 (test_2017_mscoco, out of domain); each twice the pairs of its Multi30k split.
EOF
}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

OUT="" MERGES=8000 MAX_TRAIN=0 MAX_TEST=0 SEED=1 JOBS=1 LOCAL=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --local) LOCAL=(--local "$2"); shift 2 ;;
    --bpe-merges) MERGES=$2; shift 2 ;;
    --max-train) MAX_TRAIN=$2; shift 2 ;;
    --max-test) MAX_TEST=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --workers) JOBS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
[[ "$SEED" =~ ^-?[0-9]+$ ]] || die "--seed '$SEED' is not a whole number"
need fairseq-preprocess python
OUT=${OUT:-data/pairs.de-en}
mkdir -p "$OUT"
check_options "$OUT" "merges=$MERGES max_train=$MAX_TRAIN max_test=$MAX_TEST seed=$SEED"
clean_stale_tmp "$OUT"

log "Multi30k de-en: tokenization and BPE (prepare-multi30k.sh)"
bash "$here/prepare-multi30k.sh" --src de --tgt en --out "$OUT/mt" --bpe-merges "$MERGES" \
  --max-train "$MAX_TRAIN" --max-test "$MAX_TEST" --workers "$JOBS" "${LOCAL[@]}"

mkdir -p "$OUT/pairs"
pairs_step() {  # pairs_step SPLIT: the four files, renamed together when complete
  mkdir -p "$TMP_OUT"
  python "$here/make_pairs.py" "$OUT/mt/bpe/$1.de" "$OUT/mt/bpe/$1.en" "$TMP_OUT/$1" --seed "$SEED"
}
for split in train valid test test1 test2; do
  log "pairs: $split"
  done_or_run "$OUT/pairs/$split" pairs_step "$split"
done

binarize() {  # binarize COLUMN [--srcdict DICT]
  local col=$1; shift
  fairseq-preprocess --only-source --trainpref "$OUT/pairs/train/train.$col" \
    --validpref "$OUT/pairs/valid/valid.$col" \
    --testpref "$OUT/pairs/test/test.$col,$OUT/pairs/test1/test1.$col,$OUT/pairs/test2/test2.$col" \
    --destdir "$TMP_OUT" --workers "$JOBS" "$@" > "$OUT/preprocess.$col.log" 2>&1 \
    || { cat "$OUT/preprocess.$col.log" >&2; return 1; }
}
mkdir -p "$OUT/bin"
for col in input0 input1; do
  log "fairseq-preprocess $col (the translation data's joined dictionary)"
  done_or_run "$OUT/bin/$col" binarize "$col" --srcdict "$OUT/mt/bin/dict.de.txt"
done
log "fairseq-preprocess label"
done_or_run "$OUT/bin/label" binarize label
log "done: $OUT/bin ($(wc -l < "$OUT/pairs/train/train.label") training pairs)"
