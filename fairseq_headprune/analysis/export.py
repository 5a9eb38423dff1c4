"""Choosing heads to remove and writing a smaller fairseq checkpoint.

``select_least_important`` turns an importance file and a ratio into a HeadSet (the
paper's pruning order; ``select_heads``: that or a spec, as export and bench take them);
``pruned_checkpoint_state`` turns an original checkpoint plus a model whose heads were
removed into a checkpoint state that stock fairseq tools load (with ``--user-dir`` and
``--task translation_headprune``; a classifier's records ``sentence_prediction_headprune``
as its task, which fairseq-validate uses), ``write_checkpoint`` writes it atomically, and
``export_pruned`` does all of it (remove, write, reload to check, count).
``write_torchscript`` writes the model as TorchScript (stock attention modules, see
modules/deploy.py), checked against the eager model.
"""

import copy
import io
import logging
import os
from typing import Dict, Iterable, Optional, Tuple

import torch

from ..errors import HeadPruneError
from ..heads import KINDS, HeadSet, HeadSpec, share_count
from ..models.head_model import (
    PRUNED_HEADS_KEY,
    attention_modules,
    model_head_shape,
    parameter_counts,
    remove_heads,
    removed_heads,
)
from ..results import atomic_write
from .ranking import load_importance, order_by_scores, take_with_floor

logger = logging.getLogger("fairseq_headprune.export")


def current_head_counts(model) -> Dict[str, list]:
    """{kind: [heads present now per layer]} (the original shape minus removals)."""
    out: Dict[str, list] = {}
    for (kind, _), module in attention_modules(model).items():
        out.setdefault(kind, []).append(module.num_heads)
    return out


def select_least_important(model, scores, ratio: float, kinds: Iterable[str] = KINDS,
                           min_heads_per_layer: int = 0) -> HeadSet:
    """The round(ratio x present heads of ``kinds``) least important heads of ``kinds``,
    keeping at least ``min_heads_per_layer`` heads in each module. Heads removed
    earlier are neither counted nor chosen again."""
    if not 0.0 <= ratio <= 1.0:
        raise HeadPruneError(f"--prune-ratio {ratio:g} is outside [0, 1]")
    kinds = tuple(kinds)
    present = {k: v for k, v in current_head_counts(model).items() if k in kinds}
    missing = [k for k in kinds if k not in present]
    if missing:
        raise HeadPruneError(
            f"--kinds names {','.join(missing)}, which this model does not have "
            f"(it has: {','.join(current_head_counts(model))})"
        )
    n = sum(sum(v) for v in present.values())
    count = share_count(ratio, n)
    order = order_by_scores(scores, kinds, exclude=removed_heads(model))
    chosen = take_with_floor(order, count, present, min_heads_per_layer)
    return chosen


def select_heads(model, spec: Optional[HeadSpec], importance: Optional[str] = None,
                 ratio: Optional[float] = None, kinds: Iterable[str] = KINDS,
                 min_heads_per_layer: int = 0) -> Tuple[HeadSet, dict]:
    """The heads ``spec`` names, or else the ``ratio`` least important by the
    ``importance`` file (select_least_important); and how they were chosen, for the
    results file."""
    shape = model_head_shape(model)
    if spec is not None:
        return spec.resolve(shape), {"spec": spec.text}
    scores = load_importance(importance, shape, removed=removed_heads(model))
    heads = select_least_important(model, scores, ratio, kinds,
                                   min_heads_per_layer)
    return heads, {"prune_ratio": ratio, "importance": os.path.abspath(importance),
                   "kinds": list(kinds), "min_heads_per_layer": min_heads_per_layer}


def _set_cfg_value(model_cfg, key, value):
    if isinstance(model_cfg, dict):
        model_cfg[key] = value
    else:
        setattr(model_cfg, key, value)


def compact_state_dict(weights: dict, dtypes_from: dict) -> dict:
    """``weights`` on the CPU, each floating-point tensor in the dtype of the tensor of
    the same name in ``dtypes_from`` (fp16 checkpoints stay fp16), each a compact copy
    (a sliced view would save its whole storage), and tensors that are one tensor in
    the model (tied embeddings: ``--share-all-embeddings``,
    ``--share-decoder-input-output-embed``) one tensor in the result too, so that
    torch.save writes them once, as fairseq's own checkpoints do."""
    out, copies = {}, {}
    for key, value in weights.items():
        value = value.detach()
        old = dtypes_from.get(key)
        dtype = value.dtype
        if (torch.is_tensor(old) and old.is_floating_point() and value.is_floating_point()):
            dtype = old.dtype
        same = (key,) if value.numel() == 0 else (value.device, value.untyped_storage().data_ptr(), value.storage_offset(),
                tuple(value.shape), tuple(value.stride()), value.dtype, dtype)
        if same not in copies:
            copies[same] = value.cpu().to(dtype).clone(memory_format=torch.contiguous_format)
        out[key] = copies[same]
    return out


