"""Numeric options and head specs: one range rule per option, the same in every command
that has it, checked before the model loads; a bad value is one line, exit status 2,
no traceback, nothing created (issue: every bad input gets one line)."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.results import read_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "fairseq_headprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def assert_one_line(p, *texts):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-headprune") and ": error: " in last, last
    for text in texts:
        assert text in last, last
    return last


def common(data_dir, ckpt, results):
    return [data_dir, "--path", ckpt, "--cpu", "--max-tokens", "2000", "--gen-subset", "test",
            "--results-dir", results]


# -- the real command line, representative cases ----------------------------------------

REAL = [
    ("curve", ["--beam", "0"], ["--beam 0 is not allowed (allowed: a whole number >= 1)"]),
    ("one-head", ["--alpha", "5"], ["--alpha 5 is out of range (allowed: a number with 0 < x < 1)"]),
    ("ablate", ["--max-eval-sentences", "0", "--metric", "loss"],
     ["--max-eval-sentences 0 is not allowed (allowed: a whole number >= 1; leave the option out for all)"]),
    ("export", ["--prune-heads", "   "], ["--prune-heads '   ' is empty"]),
    ("curve", ["--lenpen", "inf"], ["--lenpen inf is not allowed (allowed: a finite number)"]),
]


@pytest.mark.parametrize("cmd,extra,texts", REAL, ids=[f"{c}{e[0]}" for c, e, _ in REAL])
def test_real_cli_refuses_with_one_line(data_dir, trained_ckpt, tmp_path, cmd, extra, texts):
    res = tmp_path / "res"
    argv = common(data_dir, trained_ckpt, res) + extra
    if cmd == "export":
        argv += ["--out", tmp_path / "out" / "x.pt"]
        (tmp_path / "out").mkdir()
    assert_one_line(cli(cmd, *argv), *texts)
    assert not res.exists()
    assert not (tmp_path / "out" / "x.pt").exists()


def test_bad_importance_file_is_one_line_and_leaves_no_folder(data_dir, trained_ckpt, tmp_path):
    bad = tmp_path / "imp.json"
    bad.write_text('{"E": [[NaN, 1, 1, 1], [1, 1, 1, 1]]}')
    res = tmp_path / "a" / "res"  # two folders this run would create
    p = cli("curve", *common(data_dir, trained_ckpt, res), "--importance", bad,
            "--prune-step", "0.5", "--max-eval-sentences", "4")
    assert_one_line(p, repr(str(bad)), "holds NaN")
    assert not (tmp_path / "a").exists()


# -- every option's rule, in-process (fast: nothing past the parser runs) ---------------

def refuse(cmd, argv, text):
    module = importlib.import_module(f"fairseq_headprune.cli.{cmd}")
    try:
        module.main([str(a) for a in argv])
    except HeadPruneError as e:  # argparse's errors too (cli/common.parse_args)
        assert "\n" not in str(e) and text in str(e), str(e)
    else:
        pytest.fail(f"{cmd} {argv} was accepted")


CASES = [
    # (commands sharing the option, option and value, text of the line)
    (("curve", "one_head", "ablate"), ["--max-eval-sentences", "0"], "leave the option out for all"),
    (("curve", "one_head", "ablate"), ["--max-eval-sentences", "-2"], "a whole number >= 1"),
    (("curve", "importance"), ["--importance-max-sentences", "0"], "a whole number >= 1"),
    (("curve", "importance"), ["--importance-max-batches", "0"], "a whole number >= 1"),
    (("curve", "importance"), ["--importance-eps", "0"], "a finite number > 0"),
    (("curve", "importance"), ["--importance-eps", "nan"], "a finite number > 0"),
    (("curve", "importance"), ["--importance-loss-scale", "-1"], "a finite number > 0"),
    (("one_head", "ablate"), ["--bootstrap-samples", "0"], "a whole number >= 1"),
    (("one_head", "ablate"), ["--alpha", "5"], "0 < x < 1"),
    (("one_head", "ablate"), ["--alpha", "nan"], "0 < x < 1"),
    (("one_head", "ablate"), ["--bootstrap-seed", "0"], "--bootstrap-seed 0"),
    (("one_head",), ["--select-sentences", "0"], "--select-sentences 0"),
    (("curve", "export", "bench"), ["--min-heads-per-layer", "-1"], "a whole number >= 0"),
    (("export", "bench"), ["--prune-ratio", "2"], "--prune-ratio 2 is outside [0, 1]"),
    (("export", "bench"), ["--prune-ratio", "inf"], "--prune-ratio inf is outside [0, 1]"),
    (("export", "bench"), ["--prune-heads", ""], "--prune-heads '' is empty"),
    (("export", "bench"), ["--prune-heads", " ; "], "is empty"),
    (("curve", "one_head", "ablate", "importance", "export", "bench"), ["--beam", "0"],
     "--beam 0 is not allowed"),
    (("curve", "bench"), ["--lenpen", "nan"], "--lenpen nan is not allowed"),
    (("curve",), ["--prune-step", "nan"], "--prune-step nan is not allowed (allowed: a finite number)"),
    (("curve",), ["--prune-step", "0"], "--prune-step 0"),
    (("ablate",), ["--heads", "  "], "--heads '  ' is empty"),
    (("ablate",), ["--bootstrap-workers", "-1"], "a whole number >= 0"),
    (("bench",), ["--threads", "0"], "a whole number >= 1"),
    (("bench",), ["--repeats", "0"], "a whole number >= 1"),
    (("bench",), ["--warmup", "-1"], "a whole number >= 0"),
    (("bench",), ["--bench-sentences", "0"], "a whole number >= 1"),
]


@pytest.mark.parametrize("cmds,extra,text", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_one_rule_per_option_in_every_command(data_dir, trained_ckpt, tmp_path, cmds, extra, text):
    for cmd in cmds:
        res = tmp_path / "res"
        argv = common(data_dir, trained_ckpt, res) + extra
        if cmd in ("export", "bench") and "--prune-heads" not in extra and "--prune-ratio" not in extra:
            argv += ["--prune-heads", "E:1:1"]
        if cmd == "export":
            argv += ["--out", tmp_path / "x.pt"]
        refuse(cmd, argv, text)
        assert not res.exists() and not (tmp_path / "x.pt").exists()


def test_results_dir_that_is_a_file(data_dir, trained_ckpt, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    refuse("importance", common(data_dir, trained_ckpt, f), f"--results-dir {str(f)!r} is a file")
    refuse("curve", common(data_dir, trained_ckpt, f / "sub"), "cannot be created")


@pytest.mark.parametrize("text,message", [
    ('{"a": NaN}', "holds NaN (allowed: finite numbers only)"),
    ('{"a": [1, -Infinity]}', "holds -Infinity (allowed: finite numbers only)"),
    ('{"a": 1e400}', "holds the number 1e400, which overflows to infinity"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"a": ', "not valid JSON"),
])
def test_read_json_refuses_non_finite_and_deep(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(HeadPruneError) as e:
        read_json(str(path), "importance file")
    assert message in str(e.value) and repr(str(path)) in str(e.value) and "\n" not in str(e.value)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"a": [1.5, 1e300, -2]}))
    assert read_json(str(ok)) == {"a": [1.5, 1e300, -2]}
