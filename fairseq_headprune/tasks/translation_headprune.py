"""Task ``translation_headprune``: fairseq's translation task whose models have
head-aware attention, plus ``--mask-heads`` and ``--prune-heads``.

Every model this task builds (training, ``fairseq-generate``, ``-validate``,
``-interactive``, hub loading) gets ``HeadMaskedMultiheadAttention`` in all E/A/D
modules. Heads removed earlier (recorded in the model config as ``pruned_heads``) and
heads in ``--prune-heads`` are removed before the weights load; the attention modules
slice the incoming (full or pruned) checkpoint to fit, so a stock checkpoint, a pruned
checkpoint and resumed training all load with no conversion step.

Training dynamics (paper §6, Fig. 6): with ``--prune-curve-every-epoch`` (and/or
``--prune-curve-interval-updates N``) fairseq-train computes, at the end of every epoch,
head importance on a fixed slice of the training data and the pruning curve on the
validation set, split across data-parallel workers, and appends one JSON line per
epoch to ``<save-dir>/head_dynamics.jsonl`` (see analysis/dynamics.py). It runs in
``begin_valid_epoch``, i.e. at fairseq's end-of-epoch validation, before the epoch's
checkpoint is saved, so the checkpoint's task state holds that epoch's importance and
the line describes exactly the saved weights. It therefore needs the end-of-epoch
validation: not ``--disable-validation``, and ``--validate-interval 1`` (the default);
interval lines need fairseq validations at those updates
(``--validate-interval-updates N`` or ``--save-interval-updates N``).
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II

from ..errors import HeadPruneError
from ..heads import HeadSet, HeadSpec
from ..models.head_model import unwrap_model
from ..precision import cfg_get, check_training_flags
from .head_options import SPEC_HELP, apply_head_options

logger = logging.getLogger(__name__)

@dataclass
class TranslationHeadPruneConfig(TranslationConfig):
    mask_heads: Optional[str] = field(
        default=None, metadata={"help": "mask these heads (their context is zeroed): " + SPEC_HELP}
    )
    prune_heads: Optional[str] = field(
        default=None,
        metadata={"help": "physically remove these heads before use: " + SPEC_HELP},
    )
    # ---- training dynamics (fairseq-train) ----
    prune_curve_every_epoch: bool = field(default=False, metadata={
        "help": "at the end of every epoch, estimate head importance and compute the "
                "pruning curve; one JSON line per epoch in <save-dir>/head_dynamics.jsonl"})
    prune_curve_interval_updates: int = field(default=0, metadata={
        "help": "also every N updates, at fairseq's mid-epoch validations (set "
                "--validate-interval-updates N); 0 = off"})
    prune_curve_step: float = field(default=0.1, metadata={
        "help": "curve points every STEP of the heads (0.1: 0%, 10%, ..., 100%)"})
    prune_curve_kinds: str = field(default="E,A,D", metadata={
        "help": "attention kinds to prune, ranked together (default: all)"})
    prune_curve_subset: str = field(default="valid", metadata={
        "help": "split the curve is scored on"})
    prune_curve_sentences: Optional[int] = field(default=200, metadata={
        "help": "score the curve on a seeded random sample of N sentences of "
                "--prune-curve-subset, the same every epoch (0 = all)"})
    prune_curve_beam: int = field(default=1, metadata={
        "help": "beam size for curve BLEU (default 1, greedy: a per-epoch monitor that "
                "costs <= 15% of a Multi30k epoch; the recipes and commands use 5)"})
    prune_curve_lenpen: float = field(default=1.0, metadata={"help": "length penalty"})
    prune_curve_max_len_a: float = field(default=1.2, metadata={
        "help": "generate at most a*srclen+b tokens (bounds decoding of heavily pruned models)"})
    prune_curve_max_len_b: int = field(default=10, metadata={"help": "see --prune-curve-max-len-a"})
    prune_curve_remove_bpe: Optional[str] = field(default="subword_nmt", metadata={
        "help": "post-processing before BLEU, as fairseq-generate --post-process "
                "(default subword_nmt = --remove-bpe; 'none' to keep subwords)"})
    prune_curve_importance_subset: Optional[str] = field(default=None, metadata={
        "help": "split to estimate importance on (default: --train-subset, as the paper)"})
    prune_curve_importance_sentences: Optional[int] = field(default=1000, metadata={
        "help": "estimate importance on a seeded random sample of N sentences, the "
                "same every epoch (0 = all)"})
    prune_curve_granularity: ChoiceEnum(["sentence", "token", "batch", "fisher"]) = field(
        default="sentence", metadata={"help": "where |dL/dxi| is taken, or fisher (see importance)"})
    prune_curve_no_normalize: bool = field(default=False, metadata={
        "help": "do not l2-normalise importance per layer before ranking"})
    prune_curve_seed: int = field(default=1, metadata={
        "help": "seed of the batching and of both sentence samples"})
    prune_curve_loss_scale: Optional[float] = field(default=None, metadata={
        "help": "loss scale for the importance pass (default: the trainer's current "
                "--fp16 loss scale; 1 in fp32 and --amp)"})
    prune_curve_file: str = field(default="head_dynamics.jsonl", metadata={
        "help": "file name of the results, in --save-dir"})
    # ---- pruning while training (fairseq-train) ----
    accumulate_head_importance: bool = field(default=False, metadata={
        "help": "accumulate head importance from the training steps' own backward passes "
                "(sentence granularity), summed across workers, reset every epoch; one JSON "
                "line per epoch in <save-dir>/head_importance.jsonl and the last epoch's in "
                "the checkpoint's task state"})
    prune_schedule: Optional[str] = field(default=None, metadata={
        "help": "remove heads at epoch ends until each kind reaches its share, e.g. "
                "'E:50%% A:25%% D:50%%' (ranked within each kind) or 'all:50%%' (ranked "
                "together); one JSON line per removal in <save-dir>/head_pruning.jsonl"})
    prune_start_epoch: int = field(default=1, metadata={
        "help": "first epoch at whose end heads are removed"})
    prune_end_epoch: Optional[int] = field(default=None, metadata={
        "help": "epoch at whose end the schedule's shares are reached (default: the start "
                "epoch, i.e. all at once)"})
    prune_ramp: ChoiceEnum(["linear", "cubic"]) = field(default="linear", metadata={
        "help": "how the share grows from start to end: linear, or cubic (most heads early)"})
    min_heads_per_layer: int = field(default=0, metadata={
        "help": "never remove heads below this many in any attention module"})
    prune_importance: ChoiceEnum(["train", "slice"]) = field(default="train", metadata={
        "help": "rank heads by importance accumulated from the epoch's training steps "
                "(train; turns on --accumulate-head-importance) or estimated in evaluation "
                "mode on the --prune-curve-importance-* sample of the training data (slice)"})
    head_importance_file: str = field(default="head_importance.jsonl", metadata={
        "help": "file name of the training importance lines, in --save-dir"})
    head_pruning_file: str = field(default="head_pruning.jsonl", metadata={
        "help": "file name of the removal lines, in --save-dir"})
    # taken from the training configuration (hydra interpolation; no command-line flag)
    prune_curve_save_dir: str = II("checkpoint.save_dir")
    prune_curve_max_tokens: Optional[int] = II("dataset.max_tokens_valid")
    prune_curve_batch_size: Optional[int] = II("dataset.batch_size_valid")
    prune_curve_batch_multiple: int = II("dataset.required_batch_size_multiple")


@register_task("translation_headprune", dataclass=TranslationHeadPruneConfig)
class TranslationHeadPruneTask(TranslationTask):
    cfg: TranslationHeadPruneConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        # Parse now so that a malformed spec or missing file fails before any work.
        self.mask_spec = HeadSpec.parse(cfg.mask_heads)
        self.prune_spec = HeadSpec.parse(cfg.prune_heads)
        self.fixed_mask = HeadSet()
        self._dyn = None  # DynamicsState, created when fairseq-train first needs it
        self._prune = None  # TrainPruningState, likewise
        self._prune_last_updates = None
        if self.train_pruning_enabled:
            self._pruning()  # a bad --prune-schedule fails now, not after an epoch

    @property
    def train_pruning_enabled(self) -> bool:
        return bool(getattr(self.cfg, "accumulate_head_importance", False)
                    or getattr(self.cfg, "prune_schedule", None))

    @property
    def dynamics_enabled(self) -> bool:
        return bool(getattr(self.cfg, "prune_curve_every_epoch", False)
                    or (getattr(self.cfg, "prune_curve_interval_updates", 0) or 0) > 0)

    def build_model(self, cfg, from_checkpoint=False):
        if not from_checkpoint:
            # fairseq-train: --fp16 on CPU and --bf16 (fairseq's TPU mode) without
            # torch_xla are one line here, not fairseq's traceback in its Trainer
            check_training_flags(cfg)
        model = super().build_model(cfg, from_checkpoint)
        check = None
        if not from_checkpoint and self.train_pruning_enabled:
            if cfg_get(cfg, "disable_validation"):
                raise HeadPruneError(
                    "--accumulate-head-importance and --prune-schedule act at fairseq's "
                    "end-of-epoch validation; leave out --disable-validation")
            check = self._pruning().check_model
        return apply_head_options(self, model, cfg, from_checkpoint, check)

    def build_generator(self, models, args, *rest, **kwargs):
        if getattr(args, "print_alignment", None):
            for model in models:
                check_alignment_layer(model)
        return super().build_generator(models, args, *rest, **kwargs)

    # ---- training dynamics: fairseq-train hooks ----------------------------------

    def get_batch_iterator(self, dataset, *args, **kwargs):
        itr = super().get_batch_iterator(dataset, *args, **kwargs)
        if self._dyn is not None or self.dynamics_enabled or self.train_pruning_enabled:
            from .dynamics_hooks import called_from_train_iterator

            self._dynamics().note_iterator(dataset, itr, from_trainer=called_from_train_iterator())
        return itr

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self.dynamics_enabled or self.train_pruning_enabled:
            self._dynamics().note_step(optimizer, update_num)
        step = super().train_step
        if self.train_pruning_enabled:
            return self._pruning().train_step(
                lambda: step(sample, model, criterion, optimizer, update_num, ignore_grad),
                sample, model, optimizer, ignore_grad)
        return step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if self.dynamics_enabled or self.train_pruning_enabled:
            self._dynamics().begin_epoch(epoch)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        if self.train_pruning_enabled:
            from .dynamics_hooks import calling_trainer, epoch_exhausted

            dyn = self._dynamics()
            updates = dyn.num_updates()
            if epoch_exhausted(dyn.train_itr) and updates != self._prune_last_updates:
                self._prune_last_updates = updates
                self._pruning().end_of_epoch(epoch, updates, unwrap_model(model),
                                             calling_trainer(), dyn.loss_scale(model),
                                             resume_updates=dyn.resume_updates)
        if self.dynamics_enabled:
            self._dynamics().maybe_run(epoch, model)

    def post_validate(self, model, stats, agg):
        parent = getattr(super(), "post_validate", None)
        if parent is not None:
            parent(model, stats, agg)
        if self._dyn is not None:
            self._dyn.add_stats(stats)

    def _pruning(self):
        if self._prune is None:
            from .train_pruning import TrainPruningState

            self._prune = TrainPruningState(self, self._dynamics().settings)
        return self._prune

    def _dynamics(self):
        if self._dyn is None:
            from .dynamics_hooks import DynamicsState

            self._dyn = DynamicsState(self)
        return self._dyn


def check_alignment_layer(model):
    """--print-alignment averages the encoder-decoder attention of the decoder's
    alignment layer over its heads; with none taking part there is nothing to print
    (and fairseq's SequenceGeneratorWithAlignment fails on the empty attention)."""
    decoder = getattr(model, "decoder", None)
    layers = getattr(decoder, "layers", None)
    if not layers:
        return
    index = getattr(decoder, "alignment_layer", None)
    index = len(layers) - 1 if index is None or index < 0 else min(index, len(layers) - 1)
    module = getattr(layers[index], "encoder_attn", None)
    mask = getattr(module, "head_mask", None)
    kept = getattr(module, "kept_heads", None)
    if kept is None:
        return
    taking_part = [h for h in kept if mask is None or float(mask[h]) != 0]
    if not taking_part:
        raise HeadPruneError(
            f"--print-alignment reads the encoder-decoder attention of decoder layer "
            f"{index + 1} (A:{index + 1}), which has no heads left (all removed or masked); "
            f"keep at least one head there, or leave out --print-alignment")
