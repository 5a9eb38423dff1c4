"""Pruning curves: the 0% point is plain fairseq-generate + sacrebleu, every point is
reproduced by fairseq-generate --mask-heads @spec, orders and floors behave, resume."""

import json
import os
import subprocess

import pytest
import sacrebleu

from conftest import ROOT, generate_lines, run
from fairseq_headprune.analysis.curve import fractions, pruning_curve
from fairseq_headprune.analysis.ranking import order_by_scores, take_with_floor
from fairseq_headprune.heads import HeadSet

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]
GEN = ["--cpu", "--beam", "3", "--remove-bpe", "--max-tokens", "4000", "--gen-subset", "valid"]


def generate_bleu(data, ckpt, *extra):
    """fairseq-generate, then sacrebleu (tokenize=none) on its H- and T- lines."""
    hyps, refs = generate_lines(["fairseq-generate", data, "--path", ckpt, *GEN, *USER, *extra])
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score


@pytest.fixture(scope="module")
def curve(data_dir, trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("curve")
    run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN,
         "--results-dir", str(out), "--importance-subset", "valid", "--prune-step", "0.25"])
    return out, json.loads((out / "curve.json").read_text())


def test_curve_points_match_fairseq_generate(data_dir, trained_ckpt, curve):
    out, obj = curve
    points = obj["curves"]["all"]
    assert [p["fraction"] for p in points] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [p["masked"] for p in points] == [0, 6, 12, 18, 24]
    assert points[0]["bleu"] == pytest.approx(generate_bleu(data_dir, trained_ckpt), abs=1e-9)
    spec = out / "specs" / "curve_all_050.json"
    assert json.loads(spec.read_text())["spec"] == points[2]["spec"]
    assert points[2]["bleu"] == pytest.approx(
        generate_bleu(data_dir, trained_ckpt, "--mask-heads", f"@{spec}"), abs=1e-9)
    for name in ("curve.csv", "curve.png", "importance.json"):
        assert (out / name).stat().st_size > 100


def test_curve_resumes_after_interruption(data_dir, trained_ckpt, curve):
    out, obj = curve
    partial = dict(obj, curves={"all": obj["curves"]["all"][:2]})
    (out / "curve.json").write_text(json.dumps(partial))
    p = run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN,
             "--results-dir", str(out), "--importance-subset", "valid", "--prune-step", "0.25"])
    assert "2 points done" in p.stderr
    again = json.loads((out / "curve.json").read_text())
    strip = lambda pts: [{k: v for k, v in p.items()} for p in pts]
    assert strip(again["curves"]["all"]) == strip(obj["curves"]["all"])


def test_min_heads_per_layer_and_orders():
    shape = {"E": [4, 4], "A": [4]}
    scores = {"E": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], "A": [[0.05, 0.9, 0.95, 0.99]]}
    order = order_by_scores(scores)
    assert order[:3] == [("A", 1, 1), ("E", 1, 1), ("E", 1, 2)]
    chosen = take_with_floor(order, 12, shape, 2)
    assert len(chosen) == 6 and all(len(chosen.of(k, l)) == 2 for k, l in [("E", 1), ("E", 2), ("A", 1)])
    seen = []
    pts = pruning_curve(shape, ("E",), fractions(0.5), lambda m: {"n": len(m)}, order=order,
                        on_point=seen.append)
    assert [p["masked"] for p in pts] == [0, 4, 8] and [p["n"] for p in pts] == [0, 4, 8]
    assert HeadSet.parse(pts[1]["spec"], shape) == HeadSet([("E", 1, h) for h in range(1, 5)])
    # re-estimation is asked for fresh scores with the heads masked so far
    calls = []
    pruning_curve(shape, ("E", "A"), fractions(0.5), lambda m: {},
                  reestimate=lambda masked: calls.append(len(masked)) or scores)
    assert calls == [0, 6]


