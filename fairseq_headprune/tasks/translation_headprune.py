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
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..heads import HeadSpec
from ..models.head_model import (
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
        if to_remove:
            removed = remove_heads(model, to_remove, model_cfg=cfg)
            logger.info(f"removed {len(removed)} attention heads: {removed.to_spec()}")
        mask = self.mask_spec.resolve(shape)
        if mask:
            set_head_mask(model, mask)
            logger.info(f"masked {len(mask)} attention heads: {mask.to_spec()}")
        return model
