"""Speed analysis: statistics, the interleaved timing loop, and the bench command's
results files (structure and arithmetic, the cost-model estimate recomputed; the speeds
themselves are measured by timing/bench_decoding.py, never asserted here). The cost
model's terms are tested in test_cost_model.py."""

import csv
import json
import os
import subprocess

import pytest

from conftest import ROOT
from fairseq_headprune.analysis import speed
from fairseq_headprune.analysis.bench import make_batches


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

    # the cost-model estimate, recomputed independently from the model's dimensions, the
    # padded batches and the rates the file records (calibrated in this run)
    tp = speed.Throughput(**res["cost_model"]["throughput"])
    assert tp.source.startswith("calibrated") and res["settings"]["cost_throughput"] == "calibrate"
    assert all(v > 0 for k, v in res["cost_model"]["throughput"].items() if k != "source")
    task, model = load(trained_ckpt, data_dir)
    full_dims = speed.model_dims(model)
    task.load_dataset("test")
    padded = {bs: [(b["net_input"]["src_tokens"].size(0), b["net_input"]["src_tokens"].size(1))
                   for b in make_batches(task, model, "test", 8, bs, False)] for bs in (2, 4)}
    remove_heads(model, HeadSet.parse(spec, {k: [4, 4] for k in "EAD"}))
    pruned_dims = speed.model_dims(model)
    for r in rows:
        assert r["seconds"]["n"] == 2 and len(r["times"]) == 2
        assert r["sentences"] == 8
        assert r["sentences_per_s"] == pytest.approx(8 / r["seconds"]["median"])
        if r["variant"] == "full":
            assert r["speedup"]["median"] == pytest.approx(1.0) and r["estimate"] == 1.0
        if r["variant"] == "masked":
            assert r["estimate"] == 1.0  # masking saves no work
        assert r["measured_over_estimate"] == pytest.approx(r["speedup"]["median"] / r["estimate"])
        assert r["cost"] == speed.Cost(r["cost_terms"]).totals()
        assert r["estimated_seconds"] == pytest.approx(speed.Cost(r["cost_terms"]).seconds(tp))
        if r["part"] == "decode":
            # fixed length: every hypothesis is 4 tokens + EOS
            assert r["target_tokens"] == 8 * 5

            def cost(d):
                return sum(n * speed.decode_cost(d, S, 5, r["beam"]) for n, S in padded[r["batch_size"]])
        else:
            def cost(d):
                return sum(n * speed.encoder_cost(d, S) for n, S in padded[r["batch_size"]])
        if r["variant"] == "removed":
            assert r["cost_terms"] == cost(pruned_dims)
            assert r["estimate"] == pytest.approx(speed.estimate(cost(full_dims), cost(pruned_dims), tp))
            assert r["estimate"] > 1
            assert "speedup_vs_masked" in r
            if r["part"] == "decode":
                assert r["masked_equals_removed"] is True
        else:
            assert r["cost_terms"] == cost(full_dims)
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert table[0]["peak_memory_bytes"] == "n/a"  # CPU
    assert [float(t["estimate"]) for t in table] == [pytest.approx(r["estimate"], abs=1e-4) for r in rows]
    assert "flop_bound" not in table[0] and "measured_over_estimate" in table[0]
    assert os.path.getsize(out / "bench.png") > 1000
    assert set(res["goals"]) == {"masked_worst_slowdown_vs_full", "removed_faster_than_masked",
                                 "encoder_largest_batch", "removed_measured_over_estimate"}
    assert "meas/est" in p.stdout and "measured/estimate" in p.stdout
    assert "bound" not in p.stdout.lower()
    # the report: a short table, one row per part and batch, numbers from bench.json
    subprocess.run(["fairseq-headprune", "report", str(out)], check=True, capture_output=True)
    md = (out / "report.md").read_text()
    assert "Goals" not in md and "9 of 24 heads removed" in md
    rm = {(r["part"], r["beam"], r["batch_size"]): r for r in rows if r["variant"] == "removed"}
    r = rm[("decode", 2, 4)]
    assert (f"| decoding, beam 2 | 4 | {r['speedup']['median']:.2f}x | {r['estimate']:.2f}x |"
            in md)
    assert sum(line.startswith("| encoder |") or line.startswith("| decoding") for line in
               md.splitlines()) == 6


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
