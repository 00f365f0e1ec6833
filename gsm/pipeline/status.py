"""Truthful run statuses (docs/robustness.md): every run ends ok, diverged, interrupted or failed, and
one that never ended is reported lost.

When the work starts, results.json is written with status `running` and the process that runs it
(`process`: pid, host and the pid's start time, so a reused pid is not mistaken for the run), and a
`heartbeat` file in the run folder is touched every HEARTBEAT_EVERY seconds. Every way the run ends writes
results.json again (`gsm.pipeline.run.recorded`). A process killed without that chance (SIGKILL, the OOM
killer, a lost node) leaves `running`: `job_status` (gsm-report) then calls the job `lost` when its
process is gone (same host) or its heartbeat is older than STALE_AFTER (another host).

results.json is strict JSON: a number that is undefined or not finite is written as null, and the
reason goes to `null_reasons` (dotted path → reason), unless a `<key>_reason` beside it says why.
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from pathlib import Path

from gsm.io import write_json_atomic

HEARTBEAT = "heartbeat"
HEARTBEAT_EVERY = 10.0     # seconds between touches
STALE_AFTER = 120.0        # a heartbeat this old means the process is gone (checked for another host only)
FINISHED = ("ok", "diverged")
ENDED = (*FINISHED, "interrupted", "failed")


def _start_ticks(pid: int):
    """The process's start time in clock ticks since boot (Linux /proc), or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])     # field 22; the name in (...) may hold spaces


def process_record() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start_ticks": _start_ticks(pid)}


def process_alive(rec: dict):
    """True / False for a process of this host; None for another host (its heartbeat decides)."""
    if rec.get("host") != socket.gethostname():
        return None
    pid = int(rec["pid"])
    if rec.get("start_ticks") is not None and Path("/proc").is_dir():
        return _start_ticks(pid) == rec["start_ticks"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, another user's
        return True
    return True


class Heartbeat:
    """Touches <run folder>/heartbeat every HEARTBEAT_EVERY s from a daemon thread until `stop()`."""

    def __init__(self, folder: Path, every: float = HEARTBEAT_EVERY):
        self.path, self._stop = Path(folder) / HEARTBEAT, threading.Event()
        self.path.touch()
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True, name="gsm-heartbeat")
        self._thread.start()

    def _beat(self, every):
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:         # the folder went away or read-only: the pid record still tells
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.path.unlink()
        except OSError:
            pass


def error_record(e: BaseException) -> dict:
    """{"type", "message"}: the exception's class and its first line."""
    lines = str(e).strip().splitlines()
    return {"type": type(e).__name__, "message": lines[0] if lines else type(e).__name__}


def strict(obj, reasons: dict, path: str = ""):
    """A copy of obj with every non-finite float replaced by None, its dotted path and why in `reasons`
    (skipped when a `<key>_reason` sibling already says why)."""
    if isinstance(obj, dict):
        return {k: strict(v, reasons if f"{k}_reason" not in obj else {}, f"{path}{k}.") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v, reasons, f"{path}{i}.") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float) or hasattr(obj, "__float__"):     # also numpy and 0-d torch numbers
        v = float(obj)
        if not math.isfinite(v):
            reasons[path.rstrip(".")] = f"not finite ({v})"
            return None
        return v
    return obj


def write_results(path, results: dict) -> None:
    """results.json in strict JSON (see the module doc), written atomically. If the folder has become
    read-only (no temporary file can be created there) but results.json is writable, it is overwritten in
    place, with a warning saying so: a complete record beats an atomic missing one."""
    reasons = dict(results.get("null_reasons") or {})
    clean = strict({k: v for k, v in results.items() if k != "null_reasons"}, reasons)
    if reasons:
        clean["null_reasons"] = reasons
    try:
        write_json_atomic(path, clean)
    except PermissionError as e:
        if not os.access(path, os.W_OK):
            raise
        clean.setdefault("warnings", []).append(f"results.json was overwritten in place, not atomically: {e}")
        Path(path).write_text(json.dumps(clean, indent=2, allow_nan=False))


def job_status(folder, results) -> str:
    """The truthful status of a run folder: results.json's status, `lost` for a `running` record whose
    process is gone (or whose heartbeat is stale, another host), `missing` without results.json."""
    if results is None:
        return "missing"
    status = str(results.get("status", "unknown"))
    if status != "running":
        return status
    alive = process_alive(results["process"]) if isinstance(results.get("process"), dict) else None
    if alive is None:
        beat = Path(folder) / HEARTBEAT
        stamp = beat if beat.exists() else Path(folder) / "results.json"
        try:
            alive = time.time() - stamp.stat().st_mtime < STALE_AFTER
        except OSError:
            alive = False
    return "running" if alive else "lost"


def _compact():
    from hydra.errors import CompactHydraException
    return CompactHydraException


class RunFailed(_compact()):
    """A run that ended with status failed. Hydra prints its message alone (one line) and exits 1; in a
    multirun it does so after the whole batch has run, so a failed job does not stop the sweep."""
