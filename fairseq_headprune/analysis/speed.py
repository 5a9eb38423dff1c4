"""Speed: a cost model of what removing heads saves, statistics of repeated timings,
and the interleaved timing loop.

Cost model: estimated time = gemm_macs/R_gemm + attn_macs/R_attn + bytes/R_bytes, work
counted by term (``Cost``) as fairseq's inference runs a post-norm transformer; rates
calibrated by ``calibrate`` or ``DEFAULT_THROUGHPUT``. ``gemm_macs``: multiply-adds of
dense projections; ``attn_macs``: of QKᵀ and PV (small batched matmuls, a rate of their
own); ``bytes``: element reads + writes of memory-bound elementwise and copy work
(``TOUCHES`` per element) times the element size. Per attention kind K (E, A, D):

- ``K.proj`` q and out_proj per query; k and v per new key (E: all, D: the new token;
  A: ``A.kv``, once per sentence, shared by the beam)
- ``K.scores`` QKᵀ and PV; ``K.softmax`` per score: softmax, padding mask (E, A),
  head average of the returned weights (A); ``K.layout`` q scaling, heads merged
- ``D.cache_append`` torch.cat of the cached keys/values with the new ones, every step;
  ``D.cache_reorder`` the beam's index_select of that cache, from step 2 on

Not changed by heads: ``ffn``, ``ffn.act``, ``norm_residual``, ``embed``, ``vocab.proj``,
``vocab.softmax`` (log-softmax, beam score add, top-k), ``encoder_out`` (expanded to the
beam, then reordered every step). Not counted: per-operation overhead (Python, dispatch,
kernel launches) and beam bookkeeping, equal in every variant: where they dominate
(small batches) the measured speed-up falls short of the estimate.
Decoding: per sentence (source padded to its batch) the encoder and ``A.kv`` once; per
hypothesis T steps, step t attending to t positions in D and to the source in A.
"""

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..models.head_model import attention_modules, unwrap_model

UNITS = ("gemm_macs", "attn_macs", "bytes")

# Element reads + writes per element, for the ``bytes`` terms.
TOUCHES = {
    "softmax": 2,          # per score: read it, write the probability
    "padding_mask": 2,     # per score of E and A: masked_fill of padded keys
    "weights_mean": 1,     # per score of A: fairseq's decoder returns head-averaged weights
    "head_layout": 4,      # per query element of the heads: q *= scaling, contexts merged
    "cache_append": 2,     # per element of the new k (and v) cache: read old/new, write
    "cache_reorder": 2,    # per element of the k (and v) cache: index_select read, write
    "activation": 2,       # per FFN hidden element
    "norm_residual": 5,    # per model element and sublayer: layer norm 2, residual add 3
    "embed": 9,            # per model element: token and position lookups, scale, add
    "vocab": 5,            # per vocabulary entry: log-softmax 2, beam score add 2, top-k 1
    "encoder_out": 4,      # per encoder element: output and embedding, index_select each
}

TERM_UNITS = {f"{k}.{t}": u for k in "EAD" for t, u in
              (("proj", "gemm_macs"), ("scores", "attn_macs"), ("softmax", "bytes"),
               ("layout", "bytes"))}
TERM_UNITS.update({"A.kv": "gemm_macs", "D.cache_append": "bytes", "D.cache_reorder": "bytes",
                   "ffn": "gemm_macs", "ffn.act": "bytes", "norm_residual": "bytes",
                   "embed": "bytes", "vocab.proj": "gemm_macs", "vocab.softmax": "bytes",
                   "encoder_out": "bytes"})


@dataclass
class AttnDims:
    heads: int  # heads present
    head_dim: int
    q_dim: int  # query input size (model dimension)
    kv_dim: int  # key/value input size
    out_dim: int  # output size (model dimension)

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim


@dataclass
class LayerDims:
    self_attn: AttnDims
    ffn_dim: int
    model_dim: int
    cross_attn: Optional[AttnDims] = None


@dataclass
class ModelDims:
    encoder: List[LayerDims] = field(default_factory=list)
    decoder: List[LayerDims] = field(default_factory=list)
    vocab: int = 0
    decoder_out_dim: int = 0
    element_bytes: int = 4

    def to_json(self) -> dict:
        return asdict(self)


