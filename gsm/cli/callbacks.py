"""Hydra callbacks of the `gsm` command (conf/config.yaml, hydra.callbacks).

`SweepDirectory` notes the sweep folder of a multirun when it starts (the launcher resolves the same
${now:...} from the same cache), so that `gsm.cli.main.main` can end every sweep, a failed one included,
with the line `gsm: results in <sweep dir>`.
"""
from __future__ import annotations

from hydra.experimental.callback import Callback


class SweepDirectory(Callback):
    started: list[str] = []     # the sweep folders started in this process (one per `gsm -m`)

    def on_multirun_start(self, config, **kwargs) -> None:
        SweepDirectory.started.append(str(config.hydra.sweep.dir))
