"""fairseq-train side of pruning while training (``--accumulate-head-importance``,
``--prune-schedule``): importance from the training steps' own backward passes, and
heads physically removed at epoch ends with everything that holds parameters following.

Importance: every training step runs with gated attention modules that keep the
gradient of the context they feed to ``out_proj`` (analysis/importance.training_gates);
after fairseq's backward the gate gradients are added to an ``ImportanceAccumulator``
(sentence granularity, padding excluded, divided by the loss scale of that backward).
What differs from ``fairseq-headprune importance`` (evaluation mode): dropout is on, the
loss is the training criterion's (label smoothing included), and the weights change
during the epoch. At the epoch end the sums are added across data-parallel workers,
written as one line of ``<save-dir>/head_importance.jsonl`` and kept in the task state
(so in the checkpoint), then reset.

Removal: ``shrink_trainer`` removes heads from the model (and EMA model), rebuilds
fairseq's optimizer over the new parameters, and carries the optimizer state over
sliced: Adam moments per element, fp16/bf16 fp32 master weights (flat or not), the
loss scale, the learning-rate schedule; data-parallel wrappers are rebuilt. The
removed heads are recorded in the model config, so the checkpoint reloads with no spec
and ``--restore-file`` rebuilds the same smaller model.
"""

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import torch

from ..analysis import dynamics as dyn
from ..analysis.data import select
from ..analysis.evaluate import MaskEvaluator
from ..analysis.importance import ImportanceAccumulator, query_padding, removed_map, training_gates
from ..analysis.ranking import rank_agreement
from ..analysis.schedule import PruneSchedule, heads_left, score_of
from ..analysis.workers import Workers
from ..errors import HeadPruneError
from ..heads import HeadSet
from ..models.head_model import (
    attention_modules, model_head_shape, parameter_counts, remove_heads, removed_heads, unwrap_model,
)

logger = logging.getLogger("fairseq_headprune.train_pruning")

IMPORTANCE_FORMAT = "fairseq-headprune/train-importance-v1"
PRUNING_FORMAT = "fairseq-headprune/train-pruning-v1"
STATE_KEY = "head_importance_train"


def backward_loss_scale(optimizer) -> float:
    """The factor fairseq's ``optimizer.backward`` multiplied the loss by."""
    scaler = getattr(optimizer, "scaler", None)  # FP16Optimizer, MemoryEfficientFP16Optimizer
    if scaler is not None and getattr(scaler, "loss_scale", None):
        return float(scaler.loss_scale)
    grad_scaler = getattr(optimizer, "_grad_scaler", None)  # AMPOptimizer
    if grad_scaler is not None:
        return float(grad_scaler.get_scale())
    return 1.0


# ---- optimizer-state surgery ----------------------------------------------------------

