"""Robustness (issue 9): validation, stability, divergence, interruption, determinism, numerical
safety of the Bures metric, atomic writes. Subprocess tests of the `gsm` command are marked slow
(each starts Python, torch and Hydra: a few seconds)."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gsm.pipeline.matrix
import gsm.pipeline.record
import gsm.pipeline.run
from gsm.pipeline.run import run
from gsm.pipeline.interrupt import Terminated, deferred, interruptible
from gsm.io import write_json_atomic
from gsm.theory.bures import bures_wasserstein2, second_moment
from gsm.pipeline.validate import ConfigError, sgd_tau_limit, validate_config

TINY = ["replicates=3", "data.dim=3", "data.n=30", "train.steps=300", "sampler.steps=20",
        "sampler.particles=50", "progress=false"]
DDPM = ["sampler=ddpm", "sampler.T=100", "sampler.scaled=true", "sampler.steps=5"]
TEXTURE = ["data=texture", "model=fourier_linear", "data.size=16", "data.n=8"]
TINY_TEXTURE = [*TEXTURE, "replicates=3", "train.steps=50", "sampler.steps=20", "sampler.particles=6", "progress=false"]
NO_GPU = not torch.cuda.is_available()


def gsm_cmd(*overrides, out):
    return [sys.executable, "-m", "gsm", *overrides, f"hydra.run.dir={out}"]


# ------------------------------------------------------------------------------------ validation

BAD = [  # (overrides, the key the message names, the value it shows)
    (["data.dim=0"], "data.dim", "0"),
    (["data.dim=2.5"], "data.dim", "2.5"),
    (["data.n=0"], "data.n", "0"),
    (["data=custom", "data.spectrum.eigenvalues=[1,2,3]"], "data.spectrum.eigenvalues", "[1, 2, 3]"),
    (["data=custom", "data.spectrum.eigenvalues=[1,nan,2,3]"], "data.spectrum.eigenvalues", "[1, nan, 2, 3]"),
    (["data=custom", "data.spectrum.eigenvalues=[1,inf,2,3]"], "data.spectrum.eigenvalues", "[1, inf, 2, 3]"),
    (["data=custom", "data.spectrum.eigenvalues=[1,-2,2,3]"], "data.spectrum.eigenvalues", "[1, -2, 2, 3]"),
    (["data.spectrum.scale=-1"], "data.spectrum.scale", "-1"),
    (["data.spectrum.exponent=nan"], "data.spectrum.exponent", "nan"),
    (["data=isotropic", "data.spectrum.value=0"], "data.spectrum.value", "0"),
    (["data=two_level", "data.spectrum.fraction=1.5"], "data.spectrum.fraction", "1.5"),
    (["data.basis=diagonal"], "data.basis", "diagonal"),
    (["train.sigma=-0.1"], "train.sigma", "-0.1"),
    (["train.sigma=0"], "train.sigma", "0"),
    (["train.tau=0"], "train.tau", "0"),
    (["train.tau=inf"], "train.tau", "inf"),
    (["train.batch_size=0"], "train.batch_size", "0"),
    (["train.steps=-1"], "train.steps", "-1"),
    (["train.solver=adam"], "train.solver", "adam"),
    (["model=mlp", "train.solver=exact"], "train.solver", "exact"),
    (["replicates=0"], "replicates", "0"),
    (["threads=-1"], "threads", "-1"),
    (["seed=1.5"], "seed", "1.5"),
    (["sampler.particles=1"], "sampler.particles", "1"),
    (["sampler.gamma=0"], "sampler.gamma", "0"),
    (["sampler.gamma=-0.1"], "sampler.gamma", "-0.1"),
    (["sampler.steps=-1"], "sampler.steps", "-1"),
    # stability: γ ≥ 2(λ_min + σ²) = 2(8^-½ + 1/16) = 0.832 for the default target
    (["sampler.gamma=0.84"], "sampler.gamma", "0.84"),
    (["model=oracle", "sampler.gamma=1"], "sampler.gamma", "1"),
    (["sampler=ddpm", "sampler.T=0"], "sampler.T", "0"),
    (["sampler=ddpm", "sampler.t_min=-1"], "sampler.t_min", "-1"),
    (["sampler=ddpm", "sampler.t_min=1000"], "sampler.t_min", "1000"),
    (["sampler=ddpm", "sampler.beta_start=0"], "sampler.beta_start", "0"),
    (["sampler=ddpm", "sampler.beta_start=0.03"], "sampler.beta_end", "0.02"),     # beta_end <= beta_start
    (["sampler=ddpm", "sampler.beta_start=0.02"], "sampler.beta_end", "0.02"),
    (["sampler=ddpm", "sampler.beta_end=1"], "sampler.beta_end", "1"),
    (["sampler=ddpm", "sampler.steps=0"], "sampler.steps", "0"),
    (["sampler=ddpm", "sampler.scaled=true", "sampler.T=10"], "sampler.T", "10"),
    (["sampler=ddim", "sampler.eta=2"], "sampler.eta", "2"),
    (["sampler=ddpm", "sampler.final=clip"], "sampler.final", "clip"),
    pytest.param(["device=cuda"], "device", "cuda", marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is present")),
    (["device=tpu"], "device", "tpu"),
    (["dtype=float16"], "dtype", "float16"),
    (["dtype=int"], "dtype", "int"),
    (["model=custom"], "model._target_", "???"),
    (["model._target_=no.such.Score"], "model._target_", "no.such.Score"),
    (["model=fourier_linear"], "model._target_", "gsm.scores.fourier.FourierLinearScore"),
    (["data=texture"], "model", "model._target_=gsm.scores.linear.LinearScore"),
    ([*TEXTURE, "data.floor=0"], "data.floor", "0"),
    ([*TEXTURE, "data.size=1"], "data.size", "1"),
    ([*TEXTURE, "data.image=/no/such/file.png"], "data.image", "/no/such/file.png"),
    ([*TEXTURE, "sampler.gamma=1"], "sampler.gamma", "1"),      # λ_min is the floor: 2(λ_min + σ²) ≈ 0.5
]


def _ids(p):
    return ",".join(p) if isinstance(p, list) else None


@pytest.mark.parametrize("overrides,key,value", BAD, ids=_ids)
def test_bad_value_is_a_one_line_error_naming_key_range_and_value(compose_cfg, overrides, key, value):
    with pytest.raises(ConfigError) as info:
        validate_config(compose_cfg(*overrides))
    msg = str(info.value)
    assert "\n" not in msg
    assert re.fullmatch(rf"{re.escape(key)} must be .+, got {re.escape(value)}", msg), msg


def test_threads_knob_sets_torch_threads(compose_cfg, tmp_path):
    before = torch.get_num_threads()
    try:
        assert run(compose_cfg(*TINY, "threads=1"), tmp_path)["status"] == "ok"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_dsm_optimum_survives_set_num_threads_with_large_batched_matrices():
    """torch's batched LU corrupts its pivots after torch.set_num_threads(2) at d ≳ 100 (MKL DLASWP errors,
    pytorch/pytorch#141358); the `threads` knob calls it, so the DSM optimum must not use that path."""
    from gsm.scores.linear import dsm_optimum
    d = 256
    g = torch.Generator().manual_seed(0)
    X = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = X @ X.T / d
    alphas, stds = torch.linspace(1.0, 0.5, 6, dtype=torch.float64), torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        A = dsm_optimum(cov, alphas, stds)
    finally:
        torch.set_num_threads(before)
    eye = torch.eye(d, dtype=torch.float64)
    for l in range(6):
        M = alphas[l] ** 2 * cov + stds[l] ** 2 * eye
        torch.testing.assert_close(A[l] @ M, eye, rtol=0, atol=1e-9)


