"""Latency budgets: the table's arithmetic (isotonic medians, per-module savings that
add up), the fewest heads of the order that the table predicts to reach the speed-up,
the prune command choosing exactly those heads from a given table, a table measured
end to end (shape, anchors) and reused, and the refusals, each one line."""

import json
import subprocess

import pytest

from fairseq_headprune.analysis.latency import (
    TABLE_FORMAT, heads_for_latency, module_counts, predict, savings)
from fairseq_headprune.analysis.ranking import order_heads
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import remove_heads


def test_savings_are_isotonic_and_zero_at_full():
    raw = [0.5, 0.7, 0.6, 1.0, 1.0]  # time ratios at 0..4 heads kept; 0.7 > 0.6 is noise
    out = savings(raw, modules=2)
    assert out["ratio_fitted"] == pytest.approx([0.5, 0.65, 0.65, 1.0, 1.0])
    assert out["saving_per_module"] == pytest.approx([0.25, 0.175, 0.175, 0.0, 0.0])
    assert savings([0.2, 0.6, 1.0], 1)["ratio_fitted"] == [0.2, 0.6, 1.0]  # ordered: unchanged


def test_a_table_whose_savings_exceed_the_decode_is_refused():
    t = table(per_head=0.2)  # 2 modules x 4 heads x 0.2 = 1.6 of the decode per kind
    with pytest.raises(HeadPruneError, match="its timings are noisier than the effect"):
        predict(t, {("E", 1): 0, ("E", 2): 0})


def table(full=1.0, per_head=0.01, heads=4, modules=None, **settings):
    """A synthetic table: each head removed from any module saves ``per_head`` s."""
    modules = modules or {"E": 2, "A": 2, "D": 2}
    kinds = {}
    for kind, n in modules.items():
        ratios = [1 - n * per_head * (heads - k) for k in range(heads + 1)]
        kinds[kind] = {"modules": n, "heads": heads, "seconds": [full * r for r in ratios],
                       "time_ratio": ratios, **savings(ratios, n)}
    return {"format": TABLE_FORMAT, "full_seconds": full, "kinds": kinds,
            "settings": {"batch_size": 16, "beam": 5, "length": 20, "repeats": 3, "warmup": 1,
                         "subset": "test", **settings}}


@pytest.fixture(scope="module")
def model(trained_ckpt, data_dir):
    from helpers import load

    return load(trained_ckpt, data_dir)[1]


def test_fewest_heads_that_reach_the_speedup(model):
    order = order_heads(model, "weight-norm")
    t = table()
    heads, met = heads_for_latency(model, order, 1.1, "EAD", t)
    # each head saves 0.01 s of 1.0 s: 1/(1 - 0.01 n) >= 1.1 first at n = 10
    assert len(heads) == 10 and list(order[:10]) == sorted(heads, key=order.index)
    assert met["predicted_speedup"] == pytest.approx(1 / 0.9) and met["predicted_speedup"] >= 1.1
    left = {}
    for k, layer, _ in order[:10]:
        left[(k, layer)] = left.get((k, layer), 4) - 1
    assert met["predicted_seconds"] == pytest.approx(predict(t, left))


def test_a_speedup_the_floor_cannot_reach_is_refused(model):
    order = order_heads(model, "weight-norm")
    with pytest.raises(HeadPruneError, match=r"predicted to reach only 1\.064x .*allowed: up to "
                                             r"latency:1\.06x") as e:
        heads_for_latency(model, order, 1.5, "EAD", table(), min_heads_per_layer=3)
    assert "\n" not in str(e.value)


def test_uneven_modules_are_refused(trained_ckpt, data_dir):
    from helpers import load

    m = load(trained_ckpt, data_dir)[1]
    remove_heads(m, HeadSet([("E", 1, 2)]))
    with pytest.raises(HeadPruneError, match=r"E modules have \[3, 4\]"):
        module_counts(m, "EAD")


