"""A results folder belongs to one run at a time (lock file, stale locks taken over),
temp files of killed runs are removed by the next run, results files get the user's
normal permissions, and a failing run leaves no folder behind."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from fairseq_headprune import results
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.results import LOCK_NAME, TMP_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fairseq_headprune.cli.main", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT, **kw)


def wait_for(path, proc, timeout=300):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


# The second run of the concurrency test: the real command line, imported ahead so that
# it starts the moment the first run's lock appears (not seconds later).
SECOND = """
import os, sys, time
import fairseq_headprune.cli.ablate, fairseq_headprune.cli.common
from fairseq_headprune.cli.main import main
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
sys.exit(main(sys.argv[2:]))
"""


def test_two_runs_on_one_folder(data_dir, trained_ckpt, tmp_path):
    res = tmp_path / "res"
    base = ["ablate", data_dir, "--path", trained_ckpt, "--cpu", "--max-tokens", "2000",
            "--gen-subset", "test", "--results-dir", res, "--metric", "loss", "--kinds", "E",
            "--max-eval-sentences", "16"]
    lock = res / LOCK_NAME
    second = subprocess.Popen([sys.executable, "-c", SECOND, str(lock), *map(str, base),
                               "--bootstrap-samples", "50"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    first = cli(*base, "--bootstrap-samples", "100")
    try:
        out2, err2 = second.communicate(timeout=300)
        out1, err1 = first.communicate(timeout=300)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    assert second.returncode == 2, err2[-3000:]
    last = err2.strip().splitlines()[-1]
    assert last.startswith("fairseq-headprune: error: --results-dir ") and "is in use by another run" in last
    assert f"pid {first.pid} " in last and "fairseq-headprune ablate" in last, last
    assert "Traceback" not in err2
    assert first.returncode == 0, err1[-3000:]
    obj = json.loads((res / "ablation_loss.json").read_text())
    assert obj["complete"] and len(obj["heads"]) == 8 and obj["settings"]["n_samples"] == 100
    left = [n for n in os.listdir(res) if n.startswith(".")]
    assert left == [], left  # lock released, no temp files


KILLED = """
import os, signal, sys
from fairseq_headprune import results
results.claim_folder(sys.argv[1], "killed run")
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write
results.atomic_write(os.path.join(sys.argv[1], "big.json"), b"x" * 2_000_000)
"""


def test_killed_run_leftovers_and_permissions(data_dir, trained_ckpt, tmp_path):
    res, out = tmp_path / "res", tmp_path / "out"
    out.mkdir()
    p = subprocess.run([sys.executable, "-c", KILLED, str(res)], env=ENV, cwd=ROOT, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(res) if n.startswith(TMP_PREFIX + "big.json.")]
    assert len(leftovers) == 1 and (res / leftovers[0]).stat().st_size == 2_000_000
    assert (res / LOCK_NAME).exists()  # its lock, stale now
    (res / ".mine").write_text("not ours to remove")
    # the exported checkpoint's folder: leftovers of that name only
    (out / f"{TMP_PREFIX}small.pt.abcd1234").write_bytes(b"x" * 1000)
    (out / f"{TMP_PREFIX}other.pt.abcd1234").write_bytes(b"x")
    q = cli("export", data_dir, "--path", trained_ckpt, "--cpu", "--prune-heads", "E:1:1",
            "--out", out / "small.pt", "--results-dir", res, preexec_fn=lambda: os.umask(0o022))
    _, err = q.communicate(timeout=300)
    assert q.returncode == 0, err[-3000:]
    assert "took over the stale lock" in err and "killed run" in err, err[-3000:]
    assert sorted(os.listdir(res)) == [".mine", "small.export.json", "small.heads.json"]
    assert sorted(os.listdir(out)) == [f"{TMP_PREFIX}other.pt.abcd1234", "small.pt"]
    for path in (out / "small.pt", res / "small.heads.json", res / "small.export.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_live_owner_is_named_and_dead_owner_taken_over(tmp_path, caplog):
    d = tmp_path / "d"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fairseq_headprune import results; "
         "results.claim_folder(sys.argv[1], 'fairseq-headprune curve X'); print('ready', flush=True); "
         "time.sleep(600)", str(d)], stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(HeadPruneError) as e:
            results.claim_folder(str(d))
        assert f"pid {holder.pid} " in str(e.value) and "fairseq-headprune curve X" in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    results.claim_folder(str(d), "me")  # its owner died: stale, taken over with a warning
    try:
        assert f"pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
        assert json.loads((d / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        results.release_all()
    assert os.listdir(d) == []  # d existed before this claim: kept, lock removed


def test_created_folders_removed_when_left_empty(tmp_path):
    nested = tmp_path / "a" / "b" / "c"
    results.claim_folder(str(nested))
    (nested / "specs").mkdir()
    results.release_all()
    assert not (tmp_path / "a").exists()
    results.claim_folder(str(nested))
    results.write_text(str(nested / "x.txt"), "x")
    results.release_all()
    assert os.listdir(nested) == ["x.txt"]


def test_atomic_write_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        results.write_json(str(tmp_path / "x.json"), {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["x.json"]
