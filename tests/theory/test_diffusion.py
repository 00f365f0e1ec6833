"""DDPM / DDIM: schedules, respacing, diffusers agreement, exact laws (§6–§7 of the theory note),
the 1/N and τ predictions."""
import math

import pytest
import torch

from gsm.samplers.ddpm import DDIM, DDPM
from gsm.samplers.reverse_chain import (FINALS, alphas_cumprod, ddim_chain, ddpm_chain, exact_score_matrices,
                                        linear_beta_schedule, reverse_sample, timestep_grid)
from gsm.theory.bures import bures_wasserstein2, second_moment
from gsm.theory.law import ChainLaw
from gsm.training.objectives import DSM
from autograd_reference import second_order_contraction

F64 = torch.float64
LAM32 = 1 / torch.arange(1, 33, dtype=F64)
LAM4 = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=F64)


def agrees_to_printed(value, printed):
    """|value − printed| ≤ one unit of the printed value's last (3rd significant) digit."""
    mant, exp = printed.split("e")
    return abs(value - float(printed)) <= 10 ** (int(exp) - 2) * (1 + 1e-9)


def w2(v, lam):
    return float(((lam.sqrt() - v.sqrt()) ** 2).sum())


def levels_of(chain):
    """(α, s) of the levels the reverse chain reads (grid indices `chain.levels`)."""
    ab = chain.alpha_bar[chain.levels]
    return ab.sqrt(), (1 - ab).sqrt()


def exact_scores(lam, chain):
    """The exact score eigenvalues at the chain's levels, a_l = 1/(ᾱλ + 1 − ᾱ): (L, d)."""
    return DSM().target(lam, *levels_of(chain))


def variance(a, chain, init=1.0):
    """The chain's output variance per eigenvalue for level-indexed diagonal scores a (L, d)."""
    return chain.linear_chain().variance(a, init)


def covariance(A, chain, init=1.0):
    """The chain's exact output covariance for level-indexed score matrices A (..., L, d, d)."""
    return chain.linear_chain().covariance(A, init)


def reference_variance(lam, chain, init=1.0):
    """Independent of gsm's chain code: v ← (c_k − g_k a_k)² v + q_k for k = K..0 (the sampler's definition),
    a_k = 1/(ᾱ_kλ + 1 − ᾱ_k) the exact score at grid index k, from v = init."""
    ab = chain.alpha_bar
    v = init * torch.ones_like(lam)
    for k in range(chain.K, -1, -1):
        a = 1 / (ab[k] * lam + 1 - ab[k])
        v = (chain.c[k] - chain.g[k] * a) ** 2 * v + chain.q[k]
    return v


def reference_covariance(A, chain, init=1.0):
    """Independent of gsm's chain code: C ← F_k C F_kᵀ + q_k I, F_k = c_k I − g_k A_k, for k = K..0, with
    grid-indexed score matrices A (K+1, d, d), or a list of them (torch ops only: autograd through it)."""
    eye = torch.eye(A[-1].shape[-1], dtype=F64)
    C = init * eye
    for k in range(chain.K, -1, -1):
        F = chain.c[k] * eye - chain.g[k] * A[k]
        C = F @ C @ F.T + chain.q[k] * eye
    return C


def exact_w2(lam, chain):
    return w2(variance(exact_scores(lam, chain), chain), lam)


def grid(T=1000, steps=None, t_min=0, scaled=False):
    return alphas_cumprod(linear_beta_schedule(T, scaled=scaled))[timestep_grid(T, steps, t_min)]


