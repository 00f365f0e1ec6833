"""SIGINT (Ctrl-C) in the `gsm` command: raised inside gsm's run, held everywhere else.

Neither Hydra and OmegaConf nor the imports of torch and Hydra are safe to interrupt at an arbitrary
bytecode. A KeyboardInterrupt raised inside them was swallowed (the run then went on: a 10⁸-step run
never ended), turned into another error (OmegaConf's `AttributeError` from a half-restored flag: exit 1
with Hydra's report), or ended the process by SIGINT after gsm's last line (exit −2). So `gsm.cli.main.main`
holds SIGINT for the length of the app (`held`): a SIGINT is noted, not raised, and raised as
KeyboardInterrupt at a point where that is safe: when the block ends, at a `check()` between two libraries'
calls, or on entering a `released` block, which `run_job` opens around `gsm.pipeline.run.run` (whose own
handlers, `interruptible`, then take over).
`python tools/stress_signals.py --startup` signals runs at 10 ms steps of their start-up.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

_noted: list | None = None      # while SIGINT is held: the SIGINTs that arrived


def _note(signum, frame):
    _noted.append(signum)


def _hold() -> bool:
    """Starts holding SIGINT; False (nothing done) when already held, or when SIGINT is ignored (a background
    job) or has a handler of its own."""
    global _noted
    if _noted is not None or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    _noted = []
    signal.signal(signal.SIGINT, _note)
    return True


def _unhold() -> bool:
    """SIGINT raises KeyboardInterrupt again; True when one arrived while held."""
    global _noted
    if _noted is None:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)     # a pending SIGINT is noted first
    noted, _noted = _noted, None
    return bool(noted)


@contextmanager
def held():
    """While active, a SIGINT is noted, not raised; one noted is raised (KeyboardInterrupt) when the block
    ends normally. Inside another `held` block this does nothing: the outer block holds. A SIGINT that is
    ignored or has a handler of its own is left alone."""
    if not _hold():
        yield
        return
    try:
        yield
    finally:
        noted = _unhold()
    if noted:
        raise KeyboardInterrupt()


@contextmanager
def released():
    """Inside `held`: during the block a SIGINT raises KeyboardInterrupt at once, one noted before it raises
    on entry, and the hold resumes after the block. Outside `held`: nothing."""
    if _noted is None:
        yield
        return
    try:
        if _unhold():
            raise KeyboardInterrupt()
        yield
    finally:
        _hold()


def check():
    """Inside `held`, at a point where that is safe (between two libraries' calls): a SIGINT noted so far is
    raised now, so that a Ctrl-C during start-up need not wait for the rest of it (torch's import: seconds)."""
    if _noted:
        _noted.clear()
        raise KeyboardInterrupt()


def release():
    """Ends the hold for the rest of the `held` block: a SIGINT noted is raised now, later ones at once
    (a joblib sweep's parent, which waits on its workers)."""
    if _unhold():
        raise KeyboardInterrupt()
