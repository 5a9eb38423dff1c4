"""What every task of this package adds to its fairseq task: ``--mask-heads`` and
``--prune-heads``, and the model they build: head-aware attention in every module,
heads removed earlier (recorded in the model config) or asked for removed before the
weights load (as small as the checkpoint fairseq-train will load, so that optimizer,
EMA and wrappers see the smaller model from the start), heads masked."""

import logging
import os
from typing import Callable, Optional

from ..heads import HeadSet, HeadSpec
from ..models.head_model import (
    attention_modules,
    install_head_attention,
    model_head_shape,
    recorded_removed_heads,
    remove_heads,
    set_head_mask,
)
from ..precision import cfg_get

logger = logging.getLogger(__name__)

SPEC_HELP = (
    "heads as KIND:LAYERS:HEADS entries separated by spaces or ';' (KIND E, A or D; "
    "1-based numbers, ranges 2-5, comma lists or *), e.g. 'E:1:6,8 A:5-6:*', "
    "or @file.json as written by fairseq-headprune"
)


def apply_head_options(task, model, cfg, from_checkpoint: bool,
                       check: Optional[Callable] = None):
    """``model`` (just built by the fairseq task) with head-aware attention, the heads
    to remove removed and ``task.mask_spec`` masked (``task.fixed_mask``). ``check``:
    called on the model before any removal, when fairseq-train builds it."""
    install_head_attention(model)
    shape = model_head_shape(model)
    to_remove = HeadSpec.parse(recorded_removed_heads(cfg)).resolve(shape)
    to_remove = to_remove | task.prune_spec.resolve(shape)
    if not from_checkpoint:
        if check is not None:
            check(model)
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
    mask = task.mask_spec.resolve(shape)
    if mask:
        set_head_mask(model, mask)
        logger.info(f"masked {len(mask)} attention heads: {mask.to_spec()}")
    task.fixed_mask = mask
    return model


def training_checkpoint_path(cfg) -> Optional[str]:
    """The checkpoint fairseq-train will load (fairseq.checkpoint_utils.load_checkpoint's
    choice), when the model config carries the checkpoint options (legacy architectures
    get the whole command line as their config); None otherwise or if it is missing."""
    restore, save_dir = cfg_get(cfg, "restore_file"), cfg_get(cfg, "save_dir")
    if not restore or save_dir is None:
        return None
    suffix = cfg_get(cfg, "checkpoint_suffix") or ""
    if restore == "checkpoint_last.pt":
        path = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
        finetune = cfg_get(cfg, "finetune_from_model")
        if not os.path.exists(path) and finetune:
            path = finetune
    else:
        path = restore.replace(".pt", suffix + ".pt")
    return path if os.path.isfile(path) else None


def heads_removed_in_checkpoint(path: str, model) -> HeadSet:
    """Heads missing from a checkpoint: its ``head_index`` buffers, plus the removals
    recorded in its model config, mapped onto ``model``'s attention modules."""
    from ..fairseq_fixes import load_checkpoint_file

    # torch.load(path, weights_only=True, mmap=True for zip files), one line per bad file
    state = load_checkpoint_file(path, mmap=True)
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
