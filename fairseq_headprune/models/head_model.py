"""Apply head sets to a whole fairseq Transformer: install the head-aware attention,
mask, remove, count parameters, and record removals in the model config.

A model's attention modules are addressed as (kind, layer), 1-based:
``E`` = ``encoder.layers[i].self_attn``, ``D`` = ``decoder.layers[i].self_attn``,
``A`` = ``decoder.layers[i].encoder_attn``.
"""

import contextlib
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import KINDS, HeadSet, Shape
from ..modules.head_attention import HeadMaskedMultiheadAttention

# Name of the model-config attribute that lists removed heads (a spec string).
PRUNED_HEADS_KEY = "pruned_heads"


def unwrap_model(model):
    """The fairseq model inside data-parallel or other wrappers."""
    while not hasattr(model, "decoder") and hasattr(model, "module"):
        model = model.module
    return model


def _stock_attention_modules(model) -> "OrderedDict[Tuple[str, int], torch.nn.Module]":
    model = unwrap_model(model)
    found: "OrderedDict[Tuple[str, int], torch.nn.Module]" = OrderedDict()
    encoder = getattr(model, "encoder", None)
    # RoBERTa-style encoders keep their layers one level down
    encoder = getattr(encoder, "sentence_encoder", encoder)
    decoder = getattr(model, "decoder", None)
    for i, layer in enumerate(getattr(encoder, "layers", None) or []):
        found[("E", i + 1)] = layer.self_attn
    dec_layers = list(getattr(decoder, "layers", None) or [])
    for i, layer in enumerate(dec_layers):
        if getattr(layer, "encoder_attn", None) is not None:
            found[("A", i + 1)] = layer.encoder_attn
    for i, layer in enumerate(dec_layers):
        found[("D", i + 1)] = layer.self_attn
    if not found:
        raise HeadPruneError(
            f"{type(model).__name__} has no encoder/decoder attention layers "
            f"(allowed: fairseq transformer models)"
        )
    return found


@contextlib.contextmanager
def generation_mode(model, need_attn: bool = False):
    """Decoder layers compute attention weights only where fairseq-generate would: its
    ``prepare_for_inference_`` sets every layer's ``need_attn`` to --print-alignment
    (False), so only the alignment layer, which the decoder asks explicitly, returns
    weights. Without this every layer averages its encoder-decoder weights at every
    step for nothing. Restored on exit (fairseq-train's model keeps training)."""
    layers = [m for m in unwrap_model(model).modules() if hasattr(m, "need_attn")
              and hasattr(m, "encoder_attn")]
    saved = [m.need_attn for m in layers]
    for m in layers:
        m.need_attn = need_attn
    try:
        yield model
    finally:
        for m, v in zip(layers, saved):
            m.need_attn = v


def install_head_attention(model):
    """Make every E/A/D attention module a HeadMaskedMultiheadAttention (in place)."""
    for (kind, layer), module in _stock_attention_modules(model).items():
        HeadMaskedMultiheadAttention.convert(module, kind, layer)
    return model


def attention_modules(
    model,
) -> "OrderedDict[Tuple[str, int], HeadMaskedMultiheadAttention]":
    """(kind, layer) -> module, in order E, A, D, layers ascending."""
    mods = _stock_attention_modules(model)
    ordered = OrderedDict((key, mods[key]) for k in KINDS for key in mods if key[0] == k)
    for module in ordered.values():
        if not isinstance(module, HeadMaskedMultiheadAttention):
            raise HeadPruneError(
                "this model's attention has no head masks; build it under "
                "--task translation_headprune or call install_head_attention(model)"
            )
    return ordered


def model_head_shape(model) -> Shape:
    """{kind: [original number of heads per layer]} for the kinds the model has."""
    shape: Shape = {}
    for (kind, _), module in attention_modules(model).items():
        shape.setdefault(kind, []).append(module.orig_num_heads)
    return shape


def set_head_mask(model, heads: Optional[HeadSet]):
    """Mask exactly ``heads`` (replacing any earlier mask); None or empty clears."""
    if heads:
        heads.validate(model_head_shape(model), "head mask")
    for (kind, layer), module in attention_modules(model).items():
        module.set_row_mask(None)
        masked = heads.of(kind, layer) if heads else []
        if not masked:
            module.set_head_mask(None)
            continue
        mask = torch.ones(module.orig_num_heads)
        mask[[h - 1 for h in masked]] = 0.0
        module.set_head_mask(mask)