def test_message_format_of_the_issue(compose_cfg):
    with pytest.raises(ConfigError, match=r"^train\.sigma must be > 0, got -0\.1$"):
        validate_config(compose_cfg("train.sigma=-0.1"))


@pytest.mark.parametrize("overrides", [
    [], ["model=oracle"], ["train.solver=exact"], ["model=mlp"], ["data=custom"], ["data=isotropic"],
    ["data=two_level"], ["sampler=ddpm"], ["sampler=ddim"], ["sampler=ddpm", "sampler.steps=50", "sampler.t_min=3"],
    ["device=auto"], ["dtype=float64"], ["train.steps=0"], [*TEXTURE], [*TEXTURE, "sampler=ddpm", "sampler.steps=5"],
], ids=lambda o: ",".join(o) or "default")
def test_shipped_configs_are_valid_and_stable(compose_cfg, overrides):
    assert validate_config(compose_cfg(*overrides)) == []


def test_bad_value_fails_before_any_output(compose_cfg, tmp_path):
    with pytest.raises(ConfigError):
        run(compose_cfg(*TINY, "train.sigma=-0.1"), tmp_path / "out")
    with pytest.raises(ConfigError):
        run(compose_cfg(*TINY_TEXTURE, "data.floor=-1"), tmp_path / "tex")
    assert not (tmp_path / "out").exists() and not (tmp_path / "tex").exists()


