"""The algebras a linear chain's step matrices are built in (`gsm.theory.chain`): how elements multiply
and what their unit is. One step function builds M_k in any of them:

* `FULL`  — (..., d, d) matrices (any A_l);
* `DIAG`  — (..., d) eigenvalues (every A_l diagonal in one basis);
* `SERIES` — truncated Taylor series (..., n) per eigenvalue, f(λ + x) = Σ_{r<n} f_r xʳ (a matrix function
  on a Jordan block, Opitz): products are upper-triangular Toeplitz products;
* `MATRIX_JET` — second-order jets X₀ + εX₁ + ε²X₂ of small matrices, elements (..., 3, n, n).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

@dataclass(frozen=True)
class Algebra:
    """How step matrices are multiplied: mm(X, Y) and the unit `one(like)` (shaped like an element)."""

    name: str
    mm: Callable
    one: Callable


def eye_like(X):
    return torch.eye(X.shape[-1], dtype=X.dtype, device=X.device).expand_as(X)


def series_mm(X, Y):
    """Product of truncated series (..., n): Z_r = Σ_{p+q=r} X_p Y_q (upper-triangular Toeplitz product)."""
    n = X.shape[-1]
    # numpy's broadcast_shapes: torch's imports torch.fx's symbolic shapes and sympy (0.7 s of start-up)
    Z = torch.zeros(np.broadcast_shapes(X.shape, Y.shape), dtype=X.dtype, device=X.device)
    for p in range(n):
        Z[..., p:] += X[..., p:p + 1] * Y[..., :n - p]
    return Z


def series_one(X):
    one = torch.zeros_like(X)
    one[..., 0] = 1.0
    return one


def jet_mm(X, Y):
    """(X₀ + εX₁ + ε²X₂)(Y₀ + εY₁ + ε²Y₂) mod ε³, elements (..., 3, n, n)."""
    X0, X1, X2 = X.unbind(-3)
    Y0, Y1, Y2 = Y.unbind(-3)
    return torch.stack([X0 @ Y0, X0 @ Y1 + X1 @ Y0, X0 @ Y2 + X1 @ Y1 + X2 @ Y0], -3)


def jet_one(X):
    one = torch.zeros_like(X)
    one[..., 0, :, :] = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    return one


FULL = Algebra("full", torch.matmul, eye_like)


DIAG = Algebra("diag", torch.mul, torch.ones_like)


SERIES = Algebra("series", series_mm, series_one)


MATRIX_JET = Algebra("matrix_jet", jet_mm, jet_one)
