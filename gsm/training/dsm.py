"""Denoising score matching (DSM) and its SGD, batched over R independent replicates.

Convention (L) of the theory note §1: a sample at noise level l is y = α_l x + s_l z, z ~ N(0, I),
and its loss is ℓ = ½‖s_l·s(y) + z‖² (ε-prediction, ε̂ = −s_l·s(y)). For Langevin there is one
level, α = 1, s = σ. For the linear score s(y) = −A y the stochastic gradient of one sample is

    g = (s² A y − s z) yᵀ = u yᵀ,

and constant-step SGD with batch b is A ← A − (τ/b) Σ_batch u yᵀ (one batched `baddbmm`). On the CPU,
K consecutive steps are taken at once by an exact rewriting (`_sgd_steps_blocked`).

The same trainer serves any objective whose per-sample loss is ½‖e‖² with a residual linear in A and in
the draws, e = c_l A y + p_l x + q_l z (`residual=(c, p, q)`, the objective's `sgd_residual`): its gradient
is u yᵀ with u = c e = c²A y + c(p x + q z), DSM's rank-one form. DSM: (c, p, q) = (s_l, 0, −1); conditional
flow matching (`gsm.training.flow_matching.CFM`, e = B y + x₁ − x₀ at y = t x₁ + (1 − t)x₀): (1, 1, −1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gsm.scores.linear import dsm_optimum
from gsm.training.objectives import DSM
from gsm.training.prefetch import background_draws, prefetched

SAMPLING = ("with_replacement", "epochs")


def dsm_loss(score_fn, x: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo DSM loss ½ E‖s_l·score(α_l x + s_l z, l) + z‖², one level l per sample.

    x: (R, B, d). Returns the loss per replicate, (R,). score_fn(y, l) takes y (R, B, d) and an
    integer level; this generic form (autograd-friendly) serves any score model.
    """
    R, B, d = x.shape
    L = alphas.numel()
    lv = torch.randint(L, (B,), generator=generator, device=x.device)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    loss = torch.zeros(R, device=x.device, dtype=x.dtype)
    for l in lv.unique().tolist():
        m = lv == l
        a, s = float(alphas[l]), float(stds[l])
        y = a * x[:, m] + s * z[:, m]
        loss = loss + 0.5 * ((s * score_fn(y, l) + z[:, m]) ** 2).sum((-1, -2))
    return loss / B


def empirical_second_moment(x: torch.Tensor) -> torch.Tensor:
    """Σ̂ = (1/N) Σ_n x_n x_nᵀ (known zero mean, as in the theory), (R, N, d) → (R, d, d) float64."""
    x = x.to(torch.float64)
    return x.transpose(-1, -2) @ x / x.shape[-2]


