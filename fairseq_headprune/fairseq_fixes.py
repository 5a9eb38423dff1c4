"""Fixes to fairseq's loading paths (fairseq 0.12.3, torch >= 2.6), each replacing one
fairseq function or default, and the one-line error hook. ``install()`` applies them
all, once; it runs where fairseq's entry points meet this package (the task package,
which ``--user-dir`` imports, and the ``fairseq-headprune`` command).

1. ``torch.load``'s safe loader (``weights_only=True``, torch >= 2.6) refuses the few
harmless globals fairseq checkpoints pickle: they are allow-listed
(``allow_fairseq_checkpoints``), everything else is still refused.

2. ``fairseq-validate`` builds its task from the checkpoint's saved config and only
overwrites keys that config already has, so ``--task translation_headprune`` (and
with it ``--mask-heads``/``--prune-heads``) would be ignored silently for a checkpoint
trained with ``--task translation``. When the overrides name our task explicitly, we
switch the saved task config to it, keeping every saved value.

3. Data-parallel ranks receive rank 0's loaded checkpoint as a pickle holding
DictConfig objects, which torch >= 2.6's safe loader refuses (see
``_broadcast_object_slow``).

4. An uncaught ``HeadPruneError`` prints one line, ``fairseq-headprune: error: ...``, and
exits with status 2 instead of a traceback (``errors.install_excepthook``).

5. ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` (every checkpoint fairseq-generate,
-validate, -interactive and -train read, and this package's commands) turns a missing,
unreadable, empty, truncated, non-fairseq or unsafe file into a raw traceback (OSError,
EOFError, KeyError 'best_loss', PytorchStreamReader RuntimeError, UnpicklingError). It
is replaced by the same function that reads the file with ``load_checkpoint_file``:
``weights_only=True`` passed explicitly, and one line per failure, the unsafe one
saying how a user who trusts the file loads it anyway. ``load_model_ensemble_and_task``
(fairseq-generate/-validate: "Model file not found" OSError) and ``load_checkpoint``
(fairseq-train: ``--finetune-from-model`` missing is a ValueError, an explicit
``--restore-file`` that does not exist silently trains from scratch) check the path first."""

import argparse
import os
import pickle
import re

import torch
from fairseq import checkpoint_utils
from fairseq.dataclass import utils as dataclass_utils

from .errors import HeadPruneError

TASK_NAME = "translation_headprune"


def _fairseq_checkpoint_globals():
    """argparse.Namespace (legacy configs) and numpy scalars/arrays (values such as
    a best validation score that older fairseq versions saved as numpy floats)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    found = [argparse.Namespace, np.dtype, np.ndarray, scalar, _reconstruct]
    # Pickles made with numpy 1 name these numpy.core.*, with numpy 2 numpy._core.*
    found += [(scalar, "numpy.core.multiarray.scalar"),
              (_reconstruct, "numpy.core.multiarray._reconstruct")]
    for name in ("float64", "float32", "float16", "int64", "int32", "bool_"):
        found.append(type(np.dtype(getattr(np, name))))
    return found


def allow_fairseq_checkpoints():
    """Allow-list the globals fairseq checkpoints need (idempotent)."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(_fairseq_checkpoint_globals())


def _switch_task_on_explicit_override(overwrite):
    def overwrite_args_by_name(cfg, overrides):
        overwrite(cfg, overrides)
        if not overrides or overrides.get("task") != TASK_NAME:
            return
        from omegaconf import DictConfig, OmegaConf, open_dict

        task_cfg = cfg.get("task") if "task" in cfg else None
        if not isinstance(task_cfg, DictConfig) or task_cfg.get("_name") == TASK_NAME:
            return
        from .tasks.translation_headprune import TranslationHeadPruneConfig

        values = OmegaConf.to_container(task_cfg, resolve=True)
        values["_name"] = TASK_NAME
        for name in TranslationHeadPruneConfig.__dataclass_fields__:
            if name in overrides:
                values[name] = overrides[name]
        with open_dict(cfg):
            cfg.task = OmegaConf.create(values)

    overwrite_args_by_name._headprune = True
    return overwrite_args_by_name


def patch_task_override():
    """Replaces ``fairseq.checkpoint_utils.overwrite_args_by_name`` (fix 2)."""
    if not getattr(checkpoint_utils.overwrite_args_by_name, "_headprune", False):
        checkpoint_utils.overwrite_args_by_name = _switch_task_on_explicit_override(
            dataclass_utils.overwrite_args_by_name
        )


def _broadcast_object_slow(obj, src_rank, group, dist_device):
    """fairseq's own ``_broadcast_object_slow``, except that the receiving ranks unpickle
    with ``weights_only=False``: the bytes come from rank 0 of our own process group
    (e.g. the checkpoint state it loaded itself under the safe loader), not from a file,
    and they hold DictConfig objects that torch's safe loader refuses."""
    import io

    import torch
    from fairseq.distributed.utils import broadcast, get_rank

    if get_rank(group) == src_rank:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer = torch.ByteTensor(buffer.getbuffer()).to(dist_device)
        length = torch.LongTensor([len(buffer)]).to(dist_device)
        broadcast(length, src=src_rank, group=group)
        broadcast(buffer, src=src_rank, group=group)
        return obj
    length = torch.LongTensor([0]).to(dist_device)
    broadcast(length, src=src_rank, group=group)
    buffer = torch.ByteTensor(int(length.item())).to(dist_device)
    broadcast(buffer, src=src_rank, group=group)
    return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)


