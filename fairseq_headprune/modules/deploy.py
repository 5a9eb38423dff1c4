"""Deployment: stock fairseq attention modules in place of the head-aware ones.

TorchScript cannot compile ``HeadMaskedMultiheadAttention`` (its masks, gates and
removal bookkeeping are Python-side analysis state). For deployment none of that is
needed: a 0/1 head mask means the same as removing the masked heads, and fairseq's own
``MultiheadAttention`` supports pruned modules (``_adaptive_prune_heads`` leaves
``embed_dim`` = the projected dimension and ``skip_embed_dim_check`` set). So:

* ``stock_attention(module)``: a new stock module with the heads that take part
  (present, mask != 0), their weights copied; other mask values are folded into
  ``out_proj``'s columns. A module with no head taking part becomes
  ``ZeroHeadAttention`` (stock fairseq cannot run ``num_heads=0``: its
  key-padding reshape fails, its averaged weights would be NaN).
* ``deployable(model)``: a copy of ``model`` with every head-aware module replaced
  that way; the original is untouched. ``torch.jit.script(deployable(model))`` and
  ``torch.jit.script(SequenceGenerator([deployable(model)], ...))`` compute what the
  eager model computes.

``HeadMaskedMultiheadAttention.__prepare_scriptable__`` calls ``make_stock``, so
``torch.jit.script(model)`` works directly too, but it turns the eager ``model``'s own
attention modules into stock ones (same outputs; masks fixed, masked heads gone, no
more head masks or removal on that model). Script ``deployable(model)`` to keep it.

Returned attention weights are the mean over the heads that take part, as the
head-aware module returns them. Per-head weights (``need_head_weights``) have one row
per head that takes part (the head-aware module also keeps a row, holding that mean,
for each masked head): fairseq's mean over the rows is the same, a first-k slice
(``alignment_heads``) may not be.
"""

import copy
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq.modules.multihead_attention import MultiheadAttention

from ..errors import HeadPruneError
from .head_attention import HeadMaskedMultiheadAttention


class ZeroHeadAttention(MultiheadAttention):
    """A stock attention module with every head removed: outputs ``out_proj``'s bias
    (no head contributes) and no weights, as the head-aware module does; q/k/v and
    ``out_proj`` stay, with zero rows/columns, so state dict keys are unchanged."""

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        # out_proj of a zero-width context is exactly its bias (or zeros without one).
        out = self.out_proj(query.new_zeros(query.size(0), query.size(1), 0))
        return out, None


