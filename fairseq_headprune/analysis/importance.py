"""Head importance I_h = E_x |∂L(x)/∂ξ_h| (Michel et al. 2019, eq. 2-3).

One forward and one backward pass per batch, and only ∂L/∂ξ is computed: parameters
are frozen for the pass (no weight gradients), each attention module keeps the context
it feeds to out_proj, and ``torch.autograd.grad`` returns the gradients of those
contexts alone. A gate ξ[t, b, h] on head h's context (out_proj's input u = ξ·ctx) has
the gradient g[t, b, h] = Σ_d ctx[t,b,h,d] · ∂L/∂u[t,b,h,d] (the paper's eq. 3,
Att_h(x)ᵀ∂L/∂Att_h(x), at ξ = 1), and because sentence b's loss depends only on its
own positions, g[t, b, h] = ∂L_b/∂ξ_{h,t,b}. The gradient is taken at the current
mask: a masked head (ξ_h = 0) gets Σ_d ctx_h · ∂L/∂u_h with its unmasked context, not
0. Removed heads have none. Every granularity comes from that one gradient:

* ``token``    Σ_{t,b} |g[t,b,h]|          (the official MT code; t = the module's
                                             query positions: source tokens for E,
                                             target tokens for A and D)
* ``sentence`` Σ_b |Σ_t g[t,b,h]|          (the paper's E_x; Σ_t g = ∂L_b/∂ξ_h)
* ``batch``    |Σ_{t,b} g[t,b,h]|          (Hugging Face's bertology; depends on batching)
* ``fisher``   Σ_b (Σ_t g[t,b,h])²         (the empirical Fisher information of the gate,
                                             Kwon et al. 2022; squares, not absolute values)

Padding positions are excluded. Means divide by the matching count (tokens of that
module's query side, sentences, batches). ``scores()`` then normalises each layer
(module) by its l2 norm, as the paper does, with an epsilon.
"""

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..criterions.sentence_nll import sentence_nll
from ..heads import KINDS, Shape
from ..models.head_model import attention_modules, model_head_shape, unwrap_model

GRANULARITIES = ("sentence", "token", "batch", "fisher")


