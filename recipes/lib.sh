# Shared helpers of the recipes that write a results gallery (sourced, not run).
NAME=$(basename "$0" .sh)
fail() { echo "$NAME.sh: error: $*" >&2; exit 1; }
# step "N/M name: what": starts a stage. Each stage's seconds go to $OUT/stage-times.tsv
# when it ends, also when the run stops half-way (EXIT trap), so a results folder built
# over several runs (every stage resumes) still knows what it cost.
STAGE="" STAGE_T0=0
stage_done() {
  [ -n "$STAGE" ] && [ -d "$OUT" ] && printf '%s\t%d\n' "$STAGE" $(( $(date +%s) - STAGE_T0 )) >> "$OUT/stage-times.tsv"
  STAGE=""
}
trap stage_done EXIT
step() {
  stage_done; STAGE=$(cut -d' ' -f2 <<< "$1"); STAGE=${STAGE%:}; STAGE_T0=$(date +%s)
  echo; echo "=== [$NAME] $*"
}
int() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] || fail "$1 '$2' is not a whole number >= 1"; }

# provenance FINDINGS ARGS EPOCHS: append how the results were made (command, run time
# of each stage summed over the runs that built them, training epochs, versions)
provenance() {
  stage_done; STAGE=$(cut -f1 "$OUT/stage-times.tsv" | tail -1); STAGE_T0=$(date +%s)
  {
    echo; echo "## How this was made"; echo
    echo "\`bash recipes/$NAME.sh $2\` (training: $3 epochs), on"
    # one interpreter for the CPU count and the versions (importing fairseq takes seconds);
    # the cores this process may use (nproc would print OMP_NUM_THREADS where it is set)
    local versions
    versions=$(python -c 'import os, fairseq, fairseq_headprune as p, torch
print(f"{len(os.sched_getaffinity(0))} CPU cores.")
print(f"fairseq-headprune {p.__version__},\nfairseq {fairseq.__version__},\ntorch {torch.__version__}.")')
    head -1 <<< "$versions"
    awk -F'\t' '$1 == "data" {runs++} {if (!($1 in s)) o[n++] = $1; s[$1] += $2; t += $2}
      END {printf "Run time, minutes per stage%s: ", (runs > 1 ? " (summed over the " runs " runs that built it; every stage resumes)" : "")
           for (i = 0; i < n; i++) printf "%s %.1f, ", o[i], s[o[i]] / 60
           printf "total %.1f.\n", t / 60}' "$OUT/stage-times.tsv"
    tail -n +2 <<< "$versions"
  } >> "$1"
}

# copy_gallery RES GALLERY: the report, findings, plots and results files (no
# checkpoints, no data), and the random-order curves
copy_gallery() {
  mkdir -p "$2"
  # (*.md: the commands' own tables, which a report of the gallery folder reads)
  cp "$1"/*.md "$1"/*.png "$1"/*.json "$1"/*.csv "$2"/
  rm -f "$2"/*.pt
  mkdir -p "$2/random" && cp "$1"/random/curve.* "$2/random/"
  echo "gallery: $2 ($(du -sh "$2" | cut -f1))"
}

# gallery_args ARGS...: the gallery recipes' options, into TINY OUT DATA_RAW EPOCHS DIM
# GALLERY (the caller sets the defaults and defines usage)
gallery_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --tiny) TINY=1; shift ;;
      --out) OUT=$2; shift 2 ;;
      --data) DATA_RAW=$2; shift 2 ;;
      --epochs) EPOCHS=$2; shift 2 ;;
      --dim) DIM=$2; shift 2 ;;
      --gallery) GALLERY=$2; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; echo "$NAME.sh: error: unknown option '$1'" >&2; exit 2 ;;
    esac
  done
  int --epochs "$EPOCHS"; int --dim "$DIM"
}
