"""The regime verdict (gsm.theory.regime, docs/theory.md §12): its inputs, its order, and what the console shows."""
import json
import subprocess

import pytest
import torch

from gsm.theory.regime import (linear_regime, neural_regime, relaxation_times, steps_for_relaxation,
                               verdict_lines)

F64 = torch.float64


def test_relaxation_times_per_level():
    """(S/L)·τ s_l²(α_l²λ_min + s_l²) per level, written out for two levels; the steps for 5 at the slowest."""
    alphas = torch.tensor([0.9, 0.5], dtype=F64)
    stds = torch.tensor([0.3, 0.8], dtype=F64)
    t = relaxation_times(1000, 0.1, alphas, stds, 0.2)
    expect = [1000 / 2 * 0.1 * 0.09 * (0.81 * 0.2 + 0.09), 1000 / 2 * 0.1 * 0.64 * (0.25 * 0.2 + 0.64)]
    assert t.tolist() == pytest.approx(expect, rel=1e-12)
    assert steps_for_relaxation(1000, t) == pytest.approx(1000 * 5 / expect[0], abs=1)


def _regime(**kw):
    base = dict(terms={"total": 1.0, "generalization": 0.1, "optimization": 0.05, "sgd_mean_offset": 0.0}, d=8,
                n=400, eps_tau=0.001, times=torch.tensor([10.0]), steps=1000, tau=0.01, unstable=0, replicates=8,
                sampling="with_replacement")
    base.update(kw)
    return linear_regime(**base)


def test_each_failed_assumption_gives_a_reason_and_the_largest_stake_comes_first():
    assert _regime()["ok"] is True and _regime()["reasons"] == []
    assert "SGD is not stationary" in _regime(times=torch.tensor([0.5, 3.0]))["reasons"][0]
    assert "eps_tau" in _regime(eps_tau=0.02)["reasons"][0]
    assert "N = 20 < 5d" in _regime(n=20)["reasons"][0]
    assert "replicates diverged" in _regime(unstable=2)["reasons"][0]
    assert "epochs" in _regime(sampling="epochs")["reasons"][0]
    # the verdict says whether the prediction modelled the finite budget, as the prediction reports it
    far = dict(times=torch.tensor([0.5]))
    assert "is modelled by the finite-budget" in _regime(modelled={"sgd_budget": True}, **far)["reasons"][0]
    assert "is NOT in the prediction" in _regime(modelled={"sgd_budget": False}, **far)["reasons"][0]
    # a large SGD mean offset outweighs a small ε_τ excess; a large τ term with ε_τ = 0.1 outweighs a tiny offset
    two = dict(times=torch.tensor([1.0]), eps_tau=0.006)
    big_offset = {"total": 1.0, "generalization": 0.1, "optimization": 0.9, "sgd_mean_offset": 0.8}
    assert _regime(terms=big_offset, **two)["reasons"][0].startswith("SGD")
    small_offset = {"total": 1.0, "generalization": 0.1, "optimization": 0.5, "sgd_mean_offset": 1e-4}
    assert _regime(terms=small_offset, times=torch.tensor([1.0]), eps_tau=0.1)["reasons"][0].startswith("eps_tau")


def test_the_slowest_level_decides_stationarity():
    """Two levels, one far past 5 relaxation times and one at 0.5: SGD is not stationary (the slowest level
    decides), whichever order the levels come in; the same run with both levels past 5 is stationary."""
    for times in ([50.0, 0.5], [0.5, 50.0]):
        v = _regime(times=torch.tensor(times))
        assert v["ok"] is False and v["reasons"][0].startswith("SGD is not stationary: 0.5 relaxation times")
    assert _regime(times=torch.tensor([50.0, 6.0]))["ok"] is True
    # steps for 5 relaxation times at the slowest level: 1000 steps gave 0.5 there, so 10 000
    assert steps_for_relaxation(1000, torch.tensor([50.0, 0.5])) == pytest.approx(10000, abs=1)


def test_neural_verdict_and_console_lines():
    v = neural_regime(escaped=torch.tensor([0.0, 0.01]), unstable=0, replicates=2, tail=1e-9)
    assert v["ok"] is False and "1 of 2 replicates have particles beyond" in v["reasons"][0]
    assert verdict_lines(v)[0].startswith("regime: no prediction for a non-linear score")
    assert "checks FAILED — dominant: 1 of 2" in verdict_lines(v)[0]
    clean = verdict_lines(neural_regime(escaped=torch.zeros(3), unstable=0, replicates=3, tail=1e-9))[0]
    assert "checks passed" in clean and "regime: ok" not in clean      # no prediction to be in regime of


@pytest.mark.parametrize("args, ok", [([], True), (["sampler=ddpm", "sampler.steps=10", "train=default"], False)],
                         ids=["langevin-default", "ddpm-far-from-stationary"])
def test_the_console_prints_the_verdict_first(tmp_path, args, ok, gsm_script):
    """`gsm …` as a user types it: the summary starts with the verdict, before the numbers; results.json
    holds the same verdict."""
    out = subprocess.run([gsm_script, *args, "replicates=4", "sampler.particles=50", "progress=false", "threads=1",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("regime:"))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("status:"))
    assert lines[first].startswith("regime: ok" if ok else "regime: OUT OF REGIME — dominant: SGD is not stationary")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["regime"]["ok"] is ok
