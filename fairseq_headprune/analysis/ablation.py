"""Single-head ablation (paper §3.2, Table 1), resumable, with significance, and the
cross-domain comparison of two ablations (paper §3.4, Fig. 2).

The sweep masks one head at a time on a model loaded once, evaluates the set, and
compares with the full model:

Each head is masked on top of the run's fixed mask (``--mask-heads``) by the package's
one mask evaluator (``evaluate.MaskEvaluator``: batches and generator built once).

* decoding metrics (``bleu``, ``sacrebleu``, ``chrf``): one beam search of the set per
  head; score with ``scoring.score``; p-value from ``significance.paired_bootstrap``
  (sacrebleu's paired bootstrap, full model = baseline). The bootstrap of head k may run in a worker
  process while head k+1 is decoded (``BootstrapPool``): same function, same result.
* ``loss``: teacher-forced NLL of the references (``MaskEvaluator.losses``), score
  = corpus NLL in bits per target token (what ``fairseq-validate --criterion
  headprune_nll`` prints as ``loss``); delta = ablated - full (positive = worse); the
  p-value is the same paired bootstrap statistic as sacrebleu's, over sentences, in
  numpy with the same seed convention (``significance.loss_paired_bootstrap``).

A head is *significant* when p < alpha and its ablation changed the output and the
score at all (``significance.significant``); a head whose masking leaves every
hypothesis (or every loss) unchanged is recorded with sacrebleu's p-value verbatim,
``identical: true`` and ``significant: false``.

Results file (``fairseq-headprune/ablation-v1``), rewritten atomically after every
head, so a killed run leaves a consistent file and a rerun resumes after the last
finished head::

    {"format", "settings": {what produced the numbers; a rerun must match},
     "alpha", "shape", "requested": spec of all heads asked for, "complete",
     "baseline": {"score", "signature", "n_sentences", "ids", "hyps", "refs"}
                 (loss: {"score", "n_sentences", "ntokens_total", "ids", "nll", "ntokens"}),
     "heads": [{"kind", "layer", "head", "spec", "score", "delta", "p_value",
                "significant", "identical"}, ...]   (kinds E, A, D; layers, heads ascending),
     "summary": {...}, "meta": {provenance}, "timing": {wall-clock figures; the only
     part that differs between a resumed and an uninterrupted run, with "meta"}}
"""

import hashlib
import logging
import os
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional


from ..errors import HeadPruneError
from ..heads import KINDS, Head, HeadSet, HeadSpec
from ..precision import dtype_name
from ..results import load_resumable, read_json, write_json, write_text
from . import scoring, significance
from .significance import pearson, spearman

logger = logging.getLogger("fairseq_headprune.ablation")

FORMAT = "fairseq-headprune/ablation-v1"
CROSS_FORMAT = "fairseq-headprune/cross-domain-v1"
DECODE_METRICS = scoring.METRICS + scoring.CLASS_METRICS  # a translation's or a label's
METRICS = DECODE_METRICS + ("loss",)
STOP_AFTER_ENV = "HEADPRUNE_ABLATE_STOP_AFTER"  # test hook: stop after k heads (this run)


class Interrupted(Exception):
    """The sweep stopped early (signal or test hook); the results file is consistent."""

    def __init__(self, reason: str, signum: Optional[int] = None):
        super().__init__(reason)
        self.reason, self.signum = reason, signum
        self.done = self.total = 0
        self.path = ""


def head_spec(head: Head) -> str:
    return f"{head[0]}:{head[1]}:{head[2]}"


def _head_key(rec: dict) -> Head:
    return (rec["kind"], int(rec["layer"]), int(rec["head"]))


def _sort_key(head: Head):
    return (KINDS.index(head[0]), head[1], head[2])


