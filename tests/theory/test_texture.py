"""Textures (ADSN) and the Fourier-diagonal linear score: data, equivalence with the full-matrix
model restricted to circulants, Monte-Carlo checks of the Fourier-diagonal kernels, the pipeline."""
import json
import math

import pytest
import torch

from gsm.samplers.ddpm import DDIM, DDPM
from gsm.samplers.langevin import Langevin
from gsm.scores.fourier import FourierLinearScore, circulant_matrices, dsm_optimum_fourier
from gsm.data.texture import adsn_sample, adsn_spectrum, kappa, load_texture, multiplicity
from gsm.theory.fourier import fourier_bures_wasserstein2, fourier_prediction
from gsm.theory.prediction import sampler_prediction
from gsm.samplers.fourier import fourier_sample, sampler_variance
from gsm.training.fourier import train_fourier_dsm
from gsm.training.dsm import train_linear_dsm
from gsm.training.objectives import DSM

F64 = torch.float64


def torus_spectrum(n, scale=2.0, floor=0.1):
    """An even test spectrum on the n×n torus (half-plane), λ = floor + scale/(1 + |ω|²/2)."""
    k1 = torch.fft.fftfreq(n, 1 / n, dtype=F64).view(-1, 1)
    k2 = torch.arange(n // 2 + 1, dtype=F64).view(1, -1)
    return floor + scale / (1 + (k1 ** 2 + k2 ** 2) / 2)


def unitary_dft(n):
    """The 2-D unitary DFT matrix on row-major flattened n×n images, (d, d) complex."""
    k = torch.arange(n, dtype=F64)
    F1 = torch.exp(-2j * math.pi * torch.outer(k, k) / n) / math.sqrt(n)
    return torch.kron(F1, F1)


def circulant_projection(G, n):
    """Orthogonal projection of (…, d, d) real matrices on symmetric circulants, as half-plane eigenvalues."""
    F = unitary_dft(n)
    diag = torch.diagonal(F @ G.to(torch.complex128) @ F.conj().T, dim1=-2, dim2=-1).real
    return diag.reshape(*G.shape[:-2], n, n)[..., : n // 2 + 1]


# --------------------------------------------------------------------------------------------- data

def test_texture_loading_and_adsn_normalisation():
    u = load_texture("brick", 32)
    assert u.shape == (32, 32) and abs(float(u.mean())) < 1e-12
    lam = adsn_spectrum(u, floor=1e-9)
    assert lam.shape == (32, 17)
    w = multiplicity(32)
    # Parseval: Σ_ω λ = ‖u‖², i.e. mean λ = pixel variance; λ(0) = 0 is floored
    assert float((w * lam).sum()) == pytest.approx(float((u ** 2).sum()), rel=1e-6)
    assert float(lam[0, 0]) == pytest.approx(1e-9 * float((u ** 2).mean()), rel=1e-9)
    assert load_texture("camera", 16, fit="resize").shape == (16, 16)


@pytest.mark.parametrize("n", [6, 7])
def test_half_plane_multiplicities(n):
    assert float(multiplicity(n).sum()) == n * n
    assert int((kappa(n) == 2).sum()) == (4 if n % 2 == 0 else 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(image="brick", size=1), "data.size"), (dict(image="brick", size=16, fit="zoom"), "data.fit"),
    (dict(image="wood", size=16), "data.image"), (dict(image="brick", size=1024), "data.size"),
])
def test_bad_texture_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_texture(**kwargs)


def test_bad_floor():
    with pytest.raises(ValueError, match="data.floor"):
        adsn_spectrum(load_texture("brick", 8), floor=0.0)


def test_adsn_periodogram_mean_and_pairing_variance():
    """|x̂(ω)|²/d of ADSN samples has mean λ and variance κλ² (κ = 2 at the 4 real frequencies)."""
    n, M = 8, 20000
    lam = torus_spectrum(n)
    x = adsn_sample(lam, (M,), torch.Generator().manual_seed(0))
    p = torch.fft.rfft2(x).abs() ** 2 / n ** 2 / lam           # ~ Exp(1) or χ²₁
    mean, var = p.mean(0), p.var(0)
    k = kappa(n)
    assert ((mean - 1).abs() / (k / M).sqrt()).max() < 4.5      # s.e. of the mean: √(κ/M)
    # s.e. of the sample variance: √((μ₄ − κ²)/M), μ₄ = E(p−1)⁴ = 9 (exponential) or 60 (χ²₁)
    se = ((torch.where(k == 2, 60.0, 9.0).to(F64) - k ** 2) / M).sqrt()
    assert ((var - k).abs() / se).max() < 4.5


