from .head_model import (  # noqa: F401
    attention_modules,
    install_head_attention,
    masked_heads,
    model_head_shape,
    parameter_counts,
    remove_heads,
    removed_heads,
    set_head_mask,
    set_head_mask_values,
)
