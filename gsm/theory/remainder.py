"""The prediction's own error bar: what its first-order 1/N and 1/M terms neglect (docs/theory.md §12).

Both terms are the mean of a second-order expansion in a Wishart perturbation. For the 1/N term,
F(Σ̂) = B²(Σ, h(Σ̂)), with Σ̂ = Λ^{½} W Λ^{½}/N, W ~ Wishart(N, I), and h the law map through the
objective's scores. For the 1/M term, F(S) = B²(Σ, S), with S = H^{½} W H^{½}/M, the particles'
second moment. With Δ = Σ̂ − Σ,

    F(Σ̂) = F(Σ) + Σ_i g_i Δ_ii + Σ_ij w_ij Δ_ij² + r(Δ),   E[Δ_ij²] = λ_iλ_j(1 + δ_ij)/N,

so the first-order term is E[Σ w_ij Δ_ij²] = (1/N) Σ_ij K_ij, and r, of order N⁻², is what it neglects
(near the γ edge of Langevin r is large: Σ̂'s smallest eigenvalues approach the pole of h). E[r] is
estimated by Monte Carlo over Wishart draws. The expansion is the control variate: r has a standard
deviation O(N^{-3/2}), where F's is O(N^{-1/2}). So a few dozen draws resolve it, and the estimate is
unbiased for E[F] − (F(Σ) + ΣK/N) even where the expansion is poor. A draw costs two d×d
eigendecompositions, which is why `ERROR_BAR_MAX_DIM` caps d.
"""
from __future__ import annotations

import math

import torch

F64 = torch.float64
ERROR_BAR_DRAWS = 48          # the fewest Wishart draws of the estimate (its s.e. is reported with it)
ERROR_BAR_COST = 2e9          # draws·d³ at most: a few seconds
ERROR_BAR_MAX_DRAWS = 16384   # and at most this many draws
REL_TOL = 0.05                # the prediction's error bar must stay below 5 % of it, and below one s.e.
ERROR_BAR_MAX_DIM = 256       # above: not estimated (the verdict falls back to the N ≥ 5d rule)
ERROR_BAR_SEED = 20250314     # its own stream: the estimate is independent of the run's replicates


