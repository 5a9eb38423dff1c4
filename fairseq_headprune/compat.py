"""One fix to fairseq's loading path, applied on import.

``fairseq-validate`` builds its task from the checkpoint's saved config and only
overwrites keys that config already has, so ``--task translation_headprune`` (and
with it ``--mask-heads``/``--prune-heads``) would be ignored silently for a checkpoint
trained with ``--task translation``. When the overrides name our task explicitly, we
switch the saved task config to it, keeping every saved value."""

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
