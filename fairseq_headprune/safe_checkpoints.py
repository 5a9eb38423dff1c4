"""Load fairseq checkpoints under torch's ``weights_only`` protection.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers unless a
global is allow-listed. fairseq checkpoints hold a few harmless globals (the legacy
``argparse.Namespace`` config, numpy scalars in the saved metrics, ...). We allow-list
exactly those, process-wide, instead of switching the protection off
(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), so a checkpoint that pickles anything else, e.g.
a function that would run code, is still refused.
"""

import argparse

import torch


def _fairseq_checkpoint_globals():
    """argparse.Namespace (legacy configs) and numpy scalars/arrays (values such as
    a best validation score that older fairseq versions saved as numpy floats)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    found = [argparse.Namespace, np.dtype, np.ndarray, scalar, _reconstruct]
    # Pickles made with numpy 1 name these numpy.core.*, with numpy 2 numpy._core.*
    found += [(scalar, "numpy.core.multiarray.scalar"),
              (_reconstruct, "numpy.core.multiarray._reconstruct")]
    for name in ("float64", "float32", "float16", "int64", "int32", "bool_"):
        found.append(type(np.dtype(getattr(np, name))))
    return found


def allow_fairseq_checkpoints():
    """Allow-list the globals fairseq checkpoints need (idempotent)."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(_fairseq_checkpoint_globals())