def checkpoint_fingerprint(path: str) -> str:
    """Cheap identity of a checkpoint file: sha256 of its size, first and last MiB."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"{size}:{h.hexdigest()[:16]}"


# ---------------------------------------------------------------- evaluators
def _bootstrap_job(metric, lang, n_samples, seed, base_hyps, hyps, refs):
    r = significance.paired_bootstrap(metric, base_hyps, hyps, refs, lang, n_samples, seed)
    return r["score"], r["p_value"], ({"p_ttest": r["p_ttest"]} if "p_ttest" in r else {})


def _quiet_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)


def _noop():
    return None


class BootstrapPool:
    """Runs paired bootstraps in one worker process, so the bootstrap of one head
    overlaps the decoding of the next; ``workers=0`` runs them inline. Create it
    before the model is loaded: the worker is forked at once (where the platform
    forks), holding no model and no GPU context, and needs no imports later."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._pool = None
        if workers > 0:
            import multiprocessing

            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context(method),
                initializer=_quiet_worker)
            for _ in range(workers):
                self._pool.submit(_noop)  # start the workers now

    def submit(self, *args):
        if self._pool is None:
            return _Done(_bootstrap_job(*args))
        return self._pool.submit(_bootstrap_job, *args)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Done:
    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def _check_same_set(base: dict, ids, key: str, values):
    if list(ids) != base["ids"] or list(values) != base[key]:
        raise HeadPruneError(
            "the evaluation set differs from the one the stored full-model results were "
            f"made on (other sentences or {key}); use --overwrite")


class DecodeEvaluator:
    """Scores one decode of the set with a decoding metric (decoding by the package's
    one mask evaluator, ``evaluate.MaskEvaluator``)."""

    def __init__(self, masks, metric: str, n_samples: int, seed: int,
                 pool: Optional[BootstrapPool] = None):
        if metric not in DECODE_METRICS:
            raise HeadPruneError(f"unknown metric {metric!r} (allowed: {', '.join(METRICS)})")
        self.masks, self.metric, self.lang = masks, metric, masks.lang
        self.n_samples, self.seed = n_samples, seed
        self.pool = pool or BootstrapPool(0)
        self.n_sentences = masks.nsentences

    def run(self, masks: List[HeadSet], desc: str):
        return self.masks.translate_many(masks, desc)

    def baseline(self, out) -> dict:
        s = scoring.score(self.metric, out.hyps, out.refs, self.lang)
        return {"score": s["score"], "signature": s["signature"], "n_sentences": len(out.ids),
                "ids": list(out.ids), "hyps": list(out.hyps), "refs": list(out.refs)}

    def submit(self, base: dict, out):
        _check_same_set(base, out.ids, "refs", out.refs)
        fut = self.pool.submit(self.metric, self.lang, self.n_samples, self.seed,
                               base["hyps"], list(out.hyps), base["refs"])
        identical = list(out.hyps) == base["hyps"]

        def finish():
            score, p, extra = fut.result()
            return score, p, identical, extra

        return finish

    @staticmethod
    def hyps_text(out) -> Optional[str]:
        return "".join(h + "\n" for h in out.hyps)


class LossEvaluator:
    """Scores teacher-forced NLL of the references (``scoring.LOSS_UNIT``)."""

    metric = "loss"

    def __init__(self, masks, n_samples: int, seed: int):
        self.masks, self.n_samples, self.seed = masks, n_samples, seed
        self.n_sentences = masks.nsentences

    def run(self, masks: List[HeadSet], desc: str):
        return self.masks.losses_many(masks)

    def baseline(self, out) -> dict:
        return {"score": out.corpus,
                "signature": "nll|base:2|per:target-token|teacher-forced",
                "n_sentences": len(out.ids), "ntokens_total": int(sum(out.ntokens)),
                "ids": list(out.ids), "nll": list(out.nll), "ntokens": list(out.ntokens)}

    def submit(self, base: dict, out):
        _check_same_set(base, out.ids, "ntokens", out.ntokens)
        p = significance.loss_paired_bootstrap(base["nll"], out.nll, out.ntokens,
                                               self.n_samples, self.seed)
        identical = out.nll == base["nll"]
        return lambda: (out.corpus, p, identical, {})

    @staticmethod
    def hyps_text(out) -> Optional[str]:
        return None


# ---------------------------------------------------------------- the sweep
def load_results(path: str, settings: dict, overwrite: bool = False) -> Optional[dict]:
    """The stored results to resume from (None for a fresh start); refuses results
    made with other settings."""
    return load_resumable(path, FORMAT, settings, overwrite, "ablation results file")


def summarize(records: List[dict]) -> dict:
    sig = [r for r in records if r["significant"]]
    out = {"n_heads": len(records), "n_significant": len(sig),
           "n_significant_better": sum(1 for r in sig if r.get("better")),
           "n_significant_worse": sum(1 for r in sig if not r.get("better")),
           "n_identical": sum(1 for r in records if r["identical"])}
    for kind in KINDS:
        rs = [r for r in records if r["kind"] == kind]
        if rs:
            out[kind] = {"n_heads": len(rs), "n_significant": sum(r["significant"] for r in rs)}
    return out