def _attn(module) -> AttnDims:
    return AttnDims(heads=module.num_heads, head_dim=module.head_dim,
                    q_dim=module.q_proj.in_features, kv_dim=module.k_proj.in_features,
                    out_dim=module.out_proj.out_features)


def model_dims(model) -> ModelDims:
    """Dimensions of a fairseq transformer as it is now (removed heads excluded; masked
    heads included: masking saves no work)."""
    model = unwrap_model(model)
    mods = attention_modules(model)
    dims = ModelDims(element_bytes=next(model.parameters()).element_size())
    encoder = getattr(model.encoder, "sentence_encoder", model.encoder)  # RoBERTa's
    for i, layer in enumerate(encoder.layers):
        dims.encoder.append(LayerDims(_attn(mods[("E", i + 1)]), layer.fc1.out_features,
                                      layer.fc1.in_features))
    if getattr(model, "decoder", None) is None:  # an encoder classifier
        return dims
    for i, layer in enumerate(model.decoder.layers):
        cross = mods.get(("A", i + 1))
        dims.decoder.append(LayerDims(_attn(mods[("D", i + 1)]), layer.fc1.out_features,
                                      layer.fc1.in_features,
                                      _attn(cross) if cross is not None else None))
    proj = getattr(model.decoder, "output_projection", None)
    if proj is not None:
        dims.vocab, dims.decoder_out_dim = proj.out_features, proj.in_features
    else:
        w = model.decoder.embed_tokens.weight
        dims.vocab, dims.decoder_out_dim = w.size(0), w.size(1)
    return dims


# ------------------------------------------------------------------ cost model
class Cost(dict):
    """Work by term (``TERM_UNITS`` gives each term's unit). ``+`` adds term by term,
    ``* k`` scales, ``totals()`` sums per unit."""

    def add(self, term: str, amount) -> "Cost":
        if term not in TERM_UNITS:
            raise KeyError(f"unknown cost term {term!r}")
        self[term] = self.get(term, 0) + amount
        return self

    def __add__(self, other: "Cost") -> "Cost":
        out = Cost(self)
        for term, amount in other.items():
            out.add(term, amount)
        return out

    def __radd__(self, other):  # sum(costs)
        return Cost(self) if other == 0 else NotImplemented

    def __mul__(self, k) -> "Cost":
        return Cost({t: v * k for t, v in self.items()})

    __rmul__ = __mul__

    def totals(self) -> Dict[str, float]:
        out = {u: 0 for u in UNITS}
        for term, amount in self.items():
            out[TERM_UNITS[term]] += amount
        return out

    def seconds(self, tp: "Throughput") -> float:
        """Estimated time at the throughputs ``tp``."""
        t = self.totals()
        return (t["gemm_macs"] / tp.gemm_macs_per_s + t["attn_macs"] / tp.attn_macs_per_s
                + t["bytes"] / tp.bytes_per_s)


def _attention(c: Cost, kind: str, a: AttnDims, queries: int, keys: int, new_keys: int,
               per_score: int, e: int) -> None:
    """One attention module: ``queries`` query positions over ``keys`` keys, of which
    ``new_keys`` are projected now."""
    c.add(f"{kind}.proj", queries * (a.q_dim + a.out_dim) * a.inner
          + new_keys * 2 * a.kv_dim * a.inner)
    c.add(f"{kind}.scores", 2 * queries * keys * a.inner)
    c.add(f"{kind}.softmax", queries * keys * a.heads * per_score * e)
    c.add(f"{kind}.layout", queries * a.inner * TOUCHES["head_layout"] * e)


def _fixed_layer(c: Cost, l: LayerDims, tokens: int, sublayers: int, e: int) -> None:
    c.add("ffn", 2 * tokens * l.model_dim * l.ffn_dim)
    c.add("ffn.act", tokens * l.ffn_dim * TOUCHES["activation"] * e)
    c.add("norm_residual", tokens * l.model_dim * sublayers * TOUCHES["norm_residual"] * e)


