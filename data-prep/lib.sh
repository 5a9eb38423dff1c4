# Shared helpers for the data-prep scripts (sourced, not run).
# Every step writes to a temporary name and renames it when complete, so an
# interrupted run leaves no half-written output and a re-run skips finished steps.

set -euo pipefail

log() { echo "[$(basename "$0")] $*" >&2; }
die() { echo "[$(basename "$0")] error: $*" >&2; exit 1; }

need() {  # need COMMAND...: fail early with the package that provides it
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "command '$c' not found (pip install -e . installs it)"
  done
}

# done_or_run OUTPUT CMD...: run CMD with $TMP_OUT as its output path unless OUTPUT exists.
done_or_run() {
  local out=$1; shift
  if [ -e "$out" ]; then log "skip (done): $out"; return 0; fi
  local tmp="$out.tmp.$$"
  rm -rf "$tmp"
  TMP_OUT="$tmp" "$@" || { rm -rf "$tmp"; die "step failed: $out"; }
  mv "$tmp" "$out"
}

# read_text IN: print a text file, gunzipping .gz
read_text() { case "$1" in *.gz) gzip -dc "$1" ;; *) cat "$1" ;; esac; }

# fetch URL OUT: download unless OUT exists (atomic)
fetch() {
  local url=$1 out=$2
  [ -e "$out" ] && { log "skip (have): $out"; return 0; }
  need curl
  log "downloading $url"
  curl -fsSL --retry 3 -o "$out.part" "$url" || { rm -f "$out.part"; die "download failed: $url (use the local-input option offline)"; }
  mv "$out.part" "$out"
}

# ---- helpers added for prepare-iwslt14.sh / prepare-wmt14-en-fr.sh / prepare-mtnt.sh ----

# moses_tok LANG LOWERCASE(0|1) ESCAPE(0|1) DASH_SPLITS(0|1) < in > out
# sacremoses' MosesTokenizer (= tokenizer.perl [-a] [-no-escape]) called from Python, so that
# ESCAPE=0 really turns escaping off and DASH_SPLITS=1 is tokenizer.perl -a. Unlike the
# sacremoses CLI (which reads stdin with universal newlines, so a stray \r splits a line and
# misaligns a parallel corpus), lines are split on \n only: N lines in, N lines out
# (a \r is whitespace to the tokenizer, as to tokenizer.perl). $JOBS processes.
MOSES_TOK_PY='
import sys
from sacremoses import MosesTokenizer
lang, lower, escape, dash, jobs = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4] == "1", int(sys.argv[5])
tok = MosesTokenizer(lang=lang)
def f(line):
    s = tok.tokenize(line, return_str=True, escape=escape, aggressive_dash_splits=dash)
    return s.lower() if lower else s
raw = sys.stdin.buffer.read()
try:
    text = raw.decode("utf-8")
except UnicodeDecodeError as e:
    sys.exit("moses_tok: input is not UTF-8 (byte %d: %r)" % (e.start, raw[max(0, e.start - 20):e.start + 5]))
lines = text.split("\n")
if lines[-1] == "":
    lines.pop()
if jobs > 1 and len(lines) > 2000:
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        out = pool.map(f, lines, chunksize=max(1, len(lines) // (8 * jobs)))
else:
    out = [f(line) for line in lines]
sys.stdout.buffer.write("".join(s + "\n" for s in out).encode("utf-8"))
'
moses_tok() {
  python3 -c "$MOSES_TOK_PY" "$1" "$2" "$3" "$4" "${JOBS:-1}"
}

# check_options OUT "OPTS": finished steps in OUT are reused only for the same options.
check_options() {
  local out=$1 opts=$2
  if [ -f "$out/options" ] && [ "$(cat "$out/options")" != "$opts" ]; then
    die "$out was prepared with other options ($(cat "$out/options")); now: $opts. Use another --out or delete it"
  fi
  [ -f "$out/options" ] || { echo "$opts" > "$out/options.tmp.$$" && mv "$out/options.tmp.$$" "$out/options"; }
}

# clean_stale_tmp DIR: remove the *.tmp.PID / *.part leftovers of a killed run (done_or_run
# only removes its own), so that nothing half-written survives into this run.
clean_stale_tmp() {
  local f
  while IFS= read -r -d '' f; do
    log "remove leftover of an interrupted run: $f"; rm -rf "$f"
  done < <(find "$1" -depth \( -name '*.tmp.[0-9]*' -o -name '*.part' \) -print0 2>/dev/null)
}

# same_lines FILE_A FILE_B WHAT: die unless both files have the same number of lines
same_lines() {
  local a b
  a=$(wc -l < "$1"); b=$(wc -l < "$2")
  [ "$a" -eq "$b" ] || die "$3: $1 has $a lines but $2 has $b (parallel files must match)"
}

# first_lines N: the first N lines of stdin (all when N is 0); reads everything (no SIGPIPE)
first_lines() {
  if [ "$1" -gt 0 ]; then awk -v n="$1" 'NR <= n'; else cat; fi
}