def set_row_masks(model, masks: Optional[Sequence[HeadSet]], sentences: int = 1):
    """One head mask per copy of a batch of ``sentences`` sentences repeated
    ``len(masks)`` times (copy c at rows c*sentences...; ``decoding.tile``). Modules
    that all copies mask alike get an ordinary mask (zero cost for 0/1 masks); the
    others a row mask. None clears every mask."""
    mods = attention_modules(model)
    if not masks:
        for module in mods.values():
            module.set_row_mask(None)
            module.set_head_mask(None)
        return
    shape = model_head_shape(model)
    for m in masks:
        m.validate(shape, "head mask")
    for (kind, layer), module in mods.items():
        rows = torch.ones(len(masks), module.orig_num_heads)
        for c, m in enumerate(masks):
            masked = m.of(kind, layer)
            if masked:
                rows[c, [h - 1 for h in masked]] = 0.0
        if bool((rows == rows[0]).all()):
            module.set_row_mask(None)
            module.set_head_mask(None if bool(rows[0].all()) else rows[0])
        else:
            module.set_head_mask(None)
            module.set_row_mask(rows.repeat_interleave(sentences, dim=0))


def set_head_mask_values(model, values: Dict[str, torch.Tensor]):
    """Continuous masks: ``values[kind]`` is [layers, heads] of ξ values."""
    for (kind, layer), module in attention_modules(model).items():
        if kind in values:
            module.set_head_mask(values[kind][layer - 1])


def masked_heads(model) -> HeadSet:
    heads = []
    for (kind, layer), module in attention_modules(model).items():
        if module.head_mask is not None:
            heads += [(kind, layer, h + 1) for h, v in enumerate(module.head_mask.tolist())
                      if v == 0]
    return HeadSet(heads)


def removed_heads(model) -> HeadSet:
    heads = []
    for (kind, layer), module in attention_modules(model).items():
        kept = set(module.kept_heads)
        heads += [(kind, layer, h + 1) for h in range(module.orig_num_heads) if h not in kept]
    return HeadSet(heads)


def remove_heads(model, heads: HeadSet, model_cfg=None) -> HeadSet:
    """Physically remove ``heads`` (on top of earlier removals). Records the union in
    ``model_cfg`` (and the model's own args) when given. Returns all removed heads."""
    if heads:
        heads.validate(model_head_shape(model), "heads to remove")
        for (kind, layer), module in attention_modules(model).items():
            module.remove_heads([h - 1 for h in heads.of(kind, layer)])
    removed = removed_heads(model)
    record_removed_heads(model, removed, model_cfg)
    return removed


def record_removed_heads(model, removed: HeadSet, model_cfg=None):
    """Write the removed heads as a spec string into the config(s) that get saved."""
    spec = removed.to_spec() or None
    targets = [model_cfg, getattr(unwrap_model(model), "args", None)]
    for cfg in targets:
        if cfg is None:
            continue
        try:
            setattr(cfg, PRUNED_HEADS_KEY, spec)
        except Exception:  # a struct-mode DictConfig
            from omegaconf import open_dict

            with open_dict(cfg):
                setattr(cfg, PRUNED_HEADS_KEY, spec)


def recorded_removed_heads(model_cfg) -> Optional[str]:
    if model_cfg is None:
        return None
    if isinstance(model_cfg, dict):
        return model_cfg.get(PRUNED_HEADS_KEY)
    return getattr(model_cfg, PRUNED_HEADS_KEY, None)


def head_parameter_count(module: HeadMaskedMultiheadAttention) -> int:
    """Parameters one head owns: its q/k/v rows (weights and biases) and out_proj columns."""
    d = module.head_dim
    n = d * (module.q_proj.in_features + module.k_proj.in_features + module.v_proj.in_features)
    n += d * module.out_proj.out_features
    n += sum(d for p in (module.q_proj, module.k_proj, module.v_proj) if p.bias is not None)
    n += sum(d for p in (module.bias_k, module.bias_v) if p is not None)
    return n


def parameter_counts(model) -> dict:
    """Total parameters, attention parameters per kind, and heads per kind."""
    mods = attention_modules(model)
    out = {"total": sum(p.numel() for p in unwrap_model(model).parameters()),
           "attention": {}, "heads": {}}
    for (kind, _), module in mods.items():
        out["attention"][kind] = out["attention"].get(kind, 0) + sum(
            p.numel() for p in module.parameters()
        )
        out["heads"][kind] = out["heads"].get(kind, 0) + module.num_heads
    return out
