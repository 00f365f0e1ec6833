"""`python -m gsm.cli.job <config.yaml> <output dir>`: one job of a joblib multirun in a process of its own
(`gsm.cli.main._isolated`), with the exit statuses of a single `gsm` run."""
import logging
import sys
from pathlib import Path


def main(argv) -> None:
    from gsm.cli import sigint
    from gsm.cli.main import exit_with, run_job     # light: nothing heavy at its module level
    try:
        with sigint.held():     # as in `gsm`: SIGINT raises inside the run only (run_job)
            from omegaconf import OmegaConf

            config, out = argv
            fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
            for handler in (logging.StreamHandler(), logging.FileHandler(Path(out) / "cli.log")):  # as Hydra's job logging
                handler.setFormatter(fmt)
                logging.getLogger().addHandler(handler)
            logging.getLogger().setLevel(logging.INFO)
            run_job(OmegaConf.load(config), out, multirun=False, say_where=False)   # the sweep says where
    except KeyboardInterrupt:
        exit_with(130, "gsm: interrupted by SIGINT")


if __name__ == "__main__":
    main(sys.argv[1:])
