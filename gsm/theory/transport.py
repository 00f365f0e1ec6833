"""True optimal-transport distances between samples, for laws that are not Gaussian (POT, float64).

    W2²(μ̂, ν̂) = min_π Σ_ij π_ij ‖x_i − y_j‖²  over couplings π of the uniform laws on x (M points), y (M' points),

solved exactly by POT's network simplex (`ot.emd2`, O(M³)), and its sliced version
SW2²(μ̂, ν̂) = E_θ W2²(θᵀμ̂, θᵀν̂) over random directions θ (`ot.sliced_wasserstein_distance`, O(P M log M)).
Between two independent samples of the *same* law both are > 0: that two-sample floor is the bias of the
plug-in estimate, and E[W2²(P̂_M, Q̂_M)] − E[W2²(Q̂_M, Q̂'_M)] = 0 exactly when P = Q (`debiased`).
POT is imported here only (the `mixture` extra; validation refuses data=mixture without it).
"""
from __future__ import annotations

import torch

EMD_MAX_ITER = 10_000_000      # POT's default (1e5) stops short of the optimum above M ≈ 300


def ot_w2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact OT W2² between the uniform empirical laws of x (R, M, d) and y (R, M', d), per replicate: (R,) float64."""
    import ot

    out = []
    for xr, yr in zip(x.detach().to(torch.float64).cpu().numpy(), y.detach().to(torch.float64).cpu().numpy()):
        out.append(float(ot.emd2([], [], ot.dist(xr, yr), numItermax=EMD_MAX_ITER)))
    return torch.tensor(out, dtype=torch.float64)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, projections: int = 128, seed: int = 0) -> torch.Tensor:
    """Sliced W2² (the mean over `projections` random directions of the 1-D W2²) between x (R, M, d) and
    y (R, M', d), per replicate: (R,) float64."""
    import ot

    out = []
    for r, (xr, yr) in enumerate(zip(x.detach().to(torch.float64).cpu().numpy(),
                                     y.detach().to(torch.float64).cpu().numpy())):
        out.append(float(ot.sliced_wasserstein_distance(xr, yr, n_projections=projections, p=2, seed=seed + r)) ** 2)
    return torch.tensor(out, dtype=torch.float64)
