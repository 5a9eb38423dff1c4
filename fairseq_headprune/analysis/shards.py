"""Sweeps split over processes (``--head-shards N --head-shard-id I``) and merged back.

A single-head ablation or a pruning curve with a fixed order is a list of independent
items (heads; curve points). Shard I of N (0-based) takes items I, I+N, I+2N, ... of
the list in its canonical order (``shard_items``): heads sorted by kind (E, A, D),
layer, head, so every shard gets heads of every layer; curve points by fraction. Each
shard is an ordinary run of the command in its own results folder (resumable, atomic
files), that records ``settings["shard"]`` = {"count": N, "index": I, ...}; for an
ablation also "of" (the spec of all heads of the split) and "sets" (the evaluation
sets' labels in order). Every shard of an ablation computes the full-model baseline
itself.

``plan_merge(out_dir, shard_dirs)`` reads the shard folders and checks, before
anything is written, that they are the N shards of one split (ids 0..N-1 once each,
one N: ``check_ids``), that every shard holds the same results files, made with the
same settings (``shard.index`` apart), the same baseline, shape and alpha, and that
every shard is complete. Any problem is one line naming the file and what differs.
``MergePlan.write()`` then writes the results files a single run would have written
(the JSON files, ablation hypotheses and curve spec files; the caller draws tables
and plots from them, as the commands do): they equal a single run's field by field,
``meta`` and ``timing`` apart (``meta.shards`` names the shards; ``timing.sweep_s``
sums the shards' sweeps, each of which decoded the full model once).
"""

import datetime
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import HeadPruneError
from ..heads import HeadSet, HeadSpec
from ..results import _flatten, atomic_write, check_folder, read_json, write_json

SLURM_ENV = "SLURM_ARRAY_TASK_ID"
ALLOWED_IDS = "allowed: every --head-shard-id from 0 to N-1 once, all with the same --head-shards N"


# ---------------------------------------------------------------- shard arithmetic
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def items(self, items: Sequence, what: str) -> list:
        """This shard's items of ``items`` (in their canonical order); ``what`` names
        them in the error when there are fewer items than shards."""
        if self.count > len(items):
            raise HeadPruneError(
                f"--head-shards {self.count} is more than the {len(items)} {what} "
                f"(allowed: 1 to {len(items)})")
        return shard_items(items, self.index, self.count)

    def settings(self, **extra) -> dict:
        return {"count": self.count, "index": self.index, **extra}


def shard_items(items: Sequence, index: int, count: int) -> list:
    """Round robin: items index, index + count, index + 2 count, ... of ``items``."""
    if not (type(count) is int and count >= 1 and type(index) is int and 0 <= index < count):
        raise ValueError(f"shard {index!r} of {count!r}")
    return list(items)[index::count]


def resolve_shard(count: Optional[int], index: Optional[int],
                  environ=os.environ) -> Optional[Shard]:
    """The shard of a command from ``--head-shards`` and ``--head-shard-id`` (None: no
    sharding). With --head-shards and no --head-shard-id, the id is taken from
    $SLURM_ARRAY_TASK_ID (one shard per job of a Slurm array: --array=0-{N-1})."""
    if count is None:
        if index is not None:
            raise HeadPruneError(f"--head-shard-id {index} needs --head-shards N, the number "
                                 f"of shards (allowed: --head-shard-id 0 to N-1 with it)")
        return None
    source = ""
    if index is None:
        text = environ.get(SLURM_ENV)
        if text is None:
            raise HeadPruneError(
                f"--head-shards {count} needs --head-shard-id I (allowed: 0 to {count - 1}; "
                f"default: ${SLURM_ENV} in a Slurm array job)")
        if not text.strip().isdigit():
            raise HeadPruneError(f"${SLURM_ENV} is {text[:40]!r}, no shard id (allowed: a whole "
                                 f"number from 0 to {count - 1}, or pass --head-shard-id I)")
        index, source = int(text), f" (from ${SLURM_ENV})"
    if not 0 <= index < count:
        hint = f"; submit the array as --array=0-{count - 1}" if source else ""
        raise HeadPruneError(f"--head-shard-id {index}{source} is out of range for --head-shards "
                             f"{count} (allowed: 0 to {count - 1}{hint})")
    return Shard(index, count)


