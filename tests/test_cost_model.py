"""The bench command's cost model (analysis/speed.py): every term against a hand count
for a tiny model's dimensions, removed kinds, monotonicity in heads, masked == full,
the estimate's arithmetic, the calibration, and old bench files in report/bench.py."""

import json
import math

import pytest

from fairseq_headprune.analysis import speed
from fairseq_headprune.analysis.speed import AttnDims, Cost, LayerDims, ModelDims, Throughput

E4 = 4  # float32 bytes


def dims(E=2, A=2, D=2, head_dim=4, d=8, ffn=16, vocab=10, layers=1):
    """``layers``+``layers`` layers, model dim d, FFN ffn, vocabulary ``vocab``; E, A, D
    heads per module of each kind."""
    def a(h):
        return AttnDims(heads=h, head_dim=head_dim, q_dim=d, kv_dim=d, out_dim=d)
    return ModelDims(encoder=[LayerDims(a(E), ffn, d) for _ in range(layers)],
                     decoder=[LayerDims(a(D), ffn, d, cross_attn=a(A)) for _ in range(layers)],
                     vocab=vocab, decoder_out_dim=d)


def test_encoder_terms_match_a_hand_count():
    # S = 3 tokens, 2 heads of 4 (inner 8), d = 8, FFN 16, float32
    assert speed.encoder_cost(dims(), 3) == {
        "E.proj": 3 * 8 * 8 * 4,           # q, k, v, out_proj: 4 x S x d x inner = 768
        "E.scores": 2 * 3 * 3 * 8,         # QK^T and PV: 2 x S x S x inner = 144
        "E.softmax": 3 * 3 * 2 * 4 * E4,   # S x S x heads scores, softmax 2 + mask 2 = 288
        "E.layout": 3 * 8 * 4 * E4,        # q scaling + heads merged, 4 per S x inner = 384
        "ffn": 2 * 3 * 8 * 16,             # fc1 + fc2 = 768
        "ffn.act": 3 * 16 * 2 * E4,        # 384
        "norm_residual": 3 * 8 * 2 * 5 * E4,  # 2 sublayers x (norm 2 + residual 3) = 960
        "embed": 3 * 8 * 9 * E4,           # 864
    }
    one = speed.encoder_cost(dims(E=1), 3)  # 1 head: every E term halves, nothing else
    full = speed.encoder_cost(dims(), 3)
    assert one == {t: v / 2 if t.startswith("E.") else v for t, v in full.items()}


def test_cross_keys_values_once_per_sentence():
    assert speed.cross_kv_cost(dims(), 3) == {"A.kv": 2 * 3 * 8 * 8}  # k, v: 2 x S x d x inner
    assert speed.cross_kv_cost(dims(A=1), 3) == {"A.kv": 2 * 3 * 8 * 4}
    assert speed.cross_kv_cost(dims(A=0), 3) == {"A.kv": 0}


@pytest.mark.parametrize("t", [1, 2, 5])
def test_decoder_step_terms_match_a_hand_count(t):
    # one hypothesis at step t (D attends to t positions), source S = 3, 2 heads of 4
    assert speed.decoder_step_cost(dims(), t, 3) == {
        "embed": 8 * 9 * E4,
        "D.proj": 8 * 8 * 4,                # q, k, v of the new token, out_proj = 256
        "D.scores": 2 * t * 8,
        "D.softmax": t * 2 * 2 * E4,        # t x heads scores, softmax only (no mask)
        "D.layout": 8 * 4 * E4,
        "D.cache_append": 2 * t * 8 * 2 * E4,         # k and v: t positions rebuilt by cat
        "D.cache_reorder": 2 * (t - 1) * 8 * 2 * E4,  # k and v: t-1 positions index_select
        "A.proj": 2 * 8 * 8,                # q and out_proj; k, v cached (A.kv)
        "A.scores": 2 * 3 * 8,
        "A.softmax": 3 * 2 * 5 * E4,        # softmax 2 + mask 2 + head average 1
        "A.layout": 8 * 4 * E4,
        "ffn": 2 * 8 * 16, "ffn.act": 16 * 2 * E4,
        "norm_residual": 8 * 3 * 5 * E4,    # 3 sublayers
        "vocab.proj": 8 * 10, "vocab.softmax": 10 * 5 * E4,
        "encoder_out": 3 * 8 * 4 * E4,      # output + embedding, index_select each
    }


