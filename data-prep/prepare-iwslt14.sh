#!/usr/bin/env bash
# IWSLT14 de-en as fairseq's examples/translation/prepare-iwslt14.sh prepares it (the
# paper's IWSLT setup, §6): WIT3 tag cleaning, Moses tokenization (sacremoses, escaping on,
# as tokenizer.perl's default), lowercasing, clean-corpus-n (ratio 1.5, 1-175 tokens),
# every 23rd training pair to valid, joint BPE (subword-nmt, 10k merges, one code file for
# both languages), fairseq-preprocess with separate dictionaries (transformer_iwslt_de_en).
usage() {
  cat <<EOF
usage: $(basename "$0") [options]
Input (default: download $URL):
  --local PATH          offline copy of the WIT3 release: the extracted de-en/ folder
                        (train.tags.de-en.{de,en}, IWSLT14.TED*.de-en.{de,en}.xml), the
                        de-en.tgz file, or a folder holding de-en.tgz
  --local-tok DIR       start after tokenization: DIR/{train,valid,test}.{de,en} already
                        tokenized, lowercased, cleaned and split (what fairseq's script leaves
                        in iwslt14.tokenized.de-en/tmp); only BPE and binarization are run
Options:
  --out DIR             output folder (default: data/iwslt14.de-en); binarized data in DIR/bin
  --src L / --tgt L     translation direction for fairseq-preprocess (default de -> en)
  --bpe-merges N        BPE merge operations (default 10000, as fairseq)
  --joined-dictionary   one dictionary for both languages (fairseq's IWSLT example and the
                        paper's transformer_iwslt_de_en use separate ones: the default)
  --dash-splits         tokenizer.perl -a (split hyphens as @-@). fairseq's script does not;
                        the shared ../shared/data/iwslt14-test was tokenized with it
  --max-train N         keep only the first N training pairs after cleaning/splitting (default all)
  --max-test N          keep only the first N pairs of valid and of test (default all)
  --workers N           processes (default 1)
  -h, --help            this help
Outputs: DIR/split/{train,valid,test}.{de,en} (tokenized text before BPE: the references for
tokenized BLEU), DIR/code (BPE codes), DIR/bpe/*, DIR/bin (fairseq-preprocess).
Splits: train/valid = train.tags minus/every 23rd cleaned pair; test = IWSLT14.TED.dev2010
+ IWSLT14.TEDX.dev2012 + IWSLT14.TED.tst2010 + tst2011 + tst2012 (6,750 pairs), in that order.
Every step writes a temporary file and renames it when complete: re-running skips finished
steps; a re-run with other options refuses (DIR/options) instead of mixing outputs.
Offline test without the real data: tests/test_data_prep.py builds a tiny WIT3-format
folder for --local and a tokenized folder for --local-tok.
EOF
}
URL=http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

SRC=de TGT=en LOCAL="" LOCAL_TOK="" OUT="" MERGES=10000 MAX_TRAIN=0 MAX_TEST=0 JOINED=0 DASH=0 JOBS=1
while [ $# -gt 0 ]; do
  case $1 in
    --local) LOCAL=${2:?--local needs a path}; shift 2 ;;
    --local-tok) LOCAL_TOK=${2:?--local-tok needs a folder}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --src) SRC=${2:?}; shift 2 ;;
    --tgt) TGT=${2:?}; shift 2 ;;
    --bpe-merges) MERGES=${2:?}; shift 2 ;;
    --joined-dictionary) JOINED=1; shift ;;
    --dash-splits) DASH=1; shift ;;
    --max-train) MAX_TRAIN=${2:?}; shift 2 ;;
    --max-test) MAX_TEST=${2:?}; shift 2 ;;
    --workers) JOBS=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
case "$SRC-$TGT" in de-en|en-de) ;; *) die "--src/--tgt must be de and en (got '$SRC' -> '$TGT')" ;; esac
for n in "$MERGES" "$MAX_TRAIN" "$MAX_TEST" "$JOBS"; do
  [[ $n =~ ^[0-9]+$ ]] || die "expected a number, got '$n'"
done
[ -z "$LOCAL" ] || [ -z "$LOCAL_TOK" ] || die "--local and --local-tok exclude each other"
need python3 subword-nmt fairseq-preprocess
OUT=${OUT:-data/iwslt14.de-en}
mkdir -p "$OUT"
export JOBS
input=raw; [ -n "$LOCAL_TOK" ] && input=tokenized
check_options "$OUT" "input=$input src=$SRC tgt=$TGT merges=$MERGES joined=$JOINED dash=$DASH max_train=$MAX_TRAIN max_test=$MAX_TEST"
clean_stale_tmp "$OUT"
LANGS="de en"
TESTSETS="IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011 IWSLT14.TED.tst2012"
mkdir -p "$OUT/split"

if [ "$input" = tokenized ]; then
  # ---- already tokenized text: copy (and cut) into split/ ----
  for split in train valid test; do
    for l in $LANGS; do
      [ -f "$LOCAL_TOK/$split.$l" ] || die "missing $LOCAL_TOK/$split.$l: --local-tok expects {train,valid,test}.{de,en}, tokenized, lowercased and split"
    done
    same_lines "$LOCAL_TOK/$split.de" "$LOCAL_TOK/$split.en" "--local-tok $split"
    n=$MAX_TEST; [ "$split" = train ] && n=$MAX_TRAIN
    for l in $LANGS; do
      copy_step() { first_lines "$2" < "$1" > "$TMP_OUT"; }
      log "copy $LOCAL_TOK/$split.$l"
      done_or_run "$OUT/split/$split.$l" copy_step "$LOCAL_TOK/$split.$l" "$n"
    done
  done
else
  # ---- the WIT3 release: find or fetch/extract it ----
  ORIG=""
  if [ -n "$LOCAL" ]; then
    if [ -d "$LOCAL" ] && [ -f "$LOCAL/train.tags.de-en.de" ]; then ORIG=$LOCAL
    elif [ -d "$LOCAL" ] && [ -f "$LOCAL/de-en/train.tags.de-en.de" ]; then ORIG=$LOCAL/de-en
    elif [ -d "$LOCAL" ] && [ -f "$LOCAL/de-en.tgz" ]; then TGZ=$LOCAL/de-en.tgz
    elif [ -f "$LOCAL" ]; then TGZ=$LOCAL
    else die "missing $LOCAL/train.tags.de-en.de: --local expects the extracted de-en/ folder of de-en.tgz, the tgz, or a folder holding de-en.tgz"
    fi
  else
    mkdir -p "$OUT/orig"
    TGZ=$OUT/orig/de-en.tgz
    fetch "$URL" "$TGZ"
  fi
  if [ -z "$ORIG" ]; then
    extract_step() {
      mkdir -p "$TMP_OUT" && tar -xzf "$TGZ" -C "$TMP_OUT" || return 1
      [ -f "$TMP_OUT/de-en/train.tags.de-en.de" ] || { echo "no de-en/train.tags.de-en.de in $TGZ" >&2; return 1; }
    }
    mkdir -p "$OUT/orig"
    log "extract $TGZ"
    done_or_run "$OUT/orig/extracted" extract_step
    ORIG=$OUT/orig/extracted/de-en
  fi
  for l in $LANGS; do
    [ -f "$ORIG/train.tags.de-en.$l" ] || die "missing $ORIG/train.tags.de-en.$l: expected the WIT3 IWSLT14 de-en release"
    for t in $TESTSETS; do
      [ -f "$ORIG/$t.de-en.$l.xml" ] || die "missing $ORIG/$t.de-en.$l.xml: expected the WIT3 IWSLT14 de-en release"
    done
  done
  log "input: $ORIG"

  # ---- tokenization (tokenizer.perl -l L [-a], escaping on; lowercase.perl) ----
  mkdir -p "$OUT/tok"
  # fairseq: drop <url>/<talkid>/<keywords> lines, keep <title>/<description> text without tags.
  # Lowercasing here instead of after clean-corpus-n gives the same lines: it changes no
  # whitespace, no '|' and no token count.
  train_tok() {
    LC_ALL=C grep -a -v '<url>' "$ORIG/train.tags.de-en.$1" | LC_ALL=C grep -a -v '<talkid>' \
      | LC_ALL=C grep -a -v '<keywords>' \
      | LC_ALL=C sed -e 's/<title>//g' -e 's/<\/title>//g' -e 's/<description>//g' -e 's/<\/description>//g' \
      | moses_tok "$1" 1 1 "$DASH" > "$TMP_OUT"
  }
  # fairseq: keep the <seg id> lines, strip the tags, map U+2019 to an apostrophe
  xml_tok() {
    LC_ALL=C grep -a '<seg id' "$ORIG/$2.de-en.$1.xml" \
      | LC_ALL=C sed -e 's/<seg id="[0-9]*">\s*//g' -e 's/\s*<\/seg>\s*//g' -e "s/’/'/g" \
      | moses_tok "$1" 1 1 "$DASH" > "$TMP_OUT"
  }
  for l in $LANGS; do
    log "tokenize train.tags.de-en.$l"
    done_or_run "$OUT/tok/train.tags.$l" train_tok "$l"
    for t in $TESTSETS; do
      log "tokenize $t.de-en.$l.xml"
      done_or_run "$OUT/tok/$t.$l" xml_tok "$l" "$t"
    done
  done
  for t in $TESTSETS; do same_lines "$OUT/tok/$t.de" "$OUT/tok/$t.en" "$t (<seg> counts differ)"; done
  same_lines "$OUT/tok/train.tags.de" "$OUT/tok/train.tags.en" "train.tags (after removing tag lines)"

  # ---- clean-corpus-n.perl -ratio 1.5 CORPUS de en CLEAN 1 175, in Python ----
  clean_step() {
    mkdir -p "$TMP_OUT" && python3 - "$OUT/tok/train.tags.de" "$OUT/tok/train.tags.en" \
      "$TMP_OUT/train.de" "$TMP_OUT/train.en" 1.5 1 175 <<'PY'
# Moses scripts/training/clean-corpus-n.perl (defaults: max word length 1000, no -lc),
# line for line: whitespace collapsed and trimmed, '|' removed unless the first line looks
# factored, empty pairs dropped, token counts within [min, max], ratio both ways.
import re, sys
fin, ein, fout, eout = sys.argv[1:5]
ratio, lo, hi = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
def lines(path):
    data = open(path, "rb").read().decode("utf-8").split("\n")
    if data[-1] == "":
        data.pop()
    return data
F, E = lines(fin), lines(ein)
if len(F) != len(E):
    sys.exit(f"clean: {fin} has {len(F)} lines, {ein} has {len(E)}")
ws, long_word = re.compile(r"\s+"), re.compile(r"[^\s|]{1001}")
factored = bool(F) and ("|" in F[0] or "|" in E[0])
def norm(s):
    if not factored:
        s = s.replace("|", "")
    s = ws.sub(" ", s)
    s = s[1:] if s.startswith(" ") else s
    return s[:-1] if s.endswith(" ") else s
kept = []
for f, e in zip(F, E):
    f, e = norm(f), norm(e)
    if not f or not e:
        continue
    fc, ec = len(f.split(" ")), len(e.split(" "))
    if ec > hi or fc > hi or ec < lo or fc < lo or ec / fc > ratio or fc / ec > ratio:
        continue
    if long_word.search(e) or long_word.search(f):
        continue
    kept.append((f, e))
with open(fout, "w", encoding="utf-8", newline="\n") as fo, open(eout, "w", encoding="utf-8", newline="\n") as eo:
    for f, e in kept:
        fo.write(f + "\n")
        eo.write(e + "\n")
print(f"clean-corpus-n: input sentences: {len(F)}  output sentences: {len(kept)}", file=sys.stderr)
PY
  }
  log "clean (ratio 1.5, 1-175 tokens)"
  done_or_run "$OUT/tok/clean" clean_step

  # ---- train/valid/test ----
  train_split() { awk 'NR % 23 != 0' "$OUT/tok/clean/train.$1" | first_lines "$MAX_TRAIN" > "$TMP_OUT"; }
  valid_split() { awk 'NR % 23 == 0' "$OUT/tok/clean/train.$1" | first_lines "$MAX_TEST" > "$TMP_OUT"; }
  test_split() {
    local t
    for t in $TESTSETS; do cat "$OUT/tok/$t.$1"; done | first_lines "$MAX_TEST" > "$TMP_OUT"
  }
  for l in $LANGS; do
    log "split train/valid/test .$l"
    done_or_run "$OUT/split/train.$l" train_split "$l"
    done_or_run "$OUT/split/valid.$l" valid_split "$l"
    done_or_run "$OUT/split/test.$l" test_split "$l"
  done
fi
for split in train valid test; do
  same_lines "$OUT/split/$split.de" "$OUT/split/$split.en" "split $split"
  [ -s "$OUT/split/$split.de" ] || die "$OUT/split/$split.de is empty"
done

# ---- BPE: learn on train.de + train.en together (one code file), apply to each ----
learn_bpe() { cat "$OUT/split/train.de" "$OUT/split/train.en" | subword-nmt learn-bpe -s "$MERGES" > "$TMP_OUT"; }
log "learn BPE ($MERGES merges) on train.de + train.en"
done_or_run "$OUT/code" learn_bpe
mkdir -p "$OUT/bpe"
apply_bpe() {  # apply_bpe SPLIT LANG
  subword-nmt apply-bpe -c "$OUT/code" --num-workers "$JOBS" \
    --input "$OUT/split/$1.$2" --output "$TMP_OUT" || return 1
  [ "$(wc -l < "$TMP_OUT")" -eq "$(wc -l < "$OUT/split/$1.$2")" ] \
    || { echo "apply-bpe changed the line count of $1.$2" >&2; return 1; }
}
for split in train valid test; do
  for l in $LANGS; do
    log "apply BPE to $split.$l"
    done_or_run "$OUT/bpe/$split.$l" apply_bpe "$split" "$l"
  done
done

binarize() {
  local joined=(); [ "$JOINED" = 1 ] && joined=(--joined-dictionary)
  fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$OUT/bpe/train" --validpref "$OUT/bpe/valid" --testpref "$OUT/bpe/test" \
    --destdir "$TMP_OUT" "${joined[@]}" --workers "$JOBS" > "$OUT/preprocess.log" 2>&1 \
    || { cat "$OUT/preprocess.log" >&2; return 1; }
}
log "fairseq-preprocess $SRC -> $TGT -> $OUT/bin"
done_or_run "$OUT/bin" binarize
log "done: $OUT/bin (train $(wc -l < "$OUT/split/train.$SRC"), valid $(wc -l < "$OUT/split/valid.$SRC"), test $(wc -l < "$OUT/split/test.$SRC") pairs)"
