"""Speed analysis: FLOP counts against hand counts, statistics, the interleaved timing
loop, and the bench command's results files (structure and arithmetic; the speeds
themselves are measured by timing/bench_decoding.py, never asserted here)."""

import csv
import json
import os
import subprocess

import pytest

from conftest import ROOT
from fairseq_headprune.analysis import speed
from fairseq_headprune.analysis.data import DataSpec, select
from fairseq_headprune.analysis.speed import AttnDims, LayerDims, ModelDims


def tiny_dims(heads):
    """1+1 layers, d=8, head_dim 4, ffn 16, vocab 10; ``heads`` per attention module."""
    a = AttnDims(heads=heads, head_dim=4, q_dim=8, kv_dim=8, out_dim=8)
    return ModelDims(encoder=[LayerDims(a, 16, 8)],
                     decoder=[LayerDims(a, 16, 8, cross_attn=a)], vocab=10, decoder_out_dim=8)


def test_flop_counts_match_a_hand_count():
    full, half = tiny_dims(2), tiny_dims(1)
    # Encoder, S=3, 2 heads (inner 8): q 3*8*8=192, k+v 2*3*8*8=384, QK^T+PV 2*3*3*8=144,
    # out 3*8*8=192 -> 912; FFN 2*3*8*16=768 -> 1680.
    assert speed.encoder_macs(full, 3) == 1680
    # 1 head (inner 4): 96 + 192 + 72 + 96 = 456; + 768 -> 1224
    assert speed.encoder_macs(half, 3) == 1224
    # cross keys/values once per sentence: 2*3*8*8 = 384 (1 head: 192)
    assert speed.cross_kv_macs(full, 3) == 384 and speed.cross_kv_macs(half, 3) == 192
    # Decoder step t, S=3, 2 heads: self q,k,v 8*(8+16)=192, attention 2*t*8=16t, out 64;
    # cross q 64, attention 2*3*8=48, out 64; FFN 2*8*16=256; vocab 8*10+10=90.
    for t in (1, 2, 5):
        assert speed.decoder_step_macs(full, t, 3) == 778 + 16 * t
        # 1 head: self 96 + 8t + 32; cross 32 + 24 + 32; FFN 256; vocab 90
        assert speed.decoder_step_macs(half, t, 3) == 562 + 8 * t
    # a sentence: S=3, T=2 tokens, beam 3
    assert speed.decode_macs(full, 3, 2, beam=3) == 1680 + 384 + 3 * (794 + 810) == 6876
    assert speed.decode_macs(half, 3, 2, beam=3) == 1224 + 192 + 3 * (570 + 578) == 4860
    assert speed.bound(6876, 4860) == pytest.approx(6876 / 4860)


def test_model_dims_read_the_pruned_shapes(data_dir):
    from helpers import build
    from fairseq_headprune.heads import HeadSet
    from fairseq_headprune.models import remove_heads

    _, model, _ = build(data_dir)  # d=32, 4 heads of 8, ffn 64, 2+3 layers
    full = speed.model_dims(model)
    remove_heads(model, HeadSet([("E", 1, 1), ("E", 1, 2), ("A", 3, 4)]))
    pruned = speed.model_dims(model)
    assert [l.self_attn.heads for l in pruned.encoder] == [2, 4]
    assert [l.cross_attn.heads for l in pruned.decoder] == [4, 4, 3]
    assert pruned.vocab == len(model.decoder.dictionary) and pruned.decoder_out_dim == 32
    # removing 2 of E:1's heads saves, for S tokens: 2 heads x 8 dims x (q,k,v,out
    # projections 4*S*32 + attention 2*S*S)
    S = 7
    assert speed.encoder_macs(full, S) - speed.encoder_macs(pruned, S) == 2 * 8 * (4 * S * 32 + 2 * S * S)


def test_statistics():
    s = speed.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0, "n": 5}
    assert speed.summarize([2.0])["median"] == 2.0
    p = speed.paired_speedup([2.0, 4.0, 3.0], [1.0, 4.0, 1.0])
    assert p == {"median": 3.0 / 1.0, "min": 1.0, "max": 3.0}


