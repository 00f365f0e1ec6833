"""Exact OT W2² between samples (gsm.theory.transport) against a known answer: two Gaussians, where W2² is the
Bures value, written here for diagonal covariances, W2²(N(0, I), N(0, diag(v))) = Σ_i (√v_i − 1)²."""
import math

import pytest
import torch

from gsm.theory.transport import ot_w2

pytest.importorskip("ot")


def mean_se(v):
    return float(v.mean()), float(v.std(unbiased=True)) / math.sqrt(v.numel())


def test_ot_w2_of_two_gaussians_is_the_bures_value_once_its_floor_is_removed():
    """d = 2, M = 256, R = 16 replicates: the plug-in estimate is biased up by the two-sample floor (> 3 s.e.
    above the Bures value); minus the floor W2²(t', t) of two samples of the target it is within 3 s.e. of
    it. The floor falls with M (M = 64 → 256)."""
    g = torch.Generator().manual_seed(0)
    v = torch.tensor([2.0, 0.5], dtype=torch.float64)
    exact = float(((v.sqrt() - 1) ** 2).sum())           # 0.2574
    R, M = 16, 256
    x = torch.randn(R, M, 2, generator=g, dtype=torch.float64)
    t, t2 = (v.sqrt() * torch.randn(R, M, 2, generator=g, dtype=torch.float64) for _ in range(2))
    w2, floor = ot_w2(x, t), ot_w2(t2, t)
    raw, raw_se = mean_se(w2)
    debiased, se = mean_se(w2 - floor)
    assert raw - exact > 3 * raw_se, (raw, raw_se, exact)
    assert abs(debiased - exact) < 3 * se, (debiased, se, exact)
    small = ot_w2(t2[:, :64], t[:, :64])
    f_small, f_small_se = mean_se(small)
    f, f_se = mean_se(floor)
    assert f_small - f > 3 * math.hypot(f_small_se, f_se), (f_small, f)


def test_ot_w2_of_identical_point_sets_is_zero_and_of_a_shift_its_square():
    """W2²(x, x) = 0 and W2²(x, x + m) = |m|² (the identity coupling is optimal for a translation)."""
    x = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = torch.tensor([0.3, -1.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.allclose(ot_w2(x, x), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ot_w2(x, x + m), torch.full((3,), float(m @ m), dtype=torch.float64), rtol=1e-9)
