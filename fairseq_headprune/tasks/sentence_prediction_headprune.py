"""Task ``sentence_prediction_headprune``: fairseq's ``sentence_prediction`` (RoBERTa-style
sentence and sentence-pair classification) whose encoder attention is head-aware, plus
``--mask-heads`` and ``--prune-heads``. Such a model has encoder self-attention only:
kind ``E``; a spec naming A or D is refused with one line."""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from ..heads import HeadSet, HeadSpec
from ..precision import check_training_flags
from .head_options import SPEC_HELP, apply_head_options


@dataclass
class SentencePredictionHeadPruneConfig(SentencePredictionConfig):
    mask_heads: Optional[str] = field(
        default=None, metadata={"help": "mask these heads (their context is zeroed): " + SPEC_HELP})
    prune_heads: Optional[str] = field(
        default=None, metadata={"help": "physically remove these heads before use: " + SPEC_HELP})


@register_task("sentence_prediction_headprune", dataclass=SentencePredictionHeadPruneConfig)
class SentencePredictionHeadPruneTask(SentencePredictionTask):
    cfg: SentencePredictionHeadPruneConfig

    def __init__(self, cfg, data_dictionary, label_dictionary):
        super().__init__(cfg, data_dictionary, label_dictionary)
        self.mask_spec = HeadSpec.parse(cfg.mask_heads)  # a bad spec fails before any work
        self.prune_spec = HeadSpec.parse(cfg.prune_heads)
        self.fixed_mask = HeadSet()

    def build_model(self, cfg, from_checkpoint=False):
        if not from_checkpoint:
            check_training_flags(cfg)
        model = super().build_model(cfg, from_checkpoint)
        return apply_head_options(self, model, cfg, from_checkpoint)
