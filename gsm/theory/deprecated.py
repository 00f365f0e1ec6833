"""The package-level names of the 0.1 `gsm.theory` that the 0.2 prediction machine replaced, kept for one
release (removed in 0.3.0, CHANGELOG.md): each warns (FutureWarning) and calls its replacement."""
from __future__ import annotations

import warnings

import torch

from gsm.theory.langevin import complete_homogeneous
from gsm.theory.law import opitz_divided_differences
from gsm.training.objectives import DSM, SGDBudget

F64 = torch.float64


def _warn(old: str, new: str) -> None:
    warnings.warn(f"gsm.theory.{old} is deprecated and will be removed in 0.3.0: use {new} (CHANGELOG.md)",
                  FutureWarning, stacklevel=3)


def _one_level(sigma):
    return torch.ones(1, dtype=F64), torch.full((1,), float(sigma), dtype=F64)


def power_sum(K: int, *xs) -> torch.Tensor:
    _warn("power_sum", "gsm.theory.complete_homogeneous")
    return complete_homogeneous(K, *xs)


def divided_differences(fn, x: torch.Tensor):
    _warn("divided_differences", "gsm.theory.law.opitz_divided_differences (returns h, h^[1], h^[2])")
    return opitz_divided_differences(fn, torch.as_tensor(x, dtype=F64))[1:]


def dsm_score_matrix(X, sigma, tau=0.0, sgd_steps=None, init="zeros"):
    _warn("dsm_score_matrix", "gsm.training.objectives.DSM().score_function(X, alphas, stds, budget)")
    budget = SGDBudget(int(sgd_steps), float(tau), 1, init) if sgd_steps is not None else None
    return DSM().score_function(X, *_one_level(sigma), budget)[..., 0, :, :]


def sgd_variance(eigenvalues, *, sigma, tau, batch_size=1, symmetric=False):
    _warn("sgd_variance", "gsm.training.objectives.DSM().fluctuations(λ, alphas, stds, τ, b)")
    var, cross = DSM().fluctuations(eigenvalues, *_one_level(sigma), tau, batch_size, None, symmetric)
    return var[0], cross[0]


def sgd_transient_variance(eigenvalues, *, sigma, tau, batch_size, sgd_steps, init="zeros"):
    _warn("sgd_transient_variance", "gsm.training.objectives.DSM().fluctuations(..., budget=SGDBudget(...))")
    budget = SGDBudget(int(sgd_steps), float(tau), int(batch_size), init)
    var, cross = DSM().fluctuations(eigenvalues, *_one_level(sigma), tau, batch_size, budget)
    return var[0], cross[0]


def sgd_variance_exact(eigenvalues, *, sigma, tau, batch_size=1):
    _warn("sgd_variance_exact", "gsm.training.objectives.DSM().exact_fluctuations")
    return DSM().exact_fluctuations(eigenvalues, sigma, tau, batch_size)
