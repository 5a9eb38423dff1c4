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
exits with status 2 instead of a traceback (``errors.install_excepthook``)."""

import argparse

import torch
from fairseq import checkpoint_utils
from fairseq.dataclass import utils as dataclass_utils

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


def install():
    """Apply every fix above (idempotent)."""
    from . import errors

    allow_fairseq_checkpoints()
    errors.install_excepthook()
    patch_task_override()
    patch_distributed_broadcast()