def prune(data_dir, ckpt, out, *extra):
    return subprocess.run(["fairseq-headprune", "prune", data_dir, "--path", ckpt, "--cpu",
                           "--out", str(out), "--order", "weight-norm", *extra],
                          capture_output=True, text=True)


def test_prune_takes_the_heads_the_given_table_predicts(data_dir, trained_ckpt, model, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table(batch_size=4, beam=2, length=4, repeats=1)))
    p = prune(data_dir, trained_ckpt, tmp_path / "s.pt", "--budget", "latency:1.1x",
              "--latency-table", str(path), "--beam", "2", "--batch-size", "4",
              "--latency-length", "4", "--latency-repeats", "1")
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "s.export.json").read_text())
    met = rep["selection"]["met"]
    want, _ = heads_for_latency(model, order_heads(model, "weight-norm"), 1.1, "EAD",
                                json.loads(path.read_text()))
    assert HeadSet.parse(rep["removed_in_all"]["spec"], {k: [4, 4] for k in "EAD"}) == want
    assert met["table_reused"] and met["predicted_speedup"] == pytest.approx(1 / 0.9)
    assert met["measured_speedup"]["median"] > 0 and "predicted 1.111x, measured" in p.stdout


def test_measured_table_and_its_reuse(data_dir, trained_ckpt, tmp_path):
    flags = ["--beam", "2", "--batch-size", "4", "--latency-length", "3", "--latency-repeats", "1",
             "--latency-table", str(tmp_path / "lut.json")]
    p = prune(data_dir, trained_ckpt, tmp_path / "a.pt", "--budget", "latency:1.01x", *flags)
    assert p.returncode == 0, p.stderr
    t = json.loads((tmp_path / "lut.json").read_text())
    assert t["settings"] == {"batch_size": 4, "beam": 2, "length": 3, "repeats": 1, "warmup": 1,
                             "subset": "test"} and t["sentences"] == 4
    for kind in "EAD":
        row = t["kinds"][kind]
        assert row["modules"] == 2 and row["heads"] == 4 and len(row["seconds"]) == 5
        assert row["seconds"][-1] == t["full_seconds"] and row["time_ratio"][-1] == 1
        fitted = row["ratio_fitted"]
        assert all(a <= b for a, b in zip(fitted, fitted[1:])) and row["saving_per_module"][-1] == 0
    met = json.loads((tmp_path / "a.export.json").read_text())["selection"]["met"]
    assert not met["table_reused"] and met["predicted_speedup"] >= 1.01
    # the same table again, its batch given as --latency-batch-size: reused, same heads
    latency_flags = ["--latency-batch-size" if x == "--batch-size" else x for x in flags]
    p = prune(data_dir, trained_ckpt, tmp_path / "b.pt", "--budget", "latency:1.01x", *latency_flags)
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "b.export.json").read_text())
    assert again["selection"]["met"]["table_reused"]
    first = json.loads((tmp_path / "a.export.json").read_text())
    assert again["removed_in_all"] == first["removed_in_all"]
    # another beam: refused, nothing written
    flags[1] = "5"
    p = prune(data_dir, trained_ckpt, tmp_path / "c.pt", "--budget", "latency:1.01x", *flags)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "was measured at beam 2, this run asks for 5" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("extra, message", [
    (["--budget", "latency:40x"], "predicted to reach only"),
    (["--budget", "heads:10%", "--latency-table", "x.json"], "--latency-table is for latency budgets"),
])
def test_latency_refusals(data_dir, trained_ckpt, tmp_path, extra, message):
    if "--latency-table" not in extra:
        path = tmp_path / "t.json"
        path.write_text(json.dumps(table(batch_size=4, beam=2, length=4, repeats=1)))
        extra = extra + ["--latency-table", str(path), "--beam", "2", "--batch-size", "4",
                         "--latency-length", "4"]
    p = prune(data_dir, trained_ckpt, tmp_path / "x.pt", *extra)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert message in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.pt").exists()
