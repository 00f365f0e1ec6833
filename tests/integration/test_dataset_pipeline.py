"""data=digits | patches through the pipeline, and the Gaussian-structure probe (eval.probe=true) in
results.json, TensorBoard and <run>/figures/; the one-line refusals before any work."""
import json

import pytest

from gsm.pipeline.record import summary_table
from gsm.pipeline.run import run
from gsm.pipeline.validate import ConfigError, validate_config

pytest.importorskip("ot")
pytest.importorskip("sklearn")

TINY = ["replicates=2", "sampler=ddpm", "sampler.particles=100", "data.ot_particles=32", "progress=false"]


def test_a_linear_score_on_digits_runs_on_the_surrogate_and_the_probe_is_recorded(compose_cfg, tmp_path, one_thread):
    """The exact DSM minimiser on N = 1000 digits: the Gaussian surrogate's law and prediction, w2_ot against
    held-out digits, the "NOT Gaussian" verdict; the probe at each of the 10 DDPM levels, whose affine fit of a
    linear score is exact and whose explained variance is 1 less the training mean's term (< 1e-3 here)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    res = run(compose_cfg("data=digits", "model=linear", "train.solver=exact", "eval.probe=true", "figures=true", *TINY), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and saved["data_gaussian"] is False and "mode_weights" not in saved
    assert saved["dataset"] == {"description": "scikit-learn's 8×8 handwritten digits (1797 images)", "d": 64,
                                "pool": 1797, "n": 1000, "held_out": 797}
    assert saved["w2_ot_particles"] == 32 and saved["w2_ot_debiased"]["n"] == 2
    assert saved["regime"]["reasons"][0].startswith("NOT Gaussian (scikit-learn's 8×8 handwritten digits")
    probe = saved["gaussian_probe"]
    assert probe["levels"] == list(range(10)) and len(probe["sigma"]) == len(probe["noise_std"]) == 10
    ev, fit = probe["explained_variance"], probe["linear_fit_residual"]
    assert len(ev["mean"]) == len(ev["stderr"]) == len(fit["mean"]) == 10 and ev["n"] == 2
    assert all(1 - 1e-3 < m <= 1 for m in ev["mean"]) and max(fit["mean"]) < 1e-20
    assert (tmp_path / "figures" / "probe_gaussian_structure.png").is_file()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "probe/gaussian_structure" in acc.Tags()["images"]
    assert "NOT Gaussian" in summary_table(res)
    # the probe has its own generator: without it the run's other numbers are the same
    off = run(compose_cfg("data=digits", "model=linear", "train.solver=exact", *TINY), tmp_path / "off")
    assert "gaussian_probe" not in off
    for key in ("w2_exact", "w2_empirical", "w2_ot", "w2_sliced", "memorized_fraction_fresh"):
        assert off[key]["mean"] == res[key]["mean"], key


def test_the_empirical_score_on_patches_and_no_probe_by_default(compose_cfg, tmp_path, one_thread):
    """model=empirical on camera patches (N = 200): true distances and memorisation against held-out patches; the
    probe is off by default (no gaussian_probe key, no figure)."""
    res = run(compose_cfg("data=patches", "model=empirical", "data.n=200", *TINY), tmp_path)
    assert res["status"] == "ok" and res["dataset"]["pool"] == 4096 and res["dataset"]["held_out"] == 3896
    assert {"w2_ot_debiased", "w2_sliced_debiased", "memorized_fraction", "memorized_fraction_fresh"} <= set(res)
    assert "gaussian_probe" not in res and not (tmp_path / "figures" / "probe_gaussian_structure.png").exists()


@pytest.mark.parametrize("overrides,line", [
    (["data=digits", "model=oracle", "sampler=ddpm"], "model must be linear | mlp | empirical | custom on "
                                                      "data.kind=dataset (scikit-learn's 8×8 handwritten digits"),
    (["data=digits", "data.n=1797"], "data.n must be an integer in [2, 1793]"),
    (["data=patches", "data.image=astronaut"], "data.image must be one of camera | coins"),
    (["data=texture", "model=fourier_linear", "eval.probe=true"], "eval.probe must be false on the texture backend"),
    (["sampler=vp", "model=oracle", "eval.probe=true"], "eval.probe must be false on the spectral backend"),
    (["eval.probe_points=1"], "eval.probe_points must be an integer >= 2, got 1"),
    (["eval.probe=maybe"], "eval.probe must be one of true | false, got maybe"),
])
def test_bad_input_is_refused_in_one_line_before_any_work(overrides, line, compose_cfg):
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(*overrides))
    assert str(e.value).startswith(line) and "\n" not in str(e.value)


@pytest.mark.slow
def test_mlp_on_digits_probe_per_level(compose_cfg, tmp_path, one_thread):
    """An MLP (width 64, depth 2, Adam, 600 steps of b = 128) trained on N = 1000 digits at 100 DDPM levels and
    probed at each (R = 2, Q = 256; 30 to 80 s on the shared 2-core machine, by its load): per-level values in results.json,
    the affine fit never worse than the Gaussian score. At this budget the net is far from trained (measured EV
    −3.7 at σ = 0.03, 0.93 at the noisiest level; docs/beyond_gaussian.md's table trains 5000 steps), but the
    shape is already the paper's: the Gaussian score explains most of the net at high noise, little near the data."""
    res = run(compose_cfg("data=digits", "model=mlp", "optim=adam", "train.batch_size=128", "train.steps=600",
                          "sampler=ddpm", "sampler.steps=100", "replicates=2", "sampler.particles=100",
                          "data.ot_particles=32", "eval.probe=true", "eval.probe_points=256", "progress=false"),
              tmp_path)
    probe = res["gaussian_probe"]
    ev, fit, sigma = probe["explained_variance"]["mean"], probe["linear_fit_residual"]["mean"], probe["sigma"]
    assert len(ev) == len(fit) == len(sigma) == 100 and sigma[0] < 0.05 and sigma[-1] > 100
    assert ev[-1] > 0.8 and ev[0] < ev[-1], (ev[0], ev[-1])
    assert all(f <= 1 - e + 1e-9 for e, f in zip(ev, fit))     # the best affine fit beats the Gaussian one