def _encoder_dim(dims: ModelDims) -> int:
    for l in dims.decoder:
        if l.cross_attn is not None:
            return l.cross_attn.kv_dim
    return dims.encoder[-1].model_dim if dims.encoder else 0


def encoder_cost(dims: ModelDims, src_len: int) -> Cost:
    """The encoder over one sentence of ``src_len`` (padded) tokens."""
    e, c = dims.element_bytes, Cost()
    if dims.encoder:
        c.add("embed", src_len * dims.encoder[0].model_dim * TOUCHES["embed"] * e)
    per_score = TOUCHES["softmax"] + TOUCHES["padding_mask"]
    for l in dims.encoder:
        _attention(c, "E", l.self_attn, src_len, src_len, src_len, per_score, e)
        _fixed_layer(c, l, src_len, 2, e)
    return c


def cross_kv_cost(dims: ModelDims, src_len: int) -> Cost:
    """Encoder-decoder keys and values, computed once per sentence (fairseq caches them
    per sentence, not per hypothesis)."""
    return Cost({"A.kv": sum(2 * src_len * l.cross_attn.kv_dim * l.cross_attn.inner
                             for l in dims.decoder if l.cross_attn is not None)})


def decoder_step_cost(dims: ModelDims, step: int, src_len: int) -> Cost:
    """One incremental decoder step of one hypothesis at position ``step`` (1-based: D
    attends to ``step`` positions, A to ``src_len``), output projection and vocabulary
    work included, and the encoder output's reorder (at step 1: its expansion to the
    beam)."""
    e, c = dims.element_bytes, Cost()
    if dims.decoder:
        c.add("embed", dims.decoder[0].model_dim * TOUCHES["embed"] * e)
    a_score = TOUCHES["softmax"] + TOUCHES["padding_mask"] + TOUCHES["weights_mean"]
    for l in dims.decoder:
        a = l.self_attn
        _attention(c, "D", a, 1, step, 1, TOUCHES["softmax"], e)
        # k and v: the cache of step positions is rebuilt by torch.cat, and the step-1
        # positions cached before were reordered for the beam (none at step 1)
        c.add("D.cache_append", 2 * step * a.inner * TOUCHES["cache_append"] * e)
        c.add("D.cache_reorder", 2 * (step - 1) * a.inner * TOUCHES["cache_reorder"] * e)
        if l.cross_attn is not None:
            _attention(c, "A", l.cross_attn, 1, src_len, 0, a_score, e)
        _fixed_layer(c, l, 1, 3 if l.cross_attn is not None else 2, e)
    c.add("vocab.proj", dims.decoder_out_dim * dims.vocab)
    c.add("vocab.softmax", dims.vocab * TOUCHES["vocab"] * e)
    c.add("encoder_out", src_len * _encoder_dim(dims) * TOUCHES["encoder_out"] * e)
    return c


def decode_cost(dims: ModelDims, src_len: int, tgt_len: int, beam: int = 1) -> Cost:
    """Translating one sentence: the encoder and A's keys/values once, ``tgt_len`` steps
    (EOS included) for each of ``beam`` hypotheses."""
    steps = sum(decoder_step_cost(dims, t, src_len) for t in range(1, tgt_len + 1))
    return encoder_cost(dims, src_len) + cross_kv_cost(dims, src_len) + beam * (steps or Cost())


@dataclass
class Throughput:
    """Rates of the cost model's units, and where they come from."""
    gemm_macs_per_s: float
    attn_macs_per_s: float
    bytes_per_s: float
    source: str

    def to_json(self) -> dict:
        return asdict(self)


# Round figures for one core of a current x86 CPU in float32; only their ratios matter
# for the estimated speed-up. ``calibrate`` measures them instead.
DEFAULT_THROUGHPUT = Throughput(gemm_macs_per_s=2.5e10, attn_macs_per_s=2.5e9,
                                bytes_per_s=1e10, source="default")


def estimate(full: Cost, cost: Cost, tp: Throughput) -> float:
    """The cost model's speed-up of ``cost`` over ``full`` (the same outputs computed by
    the full model)."""
    s = cost.seconds(tp)
    return full.seconds(tp) / s if s else float("inf")


