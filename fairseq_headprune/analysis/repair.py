"""Repair of a pruned model without gradient steps, on a calibration sample.

Bias compensation (as FLAP, An et al. 2024, does for LLMs): an attention module's
output is y = Σ_h W_h c_h + b, W_h the columns of ``out_proj`` that read head h's
context c_h. Removing heads R drops Σ_{h∈R} W_h c_h; folding its mean over the
calibration tokens into the bias, b' = b + Σ_{h∈R} W_h E[c_h], keeps the module's mean
output on those tokens exactly where it was (given the same inputs), instead of
shifting every later layer's input. E[c_h] is taken over the non-padding query
positions (source tokens for E, target tokens for A and D) of the unpruned model,
teacher-forced, in evaluation mode.

Least-squares rescaling (``lstsq``, after bias compensation; Kwon et al. 2022's "mask
tuning", one scale per kept head): with Z_h = W_h c_h per token, the kept heads K must
now carry T = Σ_{h∈K} Z_h + Σ_{g∈R} W_g (c_g - E[c_g]) (the full output less the bias
and the removed heads' mean, which is in the bias now). The scales solve
min_s Σ_tokens ||Σ_{h∈K} s_h Z_h - T||² + λ ||s - 1||² within ``bounds``, λ = ``damping``
× the mean of the Gram matrix's diagonal, by scipy's bounded least squares
(``scipy.optimize.lsq_linear``) on the Cholesky factor of the heads × heads system;
they are folded into out_proj's columns. s = 1 (bias compensation alone) is feasible,
so the reconstruction error never grows; with no head removed s = 1 exactly.
"""

from typing import Dict, Iterable, Sequence, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import HeadSet
from ..models.head_model import attention_modules
from .importance import gated, query_padding

Key = Tuple[str, int]

REPAIRS = ("none", "bias", "lstsq")


def context_means(model, batches: Iterable[dict], use_cuda: bool = False) -> Dict[Key, torch.Tensor]:
    """{(kind, layer): E[context fed to out_proj] over non-padding query positions, one
    float64 vector of the module's present heads × head_dim}, the model as it is (with
    a mask set, the context before the mask: what the head would contribute)."""
    return {k: v["mean"] for k, v in calibration_stats(model, batches, use_cuda, gram=False).items()}


def calibration_stats(model, batches: Iterable[dict], use_cuda: bool = False,
                      gram: bool = True) -> Dict[Key, dict]:
    """Per module, over the non-padding query positions of ``batches`` (one teacher-forced
    pass, evaluation mode): ``mean`` E[c] (float64, present heads × head_dim) and, with
    ``gram``, ``gram`` [H, H] = Σ_tokens <Z_h, Z_g> and ``out_sum`` [H, embed] = Σ_tokens
    Z_h for the heads' outputs Z_h = W_h c_h, and ``tokens``."""
    from fairseq import utils

    sums: Dict[Key, torch.Tensor] = {}
    counts: Dict[Key, int] = {}
    grams: Dict[Key, torch.Tensor] = {}
    out_sums: Dict[Key, torch.Tensor] = {}
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
                    c = ctx.detach().double()[keep]  # [N, H*d]
                    sums[key] = sums.get(key, 0) + c.sum(dim=0).cpu()
                    counts[key] = counts.get(key, 0) + int(keep.sum())
                    if gram:
                        w = m.out_proj.weight.detach().double().view(-1, m.num_heads, m.head_dim)
                        z = torch.einsum("nhd,ehd->hne", c.view(-1, m.num_heads, m.head_dim), w)
                        grams[key] = grams.get(key, 0) + torch.einsum("hne,gne->hg", z, z).cpu()
                        out_sums[key] = out_sums.get(key, 0) + z.sum(dim=1).cpu()
    finally:
        model.train(was_training)
    out = {}
    for k in sums:
        out[k] = {"mean": sums[k] / max(counts[k], 1), "tokens": counts[k]}
        if gram:
            out[k].update(gram=grams[k], out_sum=out_sums[k])
    return out


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


def solve_scales(gram: torch.Tensor, out_sum: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor,
                 kept: Sequence[int], gone: Sequence[int], damping: float = 0.01,
                 bounds: Tuple[float, float] = (0.0, 2.0)) -> torch.Tensor:
    """The scales of heads ``kept`` (positions) when ``gone`` are removed, from one
    module's calibration statistics (see the module docstring); ``weight`` [E, H, d]
    out_proj's weight by head, ``mean`` [H, d]. float64, len(kept)."""
    from scipy.optimize import lsq_linear

    kept, gone = list(kept), list(gone)
    A = gram[kept][:, kept]
    r = A.sum(dim=1)  # Σ_{h'∈K} <Z_h, Z_h'>
    for g in gone:
        m_g = weight[:, g, :] @ mean[g]  # the removed head's mean output, now in the bias
        r = r + gram[kept, g] - out_sum[kept] @ m_g
    lam = damping * float(A.diagonal().mean())
    A = A + lam * torch.eye(len(kept), dtype=A.dtype)
    rhs = r + lam
    L = torch.linalg.cholesky(A)
    y = torch.linalg.solve_triangular(L, rhs.unsqueeze(1), upper=False).squeeze(1)
    res = lsq_linear(L.t().numpy(), y.numpy(), bounds=bounds, method="bvls")
    return torch.as_tensor(res.x, dtype=torch.float64)


def rescale_heads(model, heads: HeadSet, stats: Dict[Key, dict], damping: float = 0.01,
                  bounds: Tuple[float, float] = (0.0, 2.0)) -> Dict[str, list]:
    """The least-squares scales of the heads kept in each module that loses some of
    ``heads`` (still present), folded into out_proj's columns; returns them per module.
    ``stats`` from ``calibration_stats`` on the unrepaired model. Call before removing."""
    out = {}
    for (kind, layer), m in attention_modules(model).items():
        gone = [m.kept_heads.index(h - 1) for h in heads.of(kind, layer) if h - 1 in m.kept_heads]
        kept = [p for p in range(m.num_heads) if p not in gone]
        if not gone or not kept:
            continue
        st, d = stats[(kind, layer)], m.head_dim
        w = m.out_proj.weight.detach().double().cpu().view(-1, m.num_heads, d)  # [E, H, d]
        scales = solve_scales(st["gram"], st["out_sum"], st["mean"].view(m.num_heads, d), w,
                              kept, gone, damping, bounds)
        col = torch.ones(m.num_heads, dtype=torch.float64)
        col[kept] = scales
        with torch.no_grad():
            W = m.out_proj.weight
            W.mul_(col.to(W.dtype).to(W.device).repeat_interleave(d).unsqueeze(0))
        out[f"{kind}:{layer}"] = [round(float(x), 6) for x in scales]
    return out
