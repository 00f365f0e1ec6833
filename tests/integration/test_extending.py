"""docs/extending.md runs as written: its sampler example (my_chain.py) and data-family example
(my_spectra.py, my_conf/data/exponential.yaml) are extracted from the document, saved in a temporary
folder and run from there with the `gsm` console script, and their numbers are checked against laws
and predictions computed here independently."""
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

DOC = (Path(__file__).parents[2] / "docs" / "extending.md").read_text()


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
    (folder / "my_chain.py").write_text(code_block("# my_chain.py"))
    (folder / "my_spectra.py").write_text(code_block("# my_spectra.py"))
    (folder / "my_conf" / "data").mkdir(parents=True)
    (folder / "my_conf" / "data" / "exponential.yaml").write_text(code_block("# my_conf/data/exponential.yaml",
                                                                             "yaml"))


def import_example(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chain_variance(lam: torch.Tensor, a: torch.Tensor, gamma: float, K: int, c0: float) -> torch.Tensor:
    """Per eigenvalue, the variance after K steps of x ← (1 − γa)x + √(2γ)ξ from N(0, c₀), summed as
    the finite geometric series c₀p^{2K} + 2γ Σ_{k<K} p^{2k}, p = 1 − γa (not the stationary form)."""
    p2 = (1 - gamma * a) ** 2
    return c0 * p2 ** K + 2 * gamma * (1 - p2 ** K) / (1 - p2)


@pytest.mark.slow
def test_sampler_and_data_examples_run_through_gsm(tmp_path):
    """The documented commands, combined in one multirun (sampler=my_chain.LinearChain on data=exponential):
    model=oracle gives the exact law of the chain with the exact score, so w2_exact is Σ(√λ − √c_K)² with c_K
    the K-step variance; train.solver=exact (N samples, empirical DSM optimum) gives w2_predicted equal to
    gsm.theory.langevin.langevin_prediction of the same chain (ULA) — the example's generic recipe (Opitz divided
    differences of the chain's own map) against the closed forms of gsm.theory."""
    write_examples(tmp_path)
    sampler_cmd = bash_after("Run it from the folder that holds `my_chain.py`:")
    data_cmd = bash_after("From the folder that holds `my_spectra.py` and `my_conf/`:")
    assert sampler_cmd[0] == data_cmd[0] == "gsm"
    assert "sampler._target_=my_chain.LinearChain" in sampler_cmd and "data=exponential" in data_cmd
    args = [a for a in sampler_cmd[1:] if a != "train.solver=exact"] + [a for a in data_cmd[1:]
                                                                          if not a.startswith("data.spectrum")]
    gamma, K, c0, sigma, N, d, rate = 0.05, 200, 1.0, 0.5, 400, 4, 0.5
    small = ["model=oracle,linear", "train.solver=exact", "replicates=4", f"data.dim={d}",
             f"sampler.steps={K}", "sampler.particles=200", "threads=1", "progress=false",
             "hydra.sweep.dir=sweep"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([gsm_script(), "-m", *args, *small], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    oracle, fitted = (json.loads((tmp_path / "sweep" / str(j) / "results.json").read_text()) for j in (0, 1))
    assert oracle["config"]["model"]["_target_"] == "gsm.scores.linear.OracleScore"
    for res in (oracle, fitted):
        assert res["status"] == "ok" and res["unstable_replicates"] == 0
        assert res["config"]["sampler"]["_target_"] == "my_chain.LinearChain"
        assert res["config"]["data"]["spectrum"]["_target_"] == "my_spectra.exponential_spectrum"

    lam = torch.exp(-rate * torch.arange(d, dtype=torch.float64))         # λ_i = e^{−rate(i−1)}
    c_K = chain_variance(lam, 1 / (lam + sigma ** 2), gamma, K, c0)
    w2_oracle = float(((lam.sqrt() - c_K.sqrt()) ** 2).sum())
    assert oracle["w2_exact"]["mean"] == pytest.approx(w2_oracle, rel=1e-9)
    assert oracle["w2_predicted"] == pytest.approx(w2_oracle, rel=1e-9)

    pred = langevin_prediction(lam, n=N, sigma=sigma, tau=0.0, gamma=gamma, steps=K, init_var=c0, particles=200)
    assert fitted["w2_predicted"] == pytest.approx(pred["total"] - pred["particles"], rel=1e-9)
    assert fitted["w2_predicted_empirical"] == pytest.approx(pred["total"], rel=1e-9)
    # the 1/N term is what separates the fitted score from the oracle: present and positive
    assert fitted["prediction_terms"]["generalization"] > 0


@pytest.mark.parametrize("sgd_steps", [None, 4000])
def test_sampler_example_prediction_matches_gsm_theory_with_sgd(tmp_path, sgd_steps):
    """The example's τ term (autograd through its own law, `second_order_contraction`) and its 1/N term
    equal gsm.theory.langevin.langevin_prediction's closed forms for the same chain, at SGD stationarity and after
    a finite budget (mean offset and transient variance), at the regression point of docs/theory.md §7."""
    write_examples(tmp_path)
    chain = import_example(tmp_path, "my_chain").LinearChain(gamma=0.05, steps=60, particles=1000)
    lam = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=torch.float64)
    kw = dict(n=200, sigma=0.5, tau=0.002, batch_size=1, particles=1000)
    budget = {} if sgd_steps is None else dict(sgd_steps=sgd_steps, init="zeros")
    ours = chain.prediction(lam, **kw, **budget)
    ref = langevin_prediction(lam, gamma=0.05, steps=60, **kw, **budget)
    assert ours["total"] == pytest.approx(ref["total"], rel=1e-9)
    assert ours["generalization"] == pytest.approx(ref["generalization"], rel=1e-9)
    assert ours["particles"] == pytest.approx(ref["particles"], rel=1e-9)
    # the fluctuation part of the τ term (the mean offset is in `bias` here, in `optimization` there)
    assert ours["optimization"] == pytest.approx(ref["optimization"] - ref["sgd_mean_offset"], rel=1e-7)
    assert ours["optimization"] > 0
    assert torch.allclose(ours["kernel_n"], ref["kernel_n"], rtol=1e-9, atol=0)


def test_data_example_spectrum():
    """my_spectra.exponential_spectrum is λ_i = scale·e^{−rate(i−1)} and rejects a bad dimension."""
    ns = {}
    exec(code_block("# my_spectra.py"), ns)
    lam = ns["exponential_spectrum"](5, scale=2.0, rate=0.3)
    assert lam.dtype == torch.float64
    assert torch.allclose(lam, 2.0 * torch.tensor([math.exp(-0.3 * i) for i in range(5)], dtype=torch.float64))
    with pytest.raises(ValueError, match="data.dim"):
        ns["exponential_spectrum"](0)
