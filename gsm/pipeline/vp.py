"""`sampler=vp` in the pipeline: `gsm.pipeline.run.run` hands over to `run_vp`.

With `sampler.spectral=true` (default) and a score that is a function of Σ (model=oracle) or of Σ̂
(model=linear train.solver=exact), every score matrix shares one eigenbasis, so the whole chain is
diagonal there (O(d·K) after one eigendecomposition): image-scale spectra (d = 3072) are practical.
Otherwise (SGD, neural scores, spectral=false) the d×d pipeline `gsm.pipeline.run._run` runs the VP
sampler through `LinearChain.covariance` (any A, non-commuting).

Spectral path, per replicate (W2 is invariant under rotations, so Σ = diag(λ), whatever data.basis):

* oracle: the output variance v(λ) (`spectral_output_variance`); the replicates differ by their particles;
* solver=exact: Σ̂ = Λ^{½} W Λ^{½}/N, W ~ Wishart(N, I) drawn by Bartlett's decomposition (W = L Lᵀ,
  L_ii² ~ χ²_{N−i+1}, L_ij ~ N(0, 1) below the diagonal; N ≥ d) or from N samples (N < d) — the same law
  as the d×d pipeline's data; Σ̂ = V diag(μ) Vᵀ, scores a_l = 1/(α_l²μ + s_l²), and in V's basis
  C′ = (p pᵀ) ∘ (Vᵀ C_0 V) + diag(Q) (p = Π_k m_k, Q the accumulated noise, `propagator_series` order 1);
* particles: run through the diagonal chain (`particles_from=chain`), or drawn from the exact law
  (`law`; `auto`: chain when M·d·K ≤ 1e8), w2_empirical = B²(Λ, (1/M) Σ x xᵀ) through the M×M Gram
  matrix when M < d.
"""
from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from gsm.figures import log_figure
from gsm.samplers.linear_chain import DIAG
from gsm.pipeline.interrupt import SummaryWriter
from gsm.samplers.vp_schemes import EXACT_SCHEMES, exact_scores, vp_grid
from gsm.samplers.vp import VP, trajectory_figure
from gsm.samplers.vp_schemes import _singular_score_check
from gsm.theory.vp import spectral_output_variance, vp_prediction

_F64 = torch.float64


def spectral_path(cfg: DictConfig) -> bool:
    """True when the VP run can use the per-eigenvalue path: oracle, or model=linear with solver=exact."""
    from gsm.scores.linear import LinearScore
    from gsm.pipeline.validate import _model_class
    cls = _model_class(cfg)
    linear = isinstance(cls, type) and issubclass(cls, LinearScore)
    return bool(cfg.sampler.get("spectral", True)) and linear and (
        not cls.requires_training or cfg.train.solver == "exact")


def memory_config(cfg: DictConfig) -> DictConfig:
    """For `gsm.memory`: a copy of cfg with data.dim = the file's length (data=file has no data.dim)."""
    from omegaconf import OmegaConf, open_dict
    if "dim" in cfg.data:
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        cfg.data.dim = int(torch.as_tensor(instantiate(cfg.data.spectrum)).numel())
    return cfg


def spectral_memory_terms(cfg: DictConfig, levels: int) -> tuple[list, list]:
    """`gsm.memory` terms of the per-eigenvalue path: one replicate at a time, ~20 d×d float64 arrays
    (Σ̂, its eigenvectors and LAPACK workspace, the law, the Bures matrix, the prediction's d×d kernels),
    the level scores (L, d) and M particles (×4)."""
    from gsm.pipeline.memory import _term
    d, M = int(cfg.data.dim), int(cfg.sampler.particles)
    return [], [[_term("per-eigenvalue path: d×d arrays of one replicate and the prediction", 20 * d * d * 8,
                       "data.dim"),
                 _term("level scores and particles", (2 * levels * d + 4 * M * d) * 8,
                       "data.dim, sampler.steps, sampler.particles")]]


