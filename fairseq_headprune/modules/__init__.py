from .head_attention import HeadMaskedMultiheadAttention, prune_linear  # noqa: F401
