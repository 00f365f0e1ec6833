"""docs/extending.md runs as written: its sampler (my_chain.py, my_conf/sampler/annealed.yaml), data family
(my_spectra.py, my_conf/data/exponential.yaml) and training objective (my_objective.py,
my_conf/objective/ridge.yaml) are extracted from the document, saved in a temporary folder and run from
there with the `gsm` console script; their numbers are checked against laws and predictions derived here
independently."""
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsm.theory.langevin import langevin_prediction
from gsm.theory.prediction import sampler_prediction

DOC = (Path(__file__).parents[2] / "docs" / "extending.md").read_text()
F64 = torch.float64
FILES = {"my_chain.py": "python", "my_spectra.py": "python", "my_objective.py": "python",
         "my_conf/sampler/annealed.yaml": "yaml", "my_conf/data/exponential.yaml": "yaml",
         "my_conf/objective/ridge.yaml": "yaml"}


def code_block(first_line: str, lang: str = "python") -> str:
    """The ```lang block of docs/extending.md whose first line is `first_line` (a `# file name` comment)."""
    return re.search(rf"```{lang}\n({re.escape(first_line)}\n.*?)```", DOC, re.S).group(1)


def bash_after(marker: str) -> list[str]:
    """The arguments of the first ```bash block after `marker`."""
    return shlex.split(re.search(re.escape(marker) + r".*?```bash\n(.*?)```", DOC, re.S).group(1), comments=True)


def gsm_script() -> str:
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    return exe


def write_examples(folder: Path) -> None:
    for name, lang in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code_block(f"# {name}", lang))


