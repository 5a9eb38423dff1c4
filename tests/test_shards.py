"""Sweeps split with --head-shards N --head-shard-id I and merged by merge-shards: 3 shards
merged give the results files of one run (ablation with two evaluation sets, hypotheses
and cross-domain file; pruning curve with spec files), a shard resumes like a run, the
shard arithmetic, and every refusal is one line naming the file and what differs.

The commands run in-process (``cli.main.main``) to keep the file fast; one merge runs as
the real command-line tool for its exit status and one-line error."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from fairseq_headprune.analysis.shards import (Shard, check_ids, plan_merge, resolve_shard,
                                               shard_items)
from fairseq_headprune.errors import HeadPruneError

EVAL = ["--cpu", "--beam", "1", "--remove-bpe", "--max-tokens", "4000", "--max-len-b", "20",
        "--max-eval-sentences", "10"]
ABLATE = ["--heads", "E:1:1-2 A:2:* D:1:3-4", "--gen-subset", "valid,test",
          "--bootstrap-samples", "100", "--bootstrap-workers", "0"]
CURVE = ["--gen-subset", "valid", "--order", "random", "--prune-step", "0.25"]


def cli(*argv):
    from fairseq_headprune.cli.main import main

    return main([str(a) for a in argv])


def load(path):
    with open(path) as f:
        return json.load(f)


def files(folder):
    """{relative path: bytes} of every file below ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def same_results(single, merged, names, skip=("meta", "timing")):
    for name in names:
        a, b = load(single / name), load(merged / name)
        assert set(a) == set(b), name
        for key in a:
            if key not in skip:
                assert a[key] == b[key], f"{name}: {key} differs"


# ------------------------------------------------------------ shard arithmetic
def test_shard_items_ids_and_slurm_default():
    assert shard_items(list(range(10)), 1, 3) == [1, 4, 7]
    assert sorted(sum((shard_items(range(10), i, 3) for i in range(3)), [])) == list(range(10))
    assert resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "1"}) is None
    assert resolve_shard(3, None, {"SLURM_ARRAY_TASK_ID": "2"}) == Shard(2, 3)
    assert resolve_shard(3, 0, {"SLURM_ARRAY_TASK_ID": "2"}) == Shard(0, 3)
    for count, index, env, message in [
        (None, 1, {}, "--head-shard-id 1 needs --head-shards N"),
        (3, 3, {}, "--head-shard-id 3 is out of range for --head-shards 3 (allowed: 0 to 2)"),
        (3, None, {}, "--head-shards 3 needs --head-shard-id I (allowed: 0 to 2; default: "
                      "$SLURM_ARRAY_TASK_ID"),
        (3, None, {"SLURM_ARRAY_TASK_ID": "3"}, "--head-shard-id 3 (from $SLURM_ARRAY_TASK_ID) "
                                                "is out of range for --head-shards 3"),
        (2, None, {"SLURM_ARRAY_TASK_ID": "a"}, "$SLURM_ARRAY_TASK_ID is 'a', no shard id"),
    ]:
        with pytest.raises(HeadPruneError) as e:
            resolve_shard(count, index, env)
        assert message in str(e.value)
    with pytest.raises(HeadPruneError, match="more than the 2 heads to ablate .allowed: 1 to 2"):
        Shard(0, 3).items(["a", "b"], "heads to ablate")
    assert check_ids([("b", 1, 2), ("a", 0, 2)]) == 2
    for shards, message in [
        ([("a", 0, 3), ("b", 1, 4)], "b is a shard of --head-shards 4, a of --head-shards 3"),
        ([("a", 0, 2), ("b", 0, 2)], "b and a are both shard 0 of 2"),
        ([("a", 0, 3), ("b", 2, 3)], "shard 1 of 3 is missing"),
    ]:
        with pytest.raises(HeadPruneError) as e:
            check_ids(shards)
        assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("command,extra,message", [
    ("ablate", ["--head-shard-id", "1"], "--head-shard-id 1 needs --head-shards N"),
    ("ablate", ["--head-shards", "3", "--head-shard-id", "3"],
     "--head-shard-id 3 is out of range for --head-shards 3 (allowed: 0 to 2)"),
    ("ablate", ["--head-shards", "0"], "--head-shards 0 is not allowed (allowed: a whole number >= 1)"),
    ("curve", ["--head-shards", "2", "--head-shard-id", "0", "--order", "random", "--reestimate"],
     "--reestimate cannot be split with --head-shards"),
    ("curve", ["--head-shards", "2", "--head-shard-id", "0"],
     "--head-shards with --order importance needs --importance FILE"),
    ("curve", ["--head-shards", "6", "--head-shard-id", "0", "--order", "random",
               "--prune-step", "0.25"],
     "--head-shards 6 is more than the 5 points of the curve (--prune-step 0.25) (allowed: 1 to 5)"),
])
def test_bad_shard_options_are_one_line_before_the_model_loads(data_dir, tmp_path, command,
                                                              extra, message):
    out = tmp_path / "res"
    with pytest.raises(HeadPruneError) as e:  # no such checkpoint: nothing is loaded
        cli(command, data_dir, "--path", tmp_path / "none.pt", "--cpu", "--results-dir", out, *extra)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


