"""Hydra callbacks of the `gsm` command (conf/config.yaml, hydra.callbacks).

`SweepDirectory` notes the sweep folder of a multirun when it starts (the launcher resolves the same
${now:...} from the same cache), so that `gsm.cli.main.main` can end every sweep, a failed one included,
with the line `gsm: results in <sweep dir>`.

`JoblibSigint` ends `gsm.cli.main`'s hold of SIGINT (`gsm.cli.sigint`) when a joblib sweep starts: its
process then waits on its workers, and a Ctrl-C there must stop the sweep at once, as joblib does. Its
compositions stay held (`gsm.cli.compose`).
"""
from __future__ import annotations

from hydra.experimental.callback import Callback

from gsm.cli import sigint


def joblib_launcher(hydra_cfg) -> bool:
    """Whether Hydra runs the sweep's jobs in joblib's worker processes (hydra/launcher=joblib)."""
    return "joblib" in str(hydra_cfg.launcher.get("_target_", ""))


class SweepDirectory(Callback):
    started: list[str] = []     # the sweep folders started in this process (one per `gsm -m`)

    def on_multirun_start(self, config, **kwargs) -> None:
        SweepDirectory.started.append(str(config.hydra.sweep.dir))


class JoblibSigint(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        if joblib_launcher(config.hydra):
            sigint.release()