def patch_distributed_broadcast():
    """Replaces ``fairseq.distributed.utils._broadcast_object_slow`` (fix 3)."""
    from fairseq.distributed import utils as distributed_utils

    distributed_utils._broadcast_object_slow = _broadcast_object_slow


# -- fix 5: checkpoint files, one line per failure -----------------------------------------

UNSAFE_SWITCH = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_TRUE = ("1", "y", "yes", "true")


def weights_only() -> bool:
    """``weights_only`` for every checkpoint this package reads: True (torch's safe
    loader), unless the user switched the safety off deliberately with torch's own
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (torch ignores that switch where
    ``weights_only=True`` is passed explicitly, so we honour it here)."""
    return os.getenv(UNSAFE_SWITCH, "0").lower() not in _TRUE


def _first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text.split(". ")[0].rstrip(".")


def _unsafe_message(name: str, e: BaseException) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"it pickles {found.group(1)}" if found else _first_sentence(e)
    return (f"{name} was refused as unsafe: {what}, which torch's safe loader "
            f"(weights_only=True) does not allow and fairseq checkpoints do not need; "
            f"loading it could run arbitrary code. Only if you trust the file and where it "
            f"came from, load it deliberately with {UNSAFE_SWITCH}=1 in the environment "
            f"(this switches the protection off for every file the process loads)")


def _describe(state) -> str:
    if isinstance(state, dict):
        keys = ", ".join(repr(k) for k in list(state)[:5]) + (", ..." if len(state) > 5 else "")
        return f"a dict with keys {keys}" if state else "an empty dict"
    return f"a {type(state).__name__}"


def not_fairseq_checkpoint(name: str, state, missing: str = "a 'model' dict of weights"
                           ) -> HeadPruneError:
    return HeadPruneError(
        f"{name} is a torch file but not a fairseq checkpoint: it holds {_describe(state)}, "
        f"without {missing} (allowed: a checkpoint written by fairseq-train or "
        f"fairseq-headprune export)")


def check_checkpoint_path(path: str, what: str = "checkpoint") -> str:
    """One line if ``path`` is not a readable file. Returns the ``what 'path'`` label."""
    name = f"{what} {path!r}"
    if not os.path.lexists(path):
        raise HeadPruneError(f"{name} does not exist")
    if os.path.isdir(path):
        raise HeadPruneError(f"{name} is a folder (allowed: a checkpoint file)")
    if not os.path.isfile(path):
        raise HeadPruneError(f"{name} is not a regular file (allowed: a checkpoint file)")
    return name


