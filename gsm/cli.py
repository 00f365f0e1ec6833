"""The `gsm` command: a Hydra app over `gsm.experiment.run`. Configs: conf/ (shipped as gsm.conf).

Exit status: 0 when the run finished (status ok or diverged: a sweep goes on), 2 for a bad config
(one line `gsm: error: <key> must be <range>, got <value>` on stderr, nothing run), 130 after SIGINT
and 143 after SIGTERM (results.json has status interrupted). No traceback in these cases.
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gsm.experiment import run, summary_table
from gsm.interrupt import Terminated
from gsm.validate import ConfigError


def _exit(code: int, message: str):
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)      # SystemExit passes through Hydra's job runner (it catches Exception only)


@hydra.main(version_base="1.3", config_path="pkg://gsm.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out = HydraConfig.get().runtime.output_dir
    try:
        results = run(cfg, out)
    except ConfigError as e:
        _exit(2, f"gsm: error: {e}")
    except KeyboardInterrupt as e:     # SIGINT, or SIGTERM while the run was active (Terminated)
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        _exit(code, f"gsm: interrupted by {name}; partial results in {out}/results.json")
    print(summary_table(results))
    # the sweepers' objective: the exact W2² (linear scores), else the particle one (neural scores: no exact law)
    w2 = results.get("w2_exact") or results.get("w2_empirical") or {}
    return w2.get("mean", float("nan"))
