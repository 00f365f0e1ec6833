"""The reference DSM-SGD trainer for linear scores: the algorithm of `gsm.training.dsm.train_linear_dsm`,
written as the plain loop, one SGD step at a time.

`train_linear_dsm` takes the same steps under three fast paths (blocked triangular-solve steps on the CPU,
CUDA-graph replay, random draws on a second core); this loop is what they are tested against
(tests/unit/test_reference_trainer.py) and the baseline of `python -m gsm.bench`.
"""
from __future__ import annotations

import torch

from gsm.training.dsm import SAMPLING, EpochStream


@torch.no_grad()
def reference_linear_dsm(A: torch.Tensor, x: torch.Tensor, *, alphas: torch.Tensor, stds: torch.Tensor,
                         tau: float, batch_size: int = 1, steps: int, sampling: str = "with_replacement",
                         symmetric: bool = False, generator: torch.Generator | None = None,
                         chunk: int = 256, residual=None) -> torch.Tensor:
    """DSM-SGD on the linear score s_l(y) = −A_l y, in place on A (R, L, d, d), data x (R, N, d).

    Convention (L) of the theory note §1: a sample at noise level l is y = α_l x + s_l z, z ~ N(0, I),
    with loss ℓ = ½‖s_l s_l(y) + z‖² = ½‖s_l A_l y − z‖². Its gradient in A_l is
        ∇ℓ = (s_l² A_l y − s_l z) yᵀ = u yᵀ,
    and one step with batch b (indices drawn with replacement, or shuffled passes: `sampling`), each sample
    at a uniform level l, is
        A_l ← A_l − (τ/b) Σ_{batch samples at level l} u yᵀ      (symmetric: ½(u yᵀ + y uᵀ)).
    The random numbers come in the order of `train_linear_dsm`, `chunk` steps at a time: the indices
    (R, c·b), the noise (c, R, b, d), then, with L > 1 levels, the levels (c, R, b). So the same generator
    gives the same steps, up to float rounding. There is no divergence record: a replicate whose A became
    non-finite stays so. Returns A.

    residual = (c, p, q) (L,) each, another objective's loss ½‖c_l A y + p_l x + q_l z‖² (CFM: (1, 1, −1)), whose
    gradient is u yᵀ with u = c_l(c_l A y + p_l x + q_l z); None: DSM's (s_l, 0, −1), the u above.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"train.sampling must be one of {' | '.join(SAMPLING)}, got {sampling}")
    R, L, d, _ = A.shape
    N, b, dev, dt = x.shape[1], int(batch_size), A.device, A.dtype
    x, a, s = x.to(dt), alphas.to(dev, dt), stds.to(dev, dt)
    coef = None if residual is None else [torch.as_tensor(v).to(dev, dt) for v in residual]     # (c, p, q)
    replicate = torch.arange(R, device=dev).view(R, 1).expand(R, b)
    epochs = EpochStream(R, N, generator, dev) if sampling == "epochs" else None
    for start in range(0, steps, chunk):
        c = min(chunk, steps - start)
        idx = epochs.take(c * b) if epochs else torch.randint(N, (R, c * b), generator=generator, device=dev)
        idx = idx.view(R, c, b)
        z = torch.randn(c, R, b, d, generator=generator, device=dev, dtype=dt)
        level = (torch.randint(L, (c, R, b), generator=generator, device=dev) if L > 1 else
                 torch.zeros(c, R, b, dtype=torch.long, device=dev))
        for k in range(c):
            l = level[k]                                              # (R, b)
            al, sl = a[l].unsqueeze(-1), s[l].unsqueeze(-1)           # (R, b, 1)
            xb = x[replicate, idx[:, k]]
            y = al * xb + sl * z[k]                                   # (R, b, d)
            Ay = (A[replicate, l] @ y.unsqueeze(-1)).squeeze(-1)
            if residual is None:
                u = sl ** 2 * Ay - sl * z[k]
            else:
                cl, pl, ql = (v[l].unsqueeze(-1) for v in coef)
                u = cl * (cl * Ay + pl * xb + ql * z[k])
            grad = u.unsqueeze(-1) * y.unsqueeze(-2)                  # u yᵀ per sample, (R, b, d, d)
            if symmetric:
                grad = 0.5 * (grad + grad.transpose(-1, -2))
            A.index_put_((replicate, l), -(tau / b) * grad, accumulate=True)
    return A