def test_decode_sums_encoder_cross_kv_and_steps_per_hypothesis():
    d = dims()
    c = speed.decode_cost(d, 3, 2, beam=3)
    steps = speed.decoder_step_cost(d, 1, 3) + speed.decoder_step_cost(d, 2, 3)
    assert c == speed.encoder_cost(d, 3) + speed.cross_kv_cost(d, 3) + 3 * steps
    # totals per unit, by hand: GEMM enc 768 + 768, A.kv 384, per step 256 + 128 + 256 + 80
    assert c.totals()["gemm_macs"] == 1536 + 384 + 3 * 2 * 720 == 6240
    # attention: enc 144; per step D 16t + A 48
    assert c.totals()["attn_macs"] == 144 + 3 * ((16 + 48) + (32 + 48)) == 576
    # the whole k/v cache traffic over T steps: sum_t 128 t + 128 (t - 1)
    T = 7
    c = speed.decode_cost(d, 3, T, beam=2)
    assert c["D.cache_append"] == 2 * 128 * T * (T + 1) // 2
    assert c["D.cache_reorder"] == 2 * 128 * T * (T - 1) // 2
    assert speed.decode_cost(d, 3, 0, beam=2) == speed.encoder_cost(d, 3) + speed.cross_kv_cost(d, 3)


def test_estimated_time_and_speedup_arithmetic():
    c = Cost({"ffn": 100, "E.scores": 30, "E.softmax": 8})
    assert c.totals() == {"gemm_macs": 100, "attn_macs": 30, "bytes": 8}
    tp = Throughput(gemm_macs_per_s=10, attn_macs_per_s=3, bytes_per_s=4, source="test")
    assert c.seconds(tp) == pytest.approx(100 / 10 + 30 / 3 + 8 / 4)
    half = Cost({"ffn": 100, "E.scores": 15, "E.softmax": 4})
    assert speed.estimate(c, half, tp) == pytest.approx(22 / (10 + 5 + 1))
    assert (c + half)["E.scores"] == 45 and (2 * c)["ffn"] == 200 and sum([c, half]) == c + half
    with pytest.raises(KeyError):
        Cost().add("flops", 1)


def test_all_heads_of_a_kind_removed():
    full = dims()
    for kind in "EAD":
        gone = dims(**{kind: 0})
        c, f = speed.decode_cost(gone, 5, 4, beam=2), speed.decode_cost(full, 5, 4, beam=2)
        # every term of that kind is zero, every other term is the full model's
        assert {t for t, v in c.items() if v == 0} == {
            t for t in c if t.startswith(kind + ".")}
        assert all(c[t] == f[t] for t in f if not t.startswith(kind + "."))
        assert speed.estimate(f, c, speed.DEFAULT_THROUGHPUT) > 1
    # no heads at all: only the parts heads do not change are left
    none = speed.decode_cost(dims(E=0, A=0, D=0), 5, 4, beam=2)
    assert {t for t, v in none.items() if v} == {"ffn", "ffn.act", "norm_residual", "embed",
                                               "vocab.proj", "vocab.softmax", "encoder_out"}


@pytest.mark.parametrize("kinds", ["E", "A", "D", "EAD"])
def test_estimate_is_monotone_in_heads(kinds):
    """Fewer heads: less of every unit, a larger estimated speed-up (defaults and other
    rates alike), encoder and decoding at beams 1 and 5."""
    rates = [speed.DEFAULT_THROUGHPUT, Throughput(1e9, 1e9, 1e9, "flat"),
             Throughput(1e11, 1e8, 1e12, "skewed")]
    base = dict(head_dim=8, d=64, ffn=256, vocab=1000, layers=2)
    full = dims(**base, E=8, A=8, D=8)
    costs = {"encoder": lambda m: speed.encoder_cost(m, 17)}
    for beam in (1, 5):
        costs[f"beam {beam}"] = lambda m, beam=beam: speed.decode_cost(m, 17, 9, beam)
    for what, cost in costs.items():
        prev = None
        for h in range(8, -1, -1):
            c = cost(dims(**base, **{k: (h if k in kinds else 8) for k in "EAD"}))
            if what == "encoder" and kinds in "AD":
                assert c == cost(full)  # the encoder does not see A or D heads
                continue
            if prev is not None:
                assert c.totals()["gemm_macs"] < prev[0].totals()["gemm_macs"]
                assert c.totals()["attn_macs"] < prev[0].totals()["attn_macs"]
                assert c.totals()["bytes"] < prev[0].totals()["bytes"]
                for tp in rates:
                    est = speed.estimate(cost(full), c, tp)
                    assert est > speed.estimate(cost(full), prev[0], tp) >= 1
            prev = (c,)


