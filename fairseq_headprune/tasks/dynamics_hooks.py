"""fairseq-train side of the training dynamics: when to run (end of epoch, every N
updates), timing, the results file, the task state, the logged stats. The work itself
is analysis/dynamics.py."""

import logging
import os
import sys
import time
from typing import Optional

from ..analysis import dynamics as dyn
from ..heads import parse_kinds
from ..models.head_model import unwrap_model

logger = logging.getLogger("fairseq_headprune.dynamics")

STATE_KEY = "head_dynamics"


def calling_trainer(method: Optional[str] = None, max_depth: int = 8):
    """fairseq's Trainer (or a subclass) among the callers of the running task hook,
    within ``max_depth`` frames; with ``method``, only one calling from a method of that
    name. None if there is none (no fairseq Trainer in this process, another driver)."""
    trainer_module = sys.modules.get("fairseq.trainer")
    if trainer_module is None:
        return None
    frame = sys._getframe(2)  # the caller of the function that asks
    for _ in range(max_depth):
        if frame is None:
            break
        obj = frame.f_locals.get("self")
        if isinstance(obj, trainer_module.Trainer) and (method is None or frame.f_code.co_name == method):
            return obj
        frame = frame.f_back
    return None


def called_from_train_iterator() -> bool:
    """Whether the running ``task.get_batch_iterator`` call was made by fairseq's
    ``Trainer.get_train_iterator`` (or an override of it in a Trainer subclass): the one
    place fairseq-train (and fairseq-hydra-train) builds the iterator it trains on, at
    the start, every epoch and on checkpoint loads. Validation iterators
    (``Trainer.get_valid_iterator``, even on the training split) and anything else that
    batches the training split are not it."""
    return calling_trainer("get_train_iterator") is not None


def epoch_exhausted(itr) -> bool:
    """``itr.end_of_epoch()``, False while no epoch of it has started (fairseq's
    ``EpochBatchIterator.end_of_epoch`` reads the epoch iterator that ``next_epoch_itr``
    makes, and fails before that)."""
    if itr is None or getattr(itr, "_cur_epoch_itr", itr) is None:
        return False
    return bool(itr.end_of_epoch())