def run_vp(cfg: DictConfig, output_dir, checks: list) -> dict:
    """One `sampler=vp` experiment for `gsm.pipeline.run.run` (cfg validated, interruption handled)."""
    from gsm.pipeline.run import _run
    from gsm.pipeline.validate import ConfigError
    if not spectral_path(cfg):
        if cfg.sampler.get("scheme") in EXACT_SCHEMES:
            raise ConfigError(f"sampler.scheme must be a discretisation (em | ei | ddpm | euler | heun | rk4) unless "
                              f"model=oracle with sampler.spectral=true (sde/ode are exact laws), got {cfg.sampler.scheme}")
        return _run(cfg, output_dir, checks)
    return _run_spectral(cfg, output_dir, checks)


def _run_spectral(cfg, output_dir, checks):
    from gsm.pipeline.run import log_w2, mean_stderr, recorded, start
    from gsm.pipeline.validate import _model_class, as_config_error
    t0 = time.time()
    out, results, warn = start(cfg, output_dir, checks)
    R, N = int(cfg.replicates), int(cfg.data.n)
    lam = torch.as_tensor(instantiate(cfg.data.spectrum), dtype=_F64)
    d = lam.numel()
    sampler = instantiate(cfg.sampler)
    oracle = not _model_class(cfg).requires_training
    results.update(nfe=sampler.evaluations, steps=sampler.K, path="spectral")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    with as_config_error("sampler"):     # a singular Σ (Σ̂) read at t = 0: a one-line config error, nothing run
        _singular_score_check(sampler, lam)
        if not oracle:
            _singular_score_check(sampler, lam if N > d else torch.zeros(1), "Σ̂ (N ≤ d)")
    writer = SummaryWriter(log_dir=str(out / "tb"))
    with recorded(writer, results, t0, out):
        M = sampler.particles
        frm = sampler.particles_from
        use_chain = sampler.chain is not None and (frm == "chain" or (frm == "auto" and M * d * sampler.K <= 1e8))
        results["particles_from"] = "chain" if use_chain else "law"
        w2, w2e = [], []
        for r in range(R):
            if oracle:
                basis, C = None, spectral_output_variance(sampler, lam)
                a = None
            else:
                mu, basis = torch.linalg.eigh(_empirical_covariance(lam, N, gen))
                mu = mu.clamp_min(0)
                alpha, s = sampler.noise_levels()
                a = 1.0 / (alpha.view(-1, 1) ** 2 * mu + s.view(-1, 1) ** 2)
                C = _law_in_basis(sampler, lam, basis, a)
            w2.append(_bures_to_diag(lam, C, basis))
            if frm != "none":
                x = _particles(sampler, lam, C, basis, a, M, gen, use_chain)
                w2e.append(_bures_to_diag_particles(lam, x))
        results["w2_exact"] = mean_stderr(torch.tensor(w2, dtype=_F64))
        if frm != "none":
            results["w2_empirical"] = mean_stderr(torch.tensor(w2e, dtype=_F64))
            results["covariance_estimator"] = "(1/M) Σ x xᵀ over M independent particles (known zero mean)"
        else:
            results["w2_empirical"] = None
            results["particles_from"] = "none"
        results["unstable_replicates"] = 0
        pred = vp_prediction(lam, sampler, n=None if oracle else N, particles=None if frm == "none" else M)
        terms = {k: float(v) for k, v in pred.items() if isinstance(v, (int, float)) and k != "d_over_n"}
        results["prediction_terms"] = terms
        results["w2_predicted"] = terms["total"] - terms["particles"]
        results["w2_predicted_empirical"] = terms["total"]
        results["diagnostics"] = {"d_over_n": pred["d_over_n"]}
        for w in pred["warnings"]:
            warn(w)
        from gsm.theory.regime import linear_regime
        results["regime"] = linear_regime(terms=terms, d=d, n=None if oracle else N, eps_tau=None, times=None,
                                          steps=0, tau=0.0, unstable=0, replicates=R, sampling="with_replacement")
        results["status"] = "ok"
        log_w2(writer, results, terms, 0)
        if sampler.chain is not None and sampler.figure:
            log_figure(writer, "vp/trajectory_all_schemes", trajectory_figure(lam, sampler), 0)
            t = vp_grid(sampler.T, sampler.eps, sampler.K)
            traj = spectral_output_variance(sampler, lam, trajectory=True)
            marg = sampler.schedule.marginal(lam, t)
            wt = ((marg.sqrt() - traj.clamp_min(0).sqrt()) ** 2).sum(-1)
            for k in torch.unique(torch.linspace(0, sampler.K, min(50, sampler.K + 1)).round().long()).tolist():
                writer.add_scalar("vp/w2_trajectory_oracle", float(wt[k]), k)   # plain: the default TensorBoard loader
    return results


