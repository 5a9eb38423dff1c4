#!/usr/bin/env bash
# MTNT (Michel & Neubig 2018) en->fr test set, the paper's out-of-domain set for the WMT
# model (§3.4): tokenized like newstest in prepare-wmt14-en-fr.sh (U+2019 -> ', sacremoses
# -a with escaping, no lowercasing), BPE with the WMT model's bpecodes, binarized with its
# dictionaries and added as an extra subset (default test1) to prepare-wmt14-en-fr.sh's bin
# folder, so that `fairseq-headprune ablate --gen-subset test,test1` compares newstest2013
# with MTNT.
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
Input (default: download $URL,
checked against the md5 in sacrebleu's registry when sacrebleu is installed):
  --local PATH          offline copy: MTNT.1.1.tar.gz (or a folder holding it), the extracted
                        MTNT/ folder, a folder with test.en-fr.tsv (or MTNT/test/test.en-fr.tsv),
                        the tsv itself (columns: id, source, target), or a folder with plain
                        untokenized test.en + test.fr
Options:
  --wmt DIR             output folder of prepare-wmt14-en-fr.sh (default: data/wmt14.en-fr):
                        its model/{bpecodes,dict.en.txt,dict.fr.txt} are used and the subset
                        is added to DIR/bin
  --subset NAME         name of the subset in DIR/bin (default: test1)
  --out DIR             working folder (default: data/mtnt.en-fr): raw, tokenized (the
                        references for tokenized BLEU: OUT/tok/test.fr), BPE, OUT/bin
  --max-test N          keep only the first N pairs (smoke tests; default all)
  --workers N           processes (default 1)
  -h, --help            this help
Every step writes a temporary file and renames it when complete: re-running skips finished
steps; other options refuse (OUT/options); an existing subset in the WMT bin folder that
differs from this one is never overwritten.
EOF
}
URL=https://github.com/pmichel31415/mtnt/releases/download/v1.1/MTNT.1.1.tar.gz
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

LOCAL="" WMT=data/wmt14.en-fr SUBSET=test1 OUT="" MAX_TEST=0 JOBS=1
while [ $# -gt 0 ]; do
  case $1 in
    --local) LOCAL=${2:?--local needs a path}; shift 2 ;;
    --wmt) WMT=${2:?}; shift 2 ;;
    --subset) SUBSET=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --max-test) MAX_TEST=${2:?}; shift 2 ;;
    --workers) JOBS=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
for n in "$MAX_TEST" "$JOBS"; do [[ $n =~ ^[0-9]+$ ]] || die "expected a number, got '$n'"; done
[[ $SUBSET =~ ^[A-Za-z][A-Za-z0-9_]*$ ]] || die "--subset must be a plain name like test1 (got '$SUBSET')"
need python3 subword-nmt fairseq-preprocess
for f in model/bpecodes model/dict.en.txt model/dict.fr.txt bin/dict.en.txt bin/dict.fr.txt; do
  [ -f "$WMT/$f" ] || die "missing $WMT/$f: run prepare-wmt14-en-fr.sh first (or point --wmt at its --out)"
done
for l in en fr; do
  cmp -s "$WMT/model/dict.$l.txt" "$WMT/bin/dict.$l.txt" || die "$WMT/bin/dict.$l.txt is not the model's dictionary"
done
OUT=${OUT:-data/mtnt.en-fr}
mkdir -p "$OUT"
export JOBS
SRC=en TGT=fr
check_options "$OUT" "wmt=$(cd "$WMT" && pwd) subset=$SUBSET tok=moses-a-escape max_test=$MAX_TEST"
clean_stale_tmp "$OUT"
clean_stale_tmp "$WMT/bin"

# ---- find or fetch the data ----
TSV="" PLAIN="" TARBALL=""
if [ -n "$LOCAL" ]; then
  if [ -f "$LOCAL" ]; then
    case $LOCAL in *.tar.gz|*.tgz) TARBALL=$LOCAL ;; *) TSV=$LOCAL ;; esac
  elif [ -f "$LOCAL/test.en" ] && [ -f "$LOCAL/test.fr" ]; then PLAIN=$LOCAL
  else
    for c in test.en-fr.tsv test/test.en-fr.tsv MTNT/test/test.en-fr.tsv; do
      [ -f "$LOCAL/$c" ] && { TSV=$LOCAL/$c; break; }
    done
    [ -n "$TSV" ] || { [ -f "$LOCAL/MTNT.1.1.tar.gz" ] && TARBALL=$LOCAL/MTNT.1.1.tar.gz; }
    [ -n "$TSV$TARBALL" ] || die "missing $LOCAL/test.en-fr.tsv: --local expects MTNT.1.1.tar.gz, the MTNT/ folder, test.en-fr.tsv (id, source, target) or test.en + test.fr"
  fi
