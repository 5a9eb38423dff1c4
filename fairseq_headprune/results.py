"""Results files: written atomically (temp file + rename), so a killed run never
leaves a half-written JSON/CSV, read back with clear errors, and resumed only when
they were made with the same settings (``load_resumable``)."""

import csv
import io
import json
import os
import tempfile
from typing import Iterable, Optional, Sequence

from .errors import HeadPruneError


def atomic_write(path: str, data: bytes):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise HeadPruneError(f"output folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def read_json(path: str, what: str = "results file"):
    if not os.path.isfile(path):
        raise HeadPruneError(f"{what} {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise HeadPruneError(f"{what} {path!r} is not valid JSON: {e}")


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
