"""Half precision: the dtype a command runs its model in, and one line for the
precision flags that cannot work.

What fairseq 0.12 does with its flags (read in ``options.parse_args_and_arch`` and
fairseq_cli/*.py):

* ``--fp16`` (``--memory-efficient-fp16`` implies it): fairseq-generate, -validate and
  -interactive call ``model.half()``, on CPU too; torch >= 2.1 has CPU kernels for
  every op of these models in float16 (linear, bmm, softmax,
  scaled_dot_product_attention, layer norm, log-softmax, forward and backward).
  fairseq-train --fp16 needs a CUDA GPU: its FP16 optimizer keeps the float32 master
  weights on ``torch.cuda.current_device()`` (a traceback on CPU).
* ``--bf16`` (``--memory-efficient-bf16`` implies it) is fairseq's TPU mode: it sets
  ``--tpu``. fairseq-generate, -validate and -interactive ignore both and run in
  float32; fairseq-train asks torch_xla for a TPU device (a traceback without it).
  ``--fp16 --bf16`` is refused by fairseq with a ValueError about ``--tpu``.

This package: every ``fairseq-headprune`` command runs the model in float16 with
``--fp16`` and in bfloat16 with ``--bf16`` (CPU or GPU); ``--fp16 --bf16`` and the
fairseq-train settings that cannot work are one line (``HeadPruneError``)."""

from typing import Any, Optional

from .errors import HeadPruneError

BOTH_MESSAGE = ("--fp16 and --bf16 cannot be combined (allowed: one of them, or neither "
                "for float32)")


def cfg_get(cfg: Any, key: str):
    """``cfg.key`` of a namespace, dict or (struct) DictConfig; None when absent."""
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(key)
    try:
        return getattr(cfg, key, None)
    except Exception:  # a struct DictConfig without the key
        return None


def model_dtype(common: Any):
    """torch dtype of the model for fairseq's common options (``cfg.common`` or the
    argparse namespace): float16 with --fp16, bfloat16 with --bf16, else float32."""
    import torch

    fp16 = bool(cfg_get(common, "fp16") or cfg_get(common, "memory_efficient_fp16"))
    bf16 = bool(cfg_get(common, "bf16") or cfg_get(common, "memory_efficient_bf16"))
    if fp16 and bf16:
        raise HeadPruneError(BOTH_MESSAGE)
    return torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def fairseq_parse_error(e: ValueError) -> Optional[HeadPruneError]:
    """The one line for fairseq's own refusal of --fp16 with --bf16 (or --tpu), None for
    any other ValueError."""
    if "Cannot combine --fp16 and --tpu" in str(e):
        return HeadPruneError(BOTH_MESSAGE.replace(
            "--bf16 cannot", "--bf16 (or --tpu) cannot"))
    return None


def _has_torch_xla() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_xla") is not None


def check_training_flags(cfg: Any) -> None:
    """fairseq-train's precision flags, from a model config that carries the command
    line (fairseq's legacy architectures): one line where fairseq would fail with a
    traceback. Configs without these keys are left alone."""
    import torch

    fp16 = bool(cfg_get(cfg, "fp16") or cfg_get(cfg, "memory_efficient_fp16"))
    bf16 = bool(cfg_get(cfg, "bf16") or cfg_get(cfg, "memory_efficient_bf16"))
    tpu = bool(cfg_get(cfg, "tpu"))
    on_cpu = bool(cfg_get(cfg, "cpu")) or not torch.cuda.is_available()
    if fp16 and (bf16 or tpu):
        raise HeadPruneError(BOTH_MESSAGE)
    if (bf16 or tpu) and not _has_torch_xla():
        flag = "--bf16 is fairseq's TPU mode (it sets --tpu)" if bf16 else "--tpu runs on a TPU"
        raise HeadPruneError(
            f"fairseq-train {flag}, which needs torch_xla, not installed here (allowed: "
            f"float32, no precision flag; --fp16 or --amp on a CUDA GPU)")
    if fp16 and on_cpu:
        where = "--cpu is set" if cfg_get(cfg, "cpu") else "no CUDA GPU is available"
        raise HeadPruneError(
            f"fairseq-train --fp16 needs a CUDA GPU (fairseq's FP16 optimizer keeps its "
            f"float32 weights there) and {where} (allowed on CPU: float32, no precision "
            f"flag; fairseq-generate and fairseq-headprune commands do run --fp16 on CPU)")
