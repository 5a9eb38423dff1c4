#!/usr/bin/env bash
# BLEU before pruning, after physically removing heads, and after a short fine-tune.
#
#   recipes/prune-export-finetune.sh DATA CKPT OUT [RATIO=0.5] [UPDATES=200] [-- extra fairseq-train flags]
#
# 1. importance on the validation set (fairseq-headprune importance)
# 2. BLEU of CKPT on the test set (fairseq-generate)
# 3. export: the RATIO least important heads removed -> OUT/pruned.pt (+ .export.json)
# 4. BLEU of OUT/pruned.pt (no spec needed: the removals are in the checkpoint)
# 5. fairseq-train --finetune-from-model OUT/pruned.pt for UPDATES updates (the model is
#    built with the heads removed; the optimizer only sees the smaller parameters)
# 6. BLEU of the fine-tuned checkpoint; a summary in OUT/summary.txt
set -euo pipefail
DATA=$1; CKPT=$2; OUT=$3; RATIO=${4:-0.5}; UPDATES=${5:-200}
shift $(( $# < 5 ? $# : 5 )); [[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
HERE=$(cd "$(dirname "$0")/.." && pwd)
USER_DIR=(--user-dir "$HERE/fairseq_headprune" --task translation_headprune)
CPU=(); python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || CPU=(--cpu)
mkdir -p "$OUT"

bleu() {  # tokenized BLEU of fairseq-generate's output (the paper's metric)
  fairseq-generate "$DATA" --path "$1" --gen-subset test --beam 5 --remove-bpe \
    --max-tokens 4000 "${USER_DIR[@]}" "${CPU[@]}" 2>/dev/null \
    | tee "$2" | grep -oP 'BLEU4 = \K[0-9.]+'
}

fairseq-headprune importance "$DATA" --path "$CKPT" --results-dir "$OUT/importance" \
  --importance-subset valid --max-tokens 4000 "${CPU[@]}" >/dev/null
B0=$(bleu "$CKPT" "$OUT/gen.full.txt")
fairseq-headprune export "$DATA" --path "$CKPT" --prune-ratio "$RATIO" \
  --importance "$OUT/importance/importance.json" --out "$OUT/pruned.pt" | tee "$OUT/export.txt"
B1=$(bleu "$OUT/pruned.pt" "$OUT/gen.pruned.txt")

# fairseq-train builds the model from the command line: repeat the architecture.
mapfile -t ARCH < <(python - "$CKPT" <<'EOF'
import sys, torch, fairseq_headprune  # noqa: F401 (safe loading)
m = torch.load(sys.argv[1], map_location="cpu")["cfg"]["model"]
get = (lambda k: getattr(m, k, None)) if not isinstance(m, dict) else m.get
print("--arch"); print(get("arch") or get("_name"))
for k in ("encoder_layers", "decoder_layers", "encoder_embed_dim", "decoder_embed_dim",
          "encoder_ffn_embed_dim", "decoder_ffn_embed_dim", "encoder_attention_heads",
          "decoder_attention_heads", "dropout", "attention_dropout"):
    if get(k) is not None:
        print("--" + k.replace("_", "-")); print(get(k))
for k in ("share_decoder_input_output_embed", "share_all_embeddings"):
    if get(k):
        print("--" + k.replace("_", "-"))
EOF
)
fairseq-train "$DATA" "${USER_DIR[@]}" "${ARCH[@]}" --finetune-from-model "$OUT/pruned.pt" \
  --save-dir "$OUT/finetune" --max-update "$UPDATES" --optimizer adam --adam-betas "(0.9, 0.98)" \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 50 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 4000 \
  --no-epoch-checkpoints --no-progress-bar --log-interval 50 "${CPU[@]}" "${EXTRA[@]}" \
  > "$OUT/finetune.log" 2>&1
grep -m1 "num. shared model params" "$OUT/finetune.log" | sed 's/.*| //'
B2=$(bleu "$OUT/finetune/checkpoint_last.pt" "$OUT/gen.finetuned.txt")

{
  echo "BLEU (test, beam 5, tokenized):"
  echo "  full model:                      $B0"
  echo "  $RATIO of heads removed:             $B1"
  echo "  after $UPDATES fine-tuning updates:    $B2"
} | tee "$OUT/summary.txt"