@pytest.mark.parametrize("overrides,key,value", [
    (["model=mlp", "model.depth=-1"], "model.depth", "-1"),
    (["model=mlp", "model.activation=elu"], "model.activation", "elu"),
    (["model=mlp", "model.embed_dim=3"], "model.embed_dim", "3"),
], ids=_ids)
def test_model_constructor_checks_are_one_line_config_errors(compose_cfg, tmp_path, overrides, key, value):
    """Keys checked by the model's own constructor (not by validate_config) give the same one-line error."""
    with pytest.raises(ConfigError) as info:
        run(compose_cfg(*TINY, *overrides), tmp_path)
    assert re.fullmatch(rf"{re.escape(key)} must be .+, got {re.escape(value)}", str(info.value)), str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["train.sigma=-0.1"], ["data.dim=0"], ["model=mlp", "model.depth=-1"], ["dtype=float16"], ["sampler=ddpm", "sampler.beta_start=0.03"],
    ["sampler.gamma=5"],
    pytest.param(["device=cuda"], marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is present")),
], ids=lambda o: ",".join(o))
def test_cli_bad_value_exits_2_with_one_line_and_no_traceback(tmp_path, overrides):
    out = tmp_path / "run"
    proc = subprocess.run(gsm_cmd(*overrides, out=out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    key = overrides[-1].split("=")[0] if "beta" not in overrides[-1] else "sampler.beta_end"
    assert lines[0].startswith(f"gsm: error: {key} must be "), lines
    assert not (out / "results.json").exists() and not (out / "tb").exists()


# ------------------------------------------------------------------------------------- stability

def test_tau_limit_is_the_mean_square_stability_boundary_of_the_theory():
    """sgd_tau_limit (one level) is where online DSM-SGD stops being mean-square stable (note §2.3), the
    condition written here: τσ²(1+1/b)m_max < 2 and Σ_j τσ²m_j/[b(2 − τσ²(1+1/b)m_j)] < 1, m = λ + σ²."""
    def stable(lam, sigma, tau, b):
        m = lam + sigma ** 2
        denom = 2 - tau * sigma ** 2 * (1 + 1 / b) * m
        return bool((denom > 0).all()) and float((tau * sigma ** 2 * m / (b * denom)).sum()) < 1
    lam = 1 / torch.arange(1, 9, dtype=torch.float64)
    for sigma, b in ((0.5, 1), (0.3, 4), (1.0, 64)):
        limit, _ = sgd_tau_limit(lam, torch.ones(1, dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64), b)
        assert stable(lam, sigma, limit * (1 - 1e-9), b) and not stable(lam, sigma, limit * (1 + 1e-9), b)


@pytest.mark.parametrize("overrides,level", [([], False), (DDPM, True), ([*TEXTURE, "train.solver=sgd", "train.sigma=0.5"], False)],
                         ids=["langevin", "ddpm", "texture"])
def test_tau_beyond_the_limit_warns_before_training(compose_cfg, overrides, level):
    warnings = validate_config(compose_cfg(*overrides, "train.tau=50"))
    assert len(warnings) == 1 and "train.tau = 50 " in warnings[0] and "stability limit" in warnings[0]
    assert ("noise level s =" in warnings[0]) == level
    untrained = "model.oracle=true" if "data=texture" in overrides else "model=oracle"
    for other in (untrained, "train.solver=exact"):      # nothing trained by SGD: no warning
        assert validate_config(compose_cfg(*overrides, other, "train.tau=50")) == []


def test_every_replicate_diverges(compose_cfg, tmp_path):
    res = run(compose_cfg(*TINY, "train.tau=1000"), tmp_path)
    assert res["status"] == "diverged"
    assert len(res["diverged_at"]) == 3 and all(1 <= k <= 300 for k in res["diverged_at"])
    assert res["diverged_replicates"] == res["unstable_replicates"] == 3
    assert any("stability limit" in w for w in res["warnings"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "diverged" and saved["diverged_at"] == res["diverged_at"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_some_replicates_diverge(compose_cfg, tmp_path):
    """One data point per replicate (N = 1, d = 1) at a small σ: SGD's growth factor ≈ |1 − τσ²x²| is set by
    the replicate's own x, so at τ = 150 the replicates with x² ≳ 2/(τσ²) = 1.3 diverge and the others
    do not (7 of 32 at seed 0; P(none or all) is negligible). The survivors are evaluated as usual."""
    R = 32
    res = run(compose_cfg(*TINY, f"replicates={R}", "data.dim=1", "data.n=1", "train.sigma=0.1", "train.tau=150",
                          "sampler.gamma=0.005"), tmp_path)
    diverged = [k for k in res["diverged_at"] if k >= 0]
    assert res["status"] == "ok" and len(res["diverged_at"]) == R
    assert 0 < len(diverged) == res["diverged_replicates"] < R
    assert all(1 <= k <= 300 for k in diverged)
    assert res["unstable_replicates"] >= len(diverged)
    for k in ("w2_exact", "w2_empirical"):
        assert res[k]["n"] == R - res["unstable_replicates"] and math.isfinite(res[k]["mean"])


def test_overflowing_particles_count_as_unstable(compose_cfg, tmp_path):
    """A finite but huge learned A (τ far beyond the limit, DDPM reads it at every level) overflows the
    float32 particles: those replicates are unstable, the run ends with status diverged, no crash."""
    res = run(compose_cfg(*TINY, *DDPM, "train=default", "train.tau=3"), tmp_path)     # b = 1
    assert res["status"] in ("ok", "diverged") and res["unstable_replicates"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["status"] == res["status"]


@pytest.mark.slow
def test_cli_diverged_run_exits_0(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(gsm_cmd(*TINY, "train.tau=1000", out=out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "status: diverged" in proc.stdout
    assert json.loads((out / "results.json").read_text())["status"] == "diverged"
    assert list((out / "tb").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------------- interruption

@pytest.fixture
def default_signals():
    """The dispositions these tests assume: SIGINT raises KeyboardInterrupt and SIGTERM kills, as in an
    interactive shell. A background job of a non-interactive shell starts with SIGINT ignored, which gsm
    deliberately respects (`interruptible` leaves it alone); restored afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig,exc", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_interruptible_turns_the_signal_into_an_exception_and_restores_the_handler(sig, exc, default_signals):
    before = signal.getsignal(sig)
    with pytest.raises(exc):
        with interruptible():
            os.kill(os.getpid(), sig)
            time.sleep(1)          # the handler runs at the next bytecode; never reached
    assert signal.getsignal(sig) is before
    assert issubclass(Terminated, KeyboardInterrupt)


def test_a_signal_inside_deferred_is_raised_when_the_block_ends(default_signals):
    done = []
    with pytest.raises(Terminated):
        with interruptible():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)    # the handler has run by now: it must not have raised here
                with deferred():   # nested: raised only at the outermost exit
                    pass
                done.append(True)
            done.append(False)     # never reached
    assert done == [True]


def test_a_signal_inside_a_tensorboard_call_is_raised_after_it(compose_cfg, tmp_path, monkeypatch, default_signals):
    """The run's writer calls are `deferred`: a SIGTERM arriving inside one (sent here by the call itself) is
    raised once TensorBoard's code has returned, never inside it (an exception in its queue hand-off could
    make close() wait 120 s: tools/stress_signals.py)."""
    from torch.utils.tensorboard import SummaryWriter as TorchWriter
    real, seen = TorchWriter.add_scalar, {}

    def add_scalar(self, tag, *args, **kwargs):
        signalled = tag == "train/dsm_loss" and "sent" not in seen
        if signalled:
            seen["sent"] = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)                 # the handler has run by now
        real(self, tag, *args, **kwargs)
        if signalled:
            seen["returned"] = True

    monkeypatch.setattr(TorchWriter, "add_scalar", add_scalar)
    with pytest.raises(Terminated):
        run(compose_cfg(*TINY, "train.log_every=10"), tmp_path)
    assert seen == {"sent": True, "returned": True}
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == "SIGTERM"


def test_a_second_sigterm_is_ignored_and_a_second_sigint_raises(default_signals):
    with pytest.raises(Terminated):
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    with interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except Terminated:         # cleanup: a second SIGTERM does nothing
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def sigint_now():
    """SIGINT to this process; its handler has run when this returns."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)


def test_a_held_sigint_is_raised_when_the_block_ends_not_inside(default_signals):
    from gsm.cli import sigint
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint.held():
            sigint_now()
            with sigint.held():     # nested: raised only when the outer block ends
                pass
            done.append(True)
    assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_released_raises_a_held_sigint_on_entry_and_a_new_one_at_once_then_holds_again(default_signals):
    from gsm.cli import sigint
    done = []
    with sigint.held():
        sigint_now()
        with pytest.raises(KeyboardInterrupt):
            with sigint.released():
                done.append("entered")      # never reached
        with pytest.raises(KeyboardInterrupt):
            with sigint.released():
                sigint_now()
                done.append("not raised")   # never reached
        sigint_now()                          # held again: noted ...
        with pytest.raises(KeyboardInterrupt):
            sigint.release()                  # ... and raised when the hold ends
        with pytest.raises(KeyboardInterrupt):
            sigint_now()                      # the rest of the block: at once
    assert done == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_check_raises_a_held_sigint_at_once_and_holds_on(default_signals):
    from gsm.cli import sigint
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint.held():
            sigint.check()                    # none noted: nothing
            sigint_now()
            with pytest.raises(KeyboardInterrupt):
                sigint.check()
            sigint.check()                    # raised once only
            sigint_now()                      # still held: raised when the block ends
            done.append(True)
    assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_is_not_held(default_signals):
    from gsm.cli import sigint
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with sigint.held():
        sigint_now()
        with sigint.released():
            sigint_now()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_sigint_while_run_reads_the_config_is_raised_after_it(compose_cfg, tmp_path, monkeypatch, default_signals):
    """OmegaConf is not safe to interrupt (a half-restored flag turns the KeyboardInterrupt into an
    AttributeError): run() reads the config inside `deferred`."""
    real, seen = gsm.pipeline.run.RunSpec.from_config, []

    def from_config(cfg):
        sigint_now()
        seen.append("read")
        return real(cfg)

    monkeypatch.setattr(gsm.pipeline.run.RunSpec, "from_config", from_config)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(*TINY), tmp_path)
    assert seen == ["read"] and not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("exc,name", [(Terminated, "SIGTERM"), (KeyboardInterrupt, "SIGINT")])
def test_interrupted_run_writes_results_and_tensorboard(compose_cfg, tmp_path, monkeypatch, exc, name):
    real = gsm.pipeline.matrix.train_linear_dsm

    def interrupted_training(*args, callback=None, **kw):
        real(*args, callback=callback, **{**kw, "steps": 100, "log_every": 10})
        raise exc()

    monkeypatch.setattr(gsm.pipeline.matrix, "train_linear_dsm", interrupted_training)
    with pytest.raises(exc):
        run(compose_cfg(*TINY), tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == name and "config" in res
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert len(acc.Scalars("train/dsm_loss")) == 10          # flushed on the way out


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,stage", [(signal.SIGTERM, 143, "training"), (signal.SIGINT, 130, "training"),
                                            (signal.SIGTERM, 143, "sampling")], ids=["TERM-train", "INT-train",
                                                                                     "TERM-sample"])
def test_cli_signal_writes_interrupted_results_and_exits_nonzero(tmp_path, sig, code, stage):
    out = tmp_path / "run"
    long = ["train.steps=10000000"] if stage == "training" else ["sampler.steps=100000000"]
    # SIGINT may be ignored in a child of a non-interactive shell: give the child the default handling
    proc = subprocess.Popen(gsm_cmd(*TINY, *long, "train.log_every=10", out=out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    try:
        deadline = time.time() + 600
        while not list((out / "tb").glob("events.out.tfevents.*")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)                        # well into training (10⁷ steps) / sampling (10⁸ ULA steps)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gsm: interrupted by"), err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == signal.Signals(sig).name
    assert ("diverged_at" in res) == (stage == "sampling")      # what was computed is kept
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert len(acc.Scalars("train/dsm_loss")) > 0


# ----------------------------------------------------------------------------------- determinism

def _without_seconds(res):
    return {k: v for k, v in res.items() if k != "seconds"}


@pytest.mark.parametrize("overrides", [[], ["model.symmetric=true", "sampler.particles_from=law"], DDPM,
                                       ["model=mlp", "model.width=8", "train.steps=100"], ["texture"]],
                         ids=["langevin", "symmetric,law", "ddpm", "mlp", "texture"])
def test_same_config_and_seed_give_identical_results_json(compose_cfg, tmp_path, overrides):
    cfg = compose_cfg(*TINY_TEXTURE) if overrides == ["texture"] else compose_cfg(*TINY, *overrides)
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    a, b = (json.loads((tmp_path / p / "results.json").read_text()) for p in "ab")
    assert a["status"] == "ok"
    # every field but `seconds` (json.loads reads NaN as nan, which != itself: compare the texts)
    assert json.dumps(_without_seconds(a), sort_keys=True) == json.dumps(_without_seconds(b), sort_keys=True)


# -------------------------------------------------------------------------------- numerical safety

def _rotate(lam, g):
    d = len(lam)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    S = (q * torch.as_tensor(lam, dtype=torch.float64)) @ q.T
    return 0.5 * (S + S.T)


def _cases(d=6):
    g = torch.Generator().manual_seed(0)
    X, Y = (torch.randn(n, d, generator=g, dtype=torch.float64) for n in (3, 2))
    low1, low2 = X.T @ X / 3, Y.T @ Y / 2                        # sample covariances with N < d: rank 3, 2
    low1, low2 = 0.5 * (low1 + low1.T), 0.5 * (low2 + low2.T)
    wide = torch.logspace(-12, 6, d).tolist()                     # eigenvalues from 1e-12 to 1e6
    full = _rotate([1, .5, .3, .2, .1, .05], g)
    return {
        "rank3_vs_full": (low1, full), "rank3_vs_rank2": (low1, low2), "zero_vs_full": (torch.zeros(d, d), full),
        "near_singular": (_rotate([1, 1e-3, 1e-8, 1e-12, 1e-14, 1e-16], g), _rotate([1, .5, 1e-10, 1e-13, 1e-15, 0], g)),
        "badly_scaled": (_rotate(wide, g), _rotate(wide[::-1], g)),
        "badly_scaled_vs_rotated": (_rotate(wide, g), _rotate(wide, g)),
        "badly_scaled_vs_low_rank": (_rotate(wide, g), low1),
    }


def _tolerance(S1, S2):
    """A float64 error bound for B². eigh is backward stable: each eigenvalue μ of M = S₁^½ S₂ S₁^½ is off
    by ≲ d·ε·‖M‖ ≤ d·ε·‖S₁‖‖S₂‖ (Weyl), and √ is ½-Hölder (|√(μ+δ) − √μ| ≤ √|δ|, the worst case: μ ≈ 0,
    which rank-deficient and near-singular inputs have), so the cross term 2 Σ√μ (d terms) is off by
    ≤ 2d·√(dε‖S₁‖‖S₂‖); the traces add ~dε(tr S₁ + tr S₂). (Measured errors are 5–10× below.)"""
    d, eps = S1.shape[-1], torch.finfo(torch.float64).eps
    n1, n2 = (float(torch.linalg.matrix_norm(S, 2)) for S in (S1, S2))
    return 2 * d * math.sqrt(d * eps * n1 * n2) + 10 * d * eps * float(S1.trace() + S2.trace())


def _reference(S1, S2):
    """B² in 60-digit arithmetic (mpmath): the exact value for the float64 inputs."""
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 60
    A, B = mp.matrix(S1.tolist()), mp.matrix(S2.tolist())
    w, V = mp.eigsy(A)
    R = V * mp.diag([mp.sqrt(max(x, 0)) for x in w]) * V.T
    mu, _ = mp.eigsy(R * B * R)
    tr = sum(A[i, i] + B[i, i] for i in range(A.rows))
    return float(tr - 2 * sum(mp.sqrt(max(x, 0)) for x in mu))


@pytest.mark.parametrize("name", list(_cases()))
def test_bures_matches_high_precision_reference(name):
    S1, S2 = _cases()[name]
    got = bures_wasserstein2(S1, S2)
    assert got.dtype == torch.float64 and torch.isfinite(got) and got >= 0
    assert abs(float(got) - _reference(S1, S2)) <= _tolerance(S1, S2)
    assert abs(float(got) - float(bures_wasserstein2(S2, S1))) <= _tolerance(S1, S2)     # symmetric
    for S in (S1, S2):
        assert 0 <= float(bures_wasserstein2(S, S)) <= _tolerance(S, S)                # B²(S, S) ≈ 0


def test_bures_is_finite_and_nonnegative_on_random_psd_batches():
    g = torch.Generator().manual_seed(1)
    d, B = 8, 200
    X = torch.randn(B, 3, d, generator=g, dtype=torch.float64)          # rank 3 < d
    scale = torch.logspace(-12, 6, d, dtype=torch.float64)
    Z = torch.randn(B, 4 * d, d, generator=g, dtype=torch.float64) * scale.sqrt()
    for S1, S2 in ((X.transpose(1, 2) @ X, Z.transpose(1, 2) @ Z / (4 * d)),
                   (1e-300 * X.transpose(1, 2) @ X, torch.zeros(B, d, d, dtype=torch.float64))):
        w = bures_wasserstein2(S1, S2)
        assert w.shape == (B,) and torch.isfinite(w).all() and (w >= 0).all()


def test_evaluation_is_float64():
    x = torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(0))      # float32 particles
    C = second_moment(x)
    assert C.dtype == torch.float64
    S = torch.eye(3)
    w = bures_wasserstein2(S, C.float())
    assert w.dtype == torch.float64
    assert torch.equal(w, bures_wasserstein2(S.double(), C.float().double()))
    from gsm.samplers.ddpm import DDPM
    from gsm.samplers.langevin import Langevin
    A = torch.eye(3).expand(2, 1, 3, 3).float()
    assert Langevin(steps=10).covariance(A).dtype == torch.float64
    ddpm = DDPM(T=20, steps=4)
    assert ddpm.covariance(A.expand(2, ddpm.noise_levels()[0].numel(), 3, 3)).dtype == torch.float64


# ---------------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("where", ["json.dumps", "write_text"])
def test_crash_mid_write_keeps_previous_results_json(tmp_path, monkeypatch, where):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"status": "ok", "w2_exact": 1.0})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if where == "json.dumps":
        monkeypatch.setattr(json, "dumps", crash)
    else:                       # half the text reaches the temporary file, then the write fails
        def half_then_crash(self, text, *args, **kwargs):
            with open(self, "w") as f:
                f.write(text[: len(text) // 2])
            crash()
        monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_json_atomic(path, {"status": "interrupted", "w2_exact": 2.0, "pad": "x" * 10000})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]       # no temporary file left
