# Shared helpers of the recipes that write a results gallery (sourced, not run).
NAME=$(basename "$0" .sh)
fail() { echo "$NAME.sh: error: $*" >&2; exit 1; }
step() { echo; echo "=== [$NAME] $*"; }
int() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] || fail "$1 '$2' is not a whole number >= 1"; }

# provenance FINDINGS ARGS T0 EPOCHS: append how the results were made (command, run
# time, training epochs, versions) to FINDINGS
provenance() {
  local seconds=$(( $(date +%s) - $3 ))
  {
    echo; echo "## How this was made"; echo
    echo "\`bash recipes/$NAME.sh $2\` ($seconds s in this run, resumed stages excluded;"
    echo "training: $4 epochs)."
    echo "fairseq-headprune $(python -c 'import fairseq_headprune as p; print(p.__version__)'),"
    echo "fairseq $(python -c 'import fairseq; print(fairseq.__version__)'),"
    echo "torch $(python -c 'import torch; print(torch.__version__)'), $(nproc) CPU cores."
  } >> "$1"
}

# copy_gallery RES GALLERY: the report, findings, plots and results files (no
# checkpoints, no data), and the random-order curves
copy_gallery() {
  mkdir -p "$2"
  cp "$1"/report.md "$1"/findings.md "$1"/*.png "$1"/*.json "$1"/*.csv "$2"/
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