def _apply_alpha(records: List[dict], alpha: float):
    for r in records:
        r["significant"] = significance.significant(r["p_value"], alpha, r["identical"], r["delta"])


def _timing_summary(timing: dict) -> dict:
    decodes = timing.get("decode_s", {})
    times = list(decodes.values())
    if not times:
        return timing
    single = statistics.median(times)
    n = len(times)  # heads + the full model
    timing["decodes"] = n
    timing["median_decode_s"] = single
    timing["ratio"] = timing["sweep_s"] / (n * single) if single > 0 else None
    base = decodes.get("full")
    timing["ratio_vs_full_decode"] = timing["sweep_s"] / (n * base) if base else None
    return timing


@dataclass
class Sweep:
    """One resumable single-head ablation of one evaluation set.

    ``evaluate`` is a DecodeEvaluator or LossEvaluator; ``heads`` the heads to ablate
    (each masked alone, on top of the run's fixed mask); results go to ``path``."""

    evaluator: object
    heads: List[Head]
    path: str
    settings: dict
    meta: dict
    shape: dict
    alpha: float = 0.01
    overwrite: bool = False
    hyps_dir: Optional[str] = None
    stop_after: Optional[int] = None
    log: Callable[[str], None] = logger.info

    def _write(self, obj: dict):
        obj["heads"].sort(key=lambda r: _sort_key(_head_key(r)))
        obj["summary"] = summarize(obj["heads"])
        done = {_head_key(r) for r in obj["heads"]}
        requested = HeadSpec.parse(obj["requested"]).resolve(self.shape)
        obj["complete"] = all(h in done for h in requested)
        obj["timing"] = _timing_summary(obj["timing"])
        write_json(self.path, obj)

    def _save_hyps(self, name: str, ev, out):
        text = ev.hyps_text(out) if self.hyps_dir else None
        if text is not None:
            write_text(os.path.join(self.hyps_dir, name + ".txt"), text)

    def run(self) -> dict:
        obj = load_results(self.path, self.settings, self.overwrite)
        requested = HeadSet(self.heads)
        if obj is None:
            obj = {"format": FORMAT, "settings": self.settings, "alpha": self.alpha,
                   "shape": self.shape, "requested": requested.to_spec(), "complete": False,
                   "baseline": None, "heads": [], "summary": {}, "meta": self.meta,
                   "timing": {"sweep_s": 0.0, "runs": 0, "decode_s": {}}}
        else:
            old = HeadSpec.parse(obj["requested"]).resolve(self.shape)
            obj["requested"] = (old | requested).to_spec()
            obj["alpha"] = self.alpha
            _apply_alpha(obj["heads"], self.alpha)
            obj["meta"] = dict(obj.get("meta") or {}, resumed=self.meta)
            self.log(f"resuming {self.path}: {len(obj['heads'])} heads already done")
        timing = obj["timing"]
        timing["runs"] = timing.get("runs", 0) + 1
        done = {_head_key(r) for r in obj["heads"]}
        todo = [h for h in self.heads if h not in done]
        if self.hyps_dir:
            os.makedirs(self.hyps_dir, exist_ok=True)
        ev = self.evaluator
        started = time.perf_counter()
        finished_here = 0
        pending = None  # (head, finish) of the head whose bootstrap may still run

        def account():
            timing["sweep_s"] = timing.get("sweep_s", 0.0) + time.perf_counter() - started

        def collect(check_stop=True):
            nonlocal pending, finished_here, started
            if pending is None:
                return
            head, finish, base_score = pending
            pending = None
            score, p, identical, extra = finish()
            delta = score - base_score
            rec = {"kind": head[0], "layer": head[1], "head": head[2], "spec": head_spec(head),
                   "score": score, "delta": delta, "p_value": p, "identical": identical,
                   "better": bool(delta < 0 if ev.metric == "loss" else delta > 0), **extra}
            _apply_alpha([rec], self.alpha)
            obj["heads"].append(rec)
            finished_here += 1
            account()
            started = time.perf_counter()
            self._write(obj)
            mark = " *" if rec["significant"] else ""
            self.log(f"[{len(obj['heads'])}/{total}] {rec['spec']:8s} {ev.metric} "
                     f"{score:.2f} delta {delta:+.2f} p {p:.4f}{mark}")
            if (check_stop and self.stop_after is not None and finished_here >= self.stop_after
                    and len(obj["heads"]) < total):
                raise Interrupted(f"{STOP_AFTER_ENV}={self.stop_after}")

        total = len(obj["heads"]) + len(todo)
        try:
            if obj["baseline"] is None:
                t0 = time.perf_counter()
                out = ev.run([HeadSet()], "full model")[0]
                timing["decode_s"]["full"] = time.perf_counter() - t0
                obj["baseline"] = ev.baseline(out)
                self._save_hyps("full", ev, out)
                account()
                started = time.perf_counter()
                self._write(obj)
                self.log(f"full model: {ev.metric} {obj['baseline']['score']:.2f} on "
                         f"{obj['baseline']['n_sentences']} sentences")
            base = obj["baseline"]
            k = max(1, int(ev.masks.masks_per_batch))
            for group in (todo[i:i + k] for i in range(0, len(todo), k)):
                t0 = time.perf_counter()
                outs = ev.run([HeadSet([h]) for h in group], " ".join(map(head_spec, group)))
                seconds = (time.perf_counter() - t0) / len(group)  # one decode, several heads
                for head, out in zip(group, outs):
                    timing["decode_s"][head_spec(head)] = seconds
                    self._save_hyps(head_spec(head).replace(":", "_"), ev, out)
                    finish = ev.submit(base, out)
                    collect()  # the previous head, whose bootstrap overlapped
                    pending = (head, finish, base["score"])
            collect()
            account()
            self._write(obj)
        except Interrupted as e:
            if e.signum is not None and pending is not None:
                try:  # a head decoded before the signal: keep it
                    collect(check_stop=False)
                except Exception:
                    pass
            e.done, e.path = len(obj["heads"]), self.path
            e.total = total
            raise
        return obj


