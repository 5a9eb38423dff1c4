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

# moses_tokenize LANG LOWERCASE(0|1) ESCAPE(0|1) < in > out  (sacremoses = Moses tokenizer)
moses_tokenize() {
  local lang=$1 lower=$2 escape=$3 flags=""
  [ "$escape" = 1 ] && flags="-x"
  if [ "$lower" = 1 ]; then
    sacremoses -q -l "$lang" -j "${JOBS:-1}" tokenize $flags | python3 -c 'import sys
for line in sys.stdin: sys.stdout.write(line.lower())'
  else
    sacremoses -q -l "$lang" -j "${JOBS:-1}" tokenize $flags
  fi
}

# fetch URL OUT: download unless OUT exists (atomic)
fetch() {
  local url=$1 out=$2
  [ -e "$out" ] && { log "skip (have): $out"; return 0; }
  need curl
  log "downloading $url"
  curl -fsSL --retry 3 -o "$out.part" "$url" || { rm -f "$out.part"; die "download failed: $url (use the local-input option offline)"; }
  mv "$out.part" "$out"
}
