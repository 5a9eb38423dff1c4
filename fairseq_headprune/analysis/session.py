"""A model session: a checkpoint and its task loaded the way fairseq-generate loads
them, with the fixed mask and removals the user gave, and the data selections and mask
evaluators of that model. Every model-reading command starts from one."""

import ast
import datetime
import logging
import os
import sys
from typing import Optional

import torch

from ..errors import HeadPruneError
from ..heads import HeadSet
from ..precision import dtype_name, model_dtype
from .data import DataSpec, Selection, select

logger = logging.getLogger("fairseq_headprune")


def model_overrides(text) -> dict:
    """``--model-overrides`` as fairseq reads it (``ast.literal_eval``, never ``eval``)."""
    try:
        value = ast.literal_eval(text or "{}")
    except (ValueError, SyntaxError) as e:
        raise HeadPruneError(f"--model-overrides {text!r} is not a Python dict literal ({e})")
    if not isinstance(value, dict):
        raise HeadPruneError(f"--model-overrides {text!r} is not a dict (e.g. \"{{'beam': 5}}\")")
    return value


CLASSIFIER_TASK = "sentence_prediction_headprune"


def checkpoint_task(path: str) -> Optional[dict]:
    """The task config a checkpoint was trained with (a plain dict; None if it records
    none). Read through a memory map: the weights are not loaded."""
    from omegaconf import DictConfig, OmegaConf

    from ..fairseq_fixes import load_checkpoint_file

    state = load_checkpoint_file(path, mmap=True)
    cfg = state.get("cfg")
    task = cfg.get("task") if isinstance(cfg, (dict, DictConfig)) else None
    if task is None and state.get("args") is not None:  # a pre-0.10 checkpoint
        args = vars(state["args"])
        return dict(args, _name=args.get("task"))
    if isinstance(task, DictConfig):
        task = OmegaConf.to_container(task, resolve=True)
    return dict(task) if isinstance(task, dict) else None


def classifier_task_cfg(saved: dict, data: str, args):
    """The classifier's task as trained (init and separator tokens, max positions,
    ...), on ``data``, as ``sentence_prediction_headprune`` with the command's
    ``--mask-heads``/``--prune-heads``."""
    from omegaconf import OmegaConf

    from ..tasks.sentence_prediction_headprune import SentencePredictionHeadPruneConfig

    fields = SentencePredictionHeadPruneConfig.__dataclass_fields__
    values = {k: v for k, v in saved.items() if k in fields}
    values.update(_name=CLASSIFIER_TASK, data=data, mask_heads=getattr(args, "mask_heads", None),
                  prune_heads=getattr(args, "prune_heads", None))
    return OmegaConf.create(values)