def _empirical_covariance(lam: torch.Tensor, N: int, gen: torch.Generator) -> torch.Tensor:
    """Σ̂ = (1/N) Σ x xᵀ for N samples of N(0, diag λ), (d, d) float64: Bartlett's decomposition when N ≥ d
    (cost d³/3 instead of N d²), else from the samples."""
    d = lam.numel()
    root = lam.clamp_min(0).sqrt()
    if N < d:
        X = torch.randn(N, d, generator=gen, dtype=_F64) * root
        return X.T @ X / N
    L = torch.randn(d, d, generator=gen, dtype=_F64).tril(-1)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):     # Chi2 draws from the global RNG: seeded from `gen`
        torch.manual_seed(seed)
        chi2 = torch.distributions.Chi2(torch.arange(N, N - d, -1, dtype=_F64)).sample()
    L.diagonal().copy_(chi2.sqrt())
    B = L * root.view(-1, 1)
    return B @ B.T / N


def _law_in_basis(sampler: VP, lam, basis, a) -> torch.Tensor:
    """Output covariance in Σ's eigenbasis (d, d) for diagonal scores a (L, d) in `basis`:
    C′ = (p pᵀ) ∘ (Vᵀ C_0 V) + diag(Q), C = V C′ Vᵀ."""
    ch = sampler.chain
    p = torch.ones_like(a[0])
    Q = torch.zeros_like(a[0])
    for k in range(ch.K):
        m = ch.matrices(k, a, DIAG)
        p, Q = m * p, m * m * Q + float(ch.q[k])
    if sampler.init == "prior":
        C0 = basis.T @ (sampler.schedule.marginal(lam, sampler.T).view(-1, 1) * basis)
        Cp = p.view(-1, 1) * C0 * p.view(1, -1) + torch.diag(Q)
    else:
        Cp = torch.diag(p * p + Q)
    return basis @ Cp @ basis.T


def _bures_to_diag(lam, C, basis) -> float:
    """B²(diag λ, C); C (d,) when it is diagonal (oracle) else (d, d)."""
    if basis is None:
        return float(((lam.sqrt() - C.clamp_min(0).sqrt()) ** 2).sum())
    r = lam.clamp_min(0).sqrt()
    cross = torch.linalg.eigvalsh(r.view(-1, 1) * C * r.view(1, -1)).clamp_min(0).sqrt().sum()
    return float(lam.sum() + C.diagonal().sum() - 2 * cross)


def _bures_to_diag_particles(lam, x) -> float:
    """B²(diag λ, (1/M) Σ x xᵀ) for particles x (M, d) in Σ's eigenbasis, via the smaller Gram matrix."""
    M = x.shape[0]
    y = x * lam.clamp_min(0).sqrt()
    G = (y @ y.T if M < x.shape[1] else y.T @ y) / M
    cross = torch.linalg.eigvalsh(G).clamp_min(0).sqrt().sum()
    return float(lam.sum() + (x * x).sum() / M - 2 * cross)


def _particles(sampler: VP, lam, C, basis, a, M, gen, use_chain) -> torch.Tensor:
    """M particles (M, d) in Σ's eigenbasis: the chain run in the scores' eigenbasis, or the exact law."""
    d = lam.numel()
    if use_chain:
        z = torch.randn(M, d, generator=gen, dtype=_F64)
        if sampler.init == "prior":
            z = z * sampler.schedule.marginal(lam, sampler.T).sqrt()
            if basis is not None:
                z = z @ basis                     # into the scores' basis
        # (init=normal: N(0, I) is the same law in any basis)
        a = exact_scores(lam, sampler.schedule, sampler.times) if a is None else a
        x = sampler.chain.sample_diagonal(a, z, gen)
        return x if basis is None else x @ basis.T
    z = torch.randn(M, d, generator=gen, dtype=_F64)
    if basis is None:
        return z * C.clamp_min(0).sqrt()
    w, U = torch.linalg.eigh(0.5 * (C + C.T))
    return (z * w.clamp_min(0).sqrt()) @ U.T