@contextlib.contextmanager
def frozen_parameters(model):
    """No parameter gradients are computed while inside."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def gated(model):
    modules = attention_modules(model)
    for m in modules.values():
        m.gate_heads, m.last_context, m.last_context_unmasked = True, None, None
    try:
        yield modules
    finally:
        for m in modules.values():
            m.gate_heads, m.last_context, m.last_context_unmasked = False, None, None


@dataclass
class ImportanceAccumulator:
    """Running sums over batches; ``all_reduce`` sums them across workers."""

    shape: Shape
    sums: Dict[str, torch.Tensor] = field(default_factory=dict)  # gran -> [modules, maxH]
    tokens: Optional[torch.Tensor] = None  # [modules] query tokens seen by each module
    counts: Optional[torch.Tensor] = None  # [sentences, batches, skipped batches]

    def __post_init__(self):
        self.keys = [(k, l + 1) for k in KINDS for l in range(len(self.shape.get(k) or []))]
        width = max([n for k in KINDS for n in (self.shape.get(k) or [])] or [0])
        for g in GRANULARITIES:
            self.sums.setdefault(g, torch.zeros(len(self.keys), width, dtype=torch.float64))
        if self.tokens is None:
            self.tokens = torch.zeros(len(self.keys), dtype=torch.float64)
        if self.counts is None:
            self.counts = torch.zeros(3, dtype=torch.float64)

    def add_batch(self, grads: Dict, query_pad: Dict, nsentences: int):
        """grads[(kind, layer)]: [T, B, kept heads] gate gradients; query_pad[kind]:
        [T, B] bool (True = padding); kept heads map to original indices via
        grads[key].kept."""
        for i, key in enumerate(self.keys):
            g, kept = grads[key]
            if g is None or g.numel() == 0:
                pad = query_pad[key[0]]
                self.tokens[i] += (~pad).sum().item()
                continue
            pad = query_pad[key[0]]
            g = g.double().masked_fill(pad.unsqueeze(-1), 0.0)
            idx = torch.tensor(kept, dtype=torch.long)
            self.sums["token"][i, idx] += g.abs().sum(dim=(0, 1)).cpu()
            per_sentence = g.sum(dim=0)  # [B, H]: ∂L_b/∂ξ_h
            self.sums["sentence"][i, idx] += per_sentence.abs().sum(dim=0).cpu()
            self.sums["fisher"][i, idx] += per_sentence.pow(2).sum(dim=0).cpu()
            self.sums["batch"][i, idx] += g.sum(dim=(0, 1)).abs().cpu()
            self.tokens[i] += (~pad).sum().item()
        self.counts[0] += nsentences
        self.counts[1] += 1

    def skip_batch(self):
        self.counts[2] += 1

    @property
    def all_skipped(self) -> bool:
        """Batches were seen and every one had non-finite gradients (``counts[1]``
        counts the batches added, ``counts[2]`` the skipped ones)."""
        return bool(self.counts[2] > 0 and self.counts[1] == 0)

    def all_reduce(self, all_reduce_fn: Callable[[torch.Tensor], torch.Tensor]):
        """Sum every statistic across data-parallel workers (e.g. fairseq's
        distributed_utils.all_reduce); tensors are packed into one call."""
        parts = [self.sums[g] for g in GRANULARITIES] + [self.tokens.unsqueeze(1), self.counts.unsqueeze(1)]
        flat = torch.cat([p.reshape(-1) for p in parts])
        flat = all_reduce_fn(flat)
        offset = 0
        for g in GRANULARITIES:
            n = self.sums[g].numel()
            self.sums[g] = flat[offset:offset + n].view_as(self.sums[g]).clone()
            offset += n
        n = self.tokens.numel()
        self.tokens = flat[offset:offset + n].clone()
        offset += n
        self.counts = flat[offset:offset + 3].clone()

    def result(self, removed: Optional[Dict] = None) -> "Importance":
        return Importance(self.shape, self.keys, {g: s.clone() for g, s in self.sums.items()},
                          self.tokens.clone(), self.counts.clone(), removed or {})


@dataclass
class Importance:
    shape: Shape
    keys: List
    sums: Dict[str, torch.Tensor]
    tokens: torch.Tensor
    counts: torch.Tensor
    removed: Dict  # (kind, layer) -> set of removed original 0-based heads

    @property
    def nsentences(self) -> int:
        return int(self.counts[0])

    def _count(self, granularity: str, i: int) -> float:
        if granularity == "token":
            return float(self.tokens[i])
        return float(self.counts[1] if granularity == "batch" else self.counts[0])

    def _table(self, granularity: str, mean: bool) -> Dict[str, List[List[Optional[float]]]]:
        out: Dict[str, List[List[Optional[float]]]] = {}
        for i, (kind, layer) in enumerate(self.keys):
            n = self.shape[kind][layer - 1]
            count = max(self._count(granularity, i), 1.0) if mean else 1.0
            gone = self.removed.get((kind, layer), set())
            out.setdefault(kind, []).append(
                [None if h in gone else float(self.sums[granularity][i, h]) / count for h in range(n)]
            )
        return out

    def means(self, granularity: str = "sentence") -> Dict[str, List[List[Optional[float]]]]:
        """E|∂L/∂ξ_h| per kind, layer, head (None for removed heads)."""
        return self._table(granularity, mean=True)

    def scores(self, granularity: str = "sentence", normalize: bool = True,
               eps: float = 1e-12) -> Dict[str, List[List[Optional[float]]]]:
        """means(), each layer divided by its l2 norm (+ eps) when ``normalize``."""
        out = self.means(granularity)
        if not normalize:
            return out
        for kind, layers in out.items():
            for j, row in enumerate(layers):
                norm = math.sqrt(sum(v * v for v in row if v is not None))
                layers[j] = [None if v is None else v / (norm + eps) for v in row]
        return out

    def to_json(self, granularity="sentence", normalize=True, eps=1e-12, meta=None) -> dict:
        obj = dict(self.scores(granularity, normalize, eps))
        obj["granularity"] = granularity
        obj["normalize"] = normalize
        obj["eps"] = eps
        obj["counts"] = {"sentences": int(self.counts[0]), "batches": int(self.counts[1]),
                         "skipped_batches": int(self.counts[2]),
                         "query_tokens": {f"{k}:{l}": int(self.tokens[i])
                                          for i, (k, l) in enumerate(self.keys)}}
        obj["raw_sums"] = {g: self._table(g, mean=False) for g in GRANULARITIES}
        obj["means"] = {g: self.means(g) for g in GRANULARITIES}
        if meta:
            obj["meta"] = meta
        return obj


def query_padding(model, sample) -> Dict[str, torch.Tensor]:
    """[T, B] padding masks of the query side of each kind (an encoder-only model: E)."""
    model = unwrap_model(model)
    src_pad = sample["net_input"]["src_tokens"].eq(model.encoder.dictionary.pad())
    if getattr(model, "decoder", None) is None:
        return {"E": src_pad.t()}
    tgt_pad = sample["target"].eq(model.decoder.dictionary.pad())
    return {"E": src_pad.t(), "A": tgt_pad.t(), "D": tgt_pad.t()}


def classification_loss(model, sample) -> torch.Tensor:
    """Summed cross-entropy (nats) of an encoder classifier's labels (fairseq's
    sentence_prediction: the model's one classification head, as its criterion uses)."""
    from .classify import classifier_logits

    logits = classifier_logits(unwrap_model(model), sample)
    return torch.nn.functional.cross_entropy(logits.float(), sample["target"].view(-1),
                                             reduction="sum")