# ---------------------------------------------------------------- set-up
def sweep_settings(session, selection, data: str, metric: str, n_samples: int, seed: int,
                   removed: HeadSet) -> dict:
    """What produced an ablation's numbers; a resumed run must match every key."""
    from omegaconf import OmegaConf

    def plain(c):
        return OmegaConf.to_container(c, resolve=True) if c is not None else None

    a, cfg, decode = session.args, session.cfg, metric != "loss"
    return {
        "format": FORMAT,
        "checkpoint": os.path.abspath(a.path),
        "checkpoint_fingerprint": checkpoint_fingerprint(a.path),
        "model_overrides": str(a.model_overrides),
        "data": data, "subset": selection.spec.subset, "eval_data": selection.describe(),
        "metric": metric, "lang": session.target_lang, "n_samples": n_samples, "seed": seed,
        "generation": plain(cfg.generation) if decode else None,
        "post_process": cfg.common_eval.post_process if decode else None,
        "tokenizer": plain(cfg.tokenizer) if decode else None,
        "bpe": plain(cfg.bpe) if decode else None,
        "fp16": bool(a.fp16), "dtype": dtype_name(session.dtype),
        "device": "cuda" if session.use_cuda else "cpu",
        "base_mask": session.fixed_mask.to_spec(), "removed": removed.to_spec(),
    }


def evaluation_sets(session, gen_subset: str, max_sentences: Optional[int], seed: int,
                    compare_data: Optional[str] = None, compare_subset: Optional[str] = None):
    """[(label, data folder, selection, task)] of every evaluation set: each subset of
    ``gen_subset`` ("test" or "test,test1"), and ``compare_subset`` of another data
    folder that shares the model's dictionaries (label ``compare.SPLIT``)."""
    from .data import select

    subsets = [s.strip() for s in str(gen_subset).split(",") if s.strip()]
    if not subsets or len(set(subsets)) != len(subsets):
        raise HeadPruneError(f"--gen-subset {gen_subset!r}: name one or more different "
                             f"subsets (e.g. test or test,test1)")
    spec = lambda s: session.data_spec(s, max_sentences, seed=seed)
    data = os.path.abspath(session.cfg.task.data)
    sets = [(s, data, session.select(spec(s)), session.task) for s in subsets]
    if compare_data:
        task2 = session.other_task(compare_data)
        split = compare_subset or subsets[0]
        sets.append((f"compare.{split}", os.path.abspath(compare_data),
                     select(task2, [session.model], spec(split)), task2))
    return sets


