"""Library functions over (model, batches): decoding, scoring, importance, pruning
orders, ablation. No argument parsing and no plotting here."""
