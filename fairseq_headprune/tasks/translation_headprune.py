"""Task ``translation_headprune``: fairseq's translation task whose models have
head-aware attention, plus ``--mask-heads`` and ``--prune-heads``.

Every model this task builds (training, ``fairseq-generate``, ``-validate``,
``-interactive``, hub loading) gets ``HeadMaskedMultiheadAttention`` in all E/A/D
modules. Heads removed earlier (recorded in the model config as ``pruned_heads``) and
heads in ``--prune-heads`` are removed before the weights load; the attention modules
slice the incoming (full or pruned) checkpoint to fit, so a stock checkpoint, a pruned
checkpoint and resumed training all load with no conversion step.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..heads import HeadSet, HeadSpec
from ..models.head_model import (
    attention_modules,
    install_head_attention,
    model_head_shape,
    recorded_removed_heads,
    remove_heads,
    set_head_mask,
)

logger = logging.getLogger(__name__)

SPEC_HELP = (
    "heads as KIND:LAYERS:HEADS entries separated by spaces or ';' (KIND E, A or D; "
    "1-based numbers, ranges 2-5, comma lists or *), e.g. 'E:1:6,8 A:5-6:*', "
    "or @file.json as written by fairseq-headprune"
)


@dataclass
class TranslationHeadPruneConfig(TranslationConfig):
    mask_heads: Optional[str] = field(
        default=None, metadata={"help": "mask these heads (their context is zeroed): " + SPEC_HELP}
    )
    prune_heads: Optional[str] = field(
        default=None,
        metadata={"help": "physically remove these heads before use: " + SPEC_HELP},
    )


@register_task("translation_headprune", dataclass=TranslationHeadPruneConfig)
class TranslationHeadPruneTask(TranslationTask):
    cfg: TranslationHeadPruneConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        # Parse now so that a malformed spec or missing file fails before any work.
        self.mask_spec = HeadSpec.parse(cfg.mask_heads)
        self.prune_spec = HeadSpec.parse(cfg.prune_heads)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        install_head_attention(model)
        shape = model_head_shape(model)
        to_remove = HeadSpec.parse(recorded_removed_heads(cfg)).resolve(shape)
        to_remove = to_remove | self.prune_spec.resolve(shape)
        if not from_checkpoint:
            # fairseq-train builds the model from the command line, then loads
            # --restore-file / --finetune-from-model: build it as small as that
            # checkpoint, so that the parameter count fairseq logs, the optimizer, EMA
            # and data-parallel wrappers all see the smaller model from the start.
            path = training_checkpoint_path(cfg)
            if path is not None:
                found = heads_removed_in_checkpoint(path, model)
                if found - to_remove:
                    logger.info(f"{path} has {len(found)} attention heads removed: "
                                f"building the model without them")
                to_remove = to_remove | found
        if to_remove:
            removed = remove_heads(model, to_remove, model_cfg=cfg)
            logger.info(f"removed {len(removed)} attention heads: {removed.to_spec()}")
        mask = self.mask_spec.resolve(shape)
        if mask:
            set_head_mask(model, mask)
            logger.info(f"masked {len(mask)} attention heads: {mask.to_spec()}")
        return model


def _cfg_get(cfg, key):
    if isinstance(cfg, dict):
        return cfg.get(key)
    try:
        return getattr(cfg, key, None)
    except Exception:  # a struct DictConfig without the key
        return None


def training_checkpoint_path(cfg) -> Optional[str]:
    """The checkpoint fairseq-train will load (fairseq.checkpoint_utils.load_checkpoint's
    choice), when the model config carries the checkpoint options (legacy architectures
    get the whole command line as their config); None otherwise or if it is missing."""
    restore, save_dir = _cfg_get(cfg, "restore_file"), _cfg_get(cfg, "save_dir")
    if not restore or save_dir is None:
        return None
    suffix = _cfg_get(cfg, "checkpoint_suffix") or ""
    if restore == "checkpoint_last.pt":
        path = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
        finetune = _cfg_get(cfg, "finetune_from_model")
        if not os.path.exists(path) and finetune:
            path = finetune
    else:
        path = restore.replace(".pt", suffix + ".pt")
    return path if os.path.isfile(path) else None


def heads_removed_in_checkpoint(path: str, model) -> HeadSet:
    """Heads missing from a checkpoint: its ``head_index`` buffers, plus the removals
    recorded in its model config, mapped onto ``model``'s attention modules."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True)
    except RuntimeError:  # not a zip-format file: no mmap
        state = torch.load(path, map_location="cpu")
    weights = state.get("model") or {}
    names = {id(m): n for n, m in model.named_modules()}
    heads = []
    for (kind, layer), module in attention_modules(model).items():
        index = weights.get(names[id(module)] + ".head_index")
        if index is not None:
            kept = set(int(h) for h in index.tolist())
            heads += [(kind, layer, h + 1) for h in range(module.orig_num_heads)
                      if h not in kept]
    cfg = state.get("cfg") or {}
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    recorded = recorded_removed_heads(model_cfg if model_cfg is not None else state.get("args"))
    spec = HeadSpec.parse(recorded)
    spec.source = f"pruned_heads recorded in {path!r}"
    return HeadSet(heads) | spec.resolve(model_head_shape(model))
