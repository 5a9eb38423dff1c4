"""Training dynamics (paper §6, Fig. 6): head importance and the pruning curve of the
model being trained, computed inside ``fairseq-train`` (see the task options
``--prune-curve-*`` in tasks/translation_headprune.py) and split across data-parallel
workers.

One call of ``epoch_dynamics`` does, on the model as it is at that moment:

1. importance on a fixed sample of the training data: a seeded random sample of
   ``importance_sentences`` sentences (``data.select``; the same every epoch), in
   fairseq's batches (``--max-tokens-valid``/``--batch-size-valid``). Identical to
   ``fairseq-headprune importance --importance-subset SPLIT --importance-max-sentences N
   --importance-seed S --seed S --max-tokens T`` on the checkpoint;
2. the pruning curve on a seeded random sample of ``sentences`` sentences of the
   evaluation subset, heads ranked by that importance, each point scored by the
   package's mask evaluator (``evaluate.MaskEvaluator``: beam search, tokenized BLEU,
   detokenized sacreBLEU, teacher-forced loss in bits per target token). Identical to
   ``fairseq-headprune curve --max-eval-sentences N --eval-seed S --seed S`` with the
   same settings.

Work split: worker r takes batches r, r+N, r+2N, ... of both samples. Importance
statistics are summed with fairseq's ``distributed_utils.all_reduce``
(``ImportanceAccumulator.all_reduce``); the evaluator gathers hypotheses, references
and per-sentence losses into sentence-id order, so the scores are computed from exactly
the sentences, in exactly the order, a single worker would use: N workers give the
numbers of one worker (importance up to float64 summation order). The batches are the
same whatever the number of workers, so this holds for every importance granularity,
``batch`` included (it depends on the batching, which depends on ``--max-tokens-valid``,
not on the number of workers).

fp16: the gate gradients are computed with the loss multiplied by the trainer's current
loss scale (``--fp16``: the dynamic scaler's value; ``--amp`` keeps an fp32 model, so
no scale is needed), divided back in float64; batches that overflow are skipped and
counted (``importance.counts.skipped_batches``).

Results: ``head_dynamics.jsonl`` in the save dir, one JSON object per line, sorted by
updates; see ``merge_line`` for how resumed runs keep it free of duplicates.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import HeadPruneError
from ..heads import KINDS, HeadSet
from ..models.head_model import model_head_shape, removed_heads, set_head_mask
from ..results import atomic_write
from .curve import fractions, pruning_curve
from .ranking import order_by_scores
from .data import DataSpec, collate, select
from .evaluate import MaskEvaluator
from .importance import compute_importance, removed_map
from .scoring import LOSS_UNIT
from .workers import Workers

DEFAULT_FILE = "head_dynamics.jsonl"
FORMAT = "fairseq-headprune/head-dynamics-v1"


@dataclass
class DynamicsSettings:
    step: float = 0.1
    kinds: Tuple[str, ...] = KINDS
    subset: str = "valid"
    sentences: Optional[int] = 200
    beam: int = 1
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    remove_bpe: Optional[str] = "subword_nmt"
    importance_subset: str = "train"
    importance_sentences: Optional[int] = 1000
    granularity: str = "sentence"
    normalize: bool = True
    eps: float = 1e-12
    seed: int = 1
    max_tokens: Optional[int] = None
    batch_size: Optional[int] = None
    required_batch_size_multiple: int = 8
    skip_invalid_size_inputs: bool = False
    target_lang: str = "en"
    extra: Dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["kinds"] = list(self.kinds)
        out.pop("extra")
        out.update(self.extra)
        return out


def data_spec(settings: DynamicsSettings, subset: str, sentences: Optional[int]) -> DataSpec:
    """The selection of ``subset`` these settings make (``data.select``)."""
    return DataSpec(subset=subset, max_sentences=sentences or None, seed=settings.seed,
                    max_tokens=settings.max_tokens, batch_size=settings.batch_size,
                    required_batch_size_multiple=settings.required_batch_size_multiple,
                    skip_invalid_size_inputs=settings.skip_invalid_size_inputs,
                    batching_seed=settings.seed)


def generation_cfg(settings: DynamicsSettings):
    """What ``SubsetDecoder`` reads of fairseq-generate's config, from these settings."""
    from fairseq.dataclass.configs import GenerationConfig
    from omegaconf import OmegaConf

    gen = OmegaConf.structured(GenerationConfig)
    gen.beam, gen.lenpen = settings.beam, settings.lenpen
    gen.max_len_a, gen.max_len_b = settings.max_len_a, settings.max_len_b
    return SimpleNamespace(generation=gen, tokenizer=None, bpe=None,
                           common_eval=SimpleNamespace(post_process=settings.remove_bpe))


def importance_scores(obj: dict) -> Dict:
    return {k: obj[k] for k in KINDS if k in obj}


