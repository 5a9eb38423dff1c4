"""Two fixes to fairseq's loading paths, applied on import.

1. ``fairseq-validate`` builds its task from the checkpoint's saved config and only
overwrites keys that config already has, so ``--task translation_headprune`` (and
with it ``--mask-heads``/``--prune-heads``) would be ignored silently for a checkpoint
trained with ``--task translation``. When the overrides name our task explicitly, we
switch the saved task config to it, keeping every saved value.

2. Data-parallel ranks receive rank 0's loaded checkpoint as a pickle holding
DictConfig objects, which torch >= 2.6's safe loader refuses (see
``_broadcast_object_slow``)."""

from fairseq import checkpoint_utils
from fairseq.dataclass import utils as dataclass_utils

TASK_NAME = "translation_headprune"


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
    from fairseq.distributed import utils as distributed_utils

    distributed_utils._broadcast_object_slow = _broadcast_object_slow
