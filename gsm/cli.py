"""The `gsm` command: a Hydra app over `gsm.experiment.run`. Configs: conf/ (shipped as gsm.conf)."""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gsm.experiment import run, summary_table


@hydra.main(version_base="1.3", config_path="pkg://gsm.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    results = run(cfg, HydraConfig.get().runtime.output_dir)
    print(summary_table(results))
    # the sweepers' objective: the exact W2² (linear scores), else the particle one (neural scores: no exact law)
    w2 = results.get("w2_exact") or results.get("w2_empirical") or {}
    return w2.get("mean", float("nan"))
