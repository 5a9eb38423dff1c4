"""The one exception type for bad user input.

Every message is a single line that names the bad value and what is allowed. The
package installs an excepthook (see ``__init__``) so that, even inside the stock
fairseq command-line tools, such an error prints that one line and no traceback.
"""


class HeadPruneError(ValueError):
    """Bad user input: a spec, a file, a value out of range."""


def install_excepthook():
    """Uncaught HeadPruneError -> 'fairseq-headprune: error: MESSAGE', exit status 2."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "_headprune", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, HeadPruneError):
            import os

            sys.stdout.flush()
            sys.stderr.write(f"fairseq-headprune: error: {exc}\n")
            sys.stderr.flush()
            os._exit(2)  # the status argparse uses for bad arguments
        previous(exc_type, exc, tb)

    hook._headprune = True
    sys.excepthook = hook
