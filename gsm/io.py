"""Atomic file writes: a temporary file in the same folder, then `os.replace`, so a job killed
mid-write never leaves half a file (results.json, report.csv, figures)."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on normal exit it is renamed onto `path`, on an
    exception it is removed and `path` is left as it was."""
    path = Path(path)
    # a fresh name per writer; created by the writer itself, so the umask applies (mkstemp would give 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path, obj) -> None:
    """json.dumps(obj) written atomically (non-JSON numbers, e.g. tensors' floats, via float)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=float))


def savefig_atomic(fig, path, **kwargs) -> None:
    """matplotlib's fig.savefig, written atomically (the format is taken from `path`'s suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
