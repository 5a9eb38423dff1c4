"""Speed: FLOP (multiply-add) counts that bound the speed-up removing heads can give,
summary statistics of repeated timings, and the timing loop itself.

Multiply-adds (MACs) are counted for the matrix products only: the q/k/v/out
projections, the attention scores (QKᵀ) and the context (PV), the feed-forward layers,
and, for decoding, the output projection onto the vocabulary plus one operation per
vocabulary entry for the softmax. Layer norms, biases, embeddings lookups, beam-search
bookkeeping and framework overhead are not counted: they do not shrink when heads are
removed, so the measured speed-up can only fall short of ``flops_full /
flops_pruned`` (the bound).

Decoding is counted as fairseq's incremental beam search computes it: per sentence,
the encoder once, the encoder-decoder keys/values once (fairseq caches them per
sentence, not per beam), and for every generated token t = 1..T and every beam
hypothesis one decoder step whose self-attention looks at t cached positions and whose
encoder-decoder attention looks at S source positions.
"""

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..models.head_model import attention_modules, unwrap_model


@dataclass
class AttnDims:
    heads: int  # heads present
    head_dim: int
    q_dim: int  # query input size (model dimension)
    kv_dim: int  # key/value input size
    out_dim: int  # output size (model dimension)


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

    def to_json(self) -> dict:
        return asdict(self)


def _attn(module) -> AttnDims:
    return AttnDims(heads=module.num_heads, head_dim=module.head_dim,
                    q_dim=module.q_proj.in_features, kv_dim=module.k_proj.in_features,
                    out_dim=module.out_proj.out_features)


def model_dims(model) -> ModelDims:
    """Dimensions of a fairseq transformer as it is now (removed heads excluded)."""
    model = unwrap_model(model)
    mods = attention_modules(model)
    dims = ModelDims()
    for i, layer in enumerate(model.encoder.layers):
        dims.encoder.append(LayerDims(_attn(mods[("E", i + 1)]), layer.fc1.out_features,
                                      layer.fc1.in_features))
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


def attention_macs(a: AttnDims, tgt_len: int, src_len: int, project_kv: bool = True) -> int:
    """One attention module over tgt_len queries and src_len keys."""
    inner = a.heads * a.head_dim
    macs = tgt_len * a.q_dim * inner  # q projection
    if project_kv:
        macs += 2 * src_len * a.kv_dim * inner  # k and v projections
    macs += 2 * tgt_len * src_len * inner  # scores QK^T and context PV
    macs += tgt_len * inner * a.out_dim  # out_proj
    return macs


def encoder_macs(dims: ModelDims, src_len: int) -> int:
    """The encoder over one sentence of src_len tokens."""
    return sum(attention_macs(l.self_attn, src_len, src_len) + 2 * src_len * l.model_dim * l.ffn_dim
               for l in dims.encoder)


def cross_kv_macs(dims: ModelDims, src_len: int) -> int:
    """Encoder-decoder keys and values, computed once per sentence."""
    return sum(2 * src_len * l.cross_attn.kv_dim * l.cross_attn.heads * l.cross_attn.head_dim
               for l in dims.decoder if l.cross_attn is not None)


def decoder_step_macs(dims: ModelDims, step: int, src_len: int) -> int:
    """One incremental decoder step for one hypothesis at position ``step`` (1-based:
    self-attention sees ``step`` positions), output projection and softmax included."""
    macs = 0
    for l in dims.decoder:
        a = l.self_attn
        inner = a.heads * a.head_dim
        # q, k, v of the new token only (earlier keys/values are cached), attention
        # over ``step`` positions, out_proj
        macs += inner * (a.q_dim + 2 * a.kv_dim) + 2 * step * inner + inner * a.out_dim
        if l.cross_attn is not None:
            macs += attention_macs(l.cross_attn, 1, src_len, project_kv=False)
        macs += 2 * l.model_dim * l.ffn_dim
    macs += dims.decoder_out_dim * dims.vocab + dims.vocab
    return macs


def decode_macs(dims: ModelDims, src_len: int, tgt_len: int, beam: int = 1) -> int:
    """Translating one sentence: encoder, cached cross keys/values, tgt_len steps (EOS
    included) for each of ``beam`` hypotheses."""
    steps = sum(decoder_step_macs(dims, t, src_len) for t in range(1, tgt_len + 1))
    return encoder_macs(dims, src_len) + cross_kv_macs(dims, src_len) + beam * steps


def bound(full_macs: float, pruned_macs: float) -> float:
    """The speed-up the removed work allows at most."""
    return full_macs / pruned_macs if pruned_macs else float("inf")


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
