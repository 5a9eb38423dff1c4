"""Results files: written atomically (temp file + rename), so a killed run never
leaves a half-written JSON/CSV, and read back with clear errors."""

import csv
import io
import json
import os
import tempfile
from typing import Iterable, Sequence

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
