"""Bad checkpoints and bad data folders: one line `fairseq-headprune: error: ...`, exit
status 2, no traceback, nothing created, in every loading path (the fairseq-headprune
commands, fairseq-generate/-validate/-train under the task, the task's own checkpoint
peek, export). An unsafe pickle is refused and never runs."""

import os
import pickle
import re
import subprocess

import pytest
import torch

from conftest import ROOT

import fairseq_headprune  # noqa: F401  (installs the fixes)
from fairseq_headprune.errors import HeadPruneError

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]
FAIRSEQ_FILE = "allowed: a checkpoint written by fairseq-train or fairseq-headprune export"


class Evil:
    """Pickles os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad(trained_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    files = {"missing": str(d / "missing.pt"), "folder": str(d / "folder.pt")}
    os.mkdir(files["folder"])
    files["text"] = str(d / "text.pt")
    with open(files["text"], "w") as f:
        f.write("hello, I am not a checkpoint\n")
    files["empty"] = str(d / "empty.pt")
    open(files["empty"], "w").close()
    raw = open(trained_ckpt, "rb").read()
    files["truncated"] = str(d / "truncated.pt")
    with open(files["truncated"], "wb") as f:
        f.write(raw[: len(raw) // 2])
    files["not_fairseq"] = str(d / "not_fairseq.pt")
    torch.save({"a": 1}, files["not_fairseq"])
    files["unsafe"] = str(d / "unsafe.pt")
    torch.save({"model": Evil(d / "PWNED")}, files["unsafe"])
    files["unsafe_pickle"] = str(d / "unsafe.pkl")  # a plain pickle, not torch's zip
    with open(files["unsafe_pickle"], "wb") as f:
        pickle.dump(Evil(d / "PWNED"), f, protocol=2)
    files["marker"] = str(d / "PWNED")
    files["size_truncated"] = len(raw) // 2
    return files


def expected(bad, case, what="checkpoint"):
    path = bad[case]
    name = f"{what} {path!r}"
    unsafe = (f"{name} was refused as unsafe: it pickles posix.system, which torch's safe "
              f"loader (weights_only=True) does not allow and fairseq checkpoints do not need; "
              f"loading it could run arbitrary code. Only if you trust the file and where it "
              f"came from, load it deliberately with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the "
              f"environment (this switches the protection off for every file the process loads)")
    return {
        "missing": f"{name} does not exist",
        "folder": f"{name} is a folder (allowed: a checkpoint file)",
        "text": f"{name} is not a torch checkpoint: it starts with 'hello, I' (a text or other "
                f"file; {FAIRSEQ_FILE})",
        "empty": f"{name} is empty (0 bytes; {FAIRSEQ_FILE})",
        "truncated": f"{name} is truncated or corrupted ({bad['size_truncated']} bytes; torch "
                     f"cannot read it: PytorchStreamReader failed reading zip archive: failed "
                     f"finding central directory)",
        "not_fairseq": f"{name} is a torch file but not a fairseq checkpoint: it holds a dict "
                       f"with keys 'a', without a 'model' dict of weights ({FAIRSEQ_FILE})",
        "unsafe": unsafe,
        "unsafe_pickle": unsafe,
    }[case]


CASES = ["missing", "folder", "text", "empty", "truncated", "not_fairseq", "unsafe",
         "unsafe_pickle"]


def raises_exactly(message):
    return pytest.raises(HeadPruneError, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("case", CASES)
def test_every_loading_function_gives_one_line(bad, case):
    from fairseq import checkpoint_utils

    from fairseq_headprune.tasks.head_options import heads_removed_in_checkpoint

    message = expected(bad, case)
    with raises_exactly(message):  # fairseq-generate/-validate/-train, export, sessions
        checkpoint_utils.load_checkpoint_to_cpu(bad[case])
    with raises_exactly(message):  # the task's peek at --restore-file/--finetune-from-model
        heads_removed_in_checkpoint(bad[case], model=None)
    with raises_exactly(message):  # fairseq-generate/-validate's loader
        checkpoint_utils.load_model_ensemble([bad[case]])
    assert not os.path.exists(bad["marker"])


def test_unreadable_checkpoint(bad, trained_ckpt, monkeypatch, tmp_path):
    from fairseq import checkpoint_utils

    path = str(tmp_path / "secret.pt")
    with open(path, "wb") as f:
        f.write(open(trained_ckpt, "rb").read(64))
    message = f"checkpoint {path!r} cannot be read: permission denied (allowed: a file you can read)"
    if os.geteuid() != 0:  # root reads anything: simulate the refusal there
        os.chmod(path, 0)
    else:
        real_open = open

        def refusing_open(file, *a, **kw):
            if file == path:
                raise PermissionError(13, "Permission denied", path)
            return real_open(file, *a, **kw)

        monkeypatch.setattr("builtins.open", refusing_open)
    with raises_exactly(message):
        checkpoint_utils.load_checkpoint_to_cpu(path)


def test_unsafe_switch_is_honoured(bad, monkeypatch):
    """With torch's own switch, the user's deliberate choice, the file is unpickled
    unsafely (here: runs os.system, which creates the marker)."""
    from fairseq_headprune.fairseq_fixes import load_checkpoint_file

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(HeadPruneError, match="not a fairseq checkpoint"):
        load_checkpoint_file(bad["unsafe"])  # {"model": os.system's exit status}
    assert os.path.exists(bad["marker"])
    os.unlink(bad["marker"])


def test_fairseq_train_paths(bad, trained_ckpt, tmp_path):
    """--finetune-from-model and --restore-file: checked before fairseq reads them."""
    from types import SimpleNamespace

    from fairseq import checkpoint_utils

    trainer = SimpleNamespace(checkpoint_suffix="")

    def cfg(**kw):
        base = dict(restore_file="checkpoint_last.pt", save_dir=str(tmp_path), continue_once=None,
                    finetune_from_model=None)
        base.update(kw)
        return SimpleNamespace(**base)

    with raises_exactly(expected(bad, "missing", "--finetune-from-model")):
        checkpoint_utils.load_checkpoint(cfg(finetune_from_model=bad["missing"]), trainer)
    with raises_exactly(
            f"--restore-file {bad['missing']!r} does not exist (fairseq-train would silently "
            f"train from scratch; allowed: an existing checkpoint, or leave --restore-file out "
            f"to resume from {tmp_path}/checkpoint_last.pt)"):
        checkpoint_utils.load_checkpoint(cfg(restore_file=bad["missing"]), trainer)
    with raises_exactly(expected(bad, "folder", "--restore-file")):
        checkpoint_utils.load_checkpoint(cfg(restore_file=bad["folder"]), trainer)


def cli(cmd, results=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [l for l in p.stderr.splitlines() if l.startswith("fairseq-headprune: error: ")]
    assert len(lines) == 1 and p.stderr.rstrip().endswith(lines[0]), p.stderr[-3000:]
    if results is not None:
        assert not os.path.exists(results)
    return lines[0][len("fairseq-headprune: error: "):]


@pytest.mark.parametrize("command,case", [("curve", "unsafe"), ("importance", "truncated")])
def test_headprune_command_with_bad_path(data_dir, bad, tmp_path, command, case):
    res = str(tmp_path / "res")
    got = cli(["fairseq-headprune", command, data_dir, "--path", bad[case], "--cpu",
               "--results-dir", res], res)
    assert got == expected(bad, case)
    assert not os.path.exists(bad["marker"])


@pytest.mark.parametrize("tool,case", [("fairseq-generate", "unsafe"),
                                       ("fairseq-generate", "missing"),
                                       ("fairseq-validate", "not_fairseq")])
def test_fairseq_tool_with_bad_path(data_dir, bad, tool, case):
    got = cli([tool, data_dir, "--path", bad[case], "--cpu", "--max-tokens", "4000",
               "--gen-subset" if tool == "fairseq-generate" else "--valid-subset", "valid", *USER])
    assert got == expected(bad, case)
    assert not os.path.exists(bad["marker"])


SPLITS = "its splits: test, test1, test2, test3, train, valid"


def test_bad_data_on_the_command_line(data_dir, trained_ckpt, tmp_path):
    res = str(tmp_path / "res")
    got = cli(["fairseq-headprune", "importance", data_dir, "--path", trained_ckpt, "--cpu",
               "--importance-subset", "nosuch", "--results-dir", res], res)
    assert got == f"--importance-subset 'nosuch' is not a split of {data_dir!r} ({SPLITS})"


def generation_args(data, ckpt, *extra):
    from fairseq import options

    parser = options.get_generation_parser(default_task="translation_headprune")
    parser.add_argument("--importance-subset", default="train")
    return options.parse_args_and_arch(parser, [data, "--path", ckpt, "--cpu", *extra])


def test_bad_data_folders_in_process(data_dir, trained_ckpt, tmp_path):
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_headprune.analysis.data import load_subset
    from fairseq_headprune.analysis.session import Session

    def session(data, *extra):
        return Session(generation_args(data, trained_ckpt, *extra))

    nowhere = str(tmp_path / "nowhere")
    with raises_exactly(f"data folder {nowhere!r} does not exist (allowed: a folder written "
                        f"by fairseq-preprocess)"):
        session(nowhere)
    with raises_exactly(f"--gen-subset 'nosuch' is not a split of {data_dir!r} ({SPLITS})"):
        session(data_dir, "--gen-subset", "nosuch")
    with raises_exactly(f"--gen-subset 'test9' is not a split of {data_dir!r} ({SPLITS})"):
        session(data_dir, "--gen-subset", "test,test9")
    # a copy of the data without the German dictionary
    nodict = tmp_path / "nodict"
    nodict.mkdir()
    for name in os.listdir(data_dir):
        if name.startswith(("valid.", "dict.en")):
            os.symlink(os.path.join(data_dir, name), nodict / name)
    with raises_exactly(f"data folder {str(nodict)!r} has no dictionary dict.de.txt "
                        f"(dictionaries there: dict.en.txt; its splits: valid)"):
        session(str(nodict), "--gen-subset", "valid")
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_exactly(f"data folder {str(empty)!r} holds no binarized fairseq data to infer "
                        f"the language pair from (no SPLIT.SRC-TGT.LANG.idx files; it has: "
                        f"nothing); pass --source-lang/--target-lang or a folder written by "
                        f"fairseq-preprocess"):
        session(str(empty))
    # data.load_subset, where a command asks for a split (the default 'test' included)
    args = generation_args(data_dir, trained_ckpt)
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    with raises_exactly(f"subset 'nosuch' is not in {data_dir!r} ({SPLITS})"):
        load_subset(task, "nosuch")
    # ablate --compare-data (Session.other_task)
    s = session(data_dir, "--gen-subset", "valid")
    with raises_exactly(f"--compare-data {nowhere!r} does not exist (allowed: a folder "
                        f"written by fairseq-preprocess)"):
        s.other_task(nowhere)
    with raises_exactly(f"--compare-data {str(nodict)!r} has no dictionary dict.de.txt "
                        f"(dictionaries there: dict.en.txt; its splits: valid)"):
        s.other_task(str(nodict))


def test_fairseq_train_with_unsafe_restore_file(data_dir, bad, tmp_path):
    from conftest import TINY_ARCH, TRAIN_FLAGS

    save = tmp_path / "save"
    got = cli(["fairseq-train", data_dir, "--save-dir", str(save), "--max-update", "1",
               "--restore-file", bad["unsafe"], *TINY_ARCH, *TRAIN_FLAGS, *USER])
    assert got == expected(bad, "unsafe")
    assert not os.path.exists(bad["marker"])
    assert not save.exists() or not [f for f in os.listdir(save) if f.endswith(".pt")]