else
  mkdir -p "$OUT/orig"
  TARBALL=$OUT/orig/MTNT.1.1.tar.gz
  fetch "$URL" "$TARBALL"
  md5=$(python3 -c 'from sacrebleu.dataset import DATASETS; print(DATASETS["mtnt1.1/test"].md5[0])' 2>/dev/null || true)
  if [ -n "$md5" ]; then
    [ "$(md5sum < "$TARBALL" | cut -d' ' -f1)" = "$md5" ] \
      || die "$TARBALL: md5 differs from sacrebleu's ($md5): delete it and retry"
    log "md5 ok ($md5)"
  else
    log "warning: sacrebleu not importable, md5 of $TARBALL not checked"
  fi
fi
if [ -n "$TARBALL" ]; then
  extract() { mkdir -p "$TMP_OUT" && tar -xzf "$TARBALL" -C "$TMP_OUT"; }
  mkdir -p "$OUT/orig"
  log "extract $TARBALL"
  done_or_run "$OUT/orig/extracted" extract
  TSV=$(find "$OUT/orig/extracted" -path '*test/test.en-fr.tsv' -type f | head -n 1)
  [ -n "$TSV" ] || die "no test/test.en-fr.tsv in $TARBALL"
fi

mkdir -p "$OUT/raw" "$OUT/tok" "$OUT/bpe"
if [ -n "$TSV" ]; then
  log "input: $TSV"
  tsv_step() {  # MTNT tsv: id <tab> source <tab> target (sacrebleu reads fields 1 and 2 too)
    mkdir -p "$TMP_OUT" && python3 - "$TSV" "$TMP_OUT" "$MAX_TEST" <<'PY'
import sys
path, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(path, "rb").read().decode("utf-8").split("\n")
if lines[-1] == "":
    lines.pop()
src, tgt = [], []
for i, line in enumerate(lines, 1):
    fields = line.split("\t")
    if len(fields) < 3:
        sys.exit(f"{path}:{i}: {len(fields)} tab-separated fields, expected id, source, target")
    src.append(fields[1])
    tgt.append(fields[2])
if n:
    src, tgt = src[:n], tgt[:n]
for name, col in (("test.en", src), ("test.fr", tgt)):
    with open(f"{out}/{name}", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(s + "\n" for s in col)
PY
  }
  done_or_run "$OUT/raw/tsv" tsv_step
  RAW=$OUT/raw/tsv
else
  log "input: $PLAIN/test.{en,fr}"
  same_lines "$PLAIN/test.en" "$PLAIN/test.fr" "--local"
  plain_step() { first_lines "$MAX_TEST" < "$PLAIN/test.$1" > "$TMP_OUT"; }
  for l in $SRC $TGT; do done_or_run "$OUT/raw/test.$l" plain_step "$l"; done
  RAW=$OUT/raw
fi
same_lines "$RAW/test.$SRC" "$RAW/test.$TGT" "MTNT"
[ -s "$RAW/test.$SRC" ] || die "$RAW/test.$SRC is empty"

# ---- tokenization and BPE as prepare-wmt14-en-fr.sh ----
tok_step() { LC_ALL=C sed -e "s/’/'/g" "$RAW/test.$1" | moses_tok "$1" 0 1 1 > "$TMP_OUT"; }
apply_bpe() {
  subword-nmt apply-bpe -c "$WMT/model/bpecodes" --num-workers "$JOBS" \
    --input "$OUT/tok/test.$1" --output "$TMP_OUT" || return 1
  [ "$(wc -l < "$TMP_OUT")" -eq "$(wc -l < "$OUT/tok/test.$1")" ] \
    || { echo "apply-bpe changed the line count of test.$1" >&2; return 1; }
}
for l in $SRC $TGT; do
  log "tokenize test.$l"
  done_or_run "$OUT/tok/test.$l" tok_step "$l"
  log "apply the WMT model's BPE to test.$l"
  done_or_run "$OUT/bpe/test.$l" apply_bpe "$l"
done

binarize() {
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --srcdict "$WMT/model/dict.en.txt" --tgtdict "$WMT/model/dict.fr.txt" \
    --testpref "$OUT/bpe/test" --destdir "$TMP_OUT" --workers "$JOBS" > "$OUT/preprocess.log" 2>&1 \
    || { cat "$OUT/preprocess.log" >&2; return 1; }
}
log "fairseq-preprocess (the WMT model's dictionaries) -> $OUT/bin"
done_or_run "$OUT/bin" binarize

# ---- add to the WMT bin folder as $SUBSET (file by file, each atomic; never overwrite) ----
for l in $SRC $TGT; do
  for ext in bin idx; do
    src=$OUT/bin/test.$SRC-$TGT.$l.$ext dst=$WMT/bin/$SUBSET.$SRC-$TGT.$l.$ext
    if [ -e "$dst" ]; then
      cmp -s "$src" "$dst" || die "$dst exists and is not this MTNT set: choose another --subset or delete it"
      log "skip (done): $dst"
    else
      cp "$src" "$dst.tmp.$$" && mv "$dst.tmp.$$" "$dst" || { rm -f "$dst.tmp.$$"; die "could not write $dst"; }
    fi
  done
done
log "done: $WMT/bin/$SUBSET = MTNT en-fr test ($(wc -l < "$OUT/tok/test.$SRC") pairs); references $OUT/tok/test.$TGT"
