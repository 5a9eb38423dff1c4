"""fairseq-headprune: which attention heads does a fairseq Transformer need?

Importing the package registers its task, criterion and attention module with
fairseq (with or without ``--user-dir``), allow-lists what fairseq checkpoints need
for torch's safe loading, and makes HeadPruneError print one line instead of a
traceback.
"""

__version__ = "0.1.0"

from . import safe_checkpoints  # noqa: E402

safe_checkpoints.allow_fairseq_checkpoints()

from . import errors  # noqa: E402

errors.install_excepthook()

from . import criterions, models, modules, tasks  # noqa: E402,F401
from . import compat  # noqa: E402

compat.patch_task_override()
compat.patch_distributed_broadcast()
from .errors import HeadPruneError  # noqa: E402,F401
from .heads import HeadSet, HeadSpec  # noqa: E402,F401