def pruned_checkpoint_state(src_path: str, model) -> dict:
    """The checkpoint at ``src_path`` with ``model``'s weights (heads removed) and the
    removed heads recorded in ``cfg.model.pruned_heads``.

    * The optimizer state is dropped: its tensors have the original shapes and no
      longer fit (``--restore-file`` then starts a fresh optimizer; the lr-scheduler
      history and update count stay).
    * An EMA copy, if the checkpoint has one, is pruned the same way; its fp32 copy
      is dropped (fairseq rebuilds it from the EMA model).
    * Floating-point tensors keep the checkpoint's dtype (fp16 checkpoints stay fp16).
    """
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    state = checkpoint_utils.load_checkpoint_to_cpu(src_path)
    original = state["model"]
    new_model = compact_state_dict(model.state_dict(), original)
    lost = [k for k in original if k not in new_model]
    if lost:
        raise HeadPruneError(
            f"the pruned model lacks {len(lost)} tensors of {src_path!r} (e.g. {lost[0]!r}); "
            f"export supports fairseq transformer translation checkpoints"
        )
    state["model"] = new_model
    spec = removed_heads(model).to_spec() or None
    cfg = state.get("cfg")
    if cfg is not None:
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        model_cfg = cfg.get("model")
        if model_cfg is None:
            raise HeadPruneError(f"checkpoint {src_path!r} has no model config to record "
                                 f"the removed heads in")
        model_cfg = copy.copy(model_cfg)
        _set_cfg_value(model_cfg, PRUNED_HEADS_KEY, spec)
        cfg["model"] = model_cfg
        task_cfg = cfg.get("task")
        if isinstance(task_cfg, dict) and task_cfg.get("_name") == "sentence_prediction":
            # fairseq-validate builds the model with the checkpoint's own task: ours
            # builds it without the removed heads (stock fairseq would build it whole)
            cfg["task"] = dict(task_cfg, _name="sentence_prediction_headprune")
        state["cfg"] = cfg
    if state.get("args") is not None:
        state["args"] = copy.copy(state["args"])
        setattr(state["args"], PRUNED_HEADS_KEY, spec)
    state.pop("last_optimizer_state", None)
    extra = state.get("extra_state") or {}
    if "ema" in extra:
        # The EMA weights are a full (or differently pruned) model state: slice them
        # to the kept heads with the attention modules' own upgrade logic.
        ema_model = copy.deepcopy(model)
        ema_model.load_state_dict(extra["ema"], strict=True)
        extra["ema"] = compact_state_dict(ema_model.state_dict(), extra["ema"])
        extra.pop("ema_fp32_params", None)
    return state