def _rate(fn, work: float, sync, repeats: int = 5, min_s: float = 0.002) -> float:
    """work/second of ``fn``: the median of ``repeats`` timings of enough calls to last
    ``min_s`` each."""
    def seconds(n):  # n calls, synchronised on both ends
        if sync:
            sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if sync:
            sync()
        return time.perf_counter() - t0

    fn()
    n = 1
    while seconds(n) < min_s and n < 1 << 16:
        n *= 2
    return work / statistics.median(seconds(n) / n for _ in range(repeats))


def calibrate(dims: ModelDims, device="cpu", dtype=None, sync=None, tokens: int = 512,
              batch: int = 16, length: int = 32) -> Throughput:
    """The three rates measured on this machine at the model's sizes, in a fraction of
    a second: a linear layer of ``tokens`` rows (model dim -> FFN dim); a batched QKᵀ
    of ``batch`` x heads matrices over ``length`` positions; and, for bytes, the kinds
    of memory-bound work counted (softmax over those scores, torch.cat of a key cache
    with one new position, a residual add of ``tokens`` rows), outputs allocated as in
    the model."""
    import torch

    dtype = dtype or torch.float32
    layers = dims.encoder + dims.decoder
    m = max((l.model_dim for l in layers), default=512)
    f = max((l.ffn_dim for l in layers), default=4 * m)
    attns = [a for l in layers for a in (l.self_attn, l.cross_attn) if a is not None]
    heads = max((a.heads for a in attns), default=1) or 1
    head_dim = max((a.head_dim for a in attns), default=64)
    n = batch * heads
    opts = dict(device=device, dtype=dtype)
    x, w = torch.randn(tokens, m, **opts), torch.randn(f, m, **opts)
    q, k = torch.randn(n, length, head_dim, **opts), torch.randn(n, head_dim, length, **opts)
    scores = torch.randn(n, length, length, **opts)
    cache, new = torch.randn(n, length, head_dim, **opts), torch.randn(n, 1, head_dim, **opts)
    y = torch.randn(tokens, m, **opts)

    def memory():
        torch.softmax(scores, dim=-1)
        torch.cat([cache, new], dim=1)
        return x + y

    touches = 2 * scores.numel() + 2 * (cache.numel() + new.numel()) + 3 * x.numel()
    with torch.no_grad():
        gemm = _rate(lambda: torch.nn.functional.linear(x, w), tokens * m * f, sync)
        attn = _rate(lambda: torch.bmm(q, k), n * length * length * head_dim, sync)
        mem = _rate(memory, touches * x.element_size(), sync)
    return Throughput(gemm, attn, mem, source=(
        f"calibrated ({dtype}, {device}): linear [{tokens}x{m}]->{f}, bmm {n}x[{length}x"
        f"{head_dim}]x[{head_dim}x{length}], softmax {n}x{length}x{length} + cat "
        f"{n}x{length}x{head_dim} + add {tokens}x{m}"))


# ------------------------------------------------------------------ statistics
def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles (inclusive method), min, max and n of repeated timings."""
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("no values to summarize")
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"median": statistics.median(vals), "q1": q1, "q3": q3, "min": vals[0],
            "max": vals[-1], "n": len(vals)}


def paired_speedup(base_times: Sequence[float], times: Sequence[float]) -> Dict[str, float]:
    """Speed-up of ``times`` over ``base_times`` measured in the same repeats
    (interleaved): median(base)/median(times), and the range of per-repeat ratios."""
    ratios = [b / t for b, t in zip(base_times, times)]
    return {"median": statistics.median(base_times) / statistics.median(times),
            "min": min(ratios), "max": max(ratios)}


# ---------------------------------------------------------------------- timing
def time_interleaved(fns: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                     sync: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """Seconds per call of each function: ``warmup`` untimed rounds, then ``repeats``
    rounds in which every function runs once, the order rotating from round to round
    so that drift (other load, clocks) hits all of them alike. ``sync`` (e.g.
    torch.cuda.synchronize) runs before each clock read."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    if sync:
        sync()
    out: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if sync:
                sync()
            t0 = time.perf_counter()
            fns[name]()
            if sync:
                sync()
            out[name].append(time.perf_counter() - t0)
    return out