def test_masked_heads_cost_what_the_full_model_costs(data_dir):
    """Masking saves no work: the masked model's dimensions, and so every term and the
    estimate, are the full model's; the same heads removed cost less."""
    from helpers import build
    from fairseq_headprune.heads import HeadSet
    from fairseq_headprune.models import remove_heads
    from fairseq_headprune.models.head_model import set_head_mask

    _, model, _ = build(data_dir)  # d=32, 4 heads of 8, FFN 64, 2+3 layers
    full = speed.model_dims(model)
    heads = HeadSet([("E", 1, 1), ("E", 1, 2), ("A", 3, 4), ("D", 2, 1)])
    set_head_mask(model, heads)
    masked = speed.model_dims(model)
    assert masked == full
    tp = speed.DEFAULT_THROUGHPUT
    for cost in (lambda m: speed.encoder_cost(m, 11), lambda m: speed.decode_cost(m, 11, 6, 5)):
        assert cost(masked) == cost(full)
        assert speed.estimate(cost(full), cost(masked), tp) == 1.0
    set_head_mask(model, None)
    remove_heads(model, heads)
    removed = speed.model_dims(model)
    assert [l.self_attn.heads for l in removed.encoder] == [2, 4]
    assert [l.cross_attn.heads for l in removed.decoder] == [4, 4, 3]
    assert [l.self_attn.heads for l in removed.decoder] == [4, 3, 4]
    assert removed.vocab == len(model.decoder.dictionary) and removed.decoder_out_dim == 32
    # removing 2 heads of 8 dims from E:1 saves, over S tokens, exactly their share of
    # each E term and nothing else
    S = 7
    diff = {t: v - speed.encoder_cost(removed, S)[t] for t, v in speed.encoder_cost(full, S).items()}
    assert diff == {"E.proj": 2 * 8 * 4 * S * 32, "E.scores": 2 * 8 * 2 * S * S,
                    "E.softmax": 2 * S * S * 4 * E4, "E.layout": 2 * 8 * S * 4 * E4,
                    "ffn": 0, "ffn.act": 0, "norm_residual": 0, "embed": 0}
    assert speed.estimate(speed.decode_cost(full, 11, 6, 5), speed.decode_cost(removed, 11, 6, 5),
                          tp) > 1


def test_calibration_measures_three_positive_rates():
    tp = speed.calibrate(dims(), tokens=64, batch=2, length=8)
    for rate in (tp.gemm_macs_per_s, tp.attn_macs_per_s, tp.bytes_per_s):
        assert math.isfinite(rate) and rate > 0
    assert tp.source.startswith("calibrated") and "linear [64x8]->16" in tp.source


# ---- report/bench.py: new files and files written before the cost model -------------

def _bench_file(rows):
    return {"variants": {}, "rows": rows, "heads": {}, "goals": {}}


def _rows(field):
    out = []
    for v, s in (("full", 1.0), ("masked", 0.97), ("removed", 1.3)):
        for bs in (1, 16):
            out.append({"part": "encoder", "beam": None, "batch_size": bs, "variant": v,
                        "speedup": {"median": s}, field: 1.0 if v != "removed" else 1.2})
    return out


def test_plot_names_the_estimate_and_reads_old_files(tmp_path, monkeypatch):
    from fairseq_headprune.errors import HeadPruneError
    from fairseq_headprune.report import bench as report_bench

    drawn = []
    for name, field in (("new", "estimate"), ("old", "bound")):
        d = tmp_path / name
        d.mkdir()
        (d / "bench.json").write_text(json.dumps(_bench_file(_rows(field))))
        assert report_bench.redraw(str(d)) == [str(d / "bench.png")]
        assert (d / "bench.png").stat().st_size > 1000
        drawn.append(report_bench.panel_series(_rows(field)))
    new, old = drawn
    assert new["encoder"]["cost-model estimate"] == [(1, 1.2), (16, 1.2)]
    assert "multiply-add ratio (old file)" in old["encoder"]
    assert not any("bound" in label for panels in drawn for series in panels.values()
                   for label in series)
    # a row with neither is one clear error
    bad = _rows("estimate")
    del bad[0]["estimate"]
    (tmp_path / "new" / "bench.json").write_text(json.dumps(_bench_file(bad)))
    with pytest.raises(HeadPruneError, match="without part, variant, batch_size, "
                                             "speedup.median and estimate"):
        report_bench.redraw(str(tmp_path / "new"))