def heads_to_ablate(shape, kinds, spec: Optional[str], removed: HeadSet, fixed: HeadSet) -> List[Head]:
    heads = HeadSet.all_heads(shape, kinds)
    if spec:
        heads = heads & HeadSet.parse(spec, shape)
    heads = heads - removed - fixed
    if not heads:
        raise HeadPruneError(
            f"no heads to ablate (--kinds {','.join(kinds)}, --heads {spec!r}; heads "
            f"already removed or masked by --mask-heads are skipped)")
    return list(heads)


# ---------------------------------------------------------------- comparisons
def deltas(obj: dict) -> Dict[Head, float]:
    return {_head_key(r): float(r["delta"]) for r in obj["heads"]}


def _check_same_heads(a: dict, b: dict, name_a: str, name_b: str):
    ha, hb = set(deltas(a)), set(deltas(b))
    if ha != hb:
        only_a = HeadSet(ha - hb).to_spec() or "none"
        only_b = HeadSet(hb - ha).to_spec() or "none"
        raise HeadPruneError(
            f"the two ablations cover different heads (only in {name_a}: {only_a}; only in "
            f"{name_b}: {only_b}); ablate the same heads on both sets")
    if not ha:
        raise HeadPruneError(f"{name_a} and {name_b} hold no ablated heads")


def cross_domain(a: dict, b: dict, name_a: str = "a", name_b: str = "b") -> dict:
    """Compare two ablations of the same heads (paper Fig. 2): Pearson r and Spearman
    rho of the two delta vectors (all heads, and per kind), and the heads significant
    in one set but not the other."""
    ma, mb = a["settings"]["metric"], b["settings"]["metric"]
    if ma != mb:
        raise HeadPruneError(
            f"{name_a} was scored with {ma!r} and {name_b} with {mb!r}; compare ablations "
            f"scored with the same --metric")
    _check_same_heads(a, b, name_a, name_b)
    heads = sorted(deltas(a), key=_sort_key)
    da, db = deltas(a), deltas(b)
    sa = {_head_key(r) for r in a["heads"] if r["significant"]}
    sb = {_head_key(r) for r in b["heads"] if r["significant"]}
    x, y = [da[h] for h in heads], [db[h] for h in heads]
    per_kind = {}
    for kind in KINDS:
        hk = [h for h in heads if h[0] == kind]
        if hk:
            per_kind[kind] = {"n": len(hk), "pearson": pearson([da[h] for h in hk], [db[h] for h in hk]),
                              "spearman": spearman([da[h] for h in hk], [db[h] for h in hk])}
    return {
        "format": CROSS_FORMAT, "metric": ma, "a": name_a, "b": name_b,
        "a_baseline": a["baseline"]["score"], "b_baseline": b["baseline"]["score"],
        "n": len(heads), "pearson": pearson(x, y), "spearman": spearman(x, y),
        "per_kind": per_kind, "alpha": a.get("alpha"),
        "significant_both": HeadSet(sa & sb).to_spec(),
        "significant_only_a": HeadSet(sa - sb).to_spec(),
        "significant_only_b": HeadSet(sb - sa).to_spec(),
        "heads": [head_spec(h) for h in heads], "delta_a": x, "delta_b": y,
    }


AGREEMENT_KEYS = ("checkpoint", "checkpoint_fingerprint", "data", "subset",
                  "eval_data", "base_mask", "removed")