def write_checkpoint(state: dict, path: str) -> int:
    """torch.save to a temporary file in the same folder, then rename: a failed or
    killed export leaves no partial file. Returns the file size in bytes."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HeadPruneError(f"output folder {folder!r} does not exist")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # like torch.save, not mkstemp's 0600
    return os.path.getsize(path)


def tensor_bytes(state_dict: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state_dict.values()
               if torch.is_tensor(t))


def parameter_summary(before: dict, after: dict, heads_before: Optional[dict] = None) -> dict:
    """Parameter counts before/after (from models.parameter_counts), in total and per
    kind, and the exact shares removed."""
    from fractions import Fraction

    def share(removed, total):
        if not total:
            return {"fraction": 0.0, "exact": "0/0"}
        f = Fraction(removed, total)
        return {"fraction": removed / total, "exact": f"{removed}/{total}",
                "reduced": f"{f.numerator}/{f.denominator}"}

    def row(b, a):
        return {"before": b, "after": a, "removed": b - a, "share_removed": share(b - a, b)}

    out = {"total": row(before["total"], after["total"]), "attention": {}, "heads": {}}
    for part in ("attention", "heads"):
        out[part]["all"] = row(sum(before[part].values()), sum(after[part].values()))
        for kind in before[part]:
            out[part][kind] = row(before[part][kind], after[part][kind])
    return out


def export_pruned(model, task, model_cfg, src_path: str, out: str, heads: HeadSet,
                  verify: bool = True) -> Tuple[HeadSet, dict]:
    """Remove ``heads`` from ``model`` (loaded from ``src_path``; ``model_cfg`` its saved
    model config, which records them), write the checkpoint ``out`` and, with
    ``verify``, reload it with ``task`` to check its heads and size (on failure ``out``
    is deleted). Returns all heads removed now and before, and the export.json entries
    from "removed_now" to "verified_reload"."""
    shape = model_head_shape(model)
    already = removed_heads(model)
    before = parameter_counts(model)
    before_bytes = tensor_bytes(model.state_dict())
    new = heads - already
    removed = remove_heads(model, heads, model_cfg=model_cfg)
    after = parameter_counts(model)
    logger.info(f"removing {len(new)} heads ({len(removed)} removed in all): "
                f"{removed.to_spec() or '(none)'}")

    state = pruned_checkpoint_state(src_path, model)
    size = write_checkpoint(state, out)
    del state

    verified = None
    if verify:
        from fairseq import checkpoint_utils

        models, _ = checkpoint_utils.load_model_ensemble([out], task=task)
        check = models[0]
        verified = (removed_heads(check) == removed
                    and parameter_counts(check)["total"] == after["total"])
        if not verified:
            os.unlink(out)
            raise HeadPruneError(f"{out!r} did not reload with the removed heads; deleted it")
    return removed, {
        "removed_now": {"spec": new.to_spec(), "count": len(new)},
        "removed_in_all": {"spec": removed.to_spec(), "count": len(removed),
                           "per_kind": {k: removed.count(k) for k in shape}},
        "removed_before": {"spec": already.to_spec(), "count": len(already)},
        "parameters": parameter_summary(before, after),
        "bytes": {"source_file": os.path.getsize(src_path), "out_file": size,
                  "model_tensors_before": before_bytes,
                  "model_tensors_after": tensor_bytes(model.state_dict())},
        "optimizer_state": "dropped (it has the original shapes); fine-tune with "
                           "--finetune-from-model, or --restore-file starts a fresh optimizer",
        "verified_reload": verified,
    }


def _probe_batch(model, seed: int = 0):
    """A fixed batch of random tokens for a teacher-forced forward: 3 sentences, one
    source left-padded and one target right-padded (fairseq's defaults), so that the
    padding masks take part."""
    src_dict, tgt_dict = model.encoder.dictionary, model.decoder.dictionary
    g = torch.Generator().manual_seed(seed)

    def tokens(d, n, length):
        return torch.randint(d.nspecial, len(d), (n, length), generator=g)

    src = tokens(src_dict, 3, 7)
    src[:, -1] = src_dict.eos()
    src[1, :3] = src_dict.pad()
    src[1, 3:] = torch.cat([tokens(src_dict, 1, 3)[0], src.new_tensor([src_dict.eos()])])
    lengths = torch.tensor([7, 4, 7])
    prev = tokens(tgt_dict, 3, 6)
    prev[:, 0] = tgt_dict.eos()
    prev[2, 4:] = tgt_dict.pad()
    return src, lengths, prev


def write_torchscript(model, path: str, verify: bool = True) -> dict:
    """``torch.jit.save`` of ``torch.jit.script(deployable(model))`` in eval mode, written
    atomically; ``model`` itself is untouched. With ``verify``, the saved file is loaded
    and its teacher-forced decoder output on a fixed probe batch compared with the eager
    ``model``'s (on a mismatch the file is deleted). Returns the export.json entry."""
    from ..modules.deploy import deployable

    scripted = torch.jit.script(deployable(model).eval())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    atomic_write(path, buf.getvalue())
    del scripted, buf
    entry = {"path": path, "bytes": os.path.getsize(path), "verified": None}
    if verify:
        src, lengths, prev = _probe_batch(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                eager = model(src, lengths, prev)[0]
                loaded = torch.jit.load(path, map_location="cpu")
                got = loaded(src, lengths, prev)[0]
        finally:
            model.train(was_training)
        same_shape = got.shape == eager.shape
        diff = float((got.float() - eager.float()).abs().max()) if same_shape else float("inf")
        # Scripted and eager run different (equivalent) attention arithmetic; a real
        # mismatch (a wrong head, a wrong mask) is orders of magnitude above this.
        ok = same_shape and bool(torch.allclose(got, eager, rtol=1e-4, atol=1e-4))
        if not ok:
            os.unlink(path)
            raise HeadPruneError(f"--torchscript {path!r}: the scripted model's output differs "
                                 f"from the eager model's (max abs diff {diff:.3g}); deleted it")
        entry["verified"] = {"probe": "teacher-forced decoder output, 3 random sentences",
                             "max_abs_diff": diff}
    return entry
