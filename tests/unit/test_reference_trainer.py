"""The reference DSM-SGD loop (gsm.training.reference) and the fast trainer (gsm.training.dsm) take the
same steps: both draw their random numbers in the same order from the same generator, so after S steps the
matrices agree to float64 rounding, on every fast path (blocked CPU steps, fused one-level steps, a level
per sample, symmetrised steps, epochs, background draws, CUDA graphs). The reference's own arithmetic is
checked against autograd on the DSM loss, replaying its draws."""
import pytest
import torch
from conftest import cuda

from gsm.training.dsm import train_linear_dsm
from gsm.training.flow_matching import CFM
from gsm.training.reference import reference_linear_dsm

F64 = torch.float64


def problem(R=3, N=11, d=4, L=1, seed=0, device="cpu"):
    """R data sets (R, N, d) with unequal scales, levels (α_l, s_l) and a non-zero start A₀ (R, L, d, d)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(R, N, d, generator=g, dtype=F64) * torch.linspace(0.5, 1.5, d, dtype=F64)).to(device)
    alphas = torch.linspace(1.0, 0.6, L, dtype=F64)
    stds = torch.linspace(0.5, 0.9, L, dtype=F64)
    A0 = (0.1 * torch.randn(R, L, d, d, generator=g, dtype=F64)).to(device)
    return x, alphas, stds, A0


CASES = {   # name: (problem keywords, trainer keywords); tau·s²·|y|² small, so no step diverges
    "blocked, b=1": ({}, dict(batch_size=1)),
    "blocked, b=2, chunks of 5": ({}, dict(batch_size=2, chunk=5)),
    "fused one level, b=3": ({}, dict(batch_size=3, blocked=False, chunk=7)),
    "symmetric": ({}, dict(batch_size=2, symmetric=True)),
    "three levels, b=2": (dict(L=3), dict(batch_size=2, chunk=6)),
    "epochs": (dict(N=5), dict(batch_size=2, sampling="epochs", chunk=4)),
    "epochs, three levels": (dict(N=5, L=3), dict(batch_size=1, sampling="epochs", chunk=3)),
    "background draws": ({}, dict(batch_size=1, background=True, chunk=4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_trainer_takes_the_reference_steps(name):
    shape, kw = CASES[name]
    x, alphas, stds, A0 = problem(**shape)
    steps, tau = 23, 0.05
    fast, ref = A0.clone(), A0.clone()
    train_linear_dsm(fast, x, alphas=alphas, stds=stds, tau=tau, steps=steps,
                     generator=torch.Generator().manual_seed(1), **kw)
    kw = {k: v for k, v in kw.items() if k not in ("blocked", "background", "cuda_graph")}
    reference_linear_dsm(ref, x, alphas=alphas, stds=stds, tau=tau, steps=steps,
                         generator=torch.Generator().manual_seed(1), **kw)
    assert (ref - A0).abs().max() > 0.01            # the steps moved A
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


@cuda
@pytest.mark.parametrize("objective", ["dsm", "cfm"])
def test_cuda_graph_takes_the_reference_steps(objective):
    """On a GPU, one level: chunks after the first replay a CUDA graph (CFM: its residual at t = 0.4)."""
    x, alphas, stds, A0 = problem(R=4, d=8, device="cuda")
    residual = None
    if objective == "cfm":
        alphas = torch.tensor([0.4], dtype=F64)
        stds, residual = 1 - alphas, CFM.sgd_residual(alphas, 1 - alphas)
    fast, ref = A0.clone(), A0.clone()
    for A, train in ((fast, train_linear_dsm), (ref, reference_linear_dsm)):
        train(A, x, alphas=alphas, stds=stds, tau=0.05, steps=40, chunk=8, residual=residual,
              generator=torch.Generator("cuda").manual_seed(1))
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_reference_step_is_the_gradient_of_the_dsm_loss():
    """Replay the reference's draws (indices, noise, levels: one chunk) and step by autograd on
    ℓ = Σ_batch ½‖s_l·(−A_l y) + z‖², y = α_l x + s_l z: A ← A − (τ/b) ∇ℓ."""
    R, N, d, L, b, steps, tau = 2, 9, 3, 2, 2, 12, 0.05
    x, alphas, stds, A0 = problem(R=R, N=N, d=d, L=L)
    ref = reference_linear_dsm(A0.clone(), x, alphas=alphas, stds=stds, tau=tau, batch_size=b, steps=steps,
                               generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(N, (R, steps * b), generator=g).view(R, steps, b)
    z = torch.randn(steps, R, b, d, generator=g, dtype=F64)
    level = torch.randint(L, (steps, R, b), generator=g)
    A = A0.clone()
    for k in range(steps):
        A.requires_grad_(True)
        loss = 0.0
        for r in range(R):
            for j in range(b):
                l = int(level[k, r, j])
                y = alphas[l] * x[r, idx[r, k, j]] + stds[l] * z[k, r, j]
                loss = loss + 0.5 * ((stds[l] * -(A[r, l] @ y) + z[k, r, j]) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, A)
        A = (A - tau / b * grad).detach()
    torch.testing.assert_close(ref, A, rtol=1e-12, atol=1e-13)


CFM_CASES = {   # name: (path times t_l, trainer keywords); the CFM residual e = B y + x − z, y = t x + (1 − t)z
    "one level at t = 0 (y = z), blocked, b=1": ([0.0], dict(batch_size=1)),
    "one level, blocked, b=2": ([0.4], dict(batch_size=2, chunk=5)),
    "one level, fused, b=3": ([0.4], dict(batch_size=3, blocked=False, chunk=7)),
    "one level, symmetric": ([0.7], dict(batch_size=2, symmetric=True)),
    "levels t = 0, ½, 1": ([0.0, 0.5, 1.0], dict(batch_size=2, chunk=6)),
    "background draws": ([0.3], dict(batch_size=1, background=True, chunk=4)),
}


@pytest.mark.parametrize("name", sorted(CFM_CASES))
def test_fast_trainer_takes_the_reference_steps_for_cfm(name):
    """The fast paths serve CFM through its residual (c, p, q) = (1, 1, −1): the same steps as the loop."""
    times, kw = CFM_CASES[name]
    t = torch.tensor(times, dtype=F64)
    x, _, _, A0 = problem(L=len(times))
    residual = CFM.sgd_residual(t, 1 - t)
    fast, ref = A0.clone(), A0.clone()
    train_linear_dsm(fast, x, alphas=t, stds=1 - t, tau=0.05, steps=23, residual=residual,
                     generator=torch.Generator().manual_seed(1), **kw)
    kw = {k: v for k, v in kw.items() if k not in ("blocked", "background", "cuda_graph")}
    reference_linear_dsm(ref, x, alphas=t, stds=1 - t, tau=0.05, steps=23, residual=residual,
                         generator=torch.Generator().manual_seed(1), **kw)
    assert (ref - A0).abs().max() > 0.01
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_reference_step_is_the_gradient_of_the_cfm_loss():
    """Replay the reference's draws and step by autograd on the CFM loss ℓ = Σ_batch ½‖v(x_t) − (x₁ − x₀)‖²,
    v = −B_l x_t, x_t = t_l x₁ + (1 − t_l)x₀ (x₁ the data point, x₀ the noise): B ← B − (τ/b) ∇ℓ."""
    R, N, d, b, steps, tau = 2, 9, 3, 2, 12, 0.05
    t = torch.tensor([0.0, 0.6, 1.0], dtype=F64)
    x, _, _, A0 = problem(R=R, N=N, d=d, L=3)
    ref = reference_linear_dsm(A0.clone(), x, alphas=t, stds=1 - t, tau=tau, batch_size=b, steps=steps,
                               residual=CFM.sgd_residual(t, 1 - t), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(N, (R, steps * b), generator=g).view(R, steps, b)
    x0 = torch.randn(steps, R, b, d, generator=g, dtype=F64)
    level = torch.randint(3, (steps, R, b), generator=g)
    B = A0.clone()
    for k in range(steps):
        B.requires_grad_(True)
        loss = 0.0
        for r in range(R):
            for j in range(b):
                l, x1 = int(level[k, r, j]), x[r, idx[r, k, j]]
                xt = t[l] * x1 + (1 - t[l]) * x0[k, r, j]
                loss = loss + 0.5 * ((-(B[r, l] @ xt) - (x1 - x0[k, r, j])) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, B)
        B = (B - tau / b * grad).detach()
    torch.testing.assert_close(ref, B, rtol=1e-12, atol=1e-13)


def test_reference_refuses_an_unknown_sampling():
    x, alphas, stds, A0 = problem()
    with pytest.raises(ValueError, match="train.sampling must be one of"):
        reference_linear_dsm(A0, x, alphas=alphas, stds=stds, tau=0.1, steps=1, sampling="shuffled")