def empirical_dsm_minimizer(x: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """The exact minimiser of the empirical DSM loss, A_l = (α_l² Σ̂ + s_l² I)⁻¹: (R, L, d, d)."""
    return dsm_optimum(empirical_second_moment(x), alphas, stds)


class EpochStream:
    """Data indices in shuffled passes (epochs, as a DataLoader with shuffle=True). Continues shuffled passes
    across chunks, so every epoch is a full permutation."""

    def __init__(self, R, N, generator, device):
        self.R, self.N, self.g, self.device = R, N, generator, device
        self.buf = torch.empty(R, 0, dtype=torch.long, device=device)

    def take(self, count):
        while self.buf.shape[1] < count:
            perm = torch.argsort(torch.rand(self.R, self.N, generator=self.g, device=self.device), dim=1)
            self.buf = torch.cat([self.buf, perm], dim=1)
        out, self.buf = self.buf[:, :count], self.buf[:, count:]
        return out


def _sgd_steps(A0, y, w, u, kappa, beta, tau_b, symmetric):
    """The one-level SGD steps of a chunk, in place on A0 (R, d, d): for each k,
    u_k = κA y_k + βw_k (into u[k]; DSM κ = s², β = −s, w = z) and A ← A − (τ/b) Σ_batch u_k y_kᵀ (a rank-b
    update)."""
    for k in range(y.shape[0]):
        torch.baddbmm(w[k], y[k], A0.transpose(-1, -2), beta=beta, alpha=kappa, out=u[k])
        if symmetric:                                     # ½(u yᵀ + y uᵀ) = ½ [u; y]ᵀ [y; u]
            A0.baddbmm_(torch.cat([u[k], y[k]], 1).transpose(-1, -2), torch.cat([y[k], u[k]], 1),
                        alpha=-0.5 * tau_b)
        elif y.shape[2] == 1:           # b = 1: the outer product, elementwise (faster than a k=1 GEMM)
            A0.addcmul_(u[k].transpose(-1, -2), y[k], value=-tau_b)
        else:
            A0.baddbmm_(u[k].transpose(-1, -2), y[k], alpha=-tau_b)


BLOCK_ROWS = 16     # samples per blocked CPU update: fastest of 8 / 16 / 32 at d = 64, b = 1 (python -m gsm.bench)


def _sgd_steps_blocked(A0, y, w, kappa, beta, tau_b, b, log):
    """The steps of `_sgd_steps` (one level, not symmetric), K = BLOCK_ROWS // b at a time, in place on A0.

    Within a block that starts from A, step j sees A_j = A − (τ/b) Σ_{i<j} u_i y_iᵀ, so its residuals are
        u_j = κA y_j + βw_j − κ(τ/b) Σ_{i<j} (y_iᵀ y_j) u_i      (DSM: κ = s², β = −s, w = z),
    i.e. the unit lower-triangular system (I + κ(τ/b) M∘YYᵀ) U = κ Y Aᵀ + β W, where the rows of Y, W, U
    are the block's K·b samples in step order and M keeps the pairs from strictly earlier steps. So a block
    is one GEMM, one Gram matrix, one triangular solve and one rank-Kb update A ← A − (τ/b) UᵀY: A is read
    and written once per block instead of once per step. The iterates are the same up to rounding.

    y, w: (R, c·b, d) in step order; log(j, u_j) is called for every step j < c of the chunk."""
    R, n, d = y.shape
    rows = max(1, BLOCK_ROWS // b) * b
    step = torch.arange(rows, device=y.device) // b
    M = (step.view(-1, 1) > step.view(1, -1)).to(y.dtype) * (kappa * tau_b)
    U = torch.empty(R, rows, d, device=y.device, dtype=y.dtype)
    G = torch.empty(R, rows, rows, device=y.device, dtype=y.dtype)
    for p in range(0, n, rows):
        q = min(n, p + rows)
        m, yb, Ub, Gb = q - p, y[:, p:q], U[:, :q - p], G[:, :q - p, :q - p]
        torch.bmm(yb, A0.mT, out=Ub).mul_(kappa).add_(w[:, p:q], alpha=beta)        # κYAᵀ + βW
        torch.bmm(yb, yb.mT, out=Gb).mul_(M[:m, :m]).diagonal(dim1=-2, dim2=-1).fill_(1.0)
        # right-sided solve on the transposes: Ubᵀ is column-major, as LAPACK wants, so it is solved in place
        torch.linalg.solve_triangular(Gb.mT, Ub.mT, upper=True, left=False, unitriangular=True, out=Ub.mT)
        A0.baddbmm_(Ub.mT, yb, alpha=-tau_b)
        for j in range(p // b, q // b):
            log(j, Ub[:, j * b - p:(j + 1) * b - p])


class _GraphedSteps:
    """`_sgd_steps` captured once as a CUDA graph on static buffers (A0 is updated in place)."""

    def __init__(self, A0, y, z, kappa, beta, tau_b, symmetric):
        self.y, self.z, self.u = torch.empty_like(y), torch.empty_like(z), torch.empty_like(z)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                     # warm-up (cuBLAS workspaces) on a copy of A
            _sgd_steps(A0.clone(), y, z, self.u, kappa, beta, tau_b, symmetric)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            _sgd_steps(A0, self.y, self.z, self.u, kappa, beta, tau_b, symmetric)

    def run(self, y, z):
        self.y.copy_(y)
        self.z.copy_(z)
        self.graph.replay()


@dataclass(frozen=True)
class _SGDRun:
    """The settings of one `train_linear_dsm` run, resolved for the score matrices A (R, L, d, d): step τ,
    batch b, `steps` SGD steps drawn `chunk` at a time, and how the steps are taken (module doc)."""

    tau: float
    b: int
    steps: int
    chunk: int
    sampling: str
    symmetric: bool
    cuda_graph: bool
    blocked: bool           # resolved: CPU, one level, no symmetrisation, 2b ≤ BLOCK_ROWS
    background: bool        # resolved: `background_draws` when None

    @classmethod
    def resolve(cls, A, *, tau, batch_size, steps, chunk, sampling, symmetric, cuda_graph, blocked, background):
        """The run of the keywords of `train_linear_dsm` on A; checks `sampling`."""
        if sampling not in SAMPLING:
            raise ValueError(f"train.sampling must be one of {' | '.join(SAMPLING)}, got {sampling}")
        R, L, d, _ = A.shape
        b = int(batch_size)
        # CPU, one level: K steps per block (`_sgd_steps_blocked`); the symmetric update has no such form
        blocked = blocked and L == 1 and A.device.type == "cpu" and not symmetric and 2 * b <= BLOCK_ROWS
        if background is None:
            background = background_draws(A.device, R * min(chunk, steps) * b * d)
        return cls(tau, b, steps, chunk, sampling, symmetric, cuda_graph, blocked, background)


class _LinearDSM:
    """The state of `train_linear_dsm`: A (updated in place), the data, the levels, the chunk buffers, the
    step count, the loss log and the divergence record."""

    def __init__(self, A, x, alphas, stds, residual, run: _SGDRun, generator, callback, log_every: int):
        R, L, d, _ = A.shape
        self.A, self.run, self.g, self.callback, self.log_every = A, run, generator, callback, log_every
        self.R, self.L, self.d, self.N = R, L, d, x.shape[1]
        dev, dt = A.device, A.dtype
        self.x = x.to(dt)
        self.a, self.s = alphas.to(dev, dt), stds.to(dev, dt)
        self.c, self.p, self.q = (torch.as_tensor(v).to(dev, dt) for v in residual)
        self.data_term = bool((self.p != 0).any())       # e = cAy + px + qz reads the data x besides y (CFM)
        self.a0, self.s0, c0, p0, q0 = (float(v[0]) for v in (self.a, self.s, self.c, self.p, self.q))
        # one level: u = κAy + βw with w = z + (p/q)x drawn in z's buffer (no buffer for x)
        if L == 1 and p0 != 0 and q0 == 0:
            raise ValueError(f"residual q must be nonzero where p is (one level), got p = {p0}, q = 0")
        self.c0, self.kappa0, self.beta0 = c0, c0 * c0, c0 * q0
        self.shift0 = p0 / q0 if p0 != 0 else 0.0
        self.rows = torch.arange(R, device=dev).view(R, 1).expand(R, run.b)
        self.epochs = EpochStream(R, self.N, generator, dev) if run.sampling == "epochs" else None
        self.diverged_at = torch.full((R,), -1, dtype=torch.long, device=dev)
        self.flatA, self.xflat = A.view(R * L, d, d), self.x.reshape(R * self.N, d)
        self.graph, self.step = None, 0
        # chunk buffers, reused: fresh allocations of this size cost more in page faults than the draws;
        # two sets when the next chunk is drawn on a second core while this one trains (`gsm.training.prefetch`)
        c = min(run.chunk, run.steps)
        self.z_bufs = [torch.empty(c, R, run.b, d, device=dev, dtype=dt) for _ in range(1 + run.background)]
        self.y_bufs = [torch.empty_like(zb) for zb in self.z_bufs] if L == 1 else None
        self.u_buf = torch.empty_like(self.z_bufs[0]) if L == 1 and not run.blocked else None

    def log(self, k: int, u, s_u):
        """callback(k, ℓ) every `log_every` steps, ℓ = ½‖z − s A y‖² = ½‖u‖²/s², averaged over batch and live
        replicates."""
        if self.callback is not None and self.log_every and k % self.log_every == 0:
            per_rep = 0.5 * ((u / s_u) ** 2).sum(-1).mean(-1)
            alive = self.diverged_at < 0
            if alive.any():
                self.callback(k, float(per_rep[alive].mean()))

    def draw(self, i: int):
        """Chunk i's draws (indices, noise z, levels) and, for one level, its inputs y = αx + sz, which do not
        depend on A; (R, c·b, d) in step order for the blocked steps, (c, R, b, d) otherwise."""
        run, R, N, d, g, dev = self.run, self.R, self.N, self.d, self.g, self.A.device
        b = run.b
        c, zb = min(run.chunk, run.steps - i * run.chunk), self.z_bufs[i % len(self.z_bufs)]
        idx = (self.epochs.take(c * b) if self.epochs else
               torch.randint(N, (R, c * b), generator=g, device=dev)).view(R, c, b)
        z = torch.randn(c, R, b, d, generator=g, device=dev, dtype=self.A.dtype, out=zb[:c])
        if self.L > 1:
            return c, idx, z, torch.randint(self.L, (c, R, b), generator=g, device=dev), None
        rows_idx = idx + self.rows[:, :1].unsqueeze(-1) * N
        yb = self.y_bufs[i % len(self.y_bufs)][:c].view(-1, d)
        if run.blocked:
            y = torch.index_select(self.xflat, 0, rows_idx.reshape(-1), out=yb).view(R, c * b, d)
            z = z.permute(1, 0, 2, 3).reshape(R, c * b, d)          # a strided view for b = 1, else a copy
        else:
            y = torch.index_select(self.xflat, 0, rows_idx.transpose(0, 1).reshape(-1), out=yb).view(c, R, b, d)
        if self.shift0:             # w = z + (p/q)x, and y = αx + sz = (α − s·p/q)x + s·w
            z.add_(y, alpha=self.shift0)
        return c, idx, z, None, y.mul_(self.a0 - self.s0 * self.shift0).add_(z, alpha=self.s0)

    def train_chunk(self, c: int, idx, z, lv, y):
        """The chunk's c steps, by the fastest form that applies (module doc)."""
        if lv is None and self.run.blocked:
            _sgd_steps_blocked(self.A[:, 0], y, z, self.kappa0, self.beta0, self.run.tau / self.run.b, self.run.b,
                               lambda j, u: self.log(self.step + j + 1, u, self.c0))
            self.step += c
        elif lv is None:
            self._one_level_steps(c, z, y)
        else:
            self._per_sample_level_steps(c, idx, z, lv)

    def _one_level_steps(self, c: int, z, y):
        """One level: each step is two fused in-place products (no temporaries of A's size): u = κAy + βw
        (baddbmm; DSM u = s²Ay − sz), then A ← A − (τ/b) Σ_batch u yᵀ (a rank-b update: addcmul_ for b = 1, baddbmm_ otherwise)."""
        run, A0 = self.run, self.A[:, 0]
        if self.graph is not None and c == run.chunk:
            self.graph.run(y, z)                          # a CUDA graph replay of the same steps
            u = self.graph.u
        else:
            u = self.u_buf[:c]
            _sgd_steps(A0, y, z, u, self.kappa0, self.beta0, run.tau / run.b, run.symmetric)
            later = run.steps - self.step - c >= run.chunk            # a full chunk still to come
            if run.cuda_graph and A0.device.type == "cuda" and self.graph is None and later:
                self.graph = _GraphedSteps(A0, y, z, self.kappa0, self.beta0, run.tau / run.b, run.symmetric)
        for k in range(c):
            self.log(self.step + k + 1, u[k], self.c0)
        self.step += c

    def _per_sample_level_steps(self, c: int, idx, z, lv):
        """A level per sample: gather each sample's A_l, scatter-add its gradient u yᵀ, u = c²A_l y + c(px + qz).
        The chunk's samples, their rows of A and their level coefficients are gathered once per chunk, by
        index_select (a copy: the same values as indexing, ~6× faster than A[rows, l] at b·d² ≈ 10⁴)."""
        rows, L, d, N, run = self.rows, self.L, self.d, self.N, self.run
        xs = self.xflat.index_select(0, (idx + rows.unsqueeze(1) * N).transpose(0, 1).reshape(-1))
        xs = xs.view(c, *rows.shape, d)                     # (c, R, b, d)
        flat_levels = rows * L + lv                          # (c, R, b): the samples' rows of flatA
        s, a, cc, q, p = (v[lv].unsqueeze(-1) for v in (self.s, self.a, self.c, self.q, self.p))   # (c, R, b, 1)
        for k in range(c):
            xb, ix = xs[k], flat_levels[k].reshape(-1)
            y = a[k] * xb + s[k] * z[k]
            Al = self.flatA.index_select(0, ix).view(*rows.shape, d, d)      # (R, b, d, d)
            offset = q[k] * z[k] + p[k] * xb if self.data_term else q[k] * z[k]
            u = cc[k] ** 2 * (Al @ y.unsqueeze(-1)).squeeze(-1) + cc[k] * offset
            G = u.unsqueeze(-1) * y.unsqueeze(-2)         # (R, b, d, d)
            if run.symmetric:
                G = 0.5 * (G + G.transpose(-1, -2))
            self.flatA.index_add_(0, ix, G.reshape(-1, d, d), alpha=-run.tau / run.b)
            self.step += 1
            self.log(self.step, u, cc[k])

    def record_divergence(self) -> bool:
        """Marks the replicates whose A became non-finite by now; True when all have."""
        # one pass: A_r is finite iff its float64 sum is (float32 entries cannot overflow it; float64 ones
        # only from ~1e308/(L·d²), long after divergence)
        bad = ~torch.isfinite(self.A.flatten(1).sum(1, dtype=torch.float64)) & (self.diverged_at < 0)
        if bad.any():
            self.diverged_at[bad] = self.step
            return bool((self.diverged_at >= 0).all())
        return False


@torch.no_grad()
def train_linear_dsm(A: torch.Tensor, x: torch.Tensor, *, alphas: torch.Tensor, stds: torch.Tensor,
                     tau: float, batch_size: int = 1, steps: int, sampling: str = "with_replacement",
                     symmetric: bool = False, generator: torch.Generator | None = None,
                     log_every: int = 0, callback=None, chunk: int = 256, progress: bool = False,
                     cuda_graph: bool = True, blocked: bool = True, background: bool | None = None,
                     residual=None) -> dict:
    """SGD on a linear model (DSM by default), in place on A, for R replicates at once.

    Args:
        A: (R, L, d, d) score (or velocity) matrices (updated in place; its dtype is the training dtype).
        x: (R, N, d) data, one data set per replicate.
        alphas, stds: (L,) noise levels α_l, s_l; each sample draws l uniformly.
        residual: (c, p, q), (L,) each: the per-sample loss ½‖c_l A y + p_l x + q_l z‖² (module doc; the
            objective's `sgd_residual`). None: DSM's, (s_l, 0, −1).
        tau: τ, the SGD step (convention (L)).  batch_size: b.  steps: number of SGD steps.
        sampling: "with_replacement" (i.i.d. indices, the theory's assumption) or "epochs".
        symmetric: use (g + gᵀ)/2 so A stays symmetric.
        log_every, callback: every `log_every` steps, callback(step, loss) with the minibatch DSM
            loss averaged over the replicates still alive.
        chunk: steps whose random numbers are drawn at once (fewer kernel launches).
        cuda_graph: on a GPU with one level, replay a chunk's steps as one CUDA graph (same arithmetic,
            no per-step launch cost).
        blocked: on the CPU with one level and no symmetrisation, take BLOCK_ROWS // b steps at once
            (`_sgd_steps_blocked`: the same iterates up to rounding, ~1.6–2× faster at d = 64, b = 1).
        background: draw chunk i + 1 on a second core while chunk i trains (`gsm.training.prefetch`; the same
            numbers). None: when on the CPU, large, and torch's threads leave a core idle.
    Returns:
        {"diverged_at": (R,) long, the step after which A_r became non-finite (−1 if never)}.
        A diverged replicate's A stays non-finite (NaN propagates only within its own batch entry)
        while the others go on; the pipeline leaves it out of the means.
    """
    run = _SGDRun.resolve(A, tau=tau, batch_size=batch_size, steps=steps, chunk=chunk, sampling=sampling,
                          symmetric=symmetric, cuda_graph=cuda_graph, blocked=blocked, background=background)
    sgd = _LinearDSM(A, x, alphas, stds, DSM.sgd_residual(alphas, stds) if residual is None else residual, run, generator,
                     callback, log_every)
    bar = tqdm(total=steps, desc="SGD", disable=not progress, leave=False)
    for draws in prefetched(sgd.draw, -(-steps // chunk), run.background):
        sgd.train_chunk(*draws)
        bar.update(draws[0])
        if sgd.record_divergence():
            break
    bar.close()
    return {"diverged_at": sgd.diverged_at}


def dsm_batch_loss(model, xb: torch.Tensor, alphas: torch.Tensor, stds: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The DSM loss of a batch xb (R, b, d) per replicate (R,): `dsm_loss`, with all levels in one call when
    `model.level_tensors` (forward accepts per-sample levels (b,)); the same draws (levels, then z)."""
    if not getattr(model, "level_tensors", False):
        return dsm_loss(model, xb, alphas, stds, generator)
    b = xb.shape[1]
    lv = torch.randint(alphas.numel(), (b,), generator=generator, device=xb.device)
    z = torch.randn(xb.shape, generator=generator, device=xb.device, dtype=xb.dtype)
    sl = stds[lv].view(1, b, 1)
    return 0.5 * ((sl * model(alphas[lv].view(1, b, 1) * xb + sl * z, lv) + z) ** 2).sum(-1).mean(-1)


def train_score_net(model, x: torch.Tensor, *, alphas: torch.Tensor, stds: torch.Tensor, optimizer,
                    batch_size: int = 1, steps: int, generator: torch.Generator | None = None,
                    log_every: int = 0, callback=None, progress: bool = False, loss=None) -> dict:
    """Training of any score (or velocity) model (MLP, user model; the linear one too) with a torch optimizer.

    Each step draws, per replicate, b indices with replacement and minimises the objective's loss of the
    batch, by default DSM's, the same loss as `train_linear_dsm`, ½‖s_l·s(α_l x + s_l z, l) + z‖² averaged
    over the batch (one uniform level per sample, `dsm_batch_loss`), summed over the live replicates:
    replicates have disjoint parameters, so each gets its own gradient, and an element-wise optimizer
    (SGD, Adam) keeps them independent. With `torch.optim.SGD(lr=τ)` a linear model takes exactly the
    steps of `train_linear_dsm`.

    Args:
        model: s(y, l), y (R, B, d) → (R, B, d); `model.level_tensors` (optional) says forward
            accepts per-sample levels (B,), so a batch costs one call instead of one per level.
        x: (R, N, d) data.  alphas, stds: (L,) noise levels.
        optimizer: a torch optimizer over model.parameters().
        log_every, callback: every `log_every` steps, callback(step, loss) with the minibatch
            loss averaged over the live replicates.
        loss: loss(model, xb (R, b, d), alphas, stds, generator) → (R,), the objective's `neural_loss`
            (CFM: `gsm.training.flow_matching.cfm_loss`); None: `dsm_batch_loss`.
    Returns:
        {"diverged_at": (R,) long, the step after which replicate r's loss was non-finite (−1 if never)}.
    """
    R, N, d = x.shape
    dev = x.device
    p = next(iter(model.parameters()), None)
    x = x.to(p.dtype if p is not None else x.dtype)
    b = int(batch_size)
    rows = torch.arange(R, device=dev).view(R, 1)
    a, s = alphas.to(dev, x.dtype), stds.to(dev, x.dtype)
    batch_loss = dsm_batch_loss if loss is None else loss
    alive = torch.ones(R, dtype=torch.bool, device=dev)
    diverged_at = torch.full((R,), -1, dtype=torch.long, device=dev)
    check = max(1, min(100, log_every or 100))       # host syncs only every `check` steps
    for step in tqdm(range(1, steps + 1), desc="DSM", disable=not progress, leave=False):
        xb = x[rows, torch.randint(N, (R, b), generator=generator, device=dev)]
        value = batch_loss(model, xb, a, s, generator)
        bad = ~torch.isfinite(value.detach())
        alive = alive & ~bad
        optimizer.zero_grad(set_to_none=True)
        torch.where(alive, value, torch.zeros_like(value)).sum().backward()
        optimizer.step()
        if step % check == 0 or step == steps:
            newly = ~alive & (diverged_at < 0)
            if newly.any():
                diverged_at[newly] = step
                if not alive.any():
                    break
        if callback is not None and log_every and step % log_every == 0 and alive.any():
            callback(step, float(value.detach()[alive].mean()))
    return {"diverged_at": diverged_at}