class DynamicsState:
    def __init__(self, task):
        self.task = task
        cfg = task.cfg
        self.every_epoch = bool(cfg.prune_curve_every_epoch)
        self.interval = int(cfg.prune_curve_interval_updates or 0)
        self.train_itr = None
        self.train_itr_from_trainer = False
        self.optimizer = None
        self.updates_seen = 0
        self.epoch_start: Optional[float] = None
        self.resume_updates: Optional[int] = None
        self.first_write = True
        self.history = None
        self.pending_stats = None
        self.cache = {}
        self.last_run_updates = None
        self.settings = dyn.DynamicsSettings(
            step=cfg.prune_curve_step,
            kinds=parse_kinds(cfg.prune_curve_kinds),
            subset=cfg.prune_curve_subset,
            sentences=cfg.prune_curve_sentences or None,
            beam=cfg.prune_curve_beam,
            lenpen=cfg.prune_curve_lenpen,
            max_len_a=cfg.prune_curve_max_len_a,
            max_len_b=cfg.prune_curve_max_len_b,
            remove_bpe=cfg.prune_curve_remove_bpe,
            importance_subset=cfg.prune_curve_importance_subset or cfg.train_subset,
            importance_sentences=cfg.prune_curve_importance_sentences or None,
            granularity=str(cfg.prune_curve_granularity),
            normalize=not cfg.prune_curve_no_normalize,
            seed=cfg.prune_curve_seed,
            max_tokens=cfg.prune_curve_max_tokens,
            batch_size=cfg.prune_curve_batch_size,
            required_batch_size_multiple=cfg.prune_curve_batch_multiple,
            target_lang=cfg.target_lang or "en",
        )
        dyn.fractions(self.settings.step, option="--prune-curve-step")  # a bad step fails now, not after an epoch
        self.path = os.path.join(cfg.prune_curve_save_dir, cfg.prune_curve_file)

    # -- bookkeeping ----------------------------------------------------------------
    def note_iterator(self, dataset, itr, from_trainer: bool):
        """Remember fairseq-train's training iterator (to tell epoch ends apart from
        mid-epoch validations). ``from_trainer``: made by ``Trainer.get_train_iterator``
        (``called_from_train_iterator``); that one always wins and is replaced only by
        the trainer's next one. Without a fairseq Trainer (another driver), an iterator
        over the training split is taken, as long as no trainer's has been seen."""
        if from_trainer:
            self.train_itr, self.train_itr_from_trainer = itr, True
            return
        if self.train_itr_from_trainer:
            return
        try:
            train = self.task.dataset(self.task.cfg.train_subset)
        except KeyError:
            return
        if dataset is train:
            self.train_itr = itr

    def note_step(self, optimizer, update_num):
        self.optimizer = optimizer
        self.updates_seen = update_num + 1

    def num_updates(self) -> int:
        from fairseq.logging import metrics

        meter = metrics.get_meter("default", "num_updates")
        if meter is not None and getattr(meter, "val", None) is not None:
            return int(meter.val)
        return self.updates_seen

    def begin_epoch(self, epoch):
        self.epoch_start = time.time()
        if self.resume_updates is None:
            self.resume_updates = self.num_updates()

    def loss_scale(self, model) -> float:
        cfg = self.task.cfg
        if cfg.prune_curve_loss_scale:
            return float(cfg.prune_curve_loss_scale)
        scaler = getattr(self.optimizer, "scaler", None)  # FP16Optimizer, MemoryEfficientFP16Optimizer
        if scaler is not None and getattr(scaler, "loss_scale", None):
            return float(scaler.loss_scale)
        import torch

        half = next(unwrap_model(model).parameters()).dtype == torch.float16
        return 128.0 if half else 1.0  # --amp: fp32 model, computed outside autocast

    # -- the hook ---------------------------------------------------------------------
    def maybe_run(self, epoch, model):
        end = epoch_exhausted(self.train_itr)
        updates = self.num_updates()
        if updates == self.last_run_updates:
            return
        if end and self.every_epoch:
            end_of_epoch = True
        elif self.interval and updates > 0 and updates % self.interval == 0:
            end_of_epoch = False
        else:
            return
        self.last_run_updates = updates
        self.run(epoch, updates, end_of_epoch, unwrap_model(model))

    def run(self, epoch, updates, end_of_epoch, model):
        t0 = time.time()
        epoch_seconds = t0 - self.epoch_start if self.epoch_start else None
        workers = dyn.Workers()
        result = dyn.epoch_dynamics(self.task, model, self.settings, workers,
                                    fixed_mask=self.task.fixed_mask,
                                    loss_scale=self.loss_scale(model), cache=self.cache)
        seconds = time.time() - t0
        line = {"format": dyn.FORMAT, "epoch": epoch, "updates": updates,
                "end_of_epoch": end_of_epoch, **result,
                "settings": self.settings.to_json(),
                "timing": {"seconds": round(seconds, 3),
                           "epoch_seconds": round(epoch_seconds, 3) if epoch_seconds else None,
                           "overhead": round(seconds / epoch_seconds, 5) if epoch_seconds else None}}
        if workers.rank == 0:  # one writer
            lines = dyn.read_lines(self.path)
            drop = self.resume_updates if self.first_write else None
            lines = dyn.merge_line(lines, line, drop_after_updates=drop)
            dyn.write_lines(self.path, lines)
        else:
            lines = None
        self.first_write = False
        self.update_history(line, lines)
        un = result["unpruned"]
        share = ""
        if epoch_seconds:
            share = f", {100 * seconds / epoch_seconds:.1f}% of the epoch ({epoch_seconds:.1f} s)"
        mid = [p for p in result["curve"] if abs(p["fraction"] - 0.4) < 1e-9]
        at40 = f", 40% pruned BLEU {mid[0]['bleu']:.2f}" if mid else ""
        where = f"epoch {epoch}" if end_of_epoch else f"epoch {epoch}, update {updates}"
        logger.info(f"head dynamics ({where}): unpruned BLEU {un['bleu']:.2f}, loss {un['loss']:.3f}"
                    f"{at40}; {len(result['curve'])} points on {result['eval_sentences']} sentences, "
                    f"{workers.world} worker(s): {seconds:.1f} s{share}")
        self.pending_stats = {"hd_bleu": round(un["bleu"], 3), "hd_sacrebleu": round(un["sacrebleu"], 3),
                              "hd_loss": round(un["loss"], 4), "hd_seconds": round(seconds, 2)}
        if epoch_seconds:
            self.pending_stats["hd_overhead"] = round(seconds / epoch_seconds, 4)

    def update_history(self, line, lines):
        """Per-epoch importance in the task state (saved in every checkpoint). fairseq's
        trainer does not restore task state on resume, so it is rebuilt from the file."""
        if self.history is None:
            if lines is None:
                lines = dyn.read_lines(self.path) if os.path.exists(self.path) else [line]
            self.history = [dyn.history_entry(l) for l in lines if l["updates"] <= line["updates"]
                            and dyn.line_key(l) != dyn.line_key(line)]
        self.history = [h for h in self.history if dyn.line_key(h) != dyn.line_key(line)]
        self.history.append(dyn.history_entry(line))
        self.history.sort(key=lambda h: h["updates"])
        self.task.state.merge_state_dict({STATE_KEY: list(self.history)})

    def add_stats(self, stats):
        if self.pending_stats:
            stats.update(self.pending_stats)
            self.pending_stats = None