def _slice(t: torch.Tensor, cut: Optional[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    if cut is None:
        return t
    dim, index = cut
    return t.index_select(dim, index.to(t.device))


def slice_flat(flat: torch.Tensor, shapes: List[torch.Size],
               cuts: List[Optional[Tuple[int, torch.Tensor]]]) -> torch.Tensor:
    """A flat vector laid out as parameters of ``shapes`` one after the other (fairseq's
    flat fp32 master weights and their optimizer state), each part sliced by its cut."""
    parts, offset = [], 0
    for shape, cut in zip(shapes, cuts):
        n = int(torch.Size(shape).numel())
        part = flat[offset:offset + n]
        offset += n
        parts.append(part if cut is None else _slice(part.view(shape), cut).reshape(-1))
    if offset != flat.numel():
        raise HeadPruneError(f"optimizer state of {flat.numel()} elements does not match the "
                             f"model's {offset} parameters; cannot remove heads while training")
    return torch.cat(parts) if parts else flat


def _optimizer_params(optimizer) -> List[torch.Tensor]:
    """The parameters of the torch optimizer inside a fairseq optimizer, in the order
    its state dict numbers them."""
    return [p for group in optimizer.optimizer.param_groups for p in group["params"]]


def slice_optimizer_state(state_dict: dict, opt_params: List[torch.Tensor], model_params: List,
                          cuts: Dict[int, Tuple[int, torch.Tensor]], flat: bool = False) -> dict:
    """The optimizer state dict with every per-element tensor sliced as its parameter.
    ``opt_params``: the torch optimizer's parameters: the model parameters, or their fp32
    copies in the same order, or (``flat``) one fp32 vector of all of them one after the
    other; ``model_params``: the parameters fairseq built the optimizer from; ``cuts``:
    id(model parameter) -> (dim, kept index) for the parameters that shrink."""
    shapes = [p.shape for p in model_params]
    per_param = [cuts.get(id(p)) for p in model_params]
    if not flat and [tuple(p.shape) for p in opt_params] != [tuple(s) for s in shapes]:
        raise HeadPruneError(f"the optimizer holds {len(opt_params)} parameter tensors that are not "
                             f"the model's {len(model_params)} in order; cannot remove heads while "
                             f"training with this optimizer setup")
    out = dict(state_dict)
    state = {}
    for idx, entry in state_dict.get("state", {}).items():
        param = opt_params[idx]
        new = {}
        for name, value in entry.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.dim() > 0:
                if flat:
                    value = slice_flat(value, shapes, per_param)
                else:
                    value = _slice(value, per_param[idx])
            elif torch.is_tensor(value) and value.numel() > 1:
                raise HeadPruneError(f"optimizer state {name!r} has shape {tuple(value.shape)} for a "
                                     f"parameter of shape {tuple(param.shape)}; heads can be removed "
                                     f"while training only with per-element optimizer state "
                                     f"(e.g. adam, sgd, adagrad)")
            new[name] = value
        state[idx] = new
    out["state"] = state
    return out


def _fp32_masters(optimizer):
    """fairseq's fp32 master weights (FP16Optimizer): a flat tensor, {device: flat}, a
    list per parameter, or None."""
    return getattr(optimizer, "fp32_params", None)


def shrink_trainer(trainer, heads: HeadSet, model_cfg=None) -> HeadSet:
    """Remove ``heads`` from the model fairseq's ``trainer`` trains, mid-training: the
    model (and EMA model) lose the heads' parameters, the optimizer is rebuilt with its
    state sliced (moments, master weights, loss scale), the learning-rate schedule and
    data-parallel wrappers follow. Returns all removed heads."""
    model = trainer.get_model()
    if not heads:
        return removed_heads(model)
    cut_by_name = {}
    for (kind, layer), module in attention_modules(model).items():
        for pname, cut in module.removal_slices([h - 1 for h in heads.of(kind, layer)]).items():
            cut_by_name[(module, pname)] = cut
    params_before = _trainer_params(trainer)
    cuts = {}
    for (module, pname), cut in cut_by_name.items():
        cuts[id(module.get_parameter(pname))] = cut
    optimizer = trainer.optimizer
    opt_state = slice_optimizer_state(optimizer.state_dict(), _optimizer_params(optimizer),
                                      params_before, cuts,
                                      flat=bool(getattr(optimizer, "has_flat_params", False)))
    masters = _fp32_masters(optimizer)
    shapes = [p.shape for p in params_before]
    per_param = [cuts.get(id(p)) for p in params_before]
    if masters is not None:
        if isinstance(masters, dict):
            masters = {k: slice_flat(v.data, shapes, per_param) for k, v in masters.items()}
        elif torch.is_tensor(masters):
            masters = slice_flat(masters.data, shapes, per_param)
        else:
            masters = [_slice(m.data, c) for m, c in zip(masters, per_param)]
    lr_state = trainer.lr_scheduler.state_dict()
    # state-dict names of the EMA model's parameters that shrink
    names = {id(m): n for n, m in model.named_modules()}
    ema_cuts = {f"{names[id(module)]}.{pname}": cut for (module, pname), cut in cut_by_name.items()}

    removed = remove_heads(model, heads, model_cfg)
    ema = getattr(trainer, "_ema", None)
    if ema is not None:
        remove_heads(ema.get_model(), heads)
        for key, cut in ema_cuts.items():
            if key in ema.fp32_params:
                ema.fp32_params[key] = _slice(ema.fp32_params[key], cut)
        # head_index buffers are integers: copied, not averaged
        ema.skip_keys = set(ema.skip_keys) | {k for k in ema.get_model().state_dict() if k.endswith("head_index")}
    if trainer._wrapped_model is not trainer._model:
        trainer._wrapped_model = None  # data-parallel wrapper: rebuilt around the new parameters
    trainer._optimizer = None
    trainer._build_optimizer()
    new_opt = trainer.optimizer
    new_opt.load_state_dict(opt_state)
    new_masters = _fp32_masters(new_opt)
    if new_masters is not None and masters is not None:
        with torch.no_grad():
            if isinstance(new_masters, dict):
                for k, v in new_masters.items():
                    v.data.copy_(masters[k])
            elif torch.is_tensor(new_masters):
                new_masters.data.copy_(masters)
            else:
                for v, m in zip(new_masters, masters):
                    v.data.copy_(m)
    trainer.lr_scheduler.load_state_dict(lr_state)
    trainer.lr_step_update()
    return removed


def _trainer_params(trainer) -> List[torch.Tensor]:
    """The parameters fairseq's ``Trainer._build_optimizer`` gives the optimizer, in order."""
    from itertools import chain

    return [p for p in chain(trainer.model.parameters(), trainer.criterion.parameters())
            if p.requires_grad]


# ---- the per-epoch state ------------------------------------------------------------------

class TrainPruningState:
    def __init__(self, task, settings: dyn.DynamicsSettings):
        cfg = task.cfg
        self.task = task
        self.settings = settings
        self.accumulate = bool(cfg.accumulate_head_importance)
        self.schedule: Optional[PruneSchedule] = None
        if cfg.prune_schedule:
            self.schedule = PruneSchedule.parse(cfg.prune_schedule, cfg.prune_start_epoch,
                                                cfg.prune_end_epoch, str(cfg.prune_ramp),
                                                cfg.min_heads_per_layer)
            if str(cfg.prune_importance) == "train":
                self.accumulate = True
        self.acc: Optional[ImportanceAccumulator] = None
        self.importance_path = os.path.join(cfg.prune_curve_save_dir, cfg.head_importance_file)
        self.pruning_path = os.path.join(cfg.prune_curve_save_dir, cfg.head_pruning_file)
        self.cache: dict = {}
        self.resume_updates: Optional[int] = None
        self.first_write = {"importance": True, "pruning": True}

    def check_model(self, model):
        if self.schedule is not None:
            self.schedule.check_shape(model_head_shape(model))

    # -- importance from the training steps --------------------------------------------
    def train_step(self, step, sample, model, optimizer, ignore_grad):
        """Run fairseq's training step ``step()`` with gated modules, then add the gate
        gradients of its backward pass (not for fairseq's dummy batches)."""
        if not self.accumulate:
            return step()
        inner = unwrap_model(model)
        if self.acc is None:
            self.acc = ImportanceAccumulator(model_head_shape(inner))
        with training_gates(inner) as collect:
            scale = backward_loss_scale(optimizer)
            out = step()
            if ignore_grad or sample is None or not sample:
                return out
            grads, finite = collect(scale)
        if not finite:  # fp16 overflow: fairseq skips the update, we skip the batch
            self.acc.skip_batch()
            return out
        self.acc.add_batch(grads, {k: v.cpu() for k, v in query_padding(inner, sample).items()},
                           sample["target"].size(0))
        return out

    def finish_importance(self, epoch: int, updates: int, model, workers: Workers) -> Optional[dict]:
        """Sum the epoch's training importance across workers, write its line, keep it
        in the task state, reset. Returns the importance JSON (None if not accumulating)."""
        if not self.accumulate:
            return None
        acc = self.acc or ImportanceAccumulator(model_head_shape(model))
        self.acc = None
        acc.all_reduce(workers.all_reduce)
        for g in list(acc.sums):  # one ranking on every worker, whatever the rounding
            acc.sums[g] = workers.broadcast(acc.sums[g])
        s = self.settings
        imp = acc.result(removed_map(model)).to_json(
            s.granularity, s.normalize, s.eps,
            meta={"source": "fairseq-train training steps (dropout on, training criterion)",
                  "epoch": epoch, "updates": updates})
        self.task.state.merge_state_dict({STATE_KEY: {"epoch": epoch, "updates": updates,
                                                      **dyn.importance_scores(imp)}})
        return imp

    def write_line(self, which: str, path: str, line: dict, workers: Workers):
        """Rank 0 merges ``line`` into the file; its first write in this process drops
        lines beyond the update count training resumed from (abandoned by the restore)."""
        if workers.rank != 0:
            return
        drop = self.resume_updates if self.first_write[which] else None
        lines = dyn.merge_line(dyn.read_lines(path), line, drop_after_updates=drop)
        dyn.write_lines(path, lines)
        self.first_write[which] = False

    def slice_importance(self, model, workers: Workers, loss_scale: float) -> dict:
        return dyn.slice_importance(self.task, model, self.settings, workers,
                                    fixed_mask=self.task.fixed_mask, loss_scale=loss_scale,
                                    cache=self.cache)

    def valid_loss(self, evaluator: MaskEvaluator, model) -> float:
        was_training = model.training
        model.eval()
        try:
            return float(evaluator.losses(HeadSet()).corpus)
        finally:
            model.train(was_training)

    # -- the epoch end -----------------------------------------------------------------
    def end_of_epoch(self, epoch: int, updates: int, model, trainer, loss_scale: float,
                     resume_updates: Optional[int] = None):
        t0 = time.time()
        if self.resume_updates is None:
            self.resume_updates = resume_updates
        workers = Workers()
        train_imp = self.finish_importance(epoch, updates, model, workers)
        prune = self.schedule is not None and self.schedule.in_window(epoch)
        slice_imp = None
        if prune and str(self.task.cfg.prune_importance) == "slice":
            slice_imp = self.slice_importance(model, workers, loss_scale)
        if train_imp is not None:
            line = {"format": IMPORTANCE_FORMAT, "epoch": epoch, "updates": updates,
                    "end_of_epoch": True, "importance": train_imp,
                    "seconds": round(time.time() - t0, 3)}
            if slice_imp is not None:
                line["spearman_vs_slice"] = rank_agreement(dyn.importance_scores(train_imp),
                                                           dyn.importance_scores(slice_imp))
            self.write_line("importance", self.importance_path, line, workers)
        if not prune:
            return
        if trainer is None:
            raise HeadPruneError("--prune-schedule needs fairseq's Trainer (fairseq-train or "
                                 "fairseq-hydra-train); no Trainer called this epoch end")
        imp = slice_imp if slice_imp is not None else train_imp
        scores = dyn.importance_scores(imp)
        shape = model_head_shape(model)
        before = removed_heads(model)
        heads = self.schedule.next_removal(shape, epoch, scores, before, exclude=self.task.fixed_mask)
        if "eval" not in self.cache:
            s = self.settings
            self.cache["eval"] = select(self.task, [model], dyn.data_spec(s, s.subset, s.sentences))
        evaluator = MaskEvaluator(model, self.task, self.cache["eval"], dyn.generation_cfg(self.settings),
                                  self.settings.target_lang,
                                  fixed=self.task.fixed_mask, workers=workers, cache=False,
                                  progress=False)
        loss_before = self.valid_loss(evaluator, model)
        params_before = parameter_counts(model)["total"]
        removed = shrink_trainer(trainer, heads, model_cfg=trainer.cfg.model)
        model = trainer.get_model()
        loss_after = self.valid_loss(evaluator, model) if heads else loss_before
        counts = parameter_counts(model)
        line = {"format": PRUNING_FORMAT, "epoch": epoch, "updates": updates, "end_of_epoch": True,
                "schedule": self.schedule.text, "ramp": self.schedule.ramp,
                "progress": round(self.schedule.progress(epoch), 6),
                "targets": self.schedule.targets(shape, epoch),
                "importance_source": str(self.task.cfg.prune_importance),
                "removed": [{"head": f"{k}:{l}:{h}", "score": score_of(scores, (k, l, h))}
                            for k, l, h in sorted(heads)],
                "removed_spec": heads.to_spec(), "all_removed_spec": removed.to_spec(),
                "heads_left": heads_left(shape, removed),
                "parameters_before": params_before, "parameters": counts["total"],
                "valid_loss_before": loss_before, "valid_loss_after": loss_after,
                "valid_loss_unit": dyn.LOSS_UNIT, "valid_sentences": evaluator.nsentences,
                "seconds": round(time.time() - t0, 3)}
        self.write_line("pruning", self.pruning_path, line, workers)
        logger.info(f"epoch {epoch}: removed {len(heads)} heads ({heads.to_spec() or 'none'}); "
                    f"heads left {line['heads_left']}, parameters {params_before} -> {counts['total']}; "
                    f"valid loss {loss_before:.4f} -> {loss_after:.4f} {dyn.LOSS_UNIT}")
