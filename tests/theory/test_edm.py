"""EDM (Karras et al. 2022, Algorithms 1 and 2): levels, exact law against an independent per-eigenvalue
recursion and against particles, the laws derived from its step map (gsm.theory.chain, gsm.theory.law: 1/N by
finite differences, τ by autograd), the pipeline."""
import math

import pytest
import torch

from gsm.samplers.edm import EDM, karras_sigmas
from autograd_reference import second_order_contraction
from gsm.theory.bures import second_moment
from gsm.theory.chain import exact_law, output_variance
from gsm.theory.law import ChainLaw, push_divided_differences, push_tau_cells
from gsm.training.objectives import DSM

F64 = torch.float64
LAM4 = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=F64)


def algorithm_variance(lam, K, sigma_min=0.002, sigma_max=80.0, rho=7.0, churn=0.0, s_tmin=0.0,
                       s_tmax=math.inf, s_noise=1.0):
    """Karras et al.'s Algorithms 1/2 written out per eigenvalue with the exact denoiser D(x; σ) = λx/(λ+σ²):
    the output variance from x_0 ~ N(0, t_0²)."""
    t = [(sigma_max ** (1 / rho) + i / (K - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
         for i in range(K)] + [0.0]
    out = []
    for l in lam.tolist():
        D = lambda x, s: l * x / (l + s * s)            # x: the coefficient multiplying the start noise
        v = t[0] ** 2
        for i in range(K):
            g = min(churn / K, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.0
            th = t[i] * (1 + g)
            v = v + s_noise ** 2 * (th ** 2 - t[i] ** 2)     # x̂ = x + √(t̂² − t²) ε: variances add
            x = 1.0                                       # the step is linear: track the multiplier
            d = (x - D(x, th)) / th
            xn = x + (t[i + 1] - th) * d
            if t[i + 1] != 0:
                d2 = (xn - D(xn, t[i + 1])) / t[i + 1]
                xn = x + (t[i + 1] - th) * (0.5 * d + 0.5 * d2)
            v = xn ** 2 * v
        out.append(v)
    return torch.tensor(out, dtype=F64)


def oracle(s, lam):
    al, st = s.noise_levels()
    return (1 / (al.view(-1, 1) ** 2 * lam.view(1, -1) + st.view(-1, 1) ** 2)).diag_embed().unsqueeze(0)


def random_basis(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def test_karras_sigmas():
    s = karras_sigmas(18)
    assert s.shape == (19,) and s[-1] == 0 and abs(float(s[0]) - 80) < 1e-12 and abs(float(s[-2]) - 0.002) < 1e-15
    assert (s.diff() < 0).all()
    e = EDM(steps=18)
    assert e.nfe == 35 and e.noise_levels()[1].numel() == 18 and e.J == 0
    churned = EDM(steps=10, churn=5, s_tmin=0.05, s_tmax=10)
    assert churned.J == int(((churned.sigmas[:-1] >= 0.05) & (churned.sigmas[:-1] <= 10)).sum()) > 0


@pytest.mark.parametrize("kw", [dict(K=5), dict(K=18), dict(K=40, sigma_min=0.01, sigma_max=20, rho=5),
                                dict(K=12, churn=8, s_tmin=0.05, s_tmax=5, s_noise=1.007),
                                dict(K=12, churn=3, s_tmin=0.05, s_tmax=5),     # γ = churn/K < √2 − 1: off the cap
                                dict(K=9, vp=True)])
def test_oracle_law_equals_algorithm(kw):
    K, vp = kw.pop("K"), kw.pop("vp", False)
    s = EDM(steps=K, score_levels="vp" if vp else "ve", **kw)
    C = s.covariance(oracle(s, LAM4))[0]
    ref = algorithm_variance(LAM4, K, **kw)
    assert (C - torch.diag(ref)).abs().max() < 1e-10, (C.diagonal(), ref)


def test_law_matches_particles_any_scores():
    """Non-symmetric, non-commuting A at every level, with churn: the exact law against M particles,
    each entry within 4 s.e. (s.e. of (1/M)Σx_ix_j for Gaussian x: √((C_iiC_jj + C_ij²)/M))."""
    d, M = 3, 200_000
    gen = torch.Generator().manual_seed(0)
    s = EDM(steps=6, churn=4, s_tmin=0.1, s_tmax=20, particles=M)
    Sigma = (lambda U: (U * torch.tensor([0.2, 1.0, 3.0], dtype=F64)) @ U.T)(random_basis(d, 1))
    st = s.noise_levels()[1]
    A = torch.linalg.inv(Sigma + st.view(-1, 1, 1) ** 2 * torch.eye(d, dtype=F64))
    A = (A * (1 + 0.3 * torch.randn(A.shape, generator=gen, dtype=F64))).unsqueeze(0)
    C = s.covariance(A)[0]
    x = s.sigmas[0].item() * torch.randn(1, M, d, generator=gen, dtype=F64)
    Chat = second_moment(s.chain.push(A, x, generator=gen))[0]
    se = ((torch.diagonal(C).view(-1, 1) * torch.diagonal(C).view(1, -1) + C ** 2) / M).sqrt()
    assert ((Chat - C).abs() / se).max() < 4
    assert (exact_law(s.chain.push, A, s.J, s.init_var) - C).abs().max() < 1e-10 * C.abs().max()   # push-based law


@pytest.mark.parametrize("law", ["chain", "push"])
def test_divided_differences_match_finite_differences(law):
    """h^[1], h^[2] of the plug-in law (ChainLaw's jets, and Opitz' formula through the push) against finite
    differences of h(λ) = the output variance with the scores 1/(α²λ + s²), written here."""
    s = EDM(steps=8, churn=3, s_tmin=0.1, s_tmax=10)
    al, st = s.noise_levels()
    lam = torch.tensor([0.3, 0.7, 1.9], dtype=F64)
    hf = lambda x: output_variance(s.chain.push, 1 / (al.view(-1, 1) ** 2 * x.view(1, -1) + st.view(-1, 1) ** 2),
                                   s.J, s.init_var)
    if law == "chain":
        H1, H2 = ChainLaw(s.chain, s.init_var).divided_differences(lam, DSM(), al, st)
    else:
        H1, H2 = push_divided_differences(s.chain.push, lam, lambda X: DSM().score_function(X, al, st), s.J,
                                          s.init_var)
    i, j = 0, 2
    x, y = lam[i:i + 1], lam[j:j + 1]
    d1 = (hf(x) - hf(y)) / (x - y)
    assert torch.allclose(H1[i, j], d1[0], rtol=1e-9)
    eps = 1e-5
    deriv = (hf(x + eps) - hf(x - eps)) / (2 * eps)
    assert torch.allclose(H1[i, i], deriv[0], rtol=1e-7)
    assert torch.allclose(H2[i, j], ((d1 - deriv) / (y - x))[0], rtol=1e-6)


def stationary_sgd_variance(lam, sigma, batch_size):
    """Var(Δ_ri)/τ of stationary DSM-SGD at one VE level (α = 1, s = σ), note §2.2: λ_r/(2b m_r), m = λ + σ²;
    symmetric (Δ_ij = Δ_ji, §5.3): S_ij = (U_i m_j + U_j m_i)/(4bσ²(m_i + m_j)) (i ≠ j), S_ii = U_i/(2bσ²), U = σ²λ/m."""
    m = lam + sigma ** 2
    full = (lam / (2 * batch_size * m)).view(-1, 1).expand(-1, lam.numel())
    U = sigma ** 2 * lam / m
    sym = (U.view(-1, 1) * m.view(1, -1) + U.view(1, -1) * m.view(-1, 1)) / (
        4 * batch_size * sigma ** 2 * (m.view(-1, 1) + m.view(1, -1)))
    sym.diagonal().copy_(U / (2 * batch_size * sigma ** 2))
    return full, sym

@pytest.mark.parametrize("law", ["chain", "push"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_tau_kernel_matches_autograd(symmetric, law):
    """The τ cells (ChainLaw's series, and the push lifted to t ↦ nilpotent) = `second_order_contraction`
    (forward-mode autograd through EDM.covariance), per level the stationary SGD variances written above."""
    s = EDM(steps=5, churn=2, s_tmin=0.1, s_tmax=20)
    al, st = s.noise_levels()
    lam = torch.tensor([0.4, 1.0, 2.5], dtype=F64)
    score = 1 / (lam.view(1, -1) + st.view(-1, 1) ** 2)
    h = output_variance(s.chain.push, score, s.J, s.init_var)
    V = torch.stack([stationary_sgd_variance(lam, float(sg), 2)[int(symmetric)] for sg in st])
    if law == "chain":
        K = ChainLaw(s.chain, s.init_var).tau_cells(lam, score, h, V, symmetric=symmetric)
    else:
        K = push_tau_cells(s.chain.push, lam, score, s.J, s.init_var, h, V, symmetric=symmetric)
    ref = second_order_contraction(lambda A: s.covariance(A.unsqueeze(0))[0], score, lam, V,
                                   V if symmetric else None)
    assert torch.allclose(K.sum(), ref.sum(), rtol=1e-9), (K.sum(), ref.sum())


@pytest.mark.parametrize("law", ["chain", "push"])
def test_tau_cells_with_cross_covariance_match_autograd(law):
    """Correlated Δ_ri, Δ_ir (the finite-budget transient has them): the τ cells = second_order_contraction."""
    s = EDM(steps=4, churn=2, s_tmin=0.1, s_tmax=20, score_levels="vp")
    al, st = s.noise_levels()
    lam = torch.tensor([0.4, 1.0, 2.5], dtype=F64)
    score = 1.1 / (al.view(-1, 1) ** 2 * lam.view(1, -1) + st.view(-1, 1) ** 2)    # any diagonal base
    h = output_variance(s.chain.push, score, s.J, s.init_var)
    gen = torch.Generator().manual_seed(3)
    var = torch.rand(al.numel(), 3, 3, generator=gen, dtype=F64)
    cross = 0.5 * torch.rand(al.numel(), 3, 3, generator=gen, dtype=F64)
    cross = cross + cross.transpose(-1, -2)
    if law == "chain":
        K = ChainLaw(s.chain, s.init_var).tau_cells(lam, score, h, var, cross)
    else:
        K = push_tau_cells(s.chain.push, lam, score, s.J, s.init_var, h, var, cross)
    ref = second_order_contraction(lambda A: s.covariance(A.unsqueeze(0))[0], score, lam, var, cross)
    assert torch.allclose(K.sum(), ref.sum(), rtol=1e-9), (K.sum(), ref.sum())


def test_chain_law_equals_push_law():
    """EDM.covariance (LinearChain.covariance, noise and Heun steps) = the push-based law (gsm.theory.chain.exact_law)."""
    s = EDM(steps=7, churn=3, s_tmin=0.1, s_tmax=20)
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(2, s.levels.numel(), 3, 3, generator=gen, dtype=F64)
    C = s.covariance(A)
    assert (exact_law(s.chain.push, A, s.J, s.init_var) - C).abs().max() < 1e-10 * C.abs().max()


@pytest.mark.parametrize("bad, match", [
    (dict(steps=1), "sampler.steps must be an integer >= 2"),
    (dict(sigma_min=0.0), "sampler.sigma_min must be in"),
    (dict(sigma_min=90.0), "sampler.sigma_min must be in"),
    (dict(rho=0.0), "sampler.rho must be > 0"),
    (dict(churn=-1.0), "sampler.churn must be >= 0"),
    (dict(s_tmin=2.0, s_tmax=1.0), "sampler.s_tmax must be >= s_tmin"),
    (dict(particles=1), "sampler.particles must be"),
    (dict(score_levels="x"), "sampler.score_levels must be one of ve | vp"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        EDM(**bad)


@pytest.mark.slow
def test_pipeline_oracle_equals_algorithm(tmp_path, compose_cfg, one_thread):
    from gsm.pipeline.run import run
    cfg = compose_cfg("sampler=edm", "sampler.steps=12", "model=oracle", "data=custom",
                      "data.spectrum.eigenvalues=[0.25,0.5,1.0,2.0]", "data.dim=4", "replicates=2",
                      "sampler.particles=500", "progress=false")
    res = run(cfg, tmp_path)
    ref = float(((LAM4.sqrt() - algorithm_variance(LAM4, 12).sqrt()) ** 2).sum())
    assert res["status"] == "ok" and abs(res["w2_exact"]["mean"] - ref) < 1e-10
    assert abs(res["w2_predicted"] - ref) < 1e-10


@pytest.mark.slow
def test_plugin_score_within_3se(tmp_path, compose_cfg, one_thread):
    """train.solver=exact (plug-in (Σ̂ + σ_l²I)⁻¹ at each σ_l): w2_exact within 3 s.e. of bias + 1/N term."""
    from gsm.pipeline.run import run
    cfg = compose_cfg("sampler=edm", "sampler.steps=10", "train.solver=exact", "data.dim=6", "data.n=120",
                      "replicates=400", "sampler.particles=200", "progress=false")
    res = run(cfg, tmp_path)
    w, p = res["w2_exact"], res["w2_predicted"]
    assert abs(w["mean"] - p) < 3 * w["stderr"], (w, p, res["prediction_terms"])