def check_ids(shards: Sequence[Tuple[str, int, int]]) -> int:
    """``shards``: (where, index, count) of every shard given. They must be shards 0 to
    N-1 of one N, each once; returns N."""
    if not shards:
        raise HeadPruneError("no shards to merge (allowed: the N results folders of one split)")
    where0, _, n = shards[0]
    for where, index, count in shards:
        if count != n:
            raise HeadPruneError(f"{where} is a shard of --head-shards {count}, {where0} of "
                                 f"--head-shards {n} ({ALLOWED_IDS})")
    seen: Dict[int, str] = {}
    for where, index, _ in shards:
        if index in seen:
            raise HeadPruneError(f"{where} and {seen[index]} are both shard {index} of {n} "
                                 f"({ALLOWED_IDS})")
        seen[index] = where
    missing = [i for i in range(n) if i not in seen]
    if missing:
        raise HeadPruneError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {n} "
            f"{'are' if len(missing) > 1 else 'is'} missing (given: {len(seen)} of {n}; "
            f"{ALLOWED_IDS})")
    return n


# ---------------------------------------------------------------- reading shard folders
def _first_diff(a, b) -> Optional[str]:
    """'KEY: A against B' for the first key (flattened) where two values differ; None
    when they are equal."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None if a == b else f"{_short(a)} against {_short(b)}"
    fa, fb = _flatten(a), _flatten(b)
    for k in sorted(set(fa) | set(fb), key=str):
        va, vb = fa.get(k, "(absent)"), fb.get(k, "(absent)")
        if va != vb:
            return f"{k}: {_short(va)} against {_short(vb)}"
    return None


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _need(obj, keys: Sequence[str], path: str, what: str):
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        got = [k for k in keys if not (isinstance(obj, dict) and k in obj)]
        raise HeadPruneError(f"{what} {path!r} is not one (no {', '.join(got)})")


def _shard_info(obj: dict, path: str, what: str, keys: Sequence[str]) -> dict:
    info = obj["settings"].get("shard") if isinstance(obj.get("settings"), dict) else None
    if not isinstance(info, dict):
        raise HeadPruneError(f"{path!r} was not made with --head-shards (allowed: the results "
                             f"folders of a command run with --head-shards N --head-shard-id I)")
    for k in ("count", "index", *keys):
        if k not in info or (k in ("count", "index") and type(info[k]) is not int):
            raise HeadPruneError(f"{what} {path!r} has a bad settings.shard (no {k})")
    return info


def _common_settings(obj: dict) -> dict:
    s = dict(obj["settings"])
    s["shard"] = {k: v for k, v in s["shard"].items() if k != "index"}
    return s


def _same(objs: List[Tuple[str, dict]], key: str, label: str, hint: str = ""):
    """Every shard's ``key`` equals the first's; else one line naming both files."""
    p0, o0 = objs[0]
    for p, o in objs[1:]:
        diff = _first_diff(o.get(key), o0.get(key))
        if diff:
            raise HeadPruneError(f"{p!r} {label} than {p0!r} ({diff}){hint}")


def _same_settings(objs: List[Tuple[str, dict]]):
    _same([(p, {"settings": _common_settings(o)}) for p, o in objs], "settings",
          "was made with other settings",
          "; run every shard with the same command, but for --head-shard-id")


def _merged_meta(objs: List[Tuple[str, dict]], command: str) -> dict:
    meta0 = objs[0][1].get("meta") if isinstance(objs[0][1].get("meta"), dict) else {}
    meta = {k: v for k, v in meta0.items() if k != "resumed"}
    meta.update(command=command,
                time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                shards=[{"file": os.path.abspath(p), "index": o["settings"]["shard"]["index"],
                         "meta": o.get("meta")} for p, o in objs])
    return meta


@dataclass
class MergePlan:
    """What a merge writes, every check done: JSON files and files copied as they are."""

    out_dir: str
    n_shards: int
    json_files: List[Tuple[str, dict]] = field(default_factory=list)  # (name, obj)
    ablation_files: List[Tuple[str, dict, dict]] = field(default_factory=list)  # (name, obj, shape)
    copies: List[Tuple[str, str]] = field(default_factory=list)  # (source path, name in out_dir)
    ablation_sets: Dict[str, List[str]] = field(default_factory=dict)  # metric -> labels
    curves: Optional[dict] = None
    curve_metrics: tuple = ("bleu", "sacrebleu")

    def targets(self) -> List[str]:
        return ([n for n, _ in self.json_files] + [n for n, _, _ in self.ablation_files]
                + [n for _, n in self.copies])

    def write(self) -> List[str]:
        """Write every file into ``out_dir`` (atomically; the caller has claimed it)."""
        from .ablation import Sweep

        out = []
        for name, obj in self.json_files:
            out.append(write_json(os.path.join(self.out_dir, name), obj))
        for name, obj, shape in self.ablation_files:
            path = os.path.join(self.out_dir, name)
            # the sweep's own finishing step: heads sorted, summary, complete, timing
            Sweep(evaluator=None, heads=[], path=path, settings=obj["settings"],
                  meta=obj["meta"], shape=shape, alpha=obj["alpha"])._write(obj)
            out.append(path)
        for src, name in self.copies:
            dst = os.path.join(self.out_dir, name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(src, "rb") as f:
                atomic_write(dst, f.read())
        return out


def plan_merge(out_dir: str, shard_dirs: Sequence[str], command: str = "fairseq-headprune merge-shards",
               overwrite: bool = False) -> MergePlan:
    """Check the shard folders and prepare the merge into ``out_dir`` (nothing written)."""
    check_folder(out_dir, "OUT_DIR")
    out_abs = os.path.abspath(out_dir)
    seen = {}
    for d in shard_dirs:
        a = os.path.abspath(d)
        if a == out_abs:
            raise HeadPruneError(f"OUT_DIR {out_dir!r} is also a shard folder (allowed: a "
                                 f"folder of its own for the merged results)")
        if a in seen:
            raise HeadPruneError(f"shard folder {d!r} is named twice (as {seen[a]!r})")
        seen[a] = d
        if not os.path.isdir(d):
            raise HeadPruneError(f"shard folder {d!r} does not exist")
    kinds = [_results_in(d) for d in shard_dirs]
    for d, k in zip(shard_dirs, kinds):
        if not k:
            raise HeadPruneError(f"shard folder {d!r} holds no ablation.json, ablation_loss.json "
                                 f"or curve.json (allowed: results folders of ablate or curve "
                                 f"run with --head-shards)")
    for d, k in zip(shard_dirs[1:], kinds[1:]):
        if k != kinds[0]:
            name = sorted(set(k) ^ set(kinds[0]))[0]
            has, lacks = (d, shard_dirs[0]) if name in k else (shard_dirs[0], d)
            raise HeadPruneError(f"shard folder {has!r} holds {name}, {lacks!r} does not "
                                 f"(allowed: shards of the same commands)")
    plan = MergePlan(out_dir, 0)
    for first in kinds[0]:
        if first == "curve.json":
            _plan_curve(plan, shard_dirs, command)
        else:
            _plan_ablation(plan, shard_dirs, first, command)
    if not overwrite:
        for name in plan.targets():
            if os.path.lexists(os.path.join(out_dir, name)):
                raise HeadPruneError(f"OUT_DIR {out_dir!r} already holds {name} (allowed: a "
                                     f"folder without these results, or --overwrite)")
    return plan


def _results_in(d: str) -> List[str]:
    return [n for n in ("ablation.json", "ablation_loss.json", "curve.json")
            if os.path.isfile(os.path.join(d, n))]


def _read_shards(shard_dirs, name, what, keys, shard_keys) -> List[Tuple[str, dict]]:
    objs = []
    for d in shard_dirs:
        p = os.path.join(d, name)
        obj = read_json(p, what)
        _need(obj, keys, p, what)
        if not isinstance(obj["settings"], dict):
            raise HeadPruneError(f"{what} {p!r} has settings that are not an object")
        _shard_info(obj, p, what, shard_keys)
        objs.append((p, obj))
    return objs


def _order_by_id(objs, plan: MergePlan):
    n = check_ids([(repr(p), o["settings"]["shard"]["index"], o["settings"]["shard"]["count"])
                   for p, o in objs])
    if plan.n_shards and plan.n_shards != n:
        raise HeadPruneError(f"{objs[0][0]!r} is a shard of --head-shards {n}, the other results "
                             f"in these folders of --head-shards {plan.n_shards} ({ALLOWED_IDS})")
    plan.n_shards = n
    return sorted(objs, key=lambda po: po[1]["settings"]["shard"]["index"])


# ---------------------------------------------------------------- ablation
def _plan_ablation(plan: MergePlan, shard_dirs, first: str, command: str):
    from .ablation import FORMAT, file_stem

    what = "ablation results file"
    keys = ("format", "settings", "alpha", "shape", "requested", "complete", "baseline",
            "heads", "timing")
    firsts = _read_shards(shard_dirs, first, what, keys, ("of", "sets"))
    sets = firsts[0][1]["settings"]["shard"]["sets"]
    metric = firsts[0][1]["settings"].get("metric")
    if not (isinstance(sets, list) and sets and all(isinstance(s, str) for s in sets)):
        raise HeadPruneError(f"{what} {firsts[0][0]!r} has a bad settings.shard.sets")
    if (file_stem(str(metric), 0, sets[0]) + ".json") != first:
        raise HeadPruneError(f"{what} {firsts[0][0]!r} has metric {metric!r}, which does not "
                             f"belong in {first}")
    plan.ablation_sets[str(metric)] = list(sets)
    for i, label in enumerate(sets):
        name = file_stem(metric, i, label) + ".json"
        objs = _read_shards(shard_dirs, name, what, keys, ("of", "sets")) if i else firsts
        for p, o in objs:
            if o["format"] != FORMAT:
                raise HeadPruneError(f"{p!r} is not a {FORMAT} file")
        objs = _order_by_id(objs, plan)
        _same_settings(objs)
        _same(objs, "shape", "has another shape (heads per layer)")
        _same(objs, "alpha", "has another alpha", "; run every shard with the same --alpha")
        _same(objs, "baseline", "has another full-model baseline",
              "; the shards must decode the full model identically: same checkpoint, data, "
              "options and device type")
        p0, o0 = objs[0]
        shape = o0["shape"]
        info = o0["settings"]["shard"]
        try:
            everything = list(HeadSpec.parse(info["of"]).resolve(shape))
            records = [{(r["kind"], int(r["layer"]), int(r["head"])): r for r in o["heads"]}
                       for _, o in objs]
            requested = [HeadSpec.parse(o["requested"]).resolve(shape) for _, o in objs]
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise HeadPruneError(f"{what} {p0!r} (or another shard's) is malformed: {e}")
        merged_heads, timing_shards = [], []
        t0 = o0["timing"] if isinstance(o0["timing"], dict) else {}
        decode_s = {"full": (t0.get("decode_s") or {}).get("full")}
        for (p, o), recs, req in zip(objs, records, requested):
            index = o["settings"]["shard"]["index"]
            mine = HeadSet(shard_items(everything, index, plan.n_shards))
            if req != mine:
                raise HeadPruneError(
                    f"{p!r} holds the heads {_short(req.to_spec())}, not shard {index} of "
                    f"{plan.n_shards} of {_short(info['of'])} ({_short(mine.to_spec())})")
            if not o["complete"] or HeadSet(recs) != mine:
                raise HeadPruneError(
                    f"{p!r} is not complete: {len(recs)} of {len(mine)} heads done; rerun that "
                    f"shard's command to finish it")
            merged_heads += list(recs.values())
            t = o["timing"] if isinstance(o["timing"], dict) else {}
            decode_s.update({k: v for k, v in (t.get("decode_s") or {}).items() if k != "full"})
            timing_shards.append({"index": index, "sweep_s": t.get("sweep_s"), "runs": t.get("runs")})
        settings = dict(o0["settings"])
        del settings["shard"]
        obj = {"format": FORMAT, "settings": settings, "alpha": o0["alpha"], "shape": shape,
               "requested": info["of"], "complete": False, "baseline": o0["baseline"],
               "heads": merged_heads, "summary": {}, "meta": _merged_meta(objs, command),
               "timing": {"sweep_s": sum(t["sweep_s"] or 0.0 for t in timing_shards),
                          "runs": sum(t["runs"] or 0 for t in timing_shards),
                          "decode_s": decode_s, "shards": timing_shards}}
        plan.ablation_files.append((name, obj, shape))
        _plan_hyps(plan, [os.path.dirname(p) for p, _ in objs], name[:-5] + "_hyps")


def _plan_hyps(plan: MergePlan, dirs: List[str], hyps: str):
    have = [os.path.isdir(os.path.join(d, hyps)) for d in dirs]
    if any(have) and not all(have):
        has, lacks = dirs[have.index(True)], dirs[have.index(False)]
        raise HeadPruneError(f"shard folder {has!r} holds {hyps}/, {lacks!r} does not (allowed: "
                             f"every shard with, or every shard without, --no-save-hyps)")
    names = {}
    for d in dirs if all(have) else []:
        for entry in sorted(os.listdir(os.path.join(d, hyps))):
            src = os.path.join(d, hyps, entry)
            if entry.endswith(".txt") and os.path.isfile(src) and entry not in names:
                names[entry] = src  # full.txt from shard 0 (the baselines are equal)
    plan.copies += [(src, os.path.join(hyps, entry)) for entry, src in names.items()]


# ---------------------------------------------------------------- curve
def _spec_heads(spec: str) -> HeadSet:
    """The heads of a canonical spec (explicit numbers), without the model's shape."""
    parsed = HeadSpec.parse(spec)
    layers, heads = {}, {}
    for kind, lr, hr, _ in parsed.entries:
        if lr is None or hr is None:
            raise ValueError(f"'*' in {spec!r}")
        layers[kind] = max(layers.get(kind, 0), *(hi for _, hi in lr))
        heads[kind] = max(heads.get(kind, 0), *(hi for _, hi in hr))
    return parsed.resolve({k: [heads[k]] * layers[k] for k in layers})


