"""The benchmark suite at tiny sizes (no timed assertions), and the exactness of the fast paths it times."""
import math

import pytest
import torch

from gsm.cli.bench import main, scipy_bures2
from gsm.theory.bures import bures_wasserstein2, second_moment
from gsm.samplers.langevin import Langevin, gaussian_sample, langevin_covariance
from gsm.training.dsm import train_linear_dsm


@pytest.mark.slow
def test_smoke_suite_prints_every_ratio(capsys):
    """`python -m gsm.bench --smoke`: every benchmark runs and reports its ratios (values not checked)."""
    res = main(["--smoke"])
    out = capsys.readouterr().out
    for key, ratio in [("dsm_sgd", "× loop"), ("dsm_sgd", "fraction of randn/flop bound"),
                       ("langevin", "fraction of randn bound"), ("bures", "× POT"), ("bures", "rel. diff vs POT"),
                       ("exact_laws", "DDPM exact law s"), ("end_to_end", "× loop (law)")]:
        assert math.isfinite(res[key][ratio]) and res[key][ratio] > 0, (key, ratio)
        assert ratio in out


def test_exact_laws_bench_runs(capsys):
    """The fast benchmarks run on the current API (an import there is not exercised by any other test)."""
    res = main(["--smoke", "--only", "exact_laws", "bures"])
    assert all(math.isfinite(res["exact_laws"][k]) for k in ("DDPM exact law s", "DDPM eigenbasis (commuting) s"))


def test_bures_agrees_with_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    G1, G2 = torch.randn(2, 12, 12, generator=g, dtype=torch.float64)
    S1, S2 = G1 @ G1.T + 0.1 * torch.eye(12), G2 @ G2.T + 0.1 * torch.eye(12)
    ref = scipy_bures2(S1.numpy(), S2.numpy())
    assert abs(float(bures_wasserstein2(S1, S2)) - ref) <= 1e-10 * ref


def test_fused_sgd_equals_the_hand_written_loop():
    """The batched, fused trainer takes exactly the steps of nn.Linear + torch.optim.SGD when both see
    the same samples: replay the trainer's index and noise draws through the loop's arithmetic."""
    N, d, sigma, tau, steps = 30, 4, 0.5, 0.05, 40
    x = torch.randn(1, N, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = torch.zeros(1, 1, d, d, dtype=torch.float64)
    one, sig = torch.ones(1, dtype=torch.float64), torch.full((1,), sigma, dtype=torch.float64)
    train_linear_dsm(A, x, alphas=one, stds=sig, tau=tau, steps=steps, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)                 # the trainer's draws, in its order
    idx = torch.randint(N, (1, steps), generator=g)[0]
    z = torch.randn(steps, 1, 1, d, generator=g, dtype=torch.float64)[:, 0]
    lin = torch.nn.Linear(d, d, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    opt = torch.optim.SGD(lin.parameters(), lr=tau)
    for k in range(steps):
        loss = 0.5 * ((sigma * lin(x[0, idx[k]][None] + sigma * z[k]) + z[k]) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(A[0, 0], -lin.weight.detach(), rtol=1e-12, atol=1e-12)


def test_particles_from_the_exact_law():
    """gaussian_sample draws N(0, C): entrywise z-scores of the second moment, Var(Ĉ_ij) = (C_ii C_jj + C_ij²)/M."""
    d, M = 4, 20000
    A = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    C = langevin_covariance(A, 0.1, 30, init_var=2.0)
    x = gaussian_sample(C[None], M, torch.Generator().manual_seed(3))[0]
    se = ((torch.diagonal(C)[:, None] * torch.diagonal(C)[None, :] + C ** 2) / M).sqrt()
    assert ((second_moment(x) - C) / se).abs().max() < 4.0
    bad = gaussian_sample(torch.full((1, d, d), float("nan"), dtype=torch.float64), 5)
    assert torch.isnan(bad).all()
    with pytest.raises(ValueError, match="particles_from"):
        Langevin(particles_from="exact")


def test_write_docs_replaces_each_benchmarks_section_and_keeps_the_others(tmp_path, capsys):
    """`python -m gsm.bench --write-docs PAGE`: the section of each benchmark that ran is rewritten between
    its markers, with the command that reruns it, the load and every figure it printed; the text around
    and the sections of benchmarks that did not run stay as they were; a missing section is appended."""
    from gsm.cli.bench_docs import markers
    begin, end = markers("bures", "cpu")
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\nprose before\n{begin}\nold bures figures\n{end}\nprose after\n")
    res = main(["--smoke", "--only", "bures", "--write-docs", str(page)])
    text = page.read_text()
    assert "old bures figures" not in text and text.startswith("# Performance\nprose before\n")
    assert text.count(begin) == 1 and "prose after" in text.split(end)[1]
    body = text.split(begin)[1].split(end)[0]
    assert "`python -m gsm.bench --only bures --smoke`" in body and "load average" in body
    for name, value in res["bures"].items():
        assert f"| {name} | {value:.4g} |" in body
    main(["--smoke", "--only", "exact_laws", "--write-docs", str(page)])
    again = page.read_text()
    assert again.split(begin)[1].split(end)[0] == body                 # not rerun: kept
    assert again.index(markers("exact_laws", "cpu")[0]) > again.index("prose after")
    assert main(["--smoke", "--only", "bures", "--write-docs", str(tmp_path / "absent.md")]) and \
        not (tmp_path / "absent.md").exists()
