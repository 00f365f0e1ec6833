"""Rank-deficient spectra (data=file with zero eigenvalues, issue 22): Langevin runs them and its prediction
holds (the score is read at noise σ > 0); DDPM and DDIM, whose last level has no noise, refuse in one line,
exit 2, naming the sampler, before any work."""
import json
import math
import subprocess

import numpy as np
import pytest

SMALL = ["replicates=16", "data.n=40", "sampler.particles=50", "progress=false", "threads=1"]


def spectrum_file(tmp_path):
    path = tmp_path / "spectrum.npy"
    np.save(path, np.array([1.0, 0.5, 0.0, 0.0]))
    return path


def test_langevin_runs_a_rank_deficient_spectrum(tmp_path, gsm_script):
    """Exact solver, R = 16: the measured W2² agrees with the prediction within 3 s.e. (seed fixed)."""
    out = tmp_path / "run"
    proc = subprocess.run([gsm_script, "data=file", f"data.path={spectrum_file(tmp_path)}", "sampler=langevin",
                           "train.solver=exact", *SMALL, f"hydra.run.dir={out}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    w, se, pred = res["w2_exact"]["mean"], res["w2_exact"]["stderr"], res["w2_predicted"]
    assert res["status"] == "ok" and math.isfinite(pred) and abs(w - pred) <= 3 * se, (w, se, pred)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ddpm_and_ddim_refuse_a_rank_deficient_spectrum_before_any_work(sampler, tmp_path, gsm_script):
    out = tmp_path / "run"
    proc = subprocess.run([gsm_script, "data=file", f"data.path={spectrum_file(tmp_path)}", f"sampler={sampler}",
                           "sampler.steps=10", *SMALL, f"hydra.run.dir={out}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"gsm: error: data.spectrum has 2 zero eigenvalue(s) (rank-deficient Σ), which "
                                  f"sampler {sampler.upper()} does not support")
    assert not (out / "results.json").exists()