def _plan_curve(plan: MergePlan, shard_dirs, command: str):
    from .curve import FORMAT, fractions, percent

    what = "curve file"
    objs = _read_shards(shard_dirs, "curve.json", what, ("format", "settings", "curves"), ())
    for p, o in objs:
        if o["format"] != FORMAT:
            raise HeadPruneError(f"{p!r} is not a {FORMAT} file")
        if not isinstance(o["curves"], dict):
            raise HeadPruneError(f"{what} {p!r} has no curves")
    objs = _order_by_id(objs, plan)
    _same_settings(objs)
    p0, o0 = objs[0]
    settings = dict(o0["settings"])
    del settings["shard"]
    names = settings.get("curves")
    try:
        steps = fractions(settings.get("step"))
    except HeadPruneError as e:
        raise HeadPruneError(f"{what} {p0!r} has step {settings.get('step')!r}: {e}")
    if not (isinstance(names, list) and names):
        raise HeadPruneError(f"{what} {p0!r} has no list of curve names in its settings")
    curves = {}
    for name in names:
        points = []
        for p, o in objs:
            index = o["settings"]["shard"]["index"]
            mine = shard_items(steps, index, plan.n_shards)
            got = o["curves"].get(name) or []
            fr = [pt.get("fraction") if isinstance(pt, dict) else None for pt in got]
            if fr != mine:
                raise HeadPruneError(
                    f"{p!r} is not complete: curve {name!r} has {len(got)} of its {len(mine)} "
                    f"points; rerun that shard's command to finish it")
            for pt in got:
                spec_name = f"specs/curve_{name}_{percent(pt['fraction']):03d}.json"
                src = os.path.join(os.path.dirname(p), spec_name)
                if not os.path.isfile(src):
                    raise HeadPruneError(f"shard folder {os.path.dirname(p)!r} has no {spec_name}, "
                                         f"the spec file of a point of its curve.json")
                plan.copies.append((src, spec_name))
                points.append((pt, p))
        points.sort(key=lambda t: t[0]["fraction"])
        _check_nested(name, points)
        curves[name] = [pt for pt, _ in points]
    plan.curves = curves
    plan.curve_metrics = tuple(settings.get("metrics") or ("bleu", "sacrebleu"))
    plan.json_files.append(("curve.json", {"format": FORMAT, "settings": settings, "curves": curves,
                                           "meta": _merged_meta(objs, command)}))


def _check_nested(name: str, points):
    """With a fixed order each point masks the heads of the point before it, and more:
    shards that ranked the heads differently (another importance file) give points
    that do not nest."""
    prev = None
    for pt, p in points:
        try:
            heads = _spec_heads(pt["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise HeadPruneError(f"curve file {p!r}: curve {name!r} has a point with a bad "
                                 f"spec ({_short(str(e))})")
        if prev is not None and len(prev[0] - heads):
            raise HeadPruneError(
                f"curve {name!r}: the {prev[1]['fraction']:g} point of {prev[2]!r} masks heads "
                f"that the {pt['fraction']:g} point of {p!r} keeps: the shards ranked the heads "
                f"differently (was the --importance or --ablation file changed between them?)")
        prev = (heads, pt, p)