def load_checkpoint_file(path: str, what: str = "checkpoint", mmap: bool = False):
    """``torch.load(path, map_location="cpu", weights_only=True)`` (see ``weights_only``)
    of a fairseq checkpoint: a dict with a ``model`` entry. Every failure is one
    HeadPruneError naming the file and what is wrong with it."""
    name = check_checkpoint_path(path, what)
    try:
        f = open(path, "rb")
    except PermissionError:
        raise HeadPruneError(f"{name} cannot be read: permission denied (allowed: a file "
                             f"you can read)") from None
    except OSError as e:
        raise HeadPruneError(f"{name} cannot be read: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        f.seek(0)
        if size == 0:
            raise HeadPruneError(f"{name} is empty (0 bytes; allowed: a checkpoint written by "
                                 f"fairseq-train or fairseq-headprune export)")
        is_zip = head.startswith(b"PK\x03\x04")
        if not is_zip and not head.startswith(b"\x80"):  # zip (torch >= 1.6) or pickle
            start = head.decode("latin-1")
            raise HeadPruneError(
                f"{name} is not a torch checkpoint: it starts with {start!r} (a text or other "
                f"file; allowed: a checkpoint written by fairseq-train or fairseq-headprune export)")
        try:
            state = torch.load(path if (mmap and is_zip) else f, map_location="cpu",
                               weights_only=weights_only(), mmap=bool(mmap and is_zip))
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e):
                raise HeadPruneError(_unsafe_message(name, e)) from None
            raise HeadPruneError(f"{name} is truncated or corrupted ({size} bytes; torch "
                                 f"cannot read it: {_first_sentence(e)})") from None
        except HeadPruneError:
            raise
        except Exception as e:  # EOFError, RuntimeError (zip reader), KeyError, ...
            raise HeadPruneError(f"{name} is truncated or corrupted ({size} bytes; torch "
                                 f"cannot read it: {_first_sentence(e)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise not_fairseq_checkpoint(name, state)
    return state


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's ``checkpoint_utils.load_checkpoint_to_cpu`` (0.12.3), reading the file
    with ``load_checkpoint_file`` (fix 5); the rest is fairseq's code."""
    from fairseq.file_io import PathManager
    from omegaconf import OmegaConf

    local_path = PathManager.get_local_path(path)
    if local_path != path and PathManager.path_requires_pathmanager(path):
        try:
            os.remove(local_path)
        except FileNotFoundError:
            pass
        if load_on_all_ranks:
            torch.distributed.barrier()
        local_path = PathManager.get_local_path(path)

    name = f"checkpoint {path!r}"
    state = load_checkpoint_file(local_path)
    if state.get("cfg") is None and state.get("args") is None:
        raise not_fairseq_checkpoint(name, state, "a 'cfg' or 'args' entry (its config)")

    if "args" in state and state["args"] is not None and arg_overrides is not None:
        args = state["args"]
        for arg_name, arg_val in arg_overrides.items():
            setattr(args, arg_name, arg_val)

    if "cfg" in state and state["cfg"] is not None:
        from omegaconf import __version__ as oc_version
        from omegaconf import _utils

        if oc_version < "2.2":
            old_primitive = _utils.is_primitive_type
            _utils.is_primitive_type = lambda _: True
            state["cfg"] = OmegaConf.create(state["cfg"])
            _utils.is_primitive_type = old_primitive
            OmegaConf.set_struct(state["cfg"], True)
        else:
            state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            checkpoint_utils.overwrite_args_by_name(state["cfg"], arg_overrides)

    try:
        return checkpoint_utils._upgrade_state_dict(state)
    except KeyError as e:  # e.g. no optimizer_history nor best_loss
        raise not_fairseq_checkpoint(name, state, f"the entry {e.args[0]!r}") from None


load_checkpoint_to_cpu._headprune = True


def _check_ensemble_paths(load):
    """fairseq's ``load_model_ensemble_and_task``, after checking that each (shard's)
    file exists: fairseq raises a bare OSError "Model file not found" otherwise."""
    def load_model_ensemble_and_task(filenames, arg_overrides=None, task=None, strict=True,
                                     suffix="", num_shards=1, state=None):
        from fairseq.file_io import PathManager

        if state is None:
            for filename in filenames:
                for shard in range(max(num_shards, 1)):
                    f = checkpoint_utils.get_maybe_sharded_checkpoint_filename(
                        filename, suffix, shard, num_shards)
                    if not PathManager.path_requires_pathmanager(f):
                        check_checkpoint_path(f)
        return load(filenames, arg_overrides=arg_overrides, task=task, strict=strict,
                    suffix=suffix, num_shards=num_shards, state=state)

    load_model_ensemble_and_task._headprune = True
    return load_model_ensemble_and_task


def _check_training_paths(load):
    """fairseq's ``load_checkpoint`` (fairseq-train), after checking the checkpoint it
    will read: a missing ``--finetune-from-model`` is a ValueError traceback there, and a
    missing explicit ``--restore-file`` silently starts training from scratch."""
    def load_checkpoint(cfg, trainer, **passthrough_args):
        from fairseq.file_io import PathManager

        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        if cfg.restore_file == "checkpoint_last.pt":
            last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
            finetune = cfg.finetune_from_model
            if (finetune and not PathManager.exists(last)
                    and getattr(cfg, "continue_once", None) is None):
                check_checkpoint_path(finetune, "--finetune-from-model")
        else:
            restore = cfg.restore_file.replace(".pt", suffix + ".pt")
            if not PathManager.path_requires_pathmanager(restore) and not os.path.lexists(restore):
                raise HeadPruneError(
                    f"--restore-file {restore!r} does not exist (fairseq-train would silently "
                    f"train from scratch; allowed: an existing checkpoint, or leave "
                    f"--restore-file out to resume from {cfg.save_dir}/checkpoint_last.pt)")
            check_checkpoint_path(restore, "--restore-file")
        return load(cfg, trainer, **passthrough_args)

    load_checkpoint._headprune = True
    return load_checkpoint


def patch_checkpoint_loading():
    """Replaces ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` and wraps
    ``load_model_ensemble_and_task`` and ``load_checkpoint`` (fix 5). Callers elsewhere
    (trainer.py, generate.py, train.py) look them up on the module, so they all get it."""
    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "_headprune", False):
        checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    if not getattr(checkpoint_utils.load_model_ensemble_and_task, "_headprune", False):
        checkpoint_utils.load_model_ensemble_and_task = _check_ensemble_paths(
            checkpoint_utils.load_model_ensemble_and_task)
    if not getattr(checkpoint_utils.load_checkpoint, "_headprune", False):
        checkpoint_utils.load_checkpoint = _check_training_paths(checkpoint_utils.load_checkpoint)


def install():
    """Apply every fix above (idempotent)."""
    from . import errors

    allow_fairseq_checkpoints()
    errors.install_excepthook()
    patch_task_override()
    patch_distributed_broadcast()
    patch_checkpoint_loading()
