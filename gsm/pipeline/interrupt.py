"""Ending a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill).

While `interruptible()` is active, the first of these signals raises in the main thread,
KeyboardInterrupt for SIGINT and `Terminated` for SIGTERM, so the run's `finally` flushes
TensorBoard and writes results.json with status `interrupted`.

Raising at an arbitrary bytecode is not safe inside TensorBoard's writer. An exception in the middle
of its queue hand-off can lose the wake-up of its writer thread, and then `close()` waits up to
`flush_secs` (120 s) for it. So every writer call runs inside `deferred()` (`summary_writer` does
this): a signal that arrives there is kept and raised as soon as the call returns.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_depth = 0            # nesting of deferred() blocks in the main thread
_pending: list = []   # the signal that arrived inside one


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a run was active (`interruptible`); handled like Ctrl-C (SIGINT)."""


def _raise(signum: int):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def interruptible():
    """While active, SIGINT and SIGTERM raise KeyboardInterrupt / `Terminated` in the main thread,
    or when the enclosing `deferred()` block ends. After the first signal, another SIGTERM is
    ignored so that cleanup can finish, and another SIGINT raises at once: the user asked twice.
    A SIGINT that was ignored (a background job) or that has a handler of its own is left alone.
    The previous handlers are restored on exit. Off the main thread, handlers cannot be set, so
    this does nothing there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt()
            return
        fired.append(signum)
        if _depth:
            _pending.append(signum)
        else:
            _raise(signum)

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if s == signal.SIGINT and signal.getsignal(s) is not signal.default_int_handler:
            continue
        previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        _pending.clear()


@contextmanager
def deferred():
    """A block that `interruptible`'s signals do not interrupt: one arriving inside it is raised
    when the outermost such block exits normally."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending:
        _raise(_pending.pop())


class SummaryWriter:
    """torch.utils.tensorboard.SummaryWriter whose method calls are `deferred()` blocks."""

    def __init__(self, log_dir: str, **kwargs):
        with deferred():     # the constructor starts the writer thread and opens the event file
            self._writer = torch_summary_writer()(log_dir=log_dir, **kwargs)

    def add_summary(self, summary, global_step=None):
        """A ready-made Summary proto (`gsm.figures.add_png`'s encoded image) into the event file."""
        with deferred():
            self._writer.file_writer.add_summary(summary, global_step)

    def __getattr__(self, name):
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with deferred():
                return attr(*args, **kwargs)
        return call


# TensorBoard's gfile imports these for remote log dirs (s3://, fsspec URLs): 0.2 s of a tiny run's start-up
REMOTE_FILE_SYSTEMS = ("botocore", "boto3", "fsspec")


def torch_summary_writer():
    """torch.utils.tensorboard.SummaryWriter, imported with REMOTE_FILE_SYSTEMS hidden when not yet loaded:
    a run's event file is local (<run>/tb). Hidden during this import only (None in sys.modules makes
    `import` raise ImportError, which gfile catches); later imports of them work."""
    hidden = [m for m in REMOTE_FILE_SYSTEMS if m not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))
    try:
        from torch.utils.tensorboard import SummaryWriter
    finally:
        for m in hidden:
            if sys.modules.get(m, True) is None:
                del sys.modules[m]
    return SummaryWriter