def _copy_linear(layer: nn.Linear, rows: Optional[Tensor] = None,
                 cols: Optional[Tensor] = None, col_scale: Optional[Tensor] = None) -> nn.Linear:
    """A fresh nn.Linear with ``layer``'s weight rows (and bias) ``rows`` or columns
    ``cols`` (times ``col_scale``), same dtype, device and requires_grad."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    if col_scale is not None:
        weight = weight * col_scale.to(weight.dtype).view(1, -1)
    # skip_init: no random init to overwrite (nor torch's warning for 0-size layers)
    new = torch.nn.utils.skip_init(nn.Linear, weight.size(1), weight.size(0),
                                   bias=bias is not None, device=weight.device,
                                   dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad = layer.weight.requires_grad
    if bias is not None:
        new.bias.requires_grad = layer.bias.requires_grad
    return new


def _taking_part(module: HeadMaskedMultiheadAttention) -> Tuple[List[int], Optional[Tensor]]:
    """Positions (among the present heads) of the heads that take part, and their mask
    values when some are neither 0 nor 1 (to fold into out_proj), else None."""
    if getattr(module, "row_mask", None) is not None:
        raise HeadPruneError(
            f"{module.name}: a per-row mask is set; per-row masks are an analysis feature "
            f"(allowed for deployment/TorchScript: no row mask, set_row_mask(None))")
    if module.gate_heads:
        raise HeadPruneError(
            f"{module.name}: importance gates are on (gate_heads=True); they are an "
            f"analysis feature (allowed for deployment/TorchScript: gate_heads=False)")
    if module.bias_k is not None:
        # fairseq 0.12.3: _add_bias does not type-check in TorchScript, and its Python
        # path (pruned modules) then fails its own src_len assertion
        raise HeadPruneError(
            f"{module.name}: stock fairseq attention with add_bias_kv can neither be "
            f"scripted nor pruned (allowed for deployment: modules without bias_k/bias_v)")
    present = list(range(module.num_heads))
    if module.head_mask is None:
        return present, None
    values = module.head_mask.detach().cpu().double()[list(module.kept_heads)].tolist()
    bad = [v for v in values if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise HeadPruneError(f"{module.name}: head mask value {bad[0]} cannot be deployed "
                             f"(allowed: finite values, 0 removes the head)")
    keep = [i for i in present if values[i] != 0]
    scale = None
    if any(values[i] != 1 for i in keep):
        scale = torch.tensor([values[i] for i in keep], dtype=torch.float64)
    return keep, scale


def stock_attention(module: HeadMaskedMultiheadAttention) -> MultiheadAttention:
    """A new stock fairseq ``MultiheadAttention`` (``ZeroHeadAttention`` if no head
    takes part) computing what ``module`` computes now; ``module`` is untouched."""
    if not isinstance(module, HeadMaskedMultiheadAttention):
        raise HeadPruneError(
            f"stock_attention takes a HeadMaskedMultiheadAttention, not "
            f"{type(module).__name__} (a stock module is deployable as it is)")
    keep, scale = _taking_part(module)
    d = module.head_dim
    rows = torch.tensor([p * d + i for p in keep for i in range(d)], dtype=torch.long,
                        device=module.out_proj.weight.device)
    if scale is not None:
        scale = scale.repeat_interleave(d)
    cls = MultiheadAttention if keep else ZeroHeadAttention
    # Built with the original head count (the constructor derives head_dim from it),
    # then given the kept heads' weights, as fairseq's _adaptive_prune_heads leaves it.
    new = cls(
        module.embed_dim, module.orig_num_heads, kdim=module.kdim, vdim=module.vdim,
        dropout=module.dropout_module.p, bias=module.q_proj.bias is not None,
        add_zero_attn=module.add_zero_attn,
        self_attention=module.self_attention,
        encoder_decoder_attention=module.encoder_decoder_attention,
    )
    assert new.head_dim == d
    new.q_proj = _copy_linear(module.q_proj, rows=rows)
    new.k_proj = _copy_linear(module.k_proj, rows=rows)
    new.v_proj = _copy_linear(module.v_proj, rows=rows)
    new.out_proj = _copy_linear(module.out_proj, cols=rows, col_scale=scale)
    new.num_heads = len(keep)
    if len(keep) != module.orig_num_heads:
        new.embed_dim = len(keep) * d
        new._set_skip_embed_dim_check()
    new.dropout_module = copy.deepcopy(module.dropout_module)
    new.beam_size = module.beam_size
    new.onnx_trace = module.onnx_trace
    # Same incremental-state key: a cache the caller holds stays this module's.
    new._incremental_state_id = module._incremental_state_id
    new.train(module.training)
    return new


def make_stock(module: HeadMaskedMultiheadAttention) -> MultiheadAttention:
    """Turn ``module`` itself into its ``stock_attention`` conversion and return it
    (``HeadMaskedMultiheadAttention.__prepare_scriptable__``). In place, not a new
    object, because torch.jit.script memoises prepared modules by id(): a replaced
    original is freed mid-walk and a module created later may reuse its id, and get
    the wrong module in its place (seen: an out_proj replaced by an attention module)."""
    new = stock_attention(module)
    module.__dict__.clear()  # nn.Module state (parameters, submodules, hooks) is here
    module.__dict__.update(new.__dict__)
    module.__class__ = type(new)
    return module


def deployable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose head-aware attention modules are all stock
    (``stock_attention``); ``model`` itself is untouched. Ready for torch.jit.script."""
    # Seeding deepcopy's memo maps each head-aware module to its stock conversion, so
    # those modules (and their analysis state) are never copied.
    memo = {id(m): stock_attention(m) for m in model.modules()
            if isinstance(m, HeadMaskedMultiheadAttention)}
    return copy.deepcopy(model, memo)
