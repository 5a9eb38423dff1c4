#!/usr/bin/env bash
# The paper's WMT setup: fairseq's pretrained wmt14.en-fr.joined-dict.transformer
# (transformer_vaswani_wmt_en_fr_big) and newstest2009-2013 en->fr, prepared as the model's
# data was (fairseq's examples/translation/prepare-wmt14en2fr.sh for test sets: U+2019 -> ',
# tokenizer.perl -a -l L with escaping on, no lowercasing), BPE with the model's own
# bpecodes (subword-nmt apply-bpe), binarized with the model's dictionaries.
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
Input (default: download the model from $MODEL_URL
and newstest2009-2013 with sacrebleu (-t wmt09 ... wmt13 -l en-fr --echo src/ref)):
  --local-model DIR     offline model folder: DIR/dict.en.txt, DIR/dict.fr.txt, DIR/bpecodes
                        and the checkpoint DIR/model.pt (or the only DIR/*.pt); without a
                        checkpoint only the data is prepared (a warning says so)
  --local-tests DIR     offline test sets: DIR/newstest{2009,2010,2011,2012,2013}.{en,fr},
                        plain text, one sentence a line, untokenized (sacrebleu --echo output)
Options:
  --out DIR             output folder (default: data/wmt14.en-fr); binarized data in DIR/bin
  --max-test N          keep only the first N pairs of each newstest file (smoke tests; default all)
  --workers N           processes (default 1)
  -h, --help            this help
Subsets in DIR/bin (source en, target fr, the model's joined dictionary):
  valid = newstest2009 + 2010 + 2011 + 2012 concatenated: the importance set
          (fairseq-headprune importance --importance-subset valid)
  test  = newstest2013: the evaluation set (--gen-subset test, as the paper's Table 1)
prepare-mtnt.sh adds MTNT as test1 to the same DIR/bin.
Outputs: DIR/model/{model.pt -> checkpoint (a symlink, not a copy), dict.en.txt, dict.fr.txt,
bpecodes}; DIR/split/{valid,test}.{en,fr} = Moses-tokenized text before BPE (the references
for tokenized BLEU); DIR/bpe/*; DIR/bin. Every step writes a temporary file and renames it
when complete: re-running skips finished steps; other options refuse (DIR/options).
EOF
}
MODEL_URL=https://dl.fbaipublicfiles.com/fairseq/models/wmt14.en-fr.joined-dict.transformer.tar.bz2
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

LOCAL_MODEL="" LOCAL_TESTS="" OUT="" MAX_TEST=0 JOBS=1
while [ $# -gt 0 ]; do
  case $1 in
    --local-model) LOCAL_MODEL=${2:?--local-model needs a folder}; shift 2 ;;
    --local-tests) LOCAL_TESTS=${2:?--local-tests needs a folder}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --max-test) MAX_TEST=${2:?}; shift 2 ;;
    --workers) JOBS=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
for n in "$MAX_TEST" "$JOBS"; do [[ $n =~ ^[0-9]+$ ]] || die "expected a number, got '$n'"; done
need python3 subword-nmt fairseq-preprocess
[ -n "$LOCAL_TESTS" ] || need sacrebleu
OUT=${OUT:-data/wmt14.en-fr}
mkdir -p "$OUT"
export JOBS
check_options "$OUT" "model=wmt14.en-fr.joined-dict.transformer tok=moses-a-escape max_test=$MAX_TEST"
clean_stale_tmp "$OUT"
SRC=en TGT=fr
YEARS="2009 2010 2011 2012 2013"

# ---- the model: dictionaries, BPE codes, checkpoint ----
if [ -n "$LOCAL_MODEL" ]; then
  MODEL_DIR=$LOCAL_MODEL
else
  mkdir -p "$OUT/orig"
  TARBALL=$OUT/orig/wmt14.en-fr.joined-dict.transformer.tar.bz2
  fetch "$MODEL_URL" "$TARBALL"
  extract_model() { mkdir -p "$TMP_OUT" && tar -xjf "$TARBALL" -C "$TMP_OUT"; }
  log "extract $TARBALL"
  done_or_run "$OUT/orig/model" extract_model
  found=$(find "$OUT/orig/model" -name bpecodes -type f | head -n 1)
  [ -n "$found" ] || die "no bpecodes in $TARBALL (expected model.pt, dict.en.txt, dict.fr.txt, bpecodes)"
  MODEL_DIR=$(dirname "$found")
fi
for f in dict.en.txt dict.fr.txt bpecodes; do
  [ -f "$MODEL_DIR/$f" ] || die "missing $MODEL_DIR/$f: expected the wmt14.en-fr.joined-dict.transformer folder (model.pt, dict.en.txt, dict.fr.txt, bpecodes)"
done
ckpt=""
if [ -f "$MODEL_DIR/model.pt" ]; then ckpt=$MODEL_DIR/model.pt
else
  pts=("$MODEL_DIR"/*.pt)
  if [ "${#pts[@]}" -eq 1 ] && [ -f "${pts[0]}" ]; then ckpt=${pts[0]}; fi
fi
[ -n "$ckpt" ] || [ -n "$LOCAL_MODEL" ] || die "no model.pt in $MODEL_DIR (the download looks incomplete)"
mkdir -p "$OUT/model"
copy_file() { cp "$1" "$TMP_OUT"; }
for f in dict.en.txt dict.fr.txt bpecodes; do
  if [ -e "$OUT/model/$f" ] && ! cmp -s "$OUT/model/$f" "$MODEL_DIR/$f"; then
    die "$OUT/model/$f differs from $MODEL_DIR/$f: $OUT was prepared with another model; use another --out"
  fi
  done_or_run "$OUT/model/$f" copy_file "$MODEL_DIR/$f"
done
if [ -n "$ckpt" ]; then
  abs=$(cd "$(dirname "$ckpt")" && pwd)/$(basename "$ckpt")
  link_ckpt() { ln -s "$abs" "$TMP_OUT"; }
  if [ -L "$OUT/model/model.pt" ] && [ "$(readlink "$OUT/model/model.pt")" != "$abs" ]; then
    log "re-link $OUT/model/model.pt -> $abs"; rm -f "$OUT/model/model.pt"
  fi
  done_or_run "$OUT/model/model.pt" link_ckpt
else
  log "warning: no checkpoint (*.pt) in $MODEL_DIR: preparing the data only"
fi

# ---- newstest2009-2013: raw text ----
mkdir -p "$OUT/raw" "$OUT/tok" "$OUT/split" "$OUT/bpe"
for y in $YEARS; do
  if [ -n "$LOCAL_TESTS" ]; then
    for l in $SRC $TGT; do
      [ -f "$LOCAL_TESTS/newstest$y.$l" ] || die "missing $LOCAL_TESTS/newstest$y.$l: --local-tests expects newstest{2009..2013}.{en,fr} (plain, untokenized)"
    done
    same_lines "$LOCAL_TESTS/newstest$y.$SRC" "$LOCAL_TESTS/newstest$y.$TGT" "newstest$y"
  fi
  for l in $SRC $TGT; do
    if [ -n "$LOCAL_TESTS" ]; then
      raw_step() { first_lines "$MAX_TEST" < "$LOCAL_TESTS/newstest$1.$2" > "$TMP_OUT"; }
    else
      raw_step() {
        local side=src; [ "$2" = "$TGT" ] && side=ref
        sacrebleu -t "wmt${1#20}" -l "$SRC-$TGT" --echo "$side" | first_lines "$MAX_TEST" > "$TMP_OUT" \
          || { echo "sacrebleu could not get wmt${1#20} $SRC-$TGT $side (offline? use --local-tests DIR)" >&2; return 1; }
      }
    fi
    log "newstest$y.$l"
    done_or_run "$OUT/raw/newstest$y.$l" raw_step "$y" "$l"
  done
  same_lines "$OUT/raw/newstest$y.$SRC" "$OUT/raw/newstest$y.$TGT" "newstest$y"
  [ -s "$OUT/raw/newstest$y.$SRC" ] || die "$OUT/raw/newstest$y.$SRC is empty"
done

# ---- tokenization as fairseq's prepare-wmt14en2fr.sh does for test sets ----
tok_step() { LC_ALL=C sed -e "s/’/'/g" "$OUT/raw/newstest$1.$2" | moses_tok "$2" 0 1 1 > "$TMP_OUT"; }
for y in $YEARS; do
  for l in $SRC $TGT; do
    log "tokenize newstest$y.$l"
    done_or_run "$OUT/tok/newstest$y.$l" tok_step "$y" "$l"
  done
done
valid_step() { local y; for y in 2009 2010 2011 2012; do cat "$OUT/tok/newstest$y.$1"; done > "$TMP_OUT"; }
test_step() { cp "$OUT/tok/newstest2013.$1" "$TMP_OUT"; }
for l in $SRC $TGT; do
  done_or_run "$OUT/split/valid.$l" valid_step "$l"
  done_or_run "$OUT/split/test.$l" test_step "$l"
done

# ---- BPE with the model's codes ----
apply_bpe() {  # apply_bpe SPLIT LANG
  subword-nmt apply-bpe -c "$OUT/model/bpecodes" --num-workers "$JOBS" \
    --input "$OUT/split/$1.$2" --output "$TMP_OUT" || return 1
  [ "$(wc -l < "$TMP_OUT")" -eq "$(wc -l < "$OUT/split/$1.$2")" ] \
    || { echo "apply-bpe changed the line count of $1.$2" >&2; return 1; }
}
for split in valid test; do
  for l in $SRC $TGT; do
    log "apply the model's BPE to $split.$l"
    done_or_run "$OUT/bpe/$split.$l" apply_bpe "$split" "$l"
  done
done

binarize() {
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --srcdict "$OUT/model/dict.en.txt" --tgtdict "$OUT/model/dict.fr.txt" \
    --validpref "$OUT/bpe/valid" --testpref "$OUT/bpe/test" \
    --destdir "$TMP_OUT" --workers "$JOBS" > "$OUT/preprocess.log" 2>&1 \
    || { cat "$OUT/preprocess.log" >&2; return 1; }
}
log "fairseq-preprocess (the model's dictionaries) -> $OUT/bin"
done_or_run "$OUT/bin" binarize
grep -h "replaced by <unk>" "$OUT/preprocess.log" | sed 's/^.*| INFO | fairseq_cli.preprocess | /  /' >&2 || true
log "done: $OUT/bin (valid $(wc -l < "$OUT/split/valid.$SRC") pairs = newstest2009-2012, test $(wc -l < "$OUT/split/test.$SRC") = newstest2013)"
[ -z "$ckpt" ] || log "model: $OUT/model/model.pt"
