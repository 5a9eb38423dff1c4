"""Repair of a pruned model without gradient steps, on a calibration sample.

Bias compensation (as FLAP, An et al. 2024, does for LLMs): an attention module's
output is y = Σ_h W_h c_h + b, W_h the columns of ``out_proj`` that read head h's
context c_h. Removing heads R drops Σ_{h∈R} W_h c_h; folding its mean over the
calibration tokens into the bias, b' = b + Σ_{h∈R} W_h E[c_h], keeps the module's mean
output on those tokens exactly where it was (given the same inputs), instead of
shifting every later layer's input. E[c_h] is taken over the non-padding query
positions (source tokens for E, target tokens for A and D) of the unpruned model,
teacher-forced, in evaluation mode.
"""

from typing import Dict, Iterable, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import HeadSet
from ..models.head_model import attention_modules
from .importance import gated, query_padding

Key = Tuple[str, int]

REPAIRS = ("none", "bias")


def context_means(model, batches: Iterable[dict], use_cuda: bool = False) -> Dict[Key, torch.Tensor]:
    """{(kind, layer): E[context fed to out_proj] over non-padding query positions, one
    float64 vector of the module's present heads × head_dim}, the model as it is (with
    a mask set, the context before the mask: what the head would contribute)."""
    from fairseq import utils

    sums: Dict[Key, torch.Tensor] = {}
    counts: Dict[Key, int] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), gated(model) as modules:
            for sample in batches:
                if use_cuda:
                    sample = utils.move_to_cuda(sample)
                model(**sample["net_input"])
                pad = query_padding(model, sample)
                for key, m in modules.items():
                    if m.num_heads == 0 or m.last_context is None:
                        continue
                    ctx = m.last_context_unmasked if m.last_context_unmasked is not None else m.last_context
                    keep = ~pad[key[0]].to(ctx.device)  # [T, B]
                    total = ctx.detach().double()[keep].sum(dim=0).cpu()
                    sums[key] = sums[key] + total if key in sums else total
                    counts[key] = counts.get(key, 0) + int(keep.sum())
    finally:
        model.train(was_training)
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def compensate_bias(model, heads: HeadSet, means: Dict[Key, torch.Tensor]) -> Dict[str, float]:
    """Fold the mean contribution of ``heads`` (still present) into each module's
    ``out_proj`` bias; returns the norm of the bias change per module (for the report).
    Call before removing the heads."""
    changes = {}
    for (kind, layer), m in attention_modules(model).items():
        gone = [h - 1 for h in heads.of(kind, layer) if h - 1 in m.kept_heads]
        if not gone:
            continue
        if m.out_proj.bias is None:
            raise HeadPruneError(f"{kind}:{layer} has no out_proj bias to fold the removed heads' "
                                 f"mean output into (allowed: --repair none)")
        if (kind, layer) not in means:
            raise HeadPruneError(f"no calibration statistics for {kind}:{layer}")
        d = m.head_dim
        cols = torch.tensor([m.kept_heads.index(h) * d + i for h in gone for i in range(d)])
        w = m.out_proj.weight.detach()
        mean = means[(kind, layer)].to(device=w.device)
        shift = (w.double().index_select(1, cols.to(w.device)) @ mean[cols.to(w.device)]).to(w.dtype)
        with torch.no_grad():
            m.out_proj.bias.add_(shift)
        changes[f"{kind}:{layer}"] = float(shift.double().norm())
    return changes