def random_basis(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------ schedules, grid, bad input

def test_schedule_and_grid():
    b = linear_beta_schedule(1000)
    assert b[0] == 1e-4 and abs(float(b[-1]) - 0.02) < 1e-15
    assert torch.allclose(linear_beta_schedule(100, scaled=True), torch.linspace(1e-3, 0.2, 100, dtype=F64))
    ab = alphas_cumprod(b)
    assert ab.shape == (1001,) and ab[0] == 1 and abs(float(ab[-1]) - 4.04e-5) < 1e-7   # ᾱ_T ≈ 4e-5 (§6)
    assert timestep_grid(10).tolist() == list(range(11))                 # every timestep
    assert timestep_grid(1000, 10).tolist() == list(range(0, 1001, 100))  # evenly spaced, both ends
    g = timestep_grid(1000, 7, t_min=5)
    assert g[0] == 5 and g[-1] == 1000 and (g.diff() > 0).all() and g.diff().max() - g.diff().min() <= 1
    assert timestep_grid(1000, None, t_min=50).tolist() == list(range(50, 1001))


@pytest.mark.parametrize("make, match", [
    (lambda: linear_beta_schedule(20, scaled=True), "T must be > 20"),
    (lambda: timestep_grid(100, 101), "steps must be an integer in"),
    (lambda: timestep_grid(100, None, t_min=100), "t_min must be an integer in"),
    (lambda: DDPM(variance="small"), "variance must be one of"),
    (lambda: DDPM(final="clip"), "final must be one of"),
    (lambda: DDIM(eta=1.5), "eta must be in"),
    (lambda: DDPM(particles=1), "particles must be"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------- exact-score regression values

# The tables below are the theory note's (/work/shared/theory/gaussian-errors.md, §6 and §7: its own
# computation, printed to 3 significant digits). They are also recomputed here by `ho_variance`, a plain-float
# transcription of the note's scalar recursions (no gsm code), in test_the_tables_follow_from_the_scalar_recursion.
# theory note §6, d = 32, λ_i = 1/i: T -> (DDPM β, DDPM β̃, DDIM) scaled, DDPM β unscaled
TABLE_T = {25: ("6.43e-02", "1.97e-01", "6.92e-02", "1.91e-01"), 50: ("1.21e-02", "7.17e-02", "1.97e-02", "2.58e-02"),
           100: ("2.70e-03", "2.46e-02", "5.54e-03", "1.94e-03"), 250: ("4.07e-04", "5.38e-03", "1.01e-03", "1.35e-04"),
           1000: ("2.48e-05", "4.57e-04", "7.23e-05", "2.48e-05")}
# T = 1000, β: t_min -> (raw, rescaled, Tweedie). (Raw at t_min = 50 is 0.0810464: the note prints 8.11e-02.)
TABLE_TMIN = {0: ("2.48e-05",) * 3, 2: ("7.15e-05", "7.43e-05", "1.34e-05"), 5: ("1.86e-04", "2.00e-04", "5.09e-06"),
              10: ("7.03e-04", "7.76e-04", "2.31e-04"), 50: ("8.11e-02", "9.57e-02", "5.48e-02")}



def ho_variance(lam: float, T: int, noise: str, scaled: bool = False, t_min: int = 0) -> float:
    """The output variance of one eigenvalue λ under the exact score, from the note's §6 written out in
    plain floats: β_t = linspace(1e-4, 0.02, T) (both ends × 1000/T when scaled), ᾱ_t = Π(1 − β), s_t =
    ᾱ_tλ + 1 − ᾱ_t, x_T ~ N(0, 1); DDPM: v ← F_t²v + η_t², F_t = √α_t s_{t−1}/s_t, η_t² = β_t or
    β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t), noise-free at t = 1; DDIM: v ← k_t²v, k_t = [√(ᾱ_{t−1}ᾱ_t)λ +
    √((1 − ᾱ_{t−1})(1 − ᾱ_t))]/s_t. Steps t = T … t_min + 1 (the raw x_{t_min})."""
    k = 1000 / T if scaled else 1.0
    beta = [k * (1e-4 + (0.02 - 1e-4) * i / (T - 1)) for i in range(T)]
    ab = [1.0]
    for b in beta:
        ab.append(ab[-1] * (1 - b))
    s = [a * lam + 1 - a for a in ab]
    v = 1.0
    for t in range(T, t_min, -1):
        b = beta[t - 1]
        if noise == "ddim":
            v *= ((math.sqrt(ab[t - 1] * ab[t]) * lam + math.sqrt((1 - ab[t - 1]) * (1 - ab[t]))) / s[t]) ** 2
            continue
        eta2 = b if noise == "beta" else b * (1 - ab[t - 1]) / (1 - ab[t])
        v = (1 - b) * (s[t - 1] / s[t]) ** 2 * v + (0.0 if t == 1 else eta2)
    return v


def ho_w2(lams, *args, **kw) -> float:
    """W2² = Σ(√λ − √v)² (commuting Gaussians)."""
    return sum((math.sqrt(ho_variance(float(lam), *args, **kw)) - math.sqrt(float(lam))) ** 2 for lam in lams)


@pytest.mark.parametrize("T", sorted(TABLE_T))
def test_the_tables_follow_from_the_scalar_recursion(T):
    """The note's printed values against `ho_variance` (independent of gsm and of the note's code): §6's
    T table (each column), §6's raw t_min column and §7's DDPM values."""
    cols = (ho_w2(LAM32, T, "beta", True), ho_w2(LAM32, T, "beta_tilde", True), ho_w2(LAM32, T, "ddim", True),
            ho_w2(LAM32, T, "beta"))
    assert all(agrees_to_printed(v, p) for v, p in zip(cols, TABLE_T[T])), cols
    if T == 1000:
        for t_min, printed in TABLE_TMIN.items():
            assert agrees_to_printed(ho_w2(LAM32, 1000, "beta", t_min=t_min), printed[0]), t_min
        v = [ho_variance(float(lam), 1000, "beta") for lam in LAM4]
        assert v == pytest.approx([0.250752075008, 0.500658938482, 0.9999, 1.997381193091], rel=1e-11)
        assert abs(ho_w2(LAM4, 1000, "beta") - 1.64206e-6) <= 0.5e-11
        assert abs(ho_w2(LAM4, 1000, "beta_tilde") - 7.8484e-5) <= 0.5e-9
        assert abs(ho_w2(LAM4, 1000, "ddim") - 1.38742e-5) <= 0.5e-10

@pytest.mark.parametrize("T", sorted(TABLE_T))
def test_exact_score_table_T(T):
    ab = grid(T, scaled=True)
    got = (exact_w2(LAM32, ddpm_chain(ab, "beta")), exact_w2(LAM32, ddpm_chain(ab, "beta_tilde")),
           exact_w2(LAM32, ddim_chain(ab)), exact_w2(LAM32, ddpm_chain(grid(T), "beta")))
    assert all(agrees_to_printed(v, p) for v, p in zip(got, TABLE_T[T])), got   # 3 significant digits


@pytest.mark.parametrize("t_min", sorted(TABLE_TMIN))
def test_exact_score_table_t_min(t_min):
    ab = grid(1000, t_min=t_min)
    got = tuple(exact_w2(LAM32, ddpm_chain(ab, "beta", final)) for final in FINALS)
    assert all(agrees_to_printed(v, p) for v, p in zip(got, TABLE_TMIN[t_min])), got


def test_regression_values_section7():
    """The note's §7 DDPM/DDIM values (recomputed without gsm in test_the_tables_follow_from_the_scalar_recursion)."""
    ab = grid(1000)
    ch = ddpm_chain(ab, "beta")
    v = variance(exact_scores(LAM4, ch), ch)
    ref = torch.tensor([0.250752075008, 0.500658938482, 0.9999, 1.997381193091], dtype=F64)
    assert torch.allclose(v, ref, rtol=1e-6, atol=0)
    # W2² printed to 6 and 5 significant digits: agree to half a unit of the last one
    assert abs(w2(v, LAM4) - 1.64206e-6) <= 0.5e-11
    assert abs(exact_w2(LAM4, ddpm_chain(ab, "beta_tilde")) - 7.8484e-5) <= 0.5e-9
    assert abs(exact_w2(LAM4, ddim_chain(ab)) - 1.38742e-5) <= 0.5e-10


def test_exact_score_identities():
    """F_k = √α_k s_{k−1}/s_k (the DDPM mean is the true reverse kernel's) and the init error 8e-10."""
    ab = grid(1000)
    a = DSM().target(LAM32, ab.sqrt(), (1 - ab).sqrt())               # grid-indexed (K+1, d)
    ch = ddpm_chain(ab, "beta")
    s = ab.view(-1, 1) * LAM32 + 1 - ab.view(-1, 1)
    F = ch.c[1:, None] - ch.g[1:, None] * a[1:]
    assert torch.allclose(F, (ab[1:] / ab[:-1]).sqrt().view(-1, 1) * s[:-1] / s[1:], rtol=1e-12)
    # the initialisation term of the telescoped formula: v(N(0, I)) − v(N(0, S_T)) = ᾱ_T (s_0/s_T)² (1 − s_T)
    a = a[ch.levels]
    dv = variance(a, ch, 1.0) - variance(a, ch, s[-1])
    assert torch.allclose(dv, ab[-1] * (s[0] / s[-1]) ** 2 * (1 - s[-1]), rtol=1e-6)
    # DDIM with η = 1 is DDPM with β̃; DDIM to t = 0 ends with Tweedie at t = 1 (noise-free)
    c1, c2 = ddim_chain(ab, eta=1.0), ddpm_chain(ab, "beta_tilde")
    for f in ("c", "g", "q"):
        assert torch.allclose(getattr(c1, f), getattr(c2, f), rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------- against diffusers

def _float64_scheduler(sched, betas):
    """diffusers keeps float32 betas; give it our float64 ones so the comparison is at 1e-12."""
    sched.betas = betas.clone()
    sched.alphas = 1 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    sched.one = torch.tensor(1.0, dtype=F64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    return sched


@pytest.mark.parametrize("steps", [None, 10])
def test_ddpm_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    T, d = 1000, 3
    betas = linear_beta_schedule(T)
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type="fixed_small",
                                    clip_sample=False, prediction_type="epsilon", timestep_spacing="trailing")
    assert torch.allclose(sched.betas.to(F64), betas, rtol=1e-6)           # same schedule at float32
    sched = _float64_scheduler(sched, betas)
    sched.set_timesteps(num_inference_steps=steps or T)
    tg = timestep_grid(T, steps)
    assert (sched.timesteps + 1).tolist() == tg.flip(0)[:-1].tolist()       # 0-indexed t ↔ our t + 1
    chain = ddpm_chain(alphas_cumprod(betas)[tg], "beta_tilde")
    gen = torch.Generator().manual_seed(0)
    A = torch.eye(d, dtype=F64) + 0.3 * torch.randn(chain.K + 1, d, d, generator=gen, dtype=F64)  # any A_k
    x = torch.randn(5, d, generator=gen, dtype=F64)
    for k in range(chain.K, 0, -1):
        s_k = math.sqrt(1 - float(chain.alpha_bar[k]))
        eps = s_k * x @ A[k].T                                              # ε̂ = −s_k s_k(x) = s_k A_k x
        seed = 1000 + k
        ref = sched.step(eps, int(tg[k]) - 1, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        one = ddpm_chain(chain.alpha_bar[k - 1:k + 1], "beta_tilde")        # our step k alone (reads level 0 = A_k)
        ours = one.linear_chain().sample(A[k:k + 1].unsqueeze(0), x.unsqueeze(0),
                                         torch.Generator().manual_seed(seed))[0]
        # on the step to t = 0 of a respaced grid diffusers adds noise of std √1e-20 (β̃ clamped ≥ 1e-20)
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12 if int(tg[k - 1]) > 0 else 1e-9), k
        x = ref


def test_ddim_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    T, K, d, eta = 1000, 20, 3, 0.6
    betas = linear_beta_schedule(T)
    sched = _float64_scheduler(diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=False,
                                                       set_alpha_to_one=True, timestep_spacing="trailing"), betas)
    sched.set_timesteps(K)
    tg = timestep_grid(T, K)
    chain = ddim_chain(alphas_cumprod(betas)[tg], eta)
    gen = torch.Generator().manual_seed(1)
    A = torch.eye(d, dtype=F64) + 0.3 * torch.randn(K + 1, d, d, generator=gen, dtype=F64)
    x = torch.randn(5, d, generator=gen, dtype=F64)
    for k in range(K, 0, -1):
        eps = math.sqrt(1 - float(chain.alpha_bar[k])) * x @ A[k].T
        z = torch.randn(x.shape, generator=gen, dtype=F64)
        ref = sched.step(eps, int(tg[k]) - 1, x, eta=eta, variance_noise=z).prev_sample
        ours = chain.c[k] * x - chain.g[k] * x @ A[k].T + chain.q[k].sqrt() * z
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12), k
        x = ref


# ------------------------------------------------------------------------------------ exact laws

def test_exact_covariance_rotation_covariant():
    """The full-matrix law with the exact scores of Σ = U diag(λ) Uᵀ is U diag(per-eigenvalue law) Uᵀ,
    and the per-eigenvalue law is the recursion written here (`reference_variance`)."""
    U = random_basis(6, 0)
    lam = LAM32[:6]
    ab = grid(1000, 50, t_min=3)
    for chain in (ddpm_chain(ab, "beta", "tweedie"), ddim_chain(ab, 0.3, "rescale")):
        C = covariance(exact_score_matrices((U * lam) @ U.T, ab)[chain.levels], chain)
        v = variance(exact_scores(lam, chain), chain)
        assert torch.allclose(v, reference_variance(lam, chain), rtol=1e-12)
        assert torch.allclose(C, (U * v) @ U.T, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_general_covariance_matches_particles(sampler):
    """Non-symmetric, non-commuting A_k: the exact law against M particles, each entry within 4 s.e.
    (s.e. of (1/M)Σ x_i x_j for Gaussian x: √((C_ii C_jj + C_ij²)/M))."""
    d, M = 3, 200_000
    gen = torch.Generator().manual_seed(2)
    ab = grid(1000, 25, t_min=4)
    chain = ddpm_chain(ab, "beta", "tweedie") if sampler == "ddpm" else ddim_chain(ab, 0.5, "tweedie")
    Sigma = (lambda U: (U * torch.tensor([0.2, 1.0, 3.0], dtype=F64)) @ U.T)(random_basis(d, 3))
    A = exact_score_matrices(Sigma, ab) + 0.3 * torch.randn(chain.K + 1, d, d, generator=gen, dtype=F64)
    C = covariance(A[chain.levels], chain)
    x = reverse_sample(lambda y, k: -y @ A[k].T, torch.randn(M, d, generator=gen, dtype=F64), chain, gen)
    Chat = second_moment(x)
    se = ((torch.diagonal(C).view(-1, 1) * torch.diagonal(C).view(1, -1) + C ** 2) / M).sqrt()
    assert ((Chat - C).abs() / se).max() < 4


def test_trajectory_and_pipeline_sampler():
    """The sampler object: levels, grid indexing, the trajectory C_0..C_{K+1} (C_j the law at t_{K−j}: the
    start N(0, I), then each step, the last the output after the final map)."""
    s = DDPM(T=200, steps=20, t_min=5, final="tweedie")
    alphas, stds = s.noise_levels(0.5)
    assert alphas.numel() == 21 and torch.allclose(alphas ** 2 + stds ** 2, torch.ones(21, dtype=F64))
    assert DDPM(T=200, steps=20).noise_levels(None)[0].numel() == 20   # t_min = 0: no level at t = 0
    lam = LAM32[:4]
    A = exact_score_matrices(torch.diag(lam), s.reverse.alpha_bar)[s.reverse.levels].unsqueeze(0)
    C = s.covariance(A)
    assert torch.allclose(torch.diagonal(C[0]), reference_variance(lam, s.reverse), rtol=1e-12)
    traj = s.chain.covariance(A, s.init_var, trajectory=True)
    assert traj.shape == (1, 22, 4, 4) and torch.allclose(traj[0, 0], torch.eye(4, dtype=F64))
    assert torch.allclose(traj[0, -1], C[0], rtol=1e-12)
    ab0 = float(s.reverse.alpha_bar[0])                                  # Tweedie at t_min: F₀ = (I − (1−ᾱ₀)A₀)/√ᾱ₀
    F0 = (torch.eye(4, dtype=F64) - (1 - ab0) * A[0, 0]) / math.sqrt(ab0)
    assert torch.allclose(traj[0, -1], F0 @ traj[0, -2] @ F0.T, rtol=1e-12)
    assert not s.unstable(A).any()


def test_log_extra_trajectory():
    class Writer:
        def __init__(self):
            self.rows = []

        def add_scalar(self, tag, value, step, **kw):
            self.rows.append((tag, value, step))
    s = DDPM(T=100, steps=10, scaled=True)
    Sigma = torch.diag(LAM4)
    A = exact_score_matrices(Sigma, s.reverse.alpha_bar)[s.reverse.levels].unsqueeze(0).repeat(2, 1, 1, 1)
    w = Writer()
    s.log_extra(w, A, Sigma, 0)
    learned = {st: v for t, v, st in w.rows if t.endswith("learned")}
    oracle = {st: v for t, v, st in w.rows if t.endswith("oracle")}
    assert set(learned) == set(range(0, 101, 10)) and all(math.isfinite(v) for v in learned.values())
    assert all(abs(learned[t] - oracle[t]) < 1e-12 for t in learned)      # learned = oracle here
    assert oracle[100] < 1e-3                                              # N(0, I) vs S_T: init error


# -------------------------------------------------------------------------------------- theory

def test_divided_differences_match_finite_differences():
    """The chain's jets (`ChainLaw.divided_differences`) against finite differences of the per-eigenvalue
    recursion written here (`reference_variance`)."""
    ab = grid(1000, 30, t_min=2)
    chain = ddpm_chain(ab, "beta", "tweedie")
    lam = torch.tensor([0.3, 0.7, 1.9], dtype=F64)
    law = ChainLaw(chain.linear_chain(), 1.0)
    h = law.variance(exact_scores(lam, chain))
    H1, H2 = law.divided_differences(lam, DSM(), *levels_of(chain))
    hf = lambda x: reference_variance(x, chain)
    assert torch.allclose(h, hf(lam), rtol=1e-12)
    i, j = 0, 2
    x, y = lam[i:i + 1], lam[j:j + 1]
    d1 = (hf(x) - hf(y)) / (x - y)
    assert torch.allclose(H1[i, j], d1[0], rtol=1e-9)
    eps = 1e-5
    deriv = (hf(x + eps) - hf(x - eps)) / (2 * eps)                      # h^[1](x, x) = h'(x)
    assert torch.allclose(H1[i, i], deriv[0], rtol=1e-7)
    d2 = (d1 - deriv) / (y - x)                                          # h^[2](x, y, x)
    assert torch.allclose(H2[i, j], d2[0], rtol=1e-6)


@pytest.mark.parametrize("case", ["stationary", "symmetric", "budget"])
def test_tau_kernel_matches_autograd_hessian(case):
    """½ Σ Cov(Δ_p, Δ_q) ∂²B²(Σ, C(A + Δ))/∂Δ_p∂Δ_q by autograd (every level, every entry; C the full-matrix
    recursion written here, `reference_covariance`) = the chain's τ cells (`ChainLaw.tau_cells`, jets), and
    so does the forward-mode 2×2-block contraction of tests/theory/autograd_reference.py. Stationary DSM-SGD
    (entries uncorrelated), symmetric scores (Δ_ij = Δ_ji), and a finite budget (S = 40 steps from A₀ = 0:
    the mean score A = E[A_S] ≠ A*, and Cov(Δ_ij, Δ_ji) ≠ 0)."""
    from gsm.training.objectives import SGDBudget
    lam = torch.tensor([0.4, 1.0, 2.5], dtype=F64)
    d = 3
    ab = grid(1000, 4, t_min=30)
    chain = ddpm_chain(ab, "beta", "tweedie")
    alphas, stds = levels_of(chain)
    symmetric, budget = case == "symmetric", SGDBudget(40, 0.5, 2) if case == "budget" else None
    tau = 0.5 if budget is not None else 1.0                              # stationary: per unit τ
    var, cross = DSM().fluctuations(lam, alphas, stds, tau, 2, budget, symmetric)      # (L, d, d)
    a = DSM().mean(lam, alphas, stds, budget)                               # (L, d): A* or E[A_S]
    if budget is not None:
        assert (a - DSM().target(lam, alphas, stds)).abs().max() > 0.1 and cross.abs().max() > 0
    Abase = torch.diag_embed(DSM().target(lam, ab.sqrt(), (1 - ab).sqrt()))   # grid (K+1, d, d)
    Abase[chain.levels] = torch.diag_embed(a)
    Sigma = torch.diag(lam)
    iu = torch.triu_indices(d, d)

    def to_delta(theta):                                                  # θ of one level → Δ (d, d)
        if not symmetric:
            return theta.view(d, d)
        D = torch.zeros(d, d, dtype=F64).index_put((iu[0], iu[1]), theta)
        return D + D.triu(1).T

    total = 0.0
    for l, k in enumerate(chain.levels.tolist()):
        def f(theta):
            A = torch.cat([Abase[:k], (Abase[k] + to_delta(theta)).unsqueeze(0), Abase[k + 1:]])
            return bures_wasserstein2(Sigma, reference_covariance(A, chain))
        n = iu.shape[1] if symmetric else d * d
        H = torch.autograd.functional.hessian(f, torch.zeros(n, dtype=F64))
        if symmetric:
            cov = torch.diag(var[l][iu[0], iu[1]])
        else:                                  # Cov(Δ_ri, Δ_ri) = var, Cov(Δ_ri, Δ_ir) = cross (r ≠ i)
            cov = torch.diag(var[l].reshape(-1))
            if budget is not None:
                r, i = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
                off = (r != i).reshape(-1)
                p = torch.arange(d * d)[off]
                cov[p, (i * d + r).reshape(-1)[off]] = cross[l].reshape(-1)[off]
        total += 0.5 * float((cov * H).sum())
    law = ChainLaw(chain.linear_chain(), 1.0)
    h = law.variance(a)
    pred = float(law.tau_cells(lam, a, h, var, cross if budget is not None else None, symmetric).sum())
    assert abs(total - pred) < 1e-6 * abs(pred)
    # and the forward-mode contraction helper (2×2 blocks, cov_fn written here) agrees
    level_of = {int(k): l for l, k in enumerate(chain.levels)}           # grid index → level (unread: g_k = 0)
    cov_fn = lambda A: reference_covariance([A[level_of[k]] if k in level_of else torch.zeros_like(A[0])
                                             for k in range(chain.K + 1)], chain)
    cells = second_order_contraction(cov_fn, a, lam, var, var if symmetric else (cross if budget is not None else None))
    assert abs(float(cells.sum()) - pred) < 1e-9 * abs(pred)


@pytest.mark.slow
def test_sgd_variance_with_levels():
    """The stationary Var(Δ_l) under DSM-SGD with L levels sampled uniformly is the single-level one,
    τ U_r/(2b s²) (first order in τ): Monte Carlo over replicates, started at the optimum, online-like
    data (N ≫ d). Tolerance: 4 s.e. of the measured mean variance plus the O(τ) bias (§2.3, ~5%)."""
    from gsm.training.dsm import empirical_dsm_minimizer, train_linear_dsm
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    R, N, d, b, tau = 400, 20000, 2, 4, 0.02
    lam = torch.tensor([0.5, 2.0], dtype=F64)
    ab = torch.tensor([0.3, 0.7], dtype=F64)               # two levels, s² = 0.7, 0.3
    alphas, stds = ab.sqrt(), (1 - ab).sqrt()
    x = torch.randn(R, N, d, generator=gen, dtype=F64) * lam.sqrt()
    Astar = empirical_dsm_minimizer(x, alphas, stds)
    A = Astar.clone()
    rate = float((stds ** 2 * (ab * lam.min() + stds ** 2)).min())
    steps = int(8 * 2 / (tau * rate))                      # 8 relaxation times (L = 2 levels)
    train_linear_dsm(A, x, alphas=alphas, stds=stds, tau=tau, batch_size=b, steps=steps, generator=gen)
    D = (A - Astar)                                        # eigenbasis = identity
    meas = D.pow(2).mean(0)                                # (L, d, d)
    se = D.pow(2).std(0) / math.sqrt(R)
    pred = DSM().fluctuations(lam, alphas, stds, tau, b)[0]              # (L, d, d), τ included
    z = (meas - pred).abs() / (4 * se + 0.06 * pred)
    assert z.max() < 1, (meas, pred)


# ------------------------------------------------------------------------- through the pipeline

TINY = ["replicates=3", "data.dim=3", "data.n=30", "train.steps=300", "sampler.particles=50", "progress=false",
        "sampler.T=100", "sampler.scaled=true"]


@pytest.mark.parametrize("overrides", [
    ["sampler=ddpm"], ["sampler=ddpm", "sampler.variance=beta_tilde", "sampler.steps=10", "sampler.t_min=3",
                       "sampler.final=tweedie"],
    ["sampler=ddim", "sampler.steps=10"], ["sampler=ddim", "sampler.steps=10", "sampler.eta=0.5", "model=oracle"],
    ["sampler=ddpm", "train.solver=exact", "sampler.final=rescale", "sampler.t_min=2"],
], ids=lambda o: ",".join(o))
def test_pipeline_runs_diffusion(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg(*TINY, *overrides)
    res = run_pipeline(cfg, tmp_path)
    assert res["status"] == "ok" and math.isfinite(res["w2_exact"]["mean"]) and math.isfinite(res["w2_predicted"])
    if "model=oracle" in overrides:        # the exact score: w2_exact is the exact bias, for every replicate
        assert res["w2_exact"]["mean"] == pytest.approx(res["w2_predicted"], rel=1e-9)


def run_pipeline(cfg, path):
    from gsm.pipeline.run import run
    return run(cfg, path)


def test_pipeline_logs_the_reverse_trajectory(compose_cfg, tmp_path):
    tbparse = pytest.importorskip("tbparse")
    run_pipeline(compose_cfg(*TINY, "sampler=ddpm", "sampler.steps=10"), tmp_path)
    reader = tbparse.SummaryReader(str(tmp_path / "tb"))
    df = reader.scalars      # plain scalar summaries (what TensorBoard's default loader serves)
    for name in ("learned", "oracle"):
        rows = df[df.tag == f"diffusion/w2_trajectory_{name}"]
        assert sorted(rows.step) == list(range(0, 101, 10))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_plugin_score_matches_bias_plus_n_term(compose_cfg, tmp_path, sampler):
    """train.solver=exact (A_k = (ᾱ_kΣ̂ + (1−ᾱ_k)I)⁻¹), N = 10d: mean w2_exact over R replicates = exact
    bias + (1/N)ΣK_N within 3 s.e. (first-order error ~1% of the excess at N = 10d, note §5.5)."""
    cfg = compose_cfg(f"sampler={sampler}", "sampler.steps=50", "sampler.particles=10", "train.solver=exact",
                      "data=powerlaw", "data.dim=8", "data.n=80", "replicates=300", "progress=false")
    res = run_pipeline(cfg, tmp_path)
    terms = res["prediction_terms"]
    assert terms["optimization"] == 0 and terms["generalization"] > 0
    assert abs(res["w2_exact"]["mean"] - res["w2_predicted"]) < 3 * res["w2_exact"]["stderr"]


@pytest.mark.slow
def test_sgd_trained_ddpm_matches_prediction(compose_cfg, tmp_path):
    """DSM-SGD at every level, then DDPM: mean w2_exact = bias + 1/N + τ terms within 3 s.e.

    Regime: d = 4, λ = (0.8, 0.9, 1.1, 1.25), T = 1000 respaced to K = 5 steps, η² = β with noise on
    the last step, b = 32, τ = 0.1 (ε_τ = 0.0015), 1500 SGD steps (≈ 9 relaxation times of the slowest
    level), N = 20000 (the τ term is 95% of the excess), R = 256. Near-isotropic so that the bias (and
    with it the first-order fluctuation of W2², ∝ ρ) is small: the s.e. is ~7% of the excess."""
    cfg = compose_cfg("sampler=ddpm", "sampler.steps=5", "sampler.noise_last=true", "sampler.particles=10",
                      "data=custom", "data.spectrum.eigenvalues=[0.8,0.9,1.1,1.25]", "data.n=20000",
                      "replicates=256", "train.tau=0.1", "train.batch_size=32", "train.steps=1500", "progress=false")
    res = run_pipeline(cfg, tmp_path)
    terms = res["prediction_terms"]
    assert res["relaxation_times"] >= 5 and res["unstable_replicates"] == 0
    assert terms["optimization"] > 10 * terms["generalization"]
    assert abs(res["w2_exact"]["mean"] - res["w2_predicted"]) < 3 * res["w2_exact"]["stderr"]


@pytest.mark.slow
def test_full_ddpm_d64_oracle_matches_prediction(compose_cfg, tmp_path, one_thread):
    """T = 1000 steps, oracle score, d = 64, exact law + 2000 particles: the exact law's W2² is the
    prediction (no SGD, no finite N). Its time is in `python -m gsm.bench --only pipelines`."""
    res = run_pipeline(compose_cfg("sampler=ddpm", "sampler.steps=null", "model=oracle", "data=powerlaw",
                                   "data.dim=64", "replicates=1", "progress=false"), tmp_path)
    assert res["w2_exact"]["mean"] == pytest.approx(res["w2_predicted"], rel=1e-8)