def default_loss(model):
    """The summed loss importance differentiates: the reference's token NLL for a
    translation model, the labels' cross-entropy for an encoder classifier."""
    if getattr(unwrap_model(model), "decoder", None) is None:
        return classification_loss
    return lambda m, s: sentence_nll(m, s).sum()


def _gate_gradient(m, ctx, g, loss_scale: float):
    """[T, B, kept heads] float64 ∂L/∂ξ of module ``m`` from its gated context ``ctx``
    (= out_proj's input u) and ∂(scale·L)/∂u ``g`` (None: the loss does not depend on
    it). Under a mask the gradient is taken at ξ_h = 0 with the unmasked context."""
    if m.last_context_unmasked is not None:
        ctx = m.last_context_unmasked
    if g is None:
        g = torch.zeros_like(ctx)
    T, B, _ = ctx.shape
    # product and the sum over the head's d dimensions in the model's precision, half
    # types (float16, bfloat16) in float32; then float64
    dtype = torch.float32 if ctx.dtype in (torch.float16, torch.bfloat16) else ctx.dtype
    gr = (ctx.to(dtype) * g.to(dtype)).view(T, B, m.num_heads, m.head_dim).sum(-1)
    return gr.double() / loss_scale


def batch_gate_gradients(model, sample, loss_fn=None, loss_scale: float = 1.0):
    """One forward + backward of ``loss_fn(model, sample)`` (default: summed token NLL
    of the reference); returns ({(kind, layer): (∂L/∂ξ [T,B,H_kept] float64 or None,
    kept original heads)}, all finite). The gradient of ξ at its current value is
    Σ_d ctx · ∂L/∂u over each head's slice, u the (masked) context fed to out_proj
    and ctx the context before the mask (= u where no mask is set)."""
    loss_fn = loss_fn or default_loss(model)
    with frozen_parameters(model), gated(model) as modules, torch.enable_grad():
        loss = loss_fn(model, sample)
        ctxs = {key: m.last_context for key, m in modules.items()
                if m.last_context is not None and m.num_heads > 0}
        keys = list(ctxs)
        grads = torch.autograd.grad(loss.float() * loss_scale, [ctxs[k] for k in keys],
                                    allow_unused=True) if keys else []
        by_key = dict(zip(keys, grads))
        out, finite = {}, True
        for key, m in modules.items():
            gr = None
            if key in ctxs:
                gr = _gate_gradient(m, ctxs[key].detach(), by_key[key], loss_scale)
                finite = finite and bool(torch.isfinite(gr).all())
            out[key] = (gr, list(m.kept_heads))
    return out, finite


@contextlib.contextmanager
def training_gates(model):
    """Gate every module and keep ∂L/∂u of its context after a backward pass that the
    caller runs (fairseq-train's own training step: parameters get their gradients as
    usual). Yields a function returning the gate gradients as ``batch_gate_gradients``
    does, given the loss scale that backward pass used."""
    with gated(model) as modules:
        for m in modules.values():
            m.retain_context_grad = True

        def collect(loss_scale: float = 1.0):
            out, finite = {}, True
            for key, m in modules.items():
                gr, ctx = None, m.last_context
                if ctx is not None and m.num_heads > 0:
                    gr = _gate_gradient(m, ctx.detach(), ctx.grad, loss_scale)
                    finite = finite and bool(torch.isfinite(gr).all())
                out[key] = (gr, list(m.kept_heads))
            return out, finite

        try:
            yield collect
        finally:
            for m in modules.values():
                m.retain_context_grad = False


def compute_importance(model, batches: Iterable[dict], loss_fn=None, loss_scale: float = 1.0,
                       use_cuda: bool = False, progress: Optional[Callable] = None,
                       accumulator: Optional[ImportanceAccumulator] = None) -> ImportanceAccumulator:
    """Accumulate gate gradients over ``batches`` (model in eval mode: no dropout).
    Batches with non-finite gradients (fp16 overflow) are skipped and counted."""
    from fairseq import utils

    acc = accumulator or ImportanceAccumulator(model_head_shape(model))
    was_training = model.training
    model.eval()
    it = progress(batches) if progress else batches
    for sample in it:
        if use_cuda:
            sample = utils.move_to_cuda(sample)
        grads, finite = batch_gate_gradients(model, sample, loss_fn, loss_scale)
        if not finite:
            acc.skip_batch()
            continue
        acc.add_batch(grads, {k: v.cpu() for k, v in query_padding(model, sample).items()},
                      sample["target"].size(0))
    model.train(was_training)
    return acc


def removed_map(model) -> Dict:
    return {key: set(range(m.orig_num_heads)) - set(m.kept_heads)
            for key, m in attention_modules(model).items()}