def test_interleaved_timing_rotates_and_warms_up():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    times = speed.time_interleaved(fns, warmup=1, repeats=3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_bench_writes_consistent_results(data_dir, trained_ckpt, tmp_path):
    from helpers import load
    from fairseq_headprune.heads import HeadSet
    from fairseq_headprune.models import remove_heads

    out = tmp_path / "bench"
    spec = "E:1:1,3 A:2:* D:1:2-4"
    p = subprocess.run(
        ["fairseq-headprune", "bench", data_dir, "--path", trained_ckpt, "--cpu",
         "--prune-heads", spec, "--results-dir", str(out), "--batch-sizes", "2,4",
         "--beams", "1,2", "--bench-sentences", "8", "--repeats", "2", "--warmup", "0",
         "--fixed-length", "4", "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "bench.json").read_text())
    assert res["heads"]["count"] == 9 and res["heads"]["spec"] == "E:1:1,3 A:2:1-4 D:1:2-4"
    rows = res["rows"]
    keys = {(r["part"], r["beam"], r["batch_size"], r["variant"]) for r in rows}
    assert keys == {(part, beam, bs, v) for bs in (2, 4) for v in ("full", "masked", "removed")
                    for part, beam in (("encoder", None), ("decode", 1), ("decode", 2))}
    assert res["variants"]["full"]["parameters"] - res["variants"]["removed"]["parameters"] == 9 * 4144
    assert res["variants"]["masked"]["parameters"] == res["variants"]["full"]["parameters"]

    # the bound, recomputed independently from the model's dimensions
    _, model = load(trained_ckpt, data_dir)
    full_dims = speed.model_dims(model)
    remove_heads(model, HeadSet.parse(spec, {k: [4, 4] for k in "EAD"}))
    pruned_dims = speed.model_dims(model)
    for r in rows:
        assert r["seconds"]["n"] == 2 and len(r["times"]) == 2
        assert r["sentences"] == 8
        assert r["sentences_per_s"] == pytest.approx(8 / r["seconds"]["median"])
        if r["variant"] == "full":
            assert r["speedup"]["median"] == pytest.approx(1.0) and r["bound"] == 1.0
        if r["variant"] == "masked":
            assert r["bound"] == 1.0  # masking saves no work
        assert r["measured_over_bound"] == pytest.approx(r["speedup"]["median"] / r["bound"])
        if r["part"] == "decode":
            # fixed length: every hypothesis is 4 tokens + EOS
            assert r["target_tokens"] == 8 * 5
            if r["variant"] == "removed":
                assert r["masked_equals_removed"] is True
                # bound from the source lengths (tokens incl. EOS) of the 8 sentences
                task, model = load(trained_ckpt, data_dir)
                sel = select(task, [model], DataSpec("test", max_sentences=8, batch_size=8))
                src = [int(task.dataset("test").src_sizes[i]) for i in sel.ids]
                f = sum(speed.decode_macs(full_dims, s, 5, r["beam"]) for s in src)
                g = sum(speed.decode_macs(pruned_dims, s, 5, r["beam"]) for s in src)
                assert r["bound"] == pytest.approx(f / g)
                assert "speedup_vs_masked" in r
    enc = [r for r in rows if r["part"] == "encoder" and r["variant"] == "removed"]
    assert all(r["bound"] > 1 for r in enc)
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert table[0]["peak_memory_bytes"] == "n/a"  # CPU
    assert os.path.getsize(out / "bench.png") > 1000
    assert set(res["goals"]) == {"masked_worst_slowdown_vs_full", "removed_faster_than_masked",
                                 "encoder_largest_batch"}
    assert "measured/bound" in p.stdout


@pytest.mark.parametrize("extra,message", [
    (["--prune-heads", "E:1:1", "--batch-sizes", "1,x"], "--batch-sizes '1,x' is not a comma list"),
    (["--prune-ratio", "2", "--importance", "x.json"], "--prune-ratio 2 is outside [0, 1]"),
    (["--prune-heads", "E:1:1", "--parts", "gpu"], "--parts 'gpu': allowed encoder, decode"),
])
def test_bench_bad_input(data_dir, trained_ckpt, tmp_path, extra, message):
    from fairseq_headprune.cli.main import main
    from fairseq_headprune.errors import HeadPruneError

    with pytest.raises(HeadPruneError) as e:
        main(["bench", data_dir, "--path", trained_ckpt, "--cpu", "--results-dir",
              str(tmp_path / "r"), *extra])
    assert message in str(e.value)
