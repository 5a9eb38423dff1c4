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

Layer-wise reconstruction (``layerwise``; Kwon et al. 2022's layer-wise mask tuning,
here with a bias): the two repairs above reconstruct each module's output from the
full model's inputs, so the drift that removals upstream cause is never corrected.
This one goes through the attention sublayers in the order they run (encoder layers,
then each decoder layer's self- and encoder-decoder attention), from the first one that
loses a head, and makes the pruned model's residual stream after the sublayer (the sum
that enters the next LayerNorm) reconstruct the full model's: with the pruned model's
own inputs x' (earlier modules already repaired), S' = x' + Σ_{h∈K} s_h Z'_h + b + δ,
min over s and δ of Σ_tokens ||S' - S_full||² + λ ||s - 1||², s within ``bounds``
(δ the least-squares intercept: the mean of what is still missing, upstream drift
included). Modules that lose no head are repaired too: their job is the drift. One
teacher-forced pass of the full model over the calibration batches, shared by every
repair of that model, then one pass of the pruned model per module, stopped after it.
``refit`` is the same walk with more freedom: out_proj's columns of the kept heads (not
one scale per head) and its bias re-solved by ridge regression towards the present
weights, a closed-form least-squares fit of the kept contexts to the missing output.
"""

from typing import Dict, Iterable, List, Sequence, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import HeadSet
from ..models.head_model import attention_modules, masked_heads, set_head_mask, unwrap_model
from .importance import gated, query_padding

Key = Tuple[str, int]

REPAIRS = ("none", "bias", "lstsq", "layerwise", "refit")


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
    kept, gone = list(kept), list(gone)
    A = gram[kept][:, kept]
    r = A.sum(dim=1)  # Σ_{h'∈K} <Z_h, Z_h'>
    for g in gone:
        m_g = weight[:, g, :] @ mean[g]  # the removed head's mean output, now in the bias
        r = r + gram[kept, g] - out_sum[kept] @ m_g
    lam = damping * float(A.diagonal().mean())
    return bounded_quadratic(A + lam * torch.eye(len(kept), dtype=A.dtype), r + lam, bounds)


def bounded_quadratic(A: torch.Tensor, b: torch.Tensor, bounds: Tuple[float, float]) -> torch.Tensor:
    """argmin_x x'Ax - 2b'x within ``bounds`` (A symmetric positive definite), as scipy's
    bounded least squares on A's Cholesky factor: ||L'x - L⁻¹b||² is the same quadratic
    up to a constant."""
    from scipy.optimize import lsq_linear

    L = torch.linalg.cholesky(A)
    y = torch.linalg.solve_triangular(L, b.unsqueeze(1), upper=False).squeeze(1)
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


# ------------------------------------------------------------ layer-wise reconstruction
def forward_order(keys: Iterable[Key]) -> List[Key]:
    """Attention modules in the order a teacher-forced forward pass runs them: encoder
    layers, then per decoder layer its self-attention (D) before its enc-dec one (A)."""
    rank = {"E": 0, "D": 1, "A": 2}
    return sorted(keys, key=lambda k: (k[0] != "E", k[1], rank[k[0]]))


def sum_norm(model, key: Key):
    """The LayerNorm whose input is the residual stream right after module ``key``'s
    sublayer (x + attention(x)): the sublayer's own norm in a post-LN layer, the next
    sublayer's in a pre-LN one (fairseq's TransformerEncoderLayer/DecoderLayer)."""
    model = unwrap_model(model)
    kind, i = key
    encoder = getattr(model.encoder, "sentence_encoder", model.encoder)
    layer = (encoder.layers if kind == "E" else model.decoder.layers)[i - 1]
    for extra in ("attn_ln", "w_resid", "c_attn"):  # NormFormer, scaled residuals: not a plain sum
        if getattr(layer, extra, None) is not None:
            raise HeadPruneError(f"{kind}:{i}: --repair layerwise needs a plain residual sum "
                                 f"after each attention; this layer has {extra!r} (allowed: "
                                 f"--repair none, bias or lstsq)")
    if not layer.normalize_before:
        return layer.encoder_attn_layer_norm if kind == "A" else layer.self_attn_layer_norm
    if kind == "D" and getattr(layer, "encoder_attn", None) is not None:
        return layer.encoder_attn_layer_norm
    return layer.final_layer_norm


class _Stop(Exception):
    """Ends a forward pass once the module being repaired has been seen."""


def _query_rows(model, sample, kind):
    from .importance import query_padding

    return ~query_padding(model, sample)[kind]


def residual_sums(model, batches: Sequence[dict], use_cuda: bool = False) -> List[Dict[Key, torch.Tensor]]:
    """The layer-wise repair's targets: per batch, {module: the residual stream after its
    sublayer at the non-padding query positions, [N, embed] float32 on the CPU}, the model
    as it is (the full model), teacher-forced, evaluation mode."""
    from fairseq import utils

    keys = forward_order(attention_modules(model))
    out, seen = [], {}

    def record(module, args, k):
        seen[k] = args[0].detach()
        if k == keys[-1]:  # the rest of the pass (the output layer) is not needed
            raise _Stop

    handles = [sum_norm(model, k).register_forward_pre_hook(
        lambda m, args, k=k: record(m, args, k)) for k in keys]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for sample in batches:
                sample = utils.move_to_cuda(sample) if use_cuda else sample
                seen.clear()
                try:
                    model(**sample["net_input"])
                except _Stop:
                    pass
                out.append({k: seen[k][_query_rows(model, sample, k[0]).to(seen[k].device)].float().cpu()
                            for k in keys})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out


def _sublayer_stats(model, key: Key, kept: Sequence[int], batches, targets, use_cuda, encoder_outs=None,
                    refit: bool = False):
    """Over the calibration tokens, with the pruned model as it is now: the kept heads'
    outputs Z_h = W_h c_h and the missing part R = S_full - S' (S' the pruned model's
    residual sum after module ``key``): G = Σ Z_h·Z_g, zs = Σ Z_h, zr = Σ Z_h·R, rs = Σ R,
    n tokens (float64, CPU). With ``refit`` the features are the kept heads' context
    coordinates c (out_proj's input) instead: G = Σ c c', zs = Σ c, zr = Σ c R'.
    ``encoder_outs``: the pruned encoder's outputs per batch (a decoder module's pass
    then runs the decoder alone)."""
    from fairseq import utils

    m = attention_modules(model)[key]
    seen = {}

    def stop(module, args):
        seen["sum"] = args[0].detach()
        raise _Stop

    k, f64 = len(kept) * (m.head_dim if refit else 1), torch.float64
    G = torch.zeros(k, k, dtype=f64)
    zs = torch.zeros(k, dtype=f64) if refit else torch.zeros(k, m.embed_dim, dtype=f64)
    zr = torch.zeros(k, m.embed_dim, dtype=f64) if refit else torch.zeros(k, dtype=f64)
    rs, n = torch.zeros(m.embed_dim, dtype=f64), 0
    handle = sum_norm(model, key).register_forward_pre_hook(stop)
    m.gate_heads, m.last_context = bool(kept), None
    w = m.out_proj.weight.detach().double().cpu().view(-1, m.num_heads, m.head_dim)[:, kept]  # [E, K, d]
    try:
        with torch.no_grad():
            for i, (sample, target) in enumerate(zip(batches, targets)):
                sample = utils.move_to_cuda(sample) if use_cuda else sample
                net = sample["net_input"]
                try:
                    if encoder_outs is None:
                        model(**net)
                    else:
                        unwrap_model(model).decoder(net["prev_output_tokens"], encoder_out=encoder_outs[i],
                                                    src_lengths=net["src_lengths"])
                except _Stop:
                    pass
                rows = _query_rows(model, sample, key[0]).to(seen["sum"].device)
                R = target[key].double() - seen["sum"][rows].double().cpu()
                rs, n = rs + R.sum(0), n + R.size(0)
                if not kept:
                    continue
                c = m.last_context.detach()[rows].double().cpu().view(-1, m.num_heads, m.head_dim)[:, kept]
                if refit:
                    c = c.reshape(c.size(0), -1)
                    G += c.t() @ c
                    zs += c.sum(0)
                    zr += c.t() @ R
                else:
                    Z = torch.einsum("nhd,ehd->hne", c, w)
                    G += torch.einsum("hne,gne->hg", Z, Z)
                    zs += Z.sum(dim=1)
                    zr += torch.einsum("hne,ne->h", Z, R)
    finally:
        handle.remove()
        m.gate_heads, m.last_context, m.last_context_unmasked = False, None, None
    return G, zs, zr, rs, n


def _encoder_outputs(model, batches, use_cuda):
    from fairseq import utils

    encoder = unwrap_model(model).encoder
    with torch.no_grad():
        return [encoder(s["net_input"]["src_tokens"], src_lengths=s["net_input"]["src_lengths"])
                for s in (utils.move_to_cuda(b) if use_cuda else b for b in batches)]


def reconstruct_layerwise(model, heads: HeadSet, batches: Sequence[dict],
                          targets: List[Dict[Key, torch.Tensor]], use_cuda: bool = False,
                          damping: float = 0.01, bounds: Tuple[float, float] = (0.0, 2.0),
                          refit: bool = False) -> dict:
    """The layer-wise repair (module docstring) of ``model`` for the removal of ``heads``
    (still present: they are masked meanwhile, and the mask the model had is restored),
    folded into out_proj's columns and bias. ``targets`` from ``residual_sums`` on the
    full model over the same ``batches``. With ``refit``, out_proj's kept columns are
    solved whole instead of one scale per head (ridge regression towards the present
    weights, λ = ``damping`` × the mean variance of a context coordinate). Returns
    {"head_scales" (not with refit), "bias_change_norm"} per repaired module."""
    modules = attention_modules(model)
    order = forward_order(modules)
    first = next((i for i, key in enumerate(order) if heads.of(*key)), len(order))
    before = masked_heads(model)
    set_head_mask(model, HeadSet(list(before) + list(heads)))
    was_training = model.training
    model.eval()
    scales, changes, encoder_outs = {}, {}, None
    try:
        for key in order[first:]:
            m = modules[key]
            if key[0] != "E" and encoder_outs is None:  # the encoder is repaired: run it once
                encoder_outs = _encoder_outputs(model, batches, use_cuda)
            if m.out_proj.bias is None:
                raise HeadPruneError(f"{key[0]}:{key[1]} has no out_proj bias to fold the missing "
                                     f"mean into (allowed: --repair none)")
            gone = {h - 1 for h in heads.of(*key)} | {h - 1 for h in before.of(*key)}
            kept = [p for p, h in enumerate(m.kept_heads) if h not in gone]
            G, zs, zr, rs, n = _sublayer_stats(model, key, kept, batches, targets, use_cuda, encoder_outs,
                                               refit)
            if n == 0:
                continue
            name = f"{key[0]}:{key[1]}"
            if refit:
                changes[name] = _refit_out_proj(m, kept, G, zs, zr, rs, n, damping)
                continue
            u = torch.zeros(len(kept), dtype=torch.float64)
            if kept:  # centred: the intercept δ is solved with the scales
                Gc, rc = G - zs @ zs.t() / n, zr - zs @ rs / n
                lam = max(damping * float(Gc.diagonal().mean()), 1e-12)
                u = bounded_quadratic(Gc + lam * torch.eye(len(kept), dtype=Gc.dtype), rc,
                                      (bounds[0] - 1, bounds[1] - 1))
                rs = rs - zs.t() @ u
            delta = rs / n
            d = m.head_dim
            with torch.no_grad():
                W = m.out_proj.weight
                col = torch.ones(m.num_heads, dtype=torch.float64)
                col[kept] += u
                W.mul_(col.to(W.dtype).to(W.device).repeat_interleave(d).unsqueeze(0))
                m.out_proj.bias.add_(delta.to(W.dtype).to(W.device))
            if kept:
                scales[name] = [round(float(1 + x), 6) for x in u]
            changes[name] = float(delta.norm())
    finally:
        set_head_mask(model, before)
        model.train(was_training)
    return {"head_scales": scales, "bias_change_norm": changes}


def _refit_out_proj(m, kept, G, cs, cR, rs, n, damping) -> float:
    """out_proj's columns of the ``kept`` heads and its bias re-solved so that the
    sublayer's output hits T = R + its present output (the full model's residual sum
    less the pruned model's input), from the context statistics of ``_sublayer_stats``
    (refit); returns the norm of the bias change."""
    d = m.head_dim
    cols = torch.tensor([p * d + i for p in kept for i in range(d)], dtype=torch.long)
    W = m.out_proj.weight.detach().double().cpu()
    b = m.out_proj.bias.detach().double().cpu()
    Wk = W[:, cols]  # [E, k·d]
    ts = rs + Wk @ cs + n * b  # Σ T
    new_b = ts / n
    if kept:
        cT = cR + G @ Wk.t() + torch.outer(cs, b)  # Σ c T'
        Gc, cTc = G - torch.outer(cs, cs) / n, cT - torch.outer(cs, ts) / n
        lam = max(damping * float(Gc.diagonal().mean()), 1e-12)
        Wn = torch.linalg.solve(Gc + lam * torch.eye(len(cols), dtype=Gc.dtype), cTc + lam * Wk.t()).t()
        new_b = (ts - Wn @ cs) / n
        with torch.no_grad():
            m.out_proj.weight[:, cols.to(m.out_proj.weight.device)] = Wn.to(m.out_proj.weight)
    with torch.no_grad():
        m.out_proj.bias.copy_(new_b.to(m.out_proj.bias))
    return float((new_b - b).norm())


# ------------------------------------------------------------ one entry point
class Calibration:
    """What the repairs need of the full model, gathered once from ``batches``: context
    means (and the heads' Gram matrices for ``lstsq``), the residual sums for
    ``layerwise``. Every repair of a copy of that model reads them."""

    def __init__(self, model, batches: Iterable[dict], methods: Iterable[str], use_cuda: bool = False):
        methods = set(methods) - {"none"}
        self.batches = list(batches)
        self.use_cuda = use_cuda
        self.stats = self.targets = None
        if methods & {"bias", "lstsq"}:
            self.stats = calibration_stats(model, self.batches, use_cuda, gram="lstsq" in methods)
        if methods & {"layerwise", "refit"}:
            self.targets = residual_sums(model, self.batches, use_cuda)


def repair(model, heads: HeadSet, method: str, calibration: Calibration) -> dict:
    """Repair ``model`` (a copy of the calibrated full model, ``heads`` still present:
    remove them next) by ``method``; returns {"bias_change_norm"[, "head_scales"]} per
    module, for the reports."""
    if method == "none":
        return {}
    if method in ("layerwise", "refit"):
        return reconstruct_layerwise(model, heads, calibration.batches, calibration.targets,
                                     calibration.use_cuda, refit=method == "refit")
    out = {}
    if method == "lstsq":  # from the unrepaired weights, before the bias moves
        out["head_scales"] = rescale_heads(model, heads, calibration.stats)
    out["bias_change_norm"] = compensate_bias(model, heads, {k: v["mean"] for k, v in calibration.stats.items()})
    return out