@pytest.mark.parametrize("extra,message", [
    (["--kinds", "E,X"], "unknown attention kind 'X'"),
    (["--prune-step", "0"], "--prune-step 0.0 is not allowed"),
    (["--order", "ablation"], "--order ablation needs --ablation FILE"),
    (["--order", "fisher", "--reestimate"], "cannot be combined with --order fisher"),
    (["--order", "weight-norm", "--order-seed", "1,2"], "several seeds are for --order random"),
    (["--order", "random", "--order-seed", "1,1"], "--order-seed 1,1 is not allowed (allowed: a seed or a comma list of distinct"),
])
def test_curve_bad_input(data_dir, trained_ckpt, tmp_path, extra, message):
    p = subprocess.run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, "--cpu",
                        "--results-dir", str(tmp_path), *extra], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert message in p.stderr.strip().splitlines()[-1]


def test_importance_file_that_does_not_fit(data_dir, trained_ckpt, tmp_path):
    bad = tmp_path / "imp.json"
    bad.write_text(json.dumps({"E": [[1, 2, 3]], "A": [[1] * 4] * 2, "D": [[1] * 4] * 2}))
    p = subprocess.run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, "--cpu",
                        "--results-dir", str(tmp_path / "o"), "--importance", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "does not fit this model: E has [3] heads per layer there, the model has [4, 4]" in last


def test_weight_norm_order_is_fairseqs_own_rule(data_dir, trained_ckpt):
    """The heads fairseq's ``_get_reserve_head_index`` keeps are the highest of
    ``weight_norm_scores`` in every module (fairseq's code as the reference)."""
    from helpers import load

    from fairseq_headprune.analysis.ranking import weight_norm_scores
    from fairseq_headprune.models import attention_modules

    _, model = load(trained_ckpt, data_dir)
    scores = weight_norm_scores(model)
    for (kind, layer), m in attention_modules(model).items():
        for keep in (1, 2, 3):
            theirs = sorted(start // m.head_dim for start, _ in m._get_reserve_head_index(keep))
            row = scores[kind][layer - 1]
            ours = sorted(sorted(range(len(row)), key=lambda h: -row[h])[:keep])
            assert theirs == ours, (kind, layer, keep)


def test_fisher_order_masks_the_lowest_fisher_scores_first(data_dir, trained_ckpt, tmp_path):
    run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN, "--kinds", "A",
         "--order", "fisher", "--results-dir", str(tmp_path), "--importance-subset", "valid",
         "--importance-max-sentences", "40", "--prune-step", "0.5", "--max-eval-sentences", "8"])
    fisher = json.loads((tmp_path / "importance.json").read_text())["means"]["fisher"]["A"]
    by_score = sorted((v, l, h) for l, row in enumerate(fisher, 1) for h, v in enumerate(row, 1))
    points = json.loads((tmp_path / "curve.json").read_text())["curves"]["A"]
    half = HeadSet(("A", l, h) for _, l, h in by_score[:4])
    assert [p["masked"] for p in points] == [0, 4, 8]
    assert HeadSet.parse(points[1]["spec"], {"E": [4, 4], "A": [4, 4], "D": [4, 4]}) == half


def test_random_orders_of_several_seeds_make_a_band(data_dir, trained_ckpt, tmp_path):
    from fairseq_headprune.analysis.ranking import random_order
    from fairseq_headprune.report.redraw import seed_bands

    run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN, "--kinds", "E",
         "--order", "random", "--order-seed", "3,4,5", "--results-dir", str(tmp_path),
         "--prune-step", "0.5", "--max-eval-sentences", "8"])
    obj = json.loads((tmp_path / "curve.json").read_text())
    assert list(obj["curves"]) == ["E@seed3", "E@seed4", "E@seed5"]
    assert obj["settings"]["order_seed"] == [3, 4, 5]
    shape = {"E": [4, 4], "A": [4, 4], "D": [4, 4]}
    for seed in (3, 4, 5):  # each curve masks its seed's random order
        half = HeadSet(random_order(shape, ("E",), seed)[:4])
        assert HeadSet.parse(obj["curves"][f"E@seed{seed}"][1]["spec"], shape) == half
    points = {n: [(100 * p["fraction"], p["bleu"]) for p in c] for n, c in obj["curves"].items()}
    series, bands, labels = seed_bands(points)
    mid = [points[f"E@seed{s}"][1][1] for s in (3, 4, 5)]
    assert series["E"][1] == (50, pytest.approx(sum(mid) / 3))
    assert bands["E"][1] == (50, min(mid), max(mid)) and "mean of 3 random orders" in labels["E"]
    assert (tmp_path / "curve.png").stat().st_size > 1000