# ------------------------------------------------------------ 3 shards == one run
@pytest.fixture(scope="module")
def ablation_runs(data_dir, trained_ckpt, tmp_path_factory):
    """One run, and the same sweep as 3 shards (shard 1 interrupted once, then resumed)."""
    base = tmp_path_factory.mktemp("shards_ablate")
    args = [data_dir, "--path", trained_ckpt, *EVAL, *ABLATE]
    assert cli("ablate", *args, "--results-dir", base / "single") == 0
    mp = pytest.MonkeyPatch()
    for i in (2, 0, 1):
        shard = ["--results-dir", base / f"s{i}", "--head-shards", 3]
        if i == 1:
            mp.setenv("HEADPRUNE_ABLATE_STOP_AFTER", "1")
            assert cli("ablate", *args, *shard, "--head-shard-id", 1) == 130
            mp.delenv("HEADPRUNE_ABLATE_STOP_AFTER")
            part = load(base / "s1" / "ablation.json")
            assert len(part["heads"]) == 1 and not part["complete"]
            mp.setenv("SLURM_ARRAY_TASK_ID", "1")  # the id from a Slurm array job
            assert cli("ablate", *args, *shard) == 0
            mp.delenv("SLURM_ARRAY_TASK_ID")
        else:
            assert cli("ablate", *args, *shard, "--head-shard-id", i) == 0
    mp.undo()
    return base


def test_three_ablation_shards_merged_equal_one_run(ablation_runs, capsys):
    base = ablation_runs
    s1 = load(base / "s1" / "ablation.json")
    assert s1["timing"]["runs"] == 2 and s1["complete"]  # resumed, as a run resumes
    # round robin over the sorted heads: E:1:1 A:2:2 D:1:3 | E:1:2 A:2:3 D:1:4 | A:2:1 A:2:4
    assert s1["requested"] == "E:1:2 A:2:3 D:1:4" and s1["settings"]["shard"]["index"] == 1
    assert cli("merge-shards", base / "merged", base / "s1", base / "s2", base / "s0") == 0
    assert "ablation.json: merged 3 shards" in capsys.readouterr().out
    single, merged = base / "single", base / "merged"
    same_results(single, merged, ["ablation.json", "ablation.test.json", "cross_domain.json"])
    assert "shard" not in load(merged / "ablation.json")["settings"]
    assert len(load(merged / "ablation.json")["meta"]["shards"]) == 3
    a, b = files(single), files(merged)
    assert sorted(a) == sorted(b)
    for name in a:  # tables, and the hypotheses of every ablated model
        if name.endswith((".csv", ".md", ".txt")):
            assert a[name] == b[name], name
    assert any(n.startswith("ablation_hyps/") for n in a)