def agreement(loss_obj: dict, metric_obj: dict) -> dict:
    """How well loss-based ablation agrees with a decoding-metric ablation of the same
    model and set, over the heads both hold. A loss increase should go with a score
    drop, so agreement shows as negative Pearson/Spearman of (loss delta, score delta);
    ``top_k_overlap``: share of the k most harmful heads by the metric that are also
    among the k most harmful by loss (k = 10% of the heads, at least 1)."""
    sl, sm = loss_obj["settings"], metric_obj["settings"]
    diff = [k for k in AGREEMENT_KEYS if sl.get(k) != sm.get(k)]
    if diff:
        raise HeadPruneError(
            f"the loss and {sm.get('metric')} ablations were made on different models or "
            f"sets ({', '.join(diff)} differ)")
    dl, dm = deltas(loss_obj), deltas(metric_obj)
    heads = sorted(set(dl) & set(dm), key=_sort_key)
    if not heads:
        raise HeadPruneError("the loss and metric ablations share no heads")
    x, y = [dl[h] for h in heads], [dm[h] for h in heads]
    k = max(1, round(0.1 * len(heads)))
    worst_m = {h for h, _ in sorted(zip(heads, y), key=lambda t: t[1])[:k]}
    worst_l = {h for h, _ in sorted(zip(heads, x), key=lambda t: -t[1])[:k]}
    sig_l = {_head_key(r) for r in loss_obj["heads"] if r["significant"]} & set(heads)
    sig_m = {_head_key(r) for r in metric_obj["heads"] if r["significant"]} & set(heads)
    return {"metric": sm["metric"], "n": len(heads), "pearson": pearson(x, y),
            "spearman": spearman(x, y), "top_k": k,
            "top_k_overlap": len(worst_m & worst_l) / k,
            "significant_loss": HeadSet(sig_l).to_spec(),
            "significant_metric": HeadSet(sig_m).to_spec(),
            "timing_s": {"loss": loss_obj.get("timing", {}).get("sweep_s"),
                         sm["metric"]: metric_obj.get("timing", {}).get("sweep_s")}}


# ---------------------------------------------------------------- files of a run
def file_stem(metric: str, index: int, label: str) -> str:
    stem = "ablation_loss" if metric == "loss" else "ablation"
    return stem if index == 0 else f"{stem}.{label}"


def summary_line(obj: dict, alpha: float) -> str:
    sm, t, metric = obj["summary"], obj["timing"], obj["settings"]["metric"]
    ratio = f"{t['ratio']:.3f}" if t.get("ratio") else "n/a"
    return (f"full model {metric} {obj['baseline']['score']:.2f}; {sm['n_significant']} of "
            f"{sm['n_heads']} heads significant at p < {alpha:g} ({sm['n_significant_better']} "
            f"better, {sm['n_significant_worse']} worse without them); sweep {t['sweep_s']:.1f}s "
            f"for {t['decodes']} evaluations, {t['median_decode_s']:.2f}s each, ratio {ratio}")


def _fmt(v) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def write_comparisons(results_dir: str, metric: str, labels: List[str]) -> List[tuple]:
    """Cross-domain files (first set against each other set) and loss-vs-metric
    agreement files (where both ablations of a set exist in ``results_dir``).
    Returns [(kind, path, result, agreement's one-line text or None)], kind
    'cross_domain' or 'agreement'."""
    path = lambda name: os.path.join(results_dir, name)
    objs = [read_json(path(file_stem(metric, i, l) + ".json"), "ablation results file")
            for i, l in enumerate(labels)]
    out = []
    cd_stem = "cross_domain_loss" if metric == "loss" else "cross_domain"
    for i in range(1, len(labels)):
        c = cross_domain(objs[0], objs[i], labels[0], labels[i])
        p = path(cd_stem + (".json" if i == 1 else f".{labels[i]}.json"))
        write_json(p, c)
        out.append(("cross_domain", p, c, None))  # its text: report.ablation_report
    for i, label in enumerate(labels):
        other = path(file_stem("bleu" if metric == "loss" else "loss", i, label) + ".json")
        if not os.path.exists(other):
            continue
        other_obj = read_json(other, "ablation results file")
        loss_obj, metric_obj = (objs[i], other_obj) if metric == "loss" else (other_obj, objs[i])
        try:
            a = agreement(loss_obj, metric_obj)
        except HeadPruneError as e:
            logger.warning(f"no loss/metric agreement for {label}: {e}")
            continue
        p = path("agreement" + ("" if i == 0 else f".{label}") + ".json")
        write_json(p, a)
        out.append(("agreement", p, a, (
            f"{label}: loss vs {a['metric']} over {a['n']} heads: Pearson {_fmt(a['pearson'])}, "
            f"Spearman {_fmt(a['spearman'])} (negative = agree), top-{a['top_k']} overlap "
            f"{a['top_k_overlap']:.2f}; sweep time loss {a['timing_s']['loss']:.1f}s vs "
            f"{a['metric']} {a['timing_s'][a['metric']]:.1f}s -> {p}")))
    return out