def error_bar_draws(replicates: int, d: int) -> int:
    """Draws for an error bar that a run of R replicates can be held to: about R/2 (the control variate's
    spread is a fraction of the replicates'), at least ERROR_BAR_DRAWS, at most ERROR_BAR_COST/d³."""
    return max(ERROR_BAR_DRAWS, min(replicates // 2, int(ERROR_BAR_COST / max(d, 1) ** 3)))


def wishart_second_moments(root: torch.Tensor, n: int, draws: int, gen: torch.Generator) -> torch.Tensor:
    """S = diag(root) (W/n) diag(root), W ~ Wishart(n, I): (draws, d, d) float64, E[S] = diag(root²). For
    n ≥ d, W = L Lᵀ by Bartlett's decomposition (L_ii² ~ χ²_{n−i+1}, L_ij ~ N(0, 1) below the diagonal: d² numbers
    a draw); else W = ZᵀZ from n × d normals."""
    d = root.numel()
    if n < d:
        z = torch.randn(draws, n, d, generator=gen, dtype=F64) * root
        return z.transpose(1, 2) @ z / n
    L = torch.randn(draws, d, d, generator=gen, dtype=F64).tril(-1)
    chi2 = 2 * torch._standard_gamma((torch.arange(n, n - d, -1, dtype=F64) / 2).expand(draws, d).contiguous(),
                                     generator=gen)
    L = L + torch.diag_embed(chi2.sqrt())
    L = root.view(-1, 1) * L
    return L @ L.transpose(1, 2) / n


def bures_to_diagonal(lam: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """B²(diag λ, C) = Σλ + tr C − 2 tr (Λ^{½} C Λ^{½})^{½} for a batch C (..., d, d) → (...,)."""
    r = lam.sqrt()
    inner = torch.linalg.eigvalsh(r.view(-1, 1) * C * r.view(1, -1)).clamp_min(0).sqrt().sum(-1)
    return lam.sum() + C.diagonal(dim1=-2, dim2=-1).sum(-1) - 2 * inner


def taylor_remainder(F, base: torch.Tensor, grad: torch.Tensor, K: torch.Tensor, n: int,
                     draws: int = ERROR_BAR_DRAWS, seed: int = ERROR_BAR_SEED, target: float | None = None) -> dict:
    """E[r] = E[F(S)] − F(diag base) − (1/n) Σ K, for S = Wishart(n, diag base)/n, with the second-order
    expansion (gradient `grad` (d,) on Δ_ii, cells K (d, d)) as control variate (module doc).
    F: (B, d, d) → (B,). With a target error bar, the draws double (up to the cost cap) until
    |estimate| + 2 s.e. ≤ target or the estimate is resolved (> 3 s.e.). Returns {"estimate", "stderr", "draws"}."""
    gen = torch.Generator().manual_seed(seed)
    d = base.numel()
    moments = torch.outer(base, base) * (1 + torch.eye(d, dtype=F64))     # n·E[Δ_ij²]
    w = torch.where(moments > 0, K / moments.clamp_min(1e-300), torch.zeros_like(K))
    F0, r, size = float(F(torch.diag(base)[None])[0]), [], draws
    most = max(draws, min(ERROR_BAR_MAX_DRAWS, int(ERROR_BAR_COST / d ** 3)))
    while True:
        for chunk in _chunks(size, d):       # a bounded batch of d×d draws at a time
            S = wishart_second_moments(base.sqrt(), n, chunk, gen)
            delta = S - torch.diag(base)
            expansion = delta.diagonal(dim1=-2, dim2=-1) @ grad + (w * delta ** 2).sum((-2, -1))
            r.append(F(S) - F0 - expansion)           # E[expansion] = (1/n) Σ K exactly
        v = torch.cat(r)
        mean, se = float(v.mean()), float(v.std(unbiased=True)) / math.sqrt(len(v))
        done = target is None or not math.isfinite(mean) or abs(mean) + 2 * se <= target or abs(mean) > 3 * se
        if done or len(v) >= most:
            return {"estimate": mean, "stderr": se, "draws": len(v)}
        size = min(len(v), most - len(v))


CHUNK_ENTRIES = 2 ** 22      # d×d entries of the draws held at once (32 MiB in float64)


def _chunks(draws: int, d: int):
    size = max(1, CHUNK_ENTRIES // (d * d))
    return [min(size, draws - i) for i in range(0, draws, size)]


def error_of(remainder: dict | None) -> float:
    """The error bar a remainder puts on its term: |estimate| + 2 s.e. (0 when there is none)."""
    if not remainder:
        return 0.0
    return abs(remainder["estimate"]) + 2 * remainder["stderr"]


def _finite(rem: dict) -> dict:
    if not (math.isfinite(rem["estimate"]) and math.isfinite(rem["stderr"])):
        return {"estimate": math.inf, "stderr": 0.0, "draws": rem["draws"],
                "note": "some Wishart draws of Σ̂ give an unstable sampler"}
    return rem


def generalization_remainder(law, score_of, lam: torch.Tensor, n: int, K_N: torch.Tensor,
                             draws: int = ERROR_BAR_DRAWS, target: float | None = None) -> dict:
    """E[r] of the 1/N term: F(Σ̂) = B²(Σ, U h(μ) Uᵀ), Σ̂ = U diag(μ) Uᵀ, h(μ) = law.variance(score_of(μ))
    (scores that are spectral functions of Σ̂, a law from an isotropic start). lam (d,), K_N (d, d)."""
    def h_of(mu):
        return law.variance(score_of(mu.clamp_min(0)))

    def F(S):
        mu, U = torch.linalg.eigh(S)
        h = h_of(mu.reshape(-1)).reshape(mu.shape)      # the law map acts per eigenvalue: one call for the batch
        stable = (torch.isfinite(h) & (h >= 0)).all(-1)     # an unstable sampler on some draw: F = ∞ there
        out = torch.full((len(S),), math.inf, dtype=F64)
        out[stable] = bures_to_diagonal(lam, (U[stable] * h[stable].unsqueeze(-2)) @ U[stable].transpose(-1, -2))
        return out

    step = 1e-5 * lam.clamp_min(1e-12)
    h = h_of(lam)
    slope = (h_of(lam + step) - h_of(lam - step)) / (2 * step)      # h′(λ): F's gradient is h′(1 − √(λ/h))
    grad = slope * (1 - (lam / h).sqrt())
    return _finite(taylor_remainder(F, lam, grad, K_N, n, draws, target=target))


def particles_remainder(lam: torch.Tensor, h: torch.Tensor, K_M: torch.Tensor, m: int,
                        draws: int = ERROR_BAR_DRAWS, target: float | None = None) -> dict:
    """E[r] of the 1/M term: F(S) = B²(Σ, S), S the second moment of M particles of N(0, diag h)."""
    grad = 1 - (lam / h.clamp_min(1e-300)).sqrt()
    return _finite(taylor_remainder(lambda S: bures_to_diagonal(lam, S), h, grad, K_M, m, draws, target=target))


def isotropic_start(law) -> bool:
    """Whether the law map starts from N(0, c₀I) (the 1/N estimate needs h to be a function of μ alone)."""
    c0 = getattr(law, "init_var", None)
    return c0 is not None and torch.as_tensor(c0).numel() == 1 and hasattr(law, "variance")