# ---------------------------------------------------- equivalence with the full-matrix linear model

@pytest.mark.parametrize("L,b", [(1, 1), (1, 3), (3, 2)])
def test_fourier_sgd_step_is_the_projected_full_matrix_step(L, b):
    """Same generator: one DSM-SGD step of the full-matrix trainer from a circulant A, projected on
    symmetric circulants, equals one step of the FFT trainer (same indices, noise and levels)."""
    n, R, N, tau = 4, 3, 5, 0.07
    d = n * n
    lam = torus_spectrum(n)
    x = adsn_sample(lam, (R, N), torch.Generator().manual_seed(1))
    alphas = torch.tensor([1.0, 0.8, 0.5], dtype=F64)[:L]
    stds = torch.tensor([0.5, 0.6, 0.9], dtype=F64)[:L]
    a0 = 0.3 + dsm_optimum_fourier(lam, alphas, stds).expand(R, L, n, n // 2 + 1).clone()
    A = circulant_matrices(a0)
    A_old = A.clone()
    train_linear_dsm(A, x.reshape(R, N, d), alphas=alphas, stds=stds, tau=tau, batch_size=b, steps=1,
                     generator=torch.Generator().manual_seed(7))
    a = a0.clone()
    train_fourier_dsm(a, torch.fft.rfft2(x), alphas=alphas, stds=stds, tau=tau, batch_size=b, steps=1,
                      generator=torch.Generator().manual_seed(7))
    assert (a - a0).abs().max() > 1e-3                                  # it moved
    torch.testing.assert_close(a - a0, circulant_projection(A - A_old, n), rtol=1e-10, atol=1e-12)


def test_circulant_matrices_are_symmetric_and_diagonalised_by_the_dft():
    n = 6
    a = torus_spectrum(n)
    A = circulant_matrices(a)
    torch.testing.assert_close(A, A.T)
    torch.testing.assert_close(circulant_projection(A, n), a)
    x = torch.randn(3, n, n, dtype=F64)
    model = FourierLinearScore(size=n)
    model.set_coefficients(a.to(torch.float32))
    torch.testing.assert_close(model(x.float().unsqueeze(0), 0)[0].double(),
                               -(x.reshape(3, -1) @ A.T).reshape(3, n, n), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", [Langevin(gamma=0.1, steps=30, particles=5, init_var=0.7),
                                     DDPM(T=100, steps=6, particles=5, final="tweedie", t_min=3),
                                     DDIM(T=100, steps=6, particles=5, eta=0.5)], ids=type)
