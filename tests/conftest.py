"""Shared fixtures: a small real Multi30k de->en data set (sacremoses + subword-nmt +
fairseq-preprocess, through data-prep/prepare-multi30k.sh) and a small model trained
on it by the real fairseq-train. Both are built once per session; set
HEADPRUNE_TEST_CACHE=DIR to keep them between sessions while developing. pytest.ini runs
the test files on parallel pytest-xdist workers, which build these once and share them."""

import os
import shutil
import subprocess
import sys

import pytest
from filelock import FileLock

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # one thread per worker (and per command it starts): workers that each run torch on
    # every core slow each other down several times over
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("HEADPRUNE_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# A tiny but real model: 2+2 layers, 4 heads, d=64.
TINY_ARCH = [
    "--arch", "transformer_iwslt_de_en",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
]
TRAIN_FLAGS = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--dropout", "0.1", "--max-tokens", "3000", "--cpu", "--seed", "1",
    "--no-progress-bar", "--log-interval", "100", "--no-epoch-checkpoints",
    "--num-workers", "0",
]


def run(cmd, **kw):
    """Run a real command-line tool; fail the test with its output if it fails."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=kw.pop("cwd", ROOT), **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def run_gloo_workers(cmd, world: int = 2, timeout: int = 300):
    """``cmd`` (a fairseq-train command line) on ``world`` gloo workers of this machine,
    legacy_ddp (rank 0 broadcasts the state); fails the test with their output if one
    fails; returns their outputs, rank 0 first."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = []
    try:
        for rank in range(world):
            flags = ["--distributed-world-size", str(world), "--distributed-rank", str(rank),
                     "--distributed-no-spawn", "--distributed-backend", "gloo",
                     "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--ddp-backend", "legacy_ddp"]
            procs.append(subprocess.Popen([*cmd, *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if not all(p.returncode == 0 for p in procs):
        raise AssertionError("\n".join(o[-3000:] for o in outs))
    return outs


def _cache_dir(tmp_path_factory, name):
    """A folder shared by this run's xdist workers (or HEADPRUNE_TEST_CACHE/name); build
    what goes in it under ``_building``."""
    base = os.environ.get("HEADPRUNE_TEST_CACHE")
    if not base:
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # each worker's basetemp is a folder of the run's
        base = os.path.join(base, "shared")
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


def _building(path):
    """A lock on ``path``: the first worker builds it, the others wait and reuse it."""
    return FileLock(path.rstrip(os.sep) + ".lock")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """fairseq-binarized Multi30k de-en: 6000 training pairs, 120-pair valid/test sets,
    test3 = IWSLT14 test (out of domain). Without ../shared/data, Multi30k is downloaded
    as the demo does, and test3 is the mscoco test set (test2, the other domain); the
    tests that need the data skip, saying why, only where that download fails."""
    out = os.path.join(_cache_dir(tmp_path_factory, "data"), "m30k")
    with _building(out):
        _prepare_multi30k(out)
    return os.path.join(out, "bin")


def _prepare_multi30k(out):
    if not os.path.isdir(os.path.join(out, "bin")):
        _prepare("prepare-multi30k.sh", out, "--max-train", "6000", "--max-test", "120",
                 "--bpe-merges", "2000", ood=True)
        bin_dir = os.path.join(out, "bin")
        if not os.path.isdir(os.path.join(SHARED, "multi30k")):
            for name in os.listdir(bin_dir):
                if name.startswith("test2."):
                    shutil.copy(os.path.join(bin_dir, name),
                                os.path.join(bin_dir, "test3." + name[len("test2."):]))


def prepare_command(script, out, *args, ood=False):
    """data-prep/SCRIPT on ../shared/data/multi30k when it exists, else on Multi30k
    downloaded as the demo does."""
    cmd = ["bash", os.path.join(ROOT, "data-prep", script), "--out", str(out), *args]
    if os.path.isdir(os.path.join(SHARED, "multi30k")):
        cmd += ["--local", os.path.join(SHARED, "multi30k")]
        cmd += ["--ood", os.path.join(SHARED, "iwslt14-test")] if ood else []
    return cmd


def _prepare(script, out, *args, ood=False):
    """``prepare_command``; skips the test, saying why, where the download fails."""
    cmd = prepare_command(script, out, *args, ood=ood)
    if os.path.isdir(os.path.join(SHARED, "multi30k")):
        run(cmd)  # local data: a failure is a failure
        return
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"no shared data at {SHARED} and Multi30k could not be downloaded ({last})")


PAIRS_ARGS = ("--max-train", "200", "--max-test", "20", "--bpe-merges", "300")


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory):
    """data-prep/prepare-pairs.sh on the first 200 Multi30k training pairs and 20 of each
    test set: fairseq's sentence_prediction layout (input0/, input1/, label/). Without
    ../shared/data, on Multi30k downloaded as ``data_dir`` does."""
    out = os.path.join(_cache_dir(tmp_path_factory, "data"), "pairs")
    with _building(out):
        if not os.path.isdir(os.path.join(out, "bin", "label")):
            _prepare("prepare-pairs.sh", out, *PAIRS_ARGS)
    return out


# fairseq's roberta_base architecture at small dimensions (2 layers, 4 heads, d=32)
CLASSIFIER_ARCH = [
    "--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4", "--num-classes", "2",
    "--init-token", "0", "--separator-token", "2", "--criterion", "sentence_prediction",
]


@pytest.fixture(scope="session")
def classifier_ckpt(pairs_dir, tmp_path_factory):
    """A small sentence-pair classifier trained by stock fairseq-train (task
    'sentence_prediction', no user dir) on ``pairs_dir``: 200 updates, enough that
    masking heads changes predictions (test accuracy 57.5%, chance 50%)."""
    save = os.path.join(_cache_dir(tmp_path_factory, "ckpt"), "classifier")
    ckpt = os.path.join(save, "checkpoint_last.pt")
    with _building(save):
        if not os.path.exists(ckpt):
            _train_classifier(pairs_dir, save)
    return ckpt


def _train_classifier(pairs_dir, save):
    shutil.rmtree(save, ignore_errors=True)
    run(["fairseq-train", os.path.join(pairs_dir, "bin"), "--task", "sentence_prediction",
         *CLASSIFIER_ARCH, "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed",
         "--batch-size", "16", "--max-update", "200", "--dropout", "0.1",
         "--disable-validation", "--save-interval", "1000",
         "--save-dir", save, "--no-epoch-checkpoints", "--cpu", "--seed", "1",
         "--num-workers", "0", "--no-progress-bar", "--log-interval", "100"])


@pytest.fixture(scope="session")
def tiny_data(data_dir, tmp_path_factory):
    """A data dir for short fairseq-train runs: train = the 120 Multi30k valid pairs,
    valid and test = the 120 test pairs (same dictionaries as ``data_dir``)."""
    out = tmp_path_factory.mktemp("tinydata")
    for f in os.listdir(data_dir):
        if f.startswith("dict."):
            shutil.copy(os.path.join(data_dir, f), out / f)
    for lang in ("de", "en"):
        for ext in ("bin", "idx"):
            shutil.copy(os.path.join(data_dir, f"valid.de-en.{lang}.{ext}"), out / f"train.de-en.{lang}.{ext}")
            for split in ("valid", "test"):
                shutil.copy(os.path.join(data_dir, f"test.de-en.{lang}.{ext}"), out / f"{split}.de-en.{lang}.{ext}")
    return str(out)


def train(data, save_dir, extra=(), task="translation", updates=600, user_dir=True):
    cmd = ["fairseq-train", data, "--save-dir", save_dir, "--task", task,
           "--max-update", str(updates), *TINY_ARCH, *TRAIN_FLAGS, *extra]
    if user_dir:
        cmd += ["--user-dir", os.path.join(ROOT, "fairseq_headprune")]
    return run(cmd)


@pytest.fixture(scope="session")
def trained_ckpt(data_dir, tmp_path_factory):
    """A tiny model trained by stock fairseq (task 'translation', no user dir)."""
    save = os.path.join(_cache_dir(tmp_path_factory, "ckpt"), "stock")
    ckpt = os.path.join(save, "checkpoint_last.pt")
    with _building(save):
        if not os.path.exists(ckpt):
            shutil.rmtree(save, ignore_errors=True)
            train(data_dir, save, updates=900, user_dir=False)
    return ckpt


def generate_output(cmd):
    """Run a fairseq-generate command; its H- (hypothesis, after the score), T-
    (reference) and A- (alignment) lines as {"H": {id: text}, "T": ..., "A": ...}."""
    out = {"H": {}, "T": {}, "A": {}}
    for line in run(cmd).stdout.splitlines():
        kind = line[:2]
        if kind in ("H-", "T-", "A-"):
            i, text = line[2:].split("\t", 1)
            out[kind[0]][int(i)] = text.split("\t", 1)[1] if kind == "H-" else text
    return out


def generate_lines(cmd):
    """Run a fairseq-generate command; its hypotheses and references in id order."""
    out = generate_output(cmd)
    ids = sorted(out["T"])
    return [out["H"][i] for i in ids], [out["T"][i] for i in ids]


@pytest.fixture(scope="module")
def tiny_float64(data_dir):
    """A small random float64 model (seed 3) and 5 valid sentences. fairseq's attention
    softmax always runs in float32: it is kept in float64 for float64 models here, so
    that finite differences are accurate to ~1e-8."""
    import torch
    from fairseq import utils

    from helpers import batch, build

    mp = pytest.MonkeyPatch()
    softmax = utils.softmax
    mp.setattr(utils, "softmax", lambda x, dim, onnx_trace=False: (
        torch.softmax(x, dim=dim) if x.dtype == torch.float64 else softmax(x, dim, onnx_trace)))
    task, model, _ = build(data_dir, seed=3)
    model = model.double().eval()
    yield task, model, batch(task, "valid", n=5)
    mp.undo()


# The longest test files first: parallel workers take whole files in collection order
# (pytest.ini: --no-loadscope-reorder), and a long file taken last would leave one
# worker running alone at the end.
LONGEST_FIRST = ["test_recipes.py", "test_curve.py", "test_dynamics.py", "test_export.py",
                 "test_train_pruning.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
