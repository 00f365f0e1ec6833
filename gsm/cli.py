"""The `gsm` command: a Hydra app over `gsm.experiment.run`. Configs: conf/ (shipped as gsm.conf)."""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gsm.experiment import run, summary_table


@hydra.main(version_base="1.3", config_path="pkg://gsm.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    results = run(cfg, HydraConfig.get().runtime.output_dir)
    print(summary_table(results))
    return results.get("w2_exact", {}).get("mean", float("nan"))