def test_fourier_sampler_equals_full_matrix_sampler(sampler):
    """Same noise → the same samples as the full-matrix sampler with A = circ(a), and the same exact law."""
    n, R = 4, 2
    d = n * n
    alphas, stds = sampler.noise_levels(0.5)
    L = alphas.numel()
    lam = torus_spectrum(n)
    a = dsm_optimum_fourier(lam, alphas, stds).expand(R, L, n, n // 2 + 1).clone()
    a = a * (1 + 0.1 * torch.rand(R, L, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(3)))
    model = FourierLinearScore(size=n, replicates=R, levels=L).double()
    model.set_coefficients(a)
    kw = dict(dtype=F64) if isinstance(sampler, Langevin) else {}
    full = sampler.sample(model, R, d, generator=torch.Generator().manual_seed(5), **kw)
    g = torch.Generator().manual_seed(5)
    x0 = math.sqrt(sampler.init_var) * torch.randn(R, sampler.particles, n, n, generator=g, dtype=F64)
    four = fourier_sample(sampler, a, x0, g)
    torch.testing.assert_close(four.reshape(R, -1, d), full, rtol=1e-9, atol=1e-10)
    C = sampler.covariance(model.matrices())
    torch.testing.assert_close(circulant_projection(C, n), sampler_variance(sampler, a), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(C, circulant_matrices(sampler_variance(sampler, a)), rtol=1e-9, atol=1e-12)


def test_fourier_bures_is_the_full_bures():
    from gsm.theory.bures import bures_wasserstein2
    n = 4
    lam, c = torus_spectrum(n), torus_spectrum(n, scale=1.0, floor=0.3)
    assert float(fourier_bures_wasserstein2(lam, c)) == pytest.approx(
        float(bures_wasserstein2(circulant_matrices(lam), circulant_matrices(c))), rel=1e-9)


# ------------------------------------------------------------------------------ kernels vs theory

def test_fourier_kernels_are_kappa_halves_of_the_full_diagonal_kernels():
    """K^F(ω) = (κ(ω)/2) K(λ_ω, λ_ω) for the 1/N, τ and 1/M kernels (Langevin: the ULA closed form
    `langevin_prediction`; DDPM: the full-matrix `sampler_prediction`), and the bias term is the same
    commuting formula. The DDPM kernels share the chain's jets with the Fourier ones, so they are also
    checked against `_ddpm_fourier_kernels` (autograd on a per-frequency recursion written here)."""
    from gsm.theory.langevin import langevin_prediction
    n = 4
    lam = torus_spectrum(n)
    k, flat = kappa(n), lam.flatten()
    s = Langevin(gamma=0.08, steps=40, init_var=0.5)
    mine = fourier_prediction(lam, s, n=100, sigma=0.6, tau=1e-3, batch_size=2, particles=50)
    ref = langevin_prediction(flat, n=100, sigma=0.6, tau=1e-3, gamma=0.08, batch_size=2, steps=40, init_var=0.5,
                              particles=50)
    for km in ("kernel_n", "kernel_tau", "kernel_m"):
        torch.testing.assert_close(mine[km], (k / 2) * torch.diagonal(ref[km]).view_as(lam), rtol=1e-7, atol=1e-14)
    dd = DDPM(T=200, steps=20)
    mine = fourier_prediction(lam, dd, n=100, tau=1e-3, batch_size=2, particles=50)
    ref = sampler_prediction(dd, flat, n=100, tau=1e-3, batch_size=2, particles=50)
    for km in ("kernel_n", "kernel_tau", "kernel_m"):
        torch.testing.assert_close(mine[km], (k / 2) * torch.diagonal(ref[km]).view_as(lam), rtol=1e-7, atol=1e-14)
    K_N, K_tau = _ddpm_fourier_kernels(dd, flat, k.flatten(), batch_size=2)
    torch.testing.assert_close(mine["kernel_n"], K_N.view_as(lam), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(mine["kernel_tau"], K_tau.view_as(lam), rtol=1e-9, atol=1e-15)
    w = multiplicity(n).flatten()
    assert mine["bias"] == pytest.approx(float((w * (flat.sqrt() - mine["output_variance"].flatten().sqrt()) ** 2).sum()))


def _ddpm_fourier_kernels(dd, lam, k, batch_size):
    """Independent reference for the DDPM Fourier kernels per frequency (F,): h from the scalar recursion
    v ← (c_k − g_k a_k)² v + q_k (k = K..0, the sampler's definition, `dd.reverse`), a_k = 1/(ᾱ_kλ + 1 − ᾱ_k),
    f = (√λ − √h)², and by autograd  K_N = κλ² · ½ ∂²f/∂λ̂²  and  K_τ = Σ_l V_l · ½ ∂²f/∂a_l², V_l = κᾱλ/(4b m_l)
    (the stationary circulant SGD variance per unit τ, note §13)."""
    from torch.func import grad, jvp
    rev = dd.reverse
    ab, c, g, q = rev.alpha_bar, rev.c, rev.g, rev.q

    def h_of(a):                                                         # a (K+1, F) on the grid
        v = dd.init_var * torch.ones_like(a[0])
        for j in range(rev.K, -1, -1):
            v = (c[j] - g[j] * a[j]) ** 2 * v + q[j]
        return v

    f_total = lambda h: ((lam.sqrt() - h.sqrt()) ** 2).sum()
    a_of = lambda x: 1 / (ab.view(-1, 1) * x + 1 - ab.view(-1, 1))
    ones = torch.ones_like(lam)
    K_N = k * lam ** 2 * 0.5 * jvp(grad(lambda x: f_total(h_of(a_of(x)))), (lam,), (ones,))[1]
    a = a_of(lam)
    K_tau = torch.zeros_like(lam)
    for j in rev.levels.tolist():
        e = torch.zeros_like(a)
        e[j] = 1.0
        d2 = jvp(grad(lambda x: f_total(h_of(x))), (a,), (e,))[1][j]        # ∂²f/∂a_j² per frequency
        m = ab[j] * lam + 1 - ab[j]
        K_tau = K_tau + k * ab[j] * lam / (4 * batch_size * m) * 0.5 * d2
    return K_N, K_tau


# ----------------------------------------------------------------------------- Monte-Carlo checks

def _linear_term(lam, h, dh, delta):
    """Σ_ω w ρ h' δ: the first-order part of B² (zero mean), used as a control variate."""
    w = multiplicity(lam.shape[-2])
    rho = 1 - (lam / h).sqrt()
    return (w * rho * dh * delta).flatten(-2).sum(-1)


def test_monte_carlo_one_over_n_term():
    """E[W2²] − bias with the empirical optimum a = 1/(P̂ + σ²) (exact law, Langevin) against Σ K_N^F / N.
    The linear term Σρh'(P̂ − λ) has mean exactly 0 and is subtracted as a control variate. Tolerance:
    4 s.e. The full-matrix diagonal (κ = 2 everywhere) would be rejected."""
    n, R, N, sigma = 8, 4000, 100, 0.7
    s = Langevin(gamma=0.1, steps=200, init_var=1.0)
    lam = torus_spectrum(n)
    alphas, stds = s.noise_levels(sigma)
    xh = torch.fft.rfft2(adsn_sample(lam, (R, N), torch.Generator().manual_seed(11)))
    P = (xh.abs() ** 2).mean(1) / n ** 2                             # (R, n, h) periodogram
    c = sampler_variance(s, dsm_optimum_fourier(P, alphas, stds))
    pred = fourier_prediction(lam, s, n=N, sigma=sigma)
    h = pred["output_variance"]
    eps = 1e-6                                                       # h'(λ) by central differences
    dh = (sampler_variance(s, dsm_optimum_fourier(lam + eps, alphas, stds))
          - sampler_variance(s, dsm_optimum_fourier(lam - eps, alphas, stds))) / (2 * eps)
    excess = fourier_bures_wasserstein2(lam, c) - pred["bias"] - _linear_term(lam, h, dh, P - lam)
    mean, se = float(excess.mean()), float(excess.std() / math.sqrt(R))
    w, k = multiplicity(n), kappa(n)
    full_diag = float((w * (2 / k) * pred["kernel_n"]).sum()) / N    # κ = 2 everywhere: no pairing
    assert abs(mean - pred["generalization"]) < 4 * se, (mean, pred["generalization"], se)
    assert abs(full_diag - pred["generalization"]) > 10 * se


def test_monte_carlo_sgd_variance_per_frequency():
    """Stationary Var(a_k(ω) − a*) of the FFT trainer against the exact per-frequency formula
    κU/(2bs²(2 − τs²m(1+κ/b))): complex frequencies fluctuate half as much as real ones
    (relative to λ/m). Online-like data (N = 2000 per replicate); chi-square check over frequencies."""
    n, R, N, sigma, tau, b = 4, 400, 2000, 1.0, 0.02, 2
    lam = torus_spectrum(n)
    alphas, stds = torch.ones(1, dtype=F64), torch.full((1,), sigma, dtype=F64)
    g = torch.Generator().manual_seed(3)
    xh = torch.fft.rfft2(adsn_sample(lam, (R, N), g))
    a_N = dsm_optimum_fourier((xh.abs() ** 2).mean(1) / n ** 2, alphas, stds)      # SGD mean given the data
    a = a_N.clone()
    steps = int(6 / (tau * sigma ** 2 * float(lam.min() + sigma ** 2)))
    train_fourier_dsm(a, xh, alphas=alphas, stds=stds, tau=tau, batch_size=b, steps=steps, generator=g)
    var = ((a - a_N) ** 2).mean(0)[0]                                 # (n, h), per-frequency MC variance
    pred = tau * DSM().circulant_variance(lam, alphas, stds, kappa(n), batch_size=b, exact_tau=tau)[0]
    z = (var - pred) / (pred * math.sqrt(2 / R))                      # Δ ≈ Gaussian: Var(s²) = 2σ⁴/R
    assert z.abs().max() < 4.5, z
    assert abs(float(z.mean())) < 4.5 / math.sqrt(z.numel())


@pytest.mark.slow
def test_monte_carlo_tau_term():
    """E[B²(a_SGD)] − E[B²(a*_N)] (paired on the same data, SGD started at a*_N so E[Δ | data] = 0) against
    τ Σ K_τ^F. The linear term is subtracted as a control variate. Tolerance: 4 s.e. plus the first-order
    error (≈ 5 ε_τ relative, note §5.5)."""
    n, R, N, sigma, tau = 8, 400, 256, 1.0, 5e-4
    s = Langevin(gamma=0.1, steps=300, init_var=1.0)
    lam = torus_spectrum(n)
    alphas, stds = s.noise_levels(sigma)
    g = torch.Generator().manual_seed(21)
    xh = torch.fft.rfft2(adsn_sample(lam, (R, N), g))
    a_N = dsm_optimum_fourier((xh.abs() ** 2).mean(1) / n ** 2, alphas, stds)
    a = a_N.clone()
    steps = int(6 / (tau * sigma ** 2 * float(lam.min() + sigma ** 2)))
    train_fourier_dsm(a, xh, alphas=alphas, stds=stds, tau=tau, steps=steps, generator=g)
    pred = fourier_prediction(lam, s, sigma=sigma, tau=tau)
    a_opt = dsm_optimum_fourier(lam, alphas, stds)
    eps = 1e-6
    dc = (sampler_variance(s, a_opt + eps) - sampler_variance(s, a_opt - eps)) / (2 * eps)
    h = pred["output_variance"]
    excess = (fourier_bures_wasserstein2(lam, sampler_variance(s, a))
              - fourier_bures_wasserstein2(lam, sampler_variance(s, a_N))
              - _linear_term(lam, h, dc, (a - a_N)[:, 0]))
    mean, se = float(excess.mean()), float(excess.std() / math.sqrt(R))
    tol = 4 * se + 5 * pred["eps_tau"] * pred["optimization"]
    assert abs(mean - pred["optimization"]) < tol, (mean, pred["optimization"], se)
    assert abs(2 * mean - pred["optimization"]) > tol                 # no pairing (κ = 2) would fail


# --------------------------------------------------------------------------------------- pipeline

TINY = ["data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "replicates=3", "train.steps=400",
        "sampler.particles=6", "progress=false"]


@pytest.mark.parametrize("overrides", [
    [], ["model=fourier_oracle"], ["model.oracle=true"], ["train.solver=exact"], ["model.init=zeros"], ["data.image=grass", "data.fit=resize"],
    ["sampler=ddpm", "sampler.steps=5"], ["sampler=ddim", "sampler.steps=5"], ["dtype=float64"],
], ids=lambda o: ",".join(o) or "default")
def test_texture_pipeline_runs(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg(*TINY, "sampler.steps=30", *overrides) if not any("sampler=" in o for o in overrides) \
        else compose_cfg(*TINY, *overrides)
    res = run_cfg(cfg, tmp_path)
    assert res["status"] == "ok", res["warnings"]
    for k in ("w2_exact", "w2_empirical"):
        assert math.isfinite(res[k]["mean"]) and res[k]["mean"] >= 0
    assert math.isfinite(res["w2_predicted"])
    if {"model=fourier_oracle", "model.oracle=true"} & set(overrides):   # the exact score: W2 is the bias
        assert res["w2_exact"]["mean"] == pytest.approx(res["w2_predicted"], rel=1e-9)
    assert json.loads((tmp_path / "results.json").read_text())["w2_exact"] == res["w2_exact"]


def test_oracle_flag_is_deprecated_for_the_oracle_class(compose_cfg, tmp_path):
    """model.oracle=true (the old flag) warns and gives the same run as model=fourier_oracle."""
    with pytest.warns(FutureWarning, match="model=fourier_oracle"):
        old = run_cfg(compose_cfg(*TINY, "sampler.steps=30", "model.oracle=true"), tmp_path / "old")
    new = run_cfg(compose_cfg(*TINY, "sampler.steps=30", "model=fourier_oracle"), tmp_path / "new")
    assert old["w2_exact"] == new["w2_exact"] and old["w2_predicted"] == new["w2_predicted"]


def run_cfg(cfg, path):
    from gsm.pipeline.run import run
    return run(cfg, path)


def test_texture_tensorboard_images_and_spectrum(compose_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_cfg(compose_cfg(*TINY, "sampler.steps=30", "train.solver=sgd", "figures=true"), tmp_path)     # sgd: the loss curve too
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for t in ("texture/source", "texture/adsn_sample", "texture/learned_samples", "spectrum/radial_target_vs_learned"):
        assert t in tags["images"], tags["images"]
    assert "train/dsm_loss" in tags["scalars"]


def test_texture_needs_the_fourier_model(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="model=fourier_linear"):
        run_cfg(compose_cfg(*TINY[:1], *TINY[2:]), tmp_path / "a")
    from hydra.errors import InstantiationException         # hydra wraps the model's ValueError
    with pytest.raises((ValueError, InstantiationException), match="model=fourier_linear needs data=texture"):
        run_cfg(compose_cfg("model=fourier_linear", "replicates=2", "progress=false"), tmp_path / "b")


# The README's texture command (64×64 brick, DSM-SGD, Langevin, exact evaluation, images) runs as typed, through
# the console script, in tests/integration/test_readme_commands.py (status ok, every replicate stable, the
# images in TensorBoard); the 256×256 command by `python tools/readme_commands.py --all` (LONG).