class Session:
    def __init__(self, args):
        """``args``: fairseq-generate's namespace (options.get_generation_parser)."""
        from fairseq import checkpoint_utils, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        self.args = args
        if args.max_tokens is None and args.batch_size is None:
            args.max_tokens = 12000  # fairseq-generate's default
        self.cfg = cfg = convert_namespace_to_omegaconf(args)
        utils.import_user_module(cfg.common)
        paths = utils.split_paths(cfg.common_eval.path)
        if len(paths) != 1:
            raise HeadPruneError(f"--path names {len(paths)} checkpoints; give exactly one")
        from ..fairseq_fixes import check_checkpoint_path
        from .data import (
            check_classification_folder, check_data_folder, describe_splits, splits_in)

        check_checkpoint_path(paths[0])  # read in full (load_checkpoint_file) below
        data = utils.split_paths(cfg.task.data)[0] if cfg.task.data else None
        if data is None:
            raise HeadPruneError("the data folder (DATA) is required")
        # the checkpoint's own task says what the model is: a translation model or an
        # encoder classifier (fairseq's sentence_prediction, e.g. RoBERTa on MNLI)
        saved_task = checkpoint_task(paths[0])
        self.classifier = saved_task is not None and saved_task.get("_name", "").startswith(
            "sentence_prediction")
        if args.task == CLASSIFIER_TASK and not self.classifier:
            raise HeadPruneError(
                f"--task {CLASSIFIER_TASK}: {paths[0]!r} is not a classifier (its task: "
                f"{(saved_task or {}).get('_name')}); allowed: a checkpoint trained with "
                f"fairseq's sentence_prediction")
        if self.classifier:
            check_classification_folder(data)
            cfg.task = classifier_task_cfg(saved_task, data, args)
        else:
            check_data_folder(data, cfg.task.source_lang, cfg.task.target_lang)
        # the subsets the command names, before anything is loaded or written (the
        # default --gen-subset 'test' is left to load_subset: not every command reads it)
        splits = splits_in(data)
        # importance is estimated unless a file is given (and not re-estimated)
        estimates = not getattr(args, "importance", None) or getattr(args, "reestimate", False)
        for option, value in (("--gen-subset", args.gen_subset),
                              ("--importance-subset",
                               getattr(args, "importance_subset", None) if estimates else None),
                              ("--select-subset", getattr(args, "select_subset", None))):
            if not value or not splits or (option == "--gen-subset" and value == "test"):
                continue
            for subset in (s.strip() for s in str(value).split(",") if s.strip()):
                if subset not in splits:
                    raise HeadPruneError(f"{option} {subset!r} is not a split of {data!r} "
                                         f"({describe_splits(data)})")
        try:
            self.task = tasks.setup_task(cfg.task)
        except FileNotFoundError as e:
            raise HeadPruneError(f"data folder {data!r} cannot be loaded: {e} "
                                 f"({describe_splits(data)})") from None
        logger.info(f"loading model from {paths[0]}")
        models, self.saved_cfg = checkpoint_utils.load_model_ensemble(
            paths, arg_overrides=model_overrides(cfg.common_eval.model_overrides), task=self.task)
        self.model = models[0]
        self.use_cuda = torch.cuda.is_available() and not cfg.common.cpu
        # --fp16: float16, as fairseq-generate; --bf16: bfloat16 (fairseq-generate
        # ignores it and decodes in float32: fairseq means it for TPUs); see precision.py
        self.dtype = model_dtype(cfg.common)
        if self.dtype != torch.float32:
            self.model.to(self.dtype)
        if self.use_cuda:
            self.model.cuda()
        self.model.eval()

    @property
    def fixed_mask(self) -> HeadSet:
        """The heads the user masked for the whole run (``--mask-heads``)."""
        return getattr(self.task, "fixed_mask", HeadSet())

    def kinds(self, text=None, option: str = "--kinds") -> tuple:
        """The attention kinds a command works on: ``text`` (e.g. 'E,A'), or every kind
        this model has (E, A and D for a translation model, E for an encoder
        classifier); a kind the model lacks is one line."""
        from ..heads import KIND_NAMES, KINDS, parse_kinds
        from ..models.head_model import model_head_shape

        shape = model_head_shape(self.model)
        have = tuple(k for k in KINDS if shape.get(k))
        if text is None:
            return have
        wanted = parse_kinds(text)
        missing = [k for k in wanted if k not in have]
        if missing:
            raise HeadPruneError(
                f"{option} {text}: this model has no {' or '.join(KIND_NAMES[k] for k in missing)} "
                f"({','.join(missing)}; allowed: {','.join(have)})")
        return wanted

    @property
    def target_lang(self) -> str:
        return self.cfg.task.get("target_lang") or "en"

    def data_spec(self, subset: str, max_sentences: Optional[int] = None,
                  max_batches: Optional[int] = None, seed: int = 1) -> DataSpec:
        d = self.cfg.dataset
        return DataSpec(subset=subset, max_sentences=max_sentences or None,
                        max_batches=max_batches or None, seed=seed,
                        max_tokens=d.max_tokens, batch_size=d.batch_size,
                        required_batch_size_multiple=d.required_batch_size_multiple,
                        skip_invalid_size_inputs=d.skip_invalid_size_inputs_valid_test,
                        batching_seed=self.cfg.common.seed)

    def select(self, spec: DataSpec) -> Selection:
        return select(self.task, [self.model], spec, task_cfg=self.saved_cfg.task)

    def samples(self, selection: Selection):
        from .data import collate

        return collate(self.task, selection.spec.subset, selection.batches)

    def evaluator(self, selection: Selection, task=None, model=None, **kw):
        """The mask evaluator of ``selection`` (of ``task`` and ``model``, default the
        session's): decoding + BLEU for a translation model, predictions + accuracy for
        a classifier (``classify``)."""
        from .evaluate import MaskEvaluator

        kw.setdefault("fixed", self.fixed_mask)
        if self.classifier:
            from .classify import ClassificationEvaluator

            kw.pop("workers", None)  # (each worker scores every example: it is cheap)
            kw.pop("masks_per_batch", None)
            return ClassificationEvaluator(model or self.model, task or self.task, selection,
                                           use_cuda=self.use_cuda, **kw)
        kw.setdefault("masks_per_batch", getattr(self.args, "masks_per_batch", None))
        return MaskEvaluator(model or self.model, task or self.task, selection, self.cfg,
                             self.target_lang, **kw)

    def metric(self, name: Optional[str], option: str = "--metric", loss: bool = True) -> str:
        """A command's metric: ``name``, or the model's main one (BLEU; accuracy for a
        classifier); one that does not fit the model is one line."""
        from . import scoring

        if self.classifier:
            from .classify import metrics_of

            allowed = metrics_of(self.task)
        else:
            allowed = scoring.METRICS
        allowed = tuple(allowed) + (("loss",) if loss else ())
        if name is None:
            return allowed[0]
        if name not in allowed:
            what = "this classifier" if self.classifier else "a translation model"
            raise HeadPruneError(f"{option} {name} does not fit {what} (allowed: "
                                 f"{', '.join(allowed)})")
        return name

    def meta(self, **extra) -> dict:
        """Provenance for every results file."""
        import fairseq

        from .. import __version__

        a = self.args
        meta = {
            "command": "fairseq-headprune " + " ".join(sys.argv[1:]),
            "checkpoint": os.path.abspath(a.path),
            "data": os.path.abspath(a.data),
            "source_lang": self.cfg.task.get("source_lang"),
            "target_lang": self.cfg.task.get("target_lang"),
            "mask_heads": self.fixed_mask.to_spec(),
            "generation": {"beam": a.beam, "lenpen": a.lenpen, "max_len_a": a.max_len_a,
                           "max_len_b": a.max_len_b, "remove_bpe": a.post_process,
                           "max_tokens": a.max_tokens, "batch_size": a.batch_size},
            "fp16": bool(a.fp16),
            "dtype": dtype_name(self.dtype),
            "device": "cuda" if self.use_cuda else "cpu",
            "versions": {"fairseq_headprune": __version__, "fairseq": fairseq.__version__,
                         "torch": torch.__version__},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        meta.update(extra)
        return meta

    def importance(self, selection: Selection, loss_fn=None, loss_scale: float = 1.0,
                   mask: HeadSet = HeadSet(), progress=None):
        """Head importance of the model with ``mask`` and the fixed mask on (the mask
        is the fixed one alone afterwards). Returns ``importance.Importance``."""
        from ..models.head_model import set_head_mask
        from . import importance as imp

        samples = self.samples(selection)
        set_head_mask(self.model, (mask | self.fixed_mask) or None)
        try:
            acc = imp.compute_importance(self.model, samples, loss_fn, loss_scale,
                                         self.use_cuda, progress=progress)
        finally:
            set_head_mask(self.model, self.fixed_mask or None)
        if acc.counts[2]:
            logger.warning(f"skipped {int(acc.counts[2])} batches with non-finite gradients")
        if acc.all_skipped:
            raise HeadPruneError(f"every batch ({int(acc.counts[2])}) had non-finite gradients "
                                 f"with loss scale {loss_scale:g}; try a smaller "
                                 f"--importance-loss-scale")
        return acc.result(imp.removed_map(self.model))

    def other_task(self, data2: str):
        """The task of another data directory, which must share the model's dictionaries
        (cross-domain comparisons on a second corpus)."""
        import copy

        from fairseq import tasks
        from omegaconf import open_dict

        from .data import check_classification_folder, check_data_folder

        if self.classifier:
            check_classification_folder(data2, option="--compare-data")
        else:
            check_data_folder(data2, self.cfg.task.source_lang, self.cfg.task.target_lang,
                              option="--compare-data")
        tcfg = copy.deepcopy(self.cfg.task)
        with open_dict(tcfg):
            tcfg.data = data2
        try:
            task2 = tasks.setup_task(tcfg)
        except (FileNotFoundError, OSError) as e:
            raise HeadPruneError(f"--compare-data {data2!r}: cannot load its dictionaries ({e})") from None
        for side, a, b in (("source", self.task.source_dictionary, task2.source_dictionary),
                           ("target" if not self.classifier else "label",
                            self.task.target_dictionary, task2.target_dictionary)):
            if a.symbols != b.symbols:
                raise HeadPruneError(
                    f"--compare-data {data2!r}: its {side} dictionary differs from "
                    f"{self.cfg.task.data!r} ({len(b)} vs {len(a)} symbols); both sets must "
                    f"share the model's dictionaries")
        return task2
