"""Training dynamics (paper §6, Fig. 6): head importance and the pruning curve of the
model being trained, computed inside ``fairseq-train`` (see the task options
``--prune-curve-*`` in tasks/translation_headprune.py) and split across data-parallel
workers.

One call of ``epoch_dynamics`` does, on the model as it is at that moment:

1. importance on a fixed slice of the training data: fairseq's batches of the subset
   (``--max-tokens-valid``/``--batch-size-valid``), shuffled with a seed, the first
   batches that hold ``importance_sentences`` sentences; the same slice every time.
   Identical to ``fairseq-headprune importance --importance-subset SPLIT
   --importance-max-sentences N --importance-seed S --seed S --max-tokens T`` on the
   checkpoint;
2. the pruning curve on the first ``sentences`` sentences of the evaluation subset
   (fairseq-generate's batching), heads ranked by that importance, each point scored
   by beam search (tokenized BLEU, detokenized sacreBLEU) and teacher-forced loss
   (nats per target token). Identical to ``fairseq-headprune curve`` with the same
   settings.

Work split: worker r takes batches r, r+N, r+2N, ... of both slices (fairseq's own
sharding of a batch list). Importance statistics are summed with fairseq's
``distributed_utils.all_reduce`` (``ImportanceAccumulator.all_reduce``); hypotheses,
references and per-sentence losses are exchanged by all-reducing tensors that each
worker fills at its own sentences' positions, so the scores are computed from exactly
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
import random
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import KINDS, HeadSet
from ..models.head_model import model_head_shape, removed_heads, set_head_mask
from ..results import atomic_write
from .curve import fractions, importance_order, pruning_curve
from .decoding import SubsetDecoder, sentence_losses
from .importance import compute_importance, removed_map
from .scoring import score

DEFAULT_FILE = "head_dynamics.jsonl"
FORMAT = "fairseq-headprune/head-dynamics-v1"


@dataclass
class DynamicsSettings:
    step: float = 0.1
    kinds: Tuple[str, ...] = KINDS
    subset: str = "valid"
    sentences: Optional[int] = 200
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    remove_bpe: Optional[str] = "subword_nmt"
    importance_subset: str = "train"
    importance_sentences: Optional[int] = 2000
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


class Workers:
    """The data-parallel group as fairseq sees it: world size, rank, and a sum
    (fairseq's ``distributed_utils.all_reduce``; identity with one worker)."""

    def __init__(self):
        from fairseq.distributed import utils as du

        self.du = du
        ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world = du.get_data_parallel_world_size() if ready else 1
        self.rank = du.get_data_parallel_rank() if ready else 0
        self.group = du.get_data_parallel_group() if self.world > 1 else None
        self.device = None
        if self.world > 1 and torch.cuda.is_available():
            try:
                if torch.distributed.get_backend(self.group) == "nccl":
                    self.device = torch.device("cuda", torch.cuda.current_device())
            except Exception:  # not a torch.distributed group (e.g. XLA)
                pass

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        dev = t.device
        x = t.to(self.device) if self.device is not None else t.clone()
        x = self.du.all_reduce(x, group=self.group)
        return x.to(dev)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value everywhere (keeps every worker's ranking identical)."""
        if self.world == 1:
            return t
        dev = t.device
        x = t.to(self.device) if self.device is not None else t.clone()
        self.du.broadcast(x, src=0, group=self.group)
        return x.to(dev)

    def shard(self, batches: Sequence) -> List:
        return list(batches[self.rank::self.world])


class SingleWorker(Workers):
    def __init__(self):  # noqa: D107  (no fairseq needed)
        self.world, self.rank, self.group, self.device = 1, 0, None, None


def select_batches(task, subset: str, models, settings: DynamicsSettings,
                   max_sentences: Optional[int], shuffle_seed: Optional[int] = None) -> List[list]:
    """Index lists of the batches of ``subset`` that fairseq-generate (and
    ``analysis.decoding.batches_for``) would make with these settings, optionally
    shuffled with ``shuffle_seed``, cut after ``max_sentences`` sentences. Nothing is
    collated here, and no fairseq epoch iterator is built: ``task.get_batch_iterator``
    is not called at all (inside fairseq-train the task watches the iterators it makes
    over the training split to find the trainer's, and a selection on that split used
    to be taken for it), so the trainer's iterator, the task's iterator cache and the
    dataset's epoch are left alone."""
    from fairseq import utils

    try:
        dataset = task.dataset(subset)
    except KeyError:
        try:
            task.load_dataset(subset)
        except FileNotFoundError as e:
            raise HeadPruneError(f"--prune-curve subset {subset!r} not found: {e}")
        dataset = task.dataset(subset)
    if len(dataset) == 0:
        raise HeadPruneError(f"subset {subset!r} is empty")

    def make_batches():
        # Mirrors fairseq's FairseqTask.get_batch_iterator (fairseq 0.12.3), its inner
        # make_batches(dataset, epoch) with epoch=1 (the default the old call used),
        # whose result EpochBatchIterator.frozen_batches returns unchanged. Left out on
        # purpose: dataset.set_epoch(1) (it would move the training split's epoch
        # mid-training; a no-op for LanguagePairDataset) and the iterator itself.
        from fairseq.data import data_utils

        with data_utils.numpy_seed(settings.seed + 1):  # seed + epoch
            indices = dataset.ordered_indices()
        max_positions = utils.resolve_max_positions(
            task.max_positions(), *[m.max_positions() for m in models])
        if max_positions is not None:
            indices = task.filter_indices_by_size(
                indices, dataset, max_positions, settings.skip_invalid_size_inputs)
        return dataset.batch_by_size(
            indices, max_tokens=settings.max_tokens, max_sentences=settings.batch_size,
            required_batch_size_multiple=settings.required_batch_size_multiple)

    try:
        batches = [list(b) for b in make_batches() if len(b)]
    except AssertionError as e:  # fairseq's batch_by_size: a sentence > max_tokens
        raise HeadPruneError(f"cannot batch subset {subset!r}: {e} (raise --max-tokens-valid)")
    if shuffle_seed is not None and max_sentences:
        random.Random(shuffle_seed).shuffle(batches)
    if max_sentences:
        out, n = [], 0
        for b in batches:
            if n >= max_sentences:
                break
            out.append(b)
            n += len(b)
        batches = out
    if not batches:
        raise HeadPruneError(f"subset {subset!r} gave no batches")
    return batches


def collate(task, subset: str, index_batches: Sequence[list]) -> List[dict]:
    dataset = task.dataset(subset)
    return [dataset.collater([dataset[i] for i in b]) for b in index_batches]


def gather_strings(local: Dict[int, str], n: int, workers: Workers) -> List[str]:
    """Strings at global positions 0..n-1, each given by exactly one worker."""
    enc = {i: s.encode("utf-8") for i, s in local.items()}
    lengths = torch.zeros(n, dtype=torch.int64)
    for i, b in enc.items():
        lengths[i] = len(b)
    lengths = workers.all_reduce(lengths)
    width = max(int(lengths.max()) if n else 0, 1)
    data = torch.zeros(n, width, dtype=torch.int32)
    for i, b in enc.items():
        if b:
            data[i, :len(b)] = torch.tensor(list(b), dtype=torch.int32)
    data = workers.all_reduce(data)
    return [bytes(data[i, :int(lengths[i])].tolist()).decode("utf-8") for i in range(n)]


class CurveEvaluator:
    """HeadSet -> {'bleu', 'sacrebleu', 'loss'} on the evaluation slice, each worker
    decoding its share; every worker returns the same numbers."""

    def __init__(self, task, model, settings: DynamicsSettings, workers: Workers,
                 index_batches: List[list], fixed_mask: HeadSet = HeadSet()):
        from fairseq.dataclass.configs import GenerationConfig
        from omegaconf import OmegaConf

        self.task, self.model, self.s, self.w = task, model, settings, workers
        self.fixed = fixed_mask
        self.ids = sorted(int(i) for b in index_batches for i in b)
        self.pos = {sid: p for p, sid in enumerate(self.ids)}
        self.batches = collate(task, settings.subset, workers.shard(index_batches))
        local = torch.tensor([sum(int(b["ntokens"]) for b in self.batches)], dtype=torch.int64)
        self.ntokens = int(workers.all_reduce(local)[0])
        gen = OmegaConf.structured(GenerationConfig)
        gen.beam, gen.lenpen = settings.beam, settings.lenpen
        gen.max_len_a, gen.max_len_b = settings.max_len_a, settings.max_len_b
        cfg = SimpleNamespace(generation=gen, tokenizer=None, bpe=None,
                              common_eval=SimpleNamespace(post_process=settings.remove_bpe))
        self.decoder = SubsetDecoder(cfg, task, model, settings.subset, batches=self.batches)
        self.use_cuda = self.decoder.use_cuda
        self.refs: Optional[List[str]] = None
        self.cache: Dict[HeadSet, Dict] = {}
        self.signatures: Dict[str, str] = {}

    def __call__(self, masked: HeadSet) -> Dict:
        if masked in self.cache:
            return dict(self.cache[masked])
        set_head_mask(self.model, (masked | self.fixed) or None)
        try:
            tr = self.decoder.translate(progress=False)
            local_losses = (sentence_losses(self.model, self.batches, self.use_cuda)
                            if self.batches else torch.zeros(0))
        finally:
            set_head_mask(self.model, self.fixed or None)
        n = len(self.ids)
        hyps = gather_strings({self.pos[i]: h for i, h in zip(tr.ids, tr.hyps)}, n, self.w)
        if self.refs is None:
            self.refs = gather_strings({self.pos[i]: r for i, r in zip(tr.ids, tr.refs)}, n, self.w)
        losses = torch.zeros(n, dtype=torch.float32)
        for sid, value in zip(tr.ids, local_losses.tolist()):
            losses[self.pos[sid]] = value
        losses = self.w.all_reduce(losses)
        bleu = score("bleu", hyps, self.refs, self.s.target_lang)
        sacre = score("sacrebleu", hyps, self.refs, self.s.target_lang)
        self.signatures = {"bleu": bleu["signature"], "sacrebleu": sacre["signature"]}
        out = {"bleu": bleu["score"], "sacrebleu": sacre["score"],
               "loss": float(losses.sum()) / max(self.ntokens, 1)}
        self.cache[masked] = out
        return dict(out)


def importance_scores(obj: dict) -> Dict:
    return {k: obj[k] for k in KINDS if k in obj}


def epoch_dynamics(task, model, settings: DynamicsSettings, workers: Optional[Workers] = None,
                   fixed_mask: HeadSet = HeadSet(), loss_scale: float = 1.0,
                   loss_fn: Optional[Callable] = None, cache: Optional[dict] = None) -> dict:
    """Importance and pruning curve of ``model`` now. ``fixed_mask``: heads masked for
    the whole training (--mask-heads): kept masked and never candidates. ``cache``: a
    dict kept between calls (the selected batches do not change). Leaves the model in
    the mode, mask and requires_grad state it came in (mask = ``fixed_mask``)."""
    workers = workers or Workers()
    cache = cache if cache is not None else {}
    s = settings
    if "imp" not in cache:
        cache["imp"] = select_batches(task, s.importance_subset, [model], s,
                                      s.importance_sentences, shuffle_seed=s.seed)
        cache["eval"] = select_batches(task, s.subset, [model], s, s.sentences)
    use_cuda = next(model.parameters()).is_cuda
    was_training = model.training
    model.eval()
    try:
        set_head_mask(model, fixed_mask or None)
        imp_batches = collate(task, s.importance_subset, workers.shard(cache["imp"]))
        acc = compute_importance(model, imp_batches, loss_fn, loss_scale, use_cuda)
        del imp_batches
        acc.all_reduce(workers.all_reduce)
        if acc.counts[1] == acc.counts[2]:
            raise HeadPruneError("every importance batch had non-finite gradients "
                                 "(fp16 overflow); set --prune-curve-loss-scale lower")
        for g in list(acc.sums):  # one ranking on every worker, whatever the rounding
            acc.sums[g] = workers.broadcast(acc.sums[g])
        imp = acc.result(removed_map(model)).to_json(s.granularity, s.normalize, s.eps)
        shape = model_head_shape(model)
        exclude = removed_heads(model) | fixed_mask
        order = importance_order(importance_scores(imp), s.kinds, exclude)
        evaluate = CurveEvaluator(task, model, s, workers, cache["eval"], fixed_mask)
        points = pruning_curve(shape, s.kinds, fractions(s.step), evaluate, order=order,
                               exclude=exclude)
    finally:
        set_head_mask(model, fixed_mask or None)
        model.train(was_training)
    unpruned = next(p for p in points if p["fraction"] == 0)
    return {
        "unpruned": {k: unpruned[k] for k in ("bleu", "sacrebleu", "loss")},
        "curve": points,
        "importance": imp,
        "eval_sentences": len(evaluate.ids),
        "signatures": evaluate.signatures,
        "removed": removed_heads(model).to_spec(),
        "fixed_masked": fixed_mask.to_spec(),
        "workers": workers.world,
        "loss_scale": loss_scale,
    }


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
