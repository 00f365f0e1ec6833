"""Typos on the command line, through the console script: exit 2, one line on stderr, the closest names."""
import os
import shutil
import subprocess
import sys

import pytest


def gsm(*args, tmp_path):
    """The console script as the other CLI tests find it (beside this Python, else on PATH; skipped without)."""
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    return subprocess.run([exe, *args, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, line", [
    (["sampler=dpm"], "gsm: error: sampler=dpm is not an option of group sampler "
                      "(did you mean ddpm? options: ddim, ddpm, diffusers, edm, flow, langevin, vp)"),
    (["-m", "sampler=ddpm,lanjevin"], "gsm: error: sampler=lanjevin is not an option of group sampler "
                                      "(did you mean langevin? options: ddim, ddpm, diffusers, edm, flow, langevin, vp)"),
    (["data=powerlw"], "gsm: error: data=powerlw is not an option of group data (did you mean powerlaw? options: "
                       "custom, digits, file, isotropic, mixture, patches, powerlaw, texture, two_level)"),
])
def test_a_config_group_typo_is_one_line_with_the_closest_option(args, line, tmp_path):
    proc = gsm(*args, tmp_path=tmp_path)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, line + "\n", "")


def test_a_plus_experiment_typo_too(tmp_path):
    proc = gsm("-m", "+experiment=vs_nn", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("gsm: error: experiment=vs_nn is not an option of group experiment (did you mean vs_n?")


def test_a_diffusers_scheduler_typo_names_the_closest_and_the_tested_ones(tmp_path):
    pytest.importorskip("diffusers")
    from gsm.samplers.diffusers_scheduler import TESTED
    proc = gsm("sampler=diffusers", "sampler.scheduler=DPMSolver", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == "", proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("gsm: error: sampler.scheduler must be a diffusers scheduler class, got DPMSolver "
                           "(did you mean DPMSolverMultistepScheduler or ")
    assert f"; tested: {', '.join(TESTED)} (" in line
    assert len(line) < 500      # not every scheduler diffusers has