def import_example(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_gsm(folder: Path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([gsm_script(), *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def annealed_variance(a: torch.Tensor, gamma: float, gamma_end: float, K: int, c0: float) -> torch.Tensor:
    """Per eigenvalue, the variance after the K steps x ← (1 − γ_k a)x + √(2γ_k)ξ from N(0, c₀), with
    γ_k = γ (γ_end/γ)^{k/(K−1)}, by the scalar recursion c ← (1 − γ_k a)²c + 2γ_k."""
    c = torch.full_like(a, c0)
    for k in range(K):
        g = gamma * (gamma_end / gamma) ** (k / (K - 1))
        c = (1 - g * a) ** 2 * c + 2 * g
    return c


@pytest.mark.slow
def test_examples_run_through_gsm(tmp_path):
    """The documented commands, combined in one multirun: sampler=annealed on data=exponential, objective
    dsm and ridge, model oracle and linear (train.solver=exact, N = 10d).
    * oracle: w2_exact = w2_predicted = Σ(√λ − √c_K)², c_K the recursion above at the objective's target
      a = 1/(λ + σ²) (DSM) or 1/(λ + σ² + μ/σ²) (ridge: the minimiser of ½‖σs(y) + z‖² + (μ/2)‖A‖²);
    * plug-in scores: w2_exact within 3 s.e. of w2_predicted, where the 1/N term is resolved (> 4 s.e.).
    The ridge objective with SGD (its documented refusal) stops before any work, exit 2, one line."""
    write_examples(tmp_path)
    sampler_cmd = bash_after("Run it from the folder that holds `my_chain.py` and `my_conf/`:")
    data_cmd = bash_after("From the folder that holds `my_spectra.py` and `my_conf/`:")
    objective_cmd = bash_after("From the folder that holds `my_objective.py` and `my_conf/`:")
    assert sampler_cmd[0] == data_cmd[0] == objective_cmd[0] == "gsm"
    assert "sampler=annealed" in sampler_cmd and "data=exponential" in data_cmd and "objective=ridge" in objective_cmd
    args = [*sampler_cmd[1:], *(a for a in data_cmd[1:] if a.startswith("data=")), "objective=dsm,ridge"]
    gamma, gamma_end, K, sigma, mu, d, N, rate = 0.05, 0.005, 200, 0.5, 0.1, 4, 40, 0.5
    small = ["model=oracle,linear", "replicates=400", f"data.dim={d}", f"data.n={N}", f"sampler.steps={K}", f"train.sigma={sigma}",
             "sampler.particles=200", "threads=1", "progress=false", "figures=false", "hydra.sweep.dir=sweep"]
    proc = run_gsm(tmp_path, "-m", *args, *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((tmp_path / "sweep" / str(j) / "results.json").read_text()) for j in range(4)]
    lam = torch.exp(-rate * torch.arange(d, dtype=F64))                   # λ_i = e^{−rate(i−1)}
    for res, shift in zip(runs, (0.0, 0.0, mu / sigma ** 2, mu / sigma ** 2)):
        assert res["status"] == "ok" and res["config"]["sampler"]["_target_"] == "my_chain.AnnealedLangevin"
        assert res["config"]["data"]["spectrum"]["_target_"] == "my_spectra.exponential_spectrum"
        w, p = res["w2_exact"], res["w2_predicted"]
        if res["config"]["model"]["_target_"] == "gsm.scores.linear.OracleScore":
            c_K = annealed_variance(1 / (lam + sigma ** 2 + shift), gamma, gamma_end, K, 1.0)
            w2 = float(((lam.sqrt() - c_K.sqrt()) ** 2).sum())
            assert w["mean"] == pytest.approx(w2, rel=1e-9) and p == pytest.approx(w2, rel=1e-9)
        else:
            assert res["prediction_terms"]["generalization"] > 4 * w["stderr"]
            assert abs(w["mean"] - p) < 3 * w["stderr"], (w, p, res["prediction_terms"])
    assert [r["config"].get("objective", {}).get("_target_") for r in runs] == [
        "gsm.training.objectives.DSM"] * 2 + ["my_objective.RidgeDSM"] * 2

    refused = run_gsm(tmp_path, *(a for a in objective_cmd[1:] if a != "train.solver=exact"), "progress=false")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "train.solver must be exact" in refused.stderr and not list(tmp_path.glob("outputs/*/*/results.json"))


@pytest.mark.parametrize("sgd_steps", [None, 4000])
def test_sampler_example_at_constant_step_is_ula(tmp_path, sgd_steps):
    """At γ_end = γ the example is ULA: its prediction, derived by gsm from its step map alone (jets for 1/N,
    the chain's τ cells with the finite-budget transient), equals ULA's closed forms
    (`langevin_prediction`: geometric sums) term by term, at SGD stationarity and after a finite budget."""
    write_examples(tmp_path)
    sampler = import_example(tmp_path, "my_chain").AnnealedLangevin(gamma=0.05, gamma_end=0.05, steps=60,
                                                                    particles=1000)
    lam = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=F64)
    kw = dict(n=200, sigma=0.5, tau=0.002, batch_size=1, particles=1000)
    budget = {} if sgd_steps is None else dict(sgd_steps=sgd_steps, init="zeros")
    ours = sampler_prediction(sampler, lam, **kw, **budget)
    ref = langevin_prediction(lam, gamma=0.05, steps=60, **kw, **budget)
    for k in ("total", "generalization", "particles", "sgd_mean_offset", "optimization"):
        assert ours[k] == pytest.approx(ref[k], rel=1e-7, abs=1e-15), k
    assert ours["optimization"] - ours["sgd_mean_offset"] > 0
    assert torch.allclose(ours["kernel_n"], ref["kernel_n"], rtol=1e-9, atol=0)


def test_ridge_objective_is_the_penalised_minimiser(tmp_path):
    """my_objective.RidgeDSM: its score_function zeroes the gradient (by autograd, here) of the penalised
    empirical loss ½ E‖s·(−A y) + z‖² + (μ/2)‖A‖², y = αx + sz, at each level (the expectation over z in
    closed form: ½ tr(s²A M Aᵀ) − s² tr A + d/2, M = α²X + s²I); its target and score_series are the same
    function of an eigenvalue (series: the Taylor coefficients, checked by autograd at one point)."""
    write_examples(tmp_path)
    obj = import_example(tmp_path, "my_objective").RidgeDSM(ridge=0.3)
    alphas, stds = torch.tensor([1.0, 0.8], dtype=F64), torch.tensor([0.5, 0.6], dtype=F64)
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 3, generator=g, dtype=F64)
    X = B @ B.T + 0.1 * torch.eye(3, dtype=F64)
    A = obj.score_function(X, alphas, stds)
    for l, (a, s) in enumerate(zip(alphas, stds)):
        Al = A[l].clone().requires_grad_(True)
        M = a ** 2 * X + s ** 2 * torch.eye(3, dtype=F64)
        loss = 0.5 * s ** 2 * torch.trace(Al @ M @ Al.T) - s ** 2 * torch.trace(Al) + 0.5 * obj.ridge * (Al ** 2).sum()
        (grad,) = torch.autograd.grad(loss, Al)
        assert grad.abs().max() < 1e-12, (l, grad)
    lam = torch.linalg.eigvalsh(X)
    U = torch.linalg.eigh(X).eigenvectors
    assert torch.allclose(torch.diagonal(U.T @ A @ U, dim1=-2, dim2=-1), obj.target(lam, alphas, stds), rtol=1e-10)
    mu0 = torch.tensor([0.7], dtype=F64, requires_grad=True)
    f = obj.target(mu0, alphas, stds)[:, 0]
    series = obj.score_series(mu0.detach(), alphas, stds, order=3)[:, 0]
    d1 = torch.stack([torch.autograd.grad(f[l], mu0, create_graph=True)[0][0] for l in range(2)])
    d2 = torch.stack([torch.autograd.grad(d1[l], mu0, retain_graph=True)[0][0] for l in range(2)])
    assert torch.allclose(series, torch.stack([f, d1, d2 / 2], -1).detach(), rtol=1e-10)


def test_data_example_spectrum():
    """my_spectra.exponential_spectrum is λ_i = scale·e^{−rate(i−1)} and rejects a bad dimension."""
    ns = {}
    exec(code_block("# my_spectra.py"), ns)
    lam = ns["exponential_spectrum"](5, scale=2.0, rate=0.3)
    assert lam.dtype == torch.float64
    assert torch.allclose(lam, 2.0 * torch.tensor([math.exp(-0.3 * i) for i in range(5)], dtype=torch.float64))
    with pytest.raises(ValueError, match="data.dim"):
        ns["exponential_spectrum"](0)
