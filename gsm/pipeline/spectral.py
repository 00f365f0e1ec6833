"""The per-eigenvalue backend (`sampler=vp` with `sampler.spectral=true`, `VP.spectral_path`).

With `sampler.spectral=true` (default) and a score that is a function of Σ (model=oracle) or of Σ̂
(model=linear train.solver=exact), every score matrix shares one eigenbasis, so the whole chain is
diagonal there (O(d·K) after one eigendecomposition): image-scale spectra (d = 3072) are practical.
Otherwise (SGD, neural scores, spectral=false) the full-matrix backend (`gsm.pipeline.matrix`) runs the VP
sampler through `LinearChain.covariance` (any A, non-commuting).

Spectral path, per replicate (W2 is invariant under rotations, so Σ = diag(λ), whatever data.basis):

* oracle: the output variance v(λ) (`VP.spectral_variance`); the replicates differ by their particles;
* solver=exact: Σ̂ = Λ^{½} W Λ^{½}/N, W ~ Wishart(N, I) drawn by Bartlett's decomposition (W = L Lᵀ,
  L_ii² ~ χ²_{N−i+1}, L_ij ~ N(0, 1) below the diagonal; N ≥ d) or from N samples (N < d) — the same law
  as the d×d pipeline's data; Σ̂ = V diag(μ) Vᵀ, scores a_l = 1/(α_l²μ + s_l²), and in V's basis
  C′ = (p pᵀ) ∘ (Vᵀ C_0 V) + diag(Q) (p = Π_k m_k, Q the accumulated noise, `propagator_series` order 1);
* particles: run through the diagonal chain (`particles_from=chain`), or drawn from the exact law
  (`law`; `auto`: chain when M·d·K ≤ 1e8), w2_empirical = B²(Λ, (1/M) Σ x xᵀ) through the M×M Gram
  matrix when M < d.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from gsm.figures import log_figure
from gsm.pipeline.backend import Backend
from gsm.pipeline.record import log_w2, mean_stderr, measured_stderr
from gsm.pipeline.spec import as_config_error
from gsm.samplers.vp import VP, trajectory_figure
from gsm.samplers.vp_schemes import vp_grid
from gsm.theory.prediction import sampler_prediction
from gsm.theory.remainder import error_bar_draws

_F64 = torch.float64


class SpectralBackend(Backend):
    """Σ = diag(λ) (W2 is rotation invariant): the oracle's law per eigenvalue, or Σ̂'s eigenbasis per
    replicate for train.solver=exact. One replicate's d×d arrays at a time: its data, law and particles
    are drawn and evaluated together in `sample`."""

    def __init__(self, spec, results, warn):
        super().__init__(spec, results, warn)
        self.R, self.N = spec.settings.replicates, spec.data.n
        self.lam = spec.data.spectrum
        self.sampler = sampler = spec.sampler
        self.oracle = not spec.model.requires_training
        self.vector_threads = one_thread if self.oracle and spec.settings.threads == "auto" else nullcontext
        results.update(nfe=sampler.evaluations, steps=sampler.K, path="spectral")
        self.gen = torch.Generator().manual_seed(spec.settings.seed)
        d = self.lam.numel()
        with as_config_error("sampler"):     # a singular Σ (Σ̂) read at t = 0: a one-line config error, nothing run
            sampler.check_singular(self.lam)
            if not self.oracle:
                sampler.check_singular(self.lam if self.N > d else torch.zeros(1), "Σ̂ (N ≤ d)")

    def draw_data(self):
        return None     # Σ̂ is drawn per replicate in `sample` (Bartlett), with its law and particles

    def fit_score(self, data, writer) -> dict:
        return {}       # the oracle, or the plug-in scores of each replicate's Σ̂ (in `sample`)

    def sample(self, fit) -> bool:
        s, lam = self.sampler, self.lam
        M, frm = s.particles, s.particles_from
        use_chain = s.chain is not None and (frm == "chain" or (frm == "auto" and M * lam.numel() * s.K <= 1e8))
        self.results["particles_from"] = "chain" if use_chain else "law"
        self.w2, self.w2_particles, self.kept = [], [], []
        for _ in range(self.R):
            with self.vector_threads():
                basis, a, C = self._replicate_law()
            if basis is not None and len(self.kept) < TRAJECTORY_REPLICATES:
                self.kept.append((basis, a))      # the learned (plug-in) scores of the trajectory figure
            self.w2.append(_bures_to_diag(lam, C, basis))
            if frm != "none":
                x = _particles(s, lam, C, basis, a, M, self.gen, use_chain)
                self.w2_particles.append(_bures_to_diag_particles(lam, x))
        self.results["unstable_replicates"] = 0
        return True

    def _replicate_law(self):
        """(basis, scores a (L, d), law C) of one replicate: the oracle's diagonal law, or Σ̂'s."""
        if self.oracle:
            return None, None, self.sampler.spectral_variance(self.lam)
        mu, basis = torch.linalg.eigh(_empirical_covariance(self.lam, self.N, self.gen))
        mu = mu.clamp_min(0)
        alpha, s = self.sampler.noise_levels()
        a = self.spec.objective.target(mu, alpha, s)                # the plug-in score of Σ̂'s eigenvalues μ
        return basis, a, _law_in_basis(self.sampler, self.lam, basis, a)

    def evaluate(self) -> None:
        r = self.results
        r["w2_exact"] = mean_stderr(torch.tensor(self.w2, dtype=_F64))
        if self.sampler.particles_from != "none":
            r["w2_empirical"] = mean_stderr(torch.tensor(self.w2_particles, dtype=_F64))
            r["covariance_estimator"] = "(1/M) Σ x xᵀ over M independent particles (known zero mean)"
        else:
            r["w2_empirical"] = None
            r["particles_from"] = "none"

    def predict(self) -> dict:
        # the oracle's law, computed once in `sample`: its bias is that law (no second score table)
        with self.vector_threads():
            return self._prediction()

    def _prediction(self) -> dict:
        none = self.sampler.particles_from == "none"
        target = self.sampler.exact_target(self.lam) if self.oracle else None
        return sampler_prediction(self.sampler, self.lam, objective=self.spec.objective, target=target,
                                  n=None if self.oracle else self.N,
                                  particles=None if none else self.sampler.particles,
                                  error_bar=error_bar_draws(self.R, self.lam.numel()),
                                  resolution=measured_stderr(self.results))

    def regime_inputs(self) -> dict:
        return dict(d=self.lam.numel(), n=None if self.oracle else self.N, eps_tau=None, times=None, steps=0,
                    tau=0.0, unstable=0, replicates=self.R, sampling="with_replacement")

    def log(self, writer, pred) -> None:
        with self.vector_threads():
            self._log(writer, pred)

    def _log(self, writer, pred) -> None:
        s = self.sampler
        log_w2(writer, self.results, self.results["prediction_terms"], 0, image=s.figure and self.figures)
        if s.chain is None or not (s.figure and self.figures):
            return
        t = vp_grid(s.T, s.eps, s.K)
        pts = torch.unique(torch.linspace(0, s.K, min(50, s.K + 1)).round().long())
        learned = None
        if self.kept:     # plug-in scores: their mean W2² trajectory; the oracle's is the exact-score curve itself
            w2 = torch.stack([_trajectory_in_basis(s, self.lam, b, a, t, pts) for b, a in self.kept]).mean(0)
            learned = (t[pts], w2)
        log_figure(writer, "vp/trajectory_all_schemes", trajectory_figure(self.lam, s, learned=learned), 0)
        traj = s.spectral_variance(self.lam, trajectory=True)
        marg = s.schedule.marginal(self.lam, t)
        wt = ((marg.sqrt() - traj.clamp_min(0).sqrt()) ** 2).sum(-1)
        for k in torch.unique(torch.linspace(0, s.K, min(50, s.K + 1)).round().long()).tolist():
            writer.add_scalar("vp/w2_trajectory_oracle", float(wt[k]), k)   # plain: the default TensorBoard loader


@contextmanager
def one_thread():
    """One intra-op thread inside (threads=auto on the oracle's law, prediction and figure): these are O(d·K)
    vector ops, none large enough to gain from a second thread, and each parallel one (sqrt, exp of a
    3072-vector) waits at a barrier for a descheduled thread: 14 ms at load 7 on 2 cores, 27 µs on one
    (docs/performance.md (6))."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
    p, Q = sampler.chain.diagonal_propagator(a)       # from v = 0: Q, the accumulated noise
    if sampler.init == "prior":
        C0 = basis.T @ (sampler.schedule.marginal(lam, sampler.T).view(-1, 1) * basis)
        Cp = p.view(-1, 1) * C0 * p.view(1, -1) + torch.diag(Q)
    else:
        Cp = torch.diag(p * p + Q)
    return basis @ Cp @ basis.T


TRAJECTORY_REPLICATES = 8     # replicates whose learned-score trajectory the VP figure averages


def _trajectory_in_basis(sampler: VP, lam, basis, a, t, pts) -> torch.Tensor:
    """W2²(law of x_{t_k}, p_{t_k}) at the steps k in `pts` for diagonal scores a (L, d) in `basis`: the
    recursion of `_law_in_basis`, read along the way. (len(pts),) float64."""
    ch, want = sampler.chain, set(pts.tolist())
    p, Q = torch.ones_like(a[0]), torch.zeros_like(a[0])
    C0 = basis.T @ (sampler.schedule.marginal(lam, sampler.T).view(-1, 1) * basis) if sampler.init == "prior" else None
    marg = sampler.schedule.marginal(lam, t)      # (K+1, d), diagonal in Σ's basis
    out = []
    m_all = ch.factors(a)                         # (K, d): every step's factors at once
    for k in range(ch.K + 1):
        if k in want:
            Cp = p.view(-1, 1) * C0 * p.view(1, -1) + torch.diag(Q) if C0 is not None else torch.diag(p * p + Q)
            out.append(_bures_to_diag(marg[k], basis @ Cp @ basis.T, basis))
        if k < ch.K:
            m = m_all[k]
            p, Q = m * p, m * m * Q + float(ch.q[k])
    return torch.tensor(out, dtype=_F64)


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
        a = sampler.exact_propagator(lam)[0] if a is None else a     # the run's own exact-score table
        x = sampler.chain.sample_diagonal(a, z, gen)
        return x if basis is None else x @ basis.T
    z = torch.randn(M, d, generator=gen, dtype=_F64)
    if basis is None:
        return z * C.clamp_min(0).sqrt()
    w, U = torch.linalg.eigh(0.5 * (C + C.T))
    return (z * w.clamp_min(0).sqrt()) @ U.T
