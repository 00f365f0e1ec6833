"""Declared capabilities, checked before any work (issue 21): a sampler that reads the score's matrices
(`Sampler.requires_linear_score`: vp, edm, diffusers) with a non-linear model (model=mlp) is refused by
the `gsm` console script with one line naming both, exit status 2, and nothing is trained or written."""
import os
import shutil
import subprocess
import sys

import pytest


def gsm_script() -> str:
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    return exe


@pytest.mark.parametrize("sampler", ["edm", "vp", "diffusers"])
def test_a_sampler_that_needs_a_linear_score_refuses_model_mlp_before_any_work(sampler, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([gsm_script(), f"sampler={sampler}", "model=mlp", f"hydra.run.dir={out}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [f"gsm: error: sampler={sampler} needs a linear score "
                                        "(model=linear | oracle), got model=mlp (MLPScore)"]
    assert not (out / "results.json").exists() and not (out / "tb").exists()
