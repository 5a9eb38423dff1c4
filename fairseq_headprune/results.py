"""Results files and folders.

* Files are written atomically (a temp file ``.fairseq-headprune-tmp.NAME.XXXXXXXX``
  next to the target, then a rename), with the user's normal permissions (0666 &
  ~umask), so a killed run never leaves a half-written JSON/CSV/checkpoint; leftover
  temp files of a killed run are removed by the next run that claims the folder.
* A results folder is owned by one run at a time (``claim_folder``): a lock file
  ``DIR/.fairseq-headprune.lock`` naming the pid, host and command, held with
  ``fcntl.flock`` (so a killed owner's lock is seen as stale and taken over with a
  warning) and removed at exit (``release_all``), with the folder itself when this
  run created it and left it empty.
* Results files are read back with clear errors (``read_json``: no NaN/Infinity, no
  overflowing numbers, no absurd nesting), and resumed only when they were made with
  the same settings (``load_resumable``).
"""

import atexit
import csv
import errno
import fcntl
import io
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
from typing import Iterable, List, Optional, Sequence

from .errors import HeadPruneError

logger = logging.getLogger("fairseq_headprune")

TMP_PREFIX = ".fairseq-headprune-tmp."
LOCK_NAME = ".fairseq-headprune.lock"
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"(?P<name>.+)\.[A-Za-z0-9_]{8}$")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, data: bytes):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HeadPruneError(f"output folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX + os.path.basename(path) + ".")
    try:
        os.fchmod(fd, _file_mode())  # the user's normal permissions, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def clean_temp_files(folder: str, name: Optional[str] = None) -> List[str]:
    """Remove leftover temp files of ``atomic_write`` in ``folder`` (only those of
    target ``name`` when given); the paths removed."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry)
        if not m or (name is not None and m.group("name") != name):
            continue
        path = os.path.join(folder, entry)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    if removed:
        logger.warning(f"removed {len(removed)} temporary file(s) left by an earlier, "
                       f"interrupted run in {folder}: {', '.join(os.path.basename(p) for p in removed)}")
    return removed


# -- one run per results folder ------------------------------------------------------

_claims = {}  # absolute folder -> (lock fd, lock path, folders this run created, outermost first)


def check_folder(path: str, option: str = "--results-dir") -> None:
    """``path`` can be a results folder: a writable folder, or creatable in one."""
    p = os.path.abspath(path)
    if os.path.lexists(p) and not os.path.isdir(p):
        raise HeadPruneError(f"{option} {path!r} is a file (allowed: a folder, created if missing)")
    existing = p
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise HeadPruneError(f"{option} {path!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == p else f"cannot be created: {existing!r} is not writable"
        raise HeadPruneError(f"{option} {path!r} {what} (allowed: a folder you can write to)")


def _lock_info(fd) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace")
        info = json.loads(text) if text.strip() else {}
        return info if isinstance(info, dict) else {"text": text[:200]}
    except (OSError, ValueError, RecursionError):
        return {"text": "unreadable"}


def _who(info: dict) -> str:
    if not info:
        return "an unknown run"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"({info.get('command', '?')!s:.120}, started {info.get('started', '?')})")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _remove_if_empty(created: Sequence[str]) -> None:
    """Remove the folders this run created (innermost first) that hold nothing but
    empty folders."""
    for folder in reversed(created):
        for root, dirs, files in os.walk(folder, topdown=False):
            try:
                os.rmdir(root)
            except OSError:
                pass


def claim_folder(path: str, command: Optional[str] = None, option: str = "--results-dir") -> str:
    """Make ``path`` this run's results folder: create it if missing, take its lock
    (one line naming the owner if another live run holds it; a dead owner's lock is
    taken over with a warning) and remove temp files that killed runs left there.
    Released by ``release_all`` (at exit, also on errors and signals)."""
    folder = os.path.abspath(path)
    if folder in _claims:
        return folder
    check_folder(path, option)
    created, p = [], folder
    while not os.path.isdir(p):
        created.insert(0, p)
        p = os.path.dirname(p)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise HeadPruneError(f"{option} {path!r} cannot be created: {e.strerror}")
    lock = os.path.join(folder, LOCK_NAME)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, _file_mode())
        except OSError as e:
            _remove_if_empty(created)
            raise HeadPruneError(f"{option} {path!r}: cannot create its lock file ({e.strerror})")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            info = _lock_info(fd)
            os.close(fd)
            _remove_if_empty(created)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HeadPruneError(f"{option} {path!r}: cannot lock {lock!r} ({e.strerror})")
            raise HeadPruneError(f"{option} {path!r} is in use by another run: {_who(info)}; "
                                 f"wait for it to end or use another folder")
        try:  # the owner may have released (removed) the file between our open and flock
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    old = _lock_info(fd)
    if old:
        state = ("no longer running" if old.get("host") != socket.gethostname()
                 or not _pid_alive(old.get("pid")) else "no longer holding it")
        logger.warning(f"took over the stale lock of {folder}: {_who(old)} is {state}")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command or " ".join(["fairseq-headprune"] + sys.argv[1:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    if not _claims:
        atexit.register(release_all)
    _claims[folder] = (fd, lock, created)
    clean_temp_files(folder)
    return folder


def release_all() -> None:
    """Release every folder this run claimed: remove its lock file, and the folder
    itself where this run created it and left it empty."""
    for folder, (fd, lock, created) in list(_claims.items()):
        del _claims[folder]
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        _remove_if_empty(created)


def write_json(path: str, obj) -> str:
    atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow(row)
    atomic_write(path, buf.getvalue().encode("utf-8"))
    return path


def write_text(path: str, text: str) -> str:
    atomic_write(path, text.encode("utf-8"))
    return path


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(f"the number {text[:40]}, which overflows to infinity")
    return value


def _no_constant(name: str):
    raise _NotFinite(name)


def read_json(path: str, what: str = "results file"):
    """JSON as this package writes it: finite numbers only, nested a sane depth."""
    if not os.path.isfile(path):
        raise HeadPruneError(f"{what} {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_float=_finite_float, parse_constant=_no_constant)
    except _NotFinite as e:
        raise HeadPruneError(f"{what} {path!r} holds {e} (allowed: finite numbers only)")
    except RecursionError:
        raise HeadPruneError(f"{what} {path!r} is nested too deeply to be a results file")
    except ValueError as e:  # also JSONDecodeError, UnicodeDecodeError
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise HeadPruneError(f"{what} {path!r} is not valid JSON: {first}")
    except OSError as e:
        raise HeadPruneError(f"{what} {path!r} cannot be read: {e.strerror}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_resumable(path: str, fmt: str, settings: dict, overwrite: bool = False,
                   what: str = "results file") -> Optional[dict]:
    """The stored results at ``path`` to resume from, or None for a fresh start
    (no file, or ``overwrite``). Refuses a file of another format, or one made with
    other settings, naming the first settings that differ."""
    if overwrite or not os.path.exists(path):
        return None
    obj = read_json(path, what)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise HeadPruneError(
            f"{path!r} is not a {fmt} file; choose another --results-dir or pass --overwrite")
    # compare as stored: a JSON round trip turns tuples into lists
    old = _flatten(obj.get("settings") or {})
    new = _flatten(json.loads(json.dumps(settings)))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:3])
        raise HeadPruneError(
            f"{path!r} holds results made with other settings ({shown}); rerun the same "
            f"command to resume, or use another --results-dir or --overwrite")
    return obj
