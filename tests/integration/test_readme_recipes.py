"""README recipes run as written, through the `gsm` console script: a user score class from the working
directory (the snippet of "Neural score models") and the Slurm launcher's `--cfg hydra` check ("Studies")."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# the README and the docs/ pages it links to, where the recipes live ("Neural score models": docs/neural.md,
# "Studies": docs/studies.md)
README = "\n".join((ROOT / p).read_text() for p in ("README.md", "docs/neural.md", "docs/studies.md"))


def gsm_script() -> str:
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    return exe


def block_after(marker: str, lang: str = "bash") -> str:
    """The first ```lang code block after `marker` in the README."""
    return re.search(re.escape(marker) + rf".*?```{lang}\n(.*?)```", README, re.S).group(1)


@pytest.mark.slow
def test_user_score_from_the_working_directory(tmp_path):
    """The README's MyScore snippet saved as my_pkg/__init__.py, and its command run from that folder with
    the `gsm` console script (no PYTHONPATH): the run uses the class and finishes."""
    snippet = re.search(r"```python\n(# my_pkg/__init__\.py.*?)```", README, re.S).group(1)
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(snippet)
    command = shlex.split(block_after("Then, from the folder that holds `my_pkg/`:"), comments=True)
    assert command[0] == "gsm" and "model._target_=my_pkg.MyScore" in command
    small = ["replicates=2", "data.dim=2", "train.steps=50", "sampler.steps=20", "sampler.particles=50",
             "threads=1", "progress=false", "hydra.run.dir=run"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([gsm_script(), *command[1:], *small], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "ok" and res["config"]["model"] == {"_target_": "my_pkg.MyScore", "hidden": 32}
    assert res["w2_empirical"]["n"] == 2


def test_slurm_recipe_check_composes_without_slurm(tmp_path):
    """The README's `--cfg hydra` check of the submitit_slurm command runs as written (after its PARTITION
    line), prints the launcher settings of the submission command and runs no job. It checks that very
    command: the same arguments, with `--cfg hydra` in place of `-m`."""
    submit = block_after("On a Slurm cluster:")
    check = block_after("To check that command without Slurm")
    partition_line = submit.splitlines()[0]
    assert partition_line.startswith("PARTITION=")
    submit_args = shlex.split(submit.split("\n", 1)[1], comments=True)
    check_args = shlex.split(check, comments=True)
    assert check_args[-2:] == ["--cfg", "hydra"] and [a for a in submit_args if a != "-m"] == check_args[:-2]
    env = {**os.environ, "PATH": os.path.dirname(gsm_script()) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", "-c", f"set -e\n{partition_line}\n{check}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    partition = partition_line.split("=", 1)[1].split()[0]
    for line in ("SlurmLauncher", f"partition: {partition}", "cpus_per_task: 4", "timeout_min: 60",
                 "export OMP_NUM_THREADS=4", "mode: MULTIRUN"):
        assert line in proc.stdout, (line, proc.stdout[-3000:])
    assert not (tmp_path / "outputs").exists()       # printed, not run