@pytest.fixture(scope="module")
def curve_runs(data_dir, trained_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("shards_curve")
    args = [data_dir, "--path", trained_ckpt, *EVAL, *CURVE]
    cli("curve", *args, "--results-dir", base / "single")
    for i in range(3):
        cli("curve", *args, "--results-dir", base / f"s{i}", "--head-shards", 3, "--head-shard-id", i)
    return base


def test_three_curve_shards_merged_equal_one_run(curve_runs):
    base = curve_runs
    assert [p["fraction"] for p in load(base / "s1" / "curve.json")["curves"]["all"]] == [0.25, 1.0]
    assert cli("merge-shards", base / "merged", *(base / f"s{i}" for i in range(3))) == 0
    single, merged = base / "single", base / "merged"
    same_results(single, merged, ["curve.json"], skip=("meta",))
    a, b = files(single), files(merged)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith((".csv", ".json")) and name != "curve.json":
            assert a[name] == b[name], name
    # a merged folder is not merged over without --overwrite
    with pytest.raises(HeadPruneError, match="already holds curve.json"):
        cli("merge-shards", base / "merged", *(base / f"s{i}" for i in range(3)))
    assert cli("merge-shards", base / "merged", *(base / f"s{i}" for i in range(3)), "--overwrite") == 0


# ------------------------------------------------------------ refusals
def edit(path, change):
    obj = load(path)
    change(obj)
    path.write_text(json.dumps(obj))


def test_merge_refuses_shards_that_do_not_fit(ablation_runs, curve_runs, tmp_path):
    def copies(base, n=3):
        dirs = []
        for i in range(n):
            d = tmp_path / f"{base.name}_s{i}"
            if not d.exists():
                shutil.copytree(base / f"s{i}", d)
            dirs.append(d)
        return dirs

    def refused(dirs, message, out="out"):
        with pytest.raises(HeadPruneError) as e:
            plan_merge(str(tmp_path / out), [str(d) for d in dirs])
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / out).exists()
        return str(e.value)

    a = copies(ablation_runs)
    refused(a[:2], "shard 2 of 3 is missing")
    dup = tmp_path / "dup"
    shutil.copytree(a[1], dup)
    refused([a[0], a[1], dup, a[2]], "are both shard 1 of 3")
    refused([a[0], a[1], a[1]], "is named twice")
    refused([a[0], ablation_runs / "single"], "was not made with --head-shards")
    refused([a[0], a[1], curve_runs / "s2"], "holds ablation.json")
    # one file edited at a time, restored after
    cases = [
        ("ablation.test.json", lambda o: o["settings"].update(seed=7),
         "ablation.test.json' was made with other settings than"),
        ("ablation.json", lambda o: o["baseline"].update(score=1.5),
         "has another full-model baseline than"),
        ("ablation.json", lambda o: o.update(alpha=0.05), "has another alpha than"),
        ("ablation.json", lambda o: (o["heads"].pop(), o.update(complete=False)),
         "is not complete: 1 of 2 heads done; rerun that shard's command"),
        ("ablation.json", lambda o: o["settings"]["shard"].update(count=4),
         "is a shard of --head-shards 4"),
    ]
    for name, change, message in cases:
        before = (a[2] / name).read_text()
        edit(a[2] / name, change)
        assert str(a[2] / name) in refused(a, message)
        (a[2] / name).write_text(before)
    c = copies(curve_runs)
    edit(c[1] / "curve.json", lambda o: o["curves"]["all"].pop())
    refused(c, "is not complete: curve 'all' has 1 of its 2 points")
    shutil.rmtree(c[1])
    shutil.copytree(curve_runs / "s1", c[1])
    # another ranking in one shard: its 75% point does not hold the 50% point's heads
    edit(c[0] / "curve.json", lambda o: o["curves"]["all"][1].update(spec="E:1:1"))
    refused(c, "the shards ranked the heads differently")


def test_merge_error_is_one_line_with_status_2(ablation_runs, tmp_path):
    p = subprocess.run(["fairseq-headprune", "merge-shards", str(tmp_path / "out"),
                        str(ablation_runs / "s0"), str(ablation_runs / "s1")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "fairseq-headprune: error: shard 2 of 3 is missing (given: 2 of 3; allowed: every "
        "--head-shard-id from 0 to N-1 once, all with the same --head-shards N)")
    assert not (tmp_path / "out").exists()
