#!/usr/bin/env bash
# Multi30k (task 1) for fairseq: Moses tokenization (sacremoses), lowercasing,
# joint BPE (subword-nmt), fairseq-preprocess with a joined dictionary.
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
  --src L / --tgt L     language pair among en, de, fr (default de -> en)
  --local DIR           folder with {train,val,test_*}.{lang}.gz (default: ../shared/data/multi30k
                        when it exists, else download from github.com/multi30k/dataset)
  --out DIR             output folder (default: data/multi30k.SRC-TGT); binarized data in DIR/bin
  --bpe-merges N        BPE merge operations (default 10000)
  --max-train N         use only the first N training pairs (default: all 29,000)
  --max-test N          use only the first N pairs of each valid/test set (default: all)
  --ood DIR             also binarize an out-of-domain test set DIR/test.{src,tgt}
                        (already tokenized, e.g. ../shared/data/iwslt14-test) as subset test3
  --no-lowercase        keep case
  --workers N           processes (default 1)
Subsets: valid = val, test = test_2016_flickr, test1 = test_2017_flickr,
test2 = test_2017_mscoco, test3 = --ood. Re-running skips finished steps.
EOF
}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

SRC=de TGT=en LOCAL="" OUT="" MERGES=10000 MAX_TRAIN=0 MAX_TEST=0 LOWER=1 OOD="" JOBS=1
while [ $# -gt 0 ]; do
  case $1 in
    --src) SRC=$2; shift 2 ;;
    --tgt) TGT=$2; shift 2 ;;
    --local) LOCAL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --bpe-merges) MERGES=$2; shift 2 ;;
    --max-train) MAX_TRAIN=$2; shift 2 ;;
    --max-test) MAX_TEST=$2; shift 2 ;;
    --ood) OOD=$2; shift 2 ;;
    --no-lowercase) LOWER=0; shift ;;
    --workers) JOBS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
for l in "$SRC" "$TGT"; do
  case $l in en|de|fr) ;; *) die "language '$l' is not in Multi30k (allowed: en, de, fr)" ;; esac
done
[ "$SRC" != "$TGT" ] || die "--src and --tgt are both '$SRC'"
need sacremoses subword-nmt fairseq-preprocess
OUT=${OUT:-data/multi30k.$SRC-$TGT}
mkdir -p "$OUT/raw" "$OUT/tok"
export JOBS
# Finished steps are reused only for the same options.
check_options "$OUT" "src=$SRC tgt=$TGT merges=$MERGES max_train=$MAX_TRAIN max_test=$MAX_TEST lower=$LOWER ood=$OOD"
clean_stale_tmp "$OUT"

default_local="$here/../../shared/data/multi30k"
if [ -z "$LOCAL" ] && [ -d "$default_local" ]; then LOCAL=$default_local; fi
SPLITS="train val test_2016_flickr test_2017_flickr test_2017_mscoco"
for split in $SPLITS; do
  for l in $SRC $TGT; do
    if [ -n "$LOCAL" ]; then
      [ -f "$LOCAL/$split.$l.gz" ] || die "missing $LOCAL/$split.$l.gz (expected Multi30k task1 raw files)"
      ln -sf "$(cd "$LOCAL" && pwd)/$split.$l.gz" "$OUT/raw/$split.$l.gz"
    else
      fetch "https://github.com/multi30k/dataset/raw/master/data/task1/raw/$split.$l.gz" "$OUT/raw/$split.$l.gz"
    fi
  done
done

cut_lines() {  # cut_lines SPLIT: honour --max-train / --max-test
  if [ "$1" = train ]; then first_lines "$MAX_TRAIN"; else first_lines "$MAX_TEST"; fi
}
tok_step() { read_text "$OUT/raw/$1.$2.gz" | cut_lines "$1" | moses_tok "$2" "$LOWER" 0 0 > "$TMP_OUT"; }
for split in $SPLITS; do
  for l in $SRC $TGT; do
    log "tokenize $split.$l"
    done_or_run "$OUT/tok/$split.$l" tok_step "$split" "$l"
  done
done

learn_bpe() {
  subword-nmt learn-joint-bpe-and-vocab --input "$OUT/tok/train.$SRC" "$OUT/tok/train.$TGT" \
    -s "$MERGES" -o "$TMP_OUT" --write-vocabulary "$OUT/vocab.$SRC" "$OUT/vocab.$TGT" >/dev/null
}
log "learn BPE ($MERGES merges)"
done_or_run "$OUT/codes" learn_bpe

mkdir -p "$OUT/bpe"
apply_bpe() {  # apply_bpe IN LANG
  subword-nmt apply-bpe -c "$OUT/codes" --vocabulary "$OUT/vocab.$2" --vocabulary-threshold 1 \
    < "$1" > "$TMP_OUT"
}
declare -A NAME=([train]=train [val]=valid [test_2016_flickr]=test [test_2017_flickr]=test1 [test_2017_mscoco]=test2)
for split in $SPLITS; do
  for l in $SRC $TGT; do
    done_or_run "$OUT/bpe/${NAME[$split]}.$l" apply_bpe "$OUT/tok/$split.$l" "$l"
  done
done
TESTPREF="$OUT/bpe/test,$OUT/bpe/test1,$OUT/bpe/test2"
if [ -n "$OOD" ]; then
  for l in $SRC $TGT; do
    [ -f "$OOD/test.$l" ] || die "missing $OOD/test.$l (--ood expects DIR/test.$SRC and DIR/test.$TGT)"
    ood_step() { cut_lines test < "$OOD/test.$1" > "$TMP_OUT"; }
    done_or_run "$OUT/tok/ood.$l" ood_step "$l"
    done_or_run "$OUT/bpe/test3.$l" apply_bpe "$OUT/tok/ood.$l" "$l"
  done
  TESTPREF="$TESTPREF,$OUT/bpe/test3"
fi

binarize() {
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$OUT/bpe/train" --validpref "$OUT/bpe/valid" --testpref "$TESTPREF" \
    --destdir "$TMP_OUT" --joined-dictionary --workers "$JOBS" > "$OUT/preprocess.log" 2>&1 \
    || { cat "$OUT/preprocess.log" >&2; return 1; }
}
log "fairseq-preprocess -> $OUT/bin"
done_or_run "$OUT/bin" binarize
log "done: $OUT/bin"