def epoch_dynamics(task, model, settings: DynamicsSettings, workers: Optional[Workers] = None,
                   fixed_mask: HeadSet = HeadSet(), loss_scale: float = 1.0,
                   loss_fn: Optional[Callable] = None, cache: Optional[dict] = None) -> dict:
    """Importance and pruning curve of ``model`` now. ``fixed_mask``: heads masked for
    the whole training (--mask-heads): kept masked and never candidates. ``cache``: a
    dict kept between calls (the selected sentences do not change). Leaves the model in
    the mode, mask and requires_grad state it came in (mask = ``fixed_mask``)."""
    workers = workers or Workers()
    cache = cache if cache is not None else {}
    s = settings
    if "eval" not in cache:
        cache["eval"] = select(task, [model], data_spec(s, s.subset, s.sentences))
    was_training = model.training
    try:
        imp = slice_importance(task, model, s, workers, fixed_mask, loss_scale, loss_fn, cache)
        model.eval()
        set_head_mask(model, fixed_mask or None)
        shape = model_head_shape(model)
        exclude = removed_heads(model) | fixed_mask
        order = order_by_scores(importance_scores(imp), s.kinds, exclude)
        evaluate = MaskEvaluator(model, task, cache["eval"], generation_cfg(s), s.target_lang,
                                 fixed=fixed_mask, workers=workers, progress=False)
        steps = fractions(s.step, option="--prune-curve-step")
        points = pruning_curve(shape, s.kinds, steps, evaluate, order=order,
                               exclude=exclude)
    finally:
        set_head_mask(model, fixed_mask or None)
        model.train(was_training)
    unpruned = next(p for p in points if p["fraction"] == 0)
    return {
        "unpruned": {k: unpruned[k] for k in ("bleu", "sacrebleu", "loss")},
        "curve": [{k: v for k, v in p.items() if not k.endswith("_signature")} for p in points],
        "importance": imp,
        "importance_data": cache["imp"].describe(),
        "eval_data": cache["eval"].describe(),
        "eval_sentences": evaluate.nsentences,
        "loss_unit": LOSS_UNIT,
        "signatures": {k: unpruned[f"{k}_signature"] for k in ("bleu", "sacrebleu")},
        "removed": removed_heads(model).to_spec(),
        "fixed_masked": fixed_mask.to_spec(),
        "workers": workers.world,
        "loss_scale": loss_scale,
    }


def slice_importance(task, model, settings: DynamicsSettings, workers: Optional[Workers] = None,
                     fixed_mask: HeadSet = HeadSet(), loss_scale: float = 1.0,
                     loss_fn: Optional[Callable] = None, cache: Optional[dict] = None) -> dict:
    """Importance JSON of ``model`` now, on the fixed sample of ``importance_subset``
    (evaluation mode, summed across workers, identical on every worker). Leaves the
    model in its mode with ``fixed_mask`` set."""
    workers = workers or Workers()
    cache = cache if cache is not None else {}
    s = settings
    if "imp" not in cache:
        cache["imp"] = select(task, [model], data_spec(s, s.importance_subset, s.importance_sentences))
    use_cuda = next(model.parameters()).is_cuda
    was_training = model.training
    model.eval()
    try:
        set_head_mask(model, fixed_mask or None)
        imp_batches = collate(task, s.importance_subset, cache["imp"].shard(workers.world, workers.rank))
        acc = compute_importance(model, imp_batches, loss_fn, loss_scale, use_cuda)
        del imp_batches
        acc.all_reduce(workers.all_reduce)
        if acc.all_skipped:
            raise HeadPruneError("every importance batch had non-finite gradients "
                                 "(fp16 overflow); set --prune-curve-loss-scale lower")
        for g in list(acc.sums):  # one ranking on every worker, whatever the rounding
            acc.sums[g] = workers.broadcast(acc.sums[g])
        return acc.result(removed_map(model)).to_json(s.granularity, s.normalize, s.eps)
    finally:
        model.train(was_training)


# ---- head_dynamics.jsonl -------------------------------------------------------------

def line_key(line: dict):
    return ("epoch", line["epoch"]) if line.get("end_of_epoch", True) else ("updates", line["updates"])


def read_lines(path: str) -> List[dict]:
    """The lines of a dynamics file ([] if missing); a torn last line is dropped."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            text = text.strip()
            if not text:
                continue
            try:
                out.append(json.loads(text))
            except ValueError:
                raise HeadPruneError(f"{path}:{n} is not valid JSON")
    return out


def merge_line(lines: List[dict], line: dict, drop_after_updates: Optional[int] = None) -> List[dict]:
    """``lines`` with ``line`` added. A line of the same epoch (end-of-epoch lines) or of
    the same update count (--prune-curve-interval-updates lines) is replaced, never
    repeated: after a resume, the epoch that was being trained when the run stopped is
    trained again and its line describes the checkpoint actually saved.
    ``drop_after_updates``: lines beyond this update count are dropped (a run restored
    from an older checkpoint abandons what came after it)."""
    key = line_key(line)
    kept = [l for l in lines if line_key(l) != key
            and (drop_after_updates is None or l["updates"] <= drop_after_updates)]
    kept.append(line)
    kept.sort(key=lambda l: (l["updates"], 0 if not l.get("end_of_epoch", True) else 1))
    return kept


def write_lines(path: str, lines: List[dict]) -> str:
    text = "".join(json.dumps(l, ensure_ascii=False, sort_keys=True) + "\n" for l in lines)
    atomic_write(path, text.encode("utf-8"))
    return path


def history_entry(line: dict) -> dict:
    """What the checkpoint's task state keeps of a line: the importance scores."""
    imp = line["importance"]
    return {"epoch": line["epoch"], "updates": line["updates"],
            "end_of_epoch": line.get("end_of_epoch", True),
            "granularity": imp.get("granularity"), "normalize": imp.get("normalize"),
            **importance_scores(imp),
            "unpruned": line.get("unpruned")}
