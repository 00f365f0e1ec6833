"""Studies: the presets (conf/experiment), `gsm-report` and the joblib / submitit launchers, through the
real CLI in subprocesses (hydra.sweep.dir = tmp_path)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gsm.cli.report import main as report_main

# figures=false: a sweep's per-job figures are not what these tests read (gsm-report draws its own), and drawing
# is most of a tiny job (tests/conftest.py)
TINY = ["replicates=3", "data.dim=3", "data.n=30", "train.steps=300", "sampler.steps=20",
        "sampler.particles=50", "progress=false", "figures=false"]
PRESETS = ["vs_n", "vs_tau", "vs_gamma", "vs_sigma", "ddpm_vs_steps", "ddpm_vs_tmin", "linear_vs_mlp"]


def sweep(sweep_dir, *overrides, cmd=(sys.executable, "-m", "gsm"), timeout=900):
    """Runs `gsm -m <overrides> hydra.sweep.dir=<sweep_dir>`; returns the completed process."""
    proc = subprocess.run([*cmd, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def job_interval(job_dir: Path):
    """(pid, start, end) of one job: the pid from its TensorBoard event file name
    (events.out.tfevents.<time>.<host>.<pid>.<n>), end = mtime of results.json, start = end − seconds."""
    event = next((job_dir / "tb").glob("events.out.tfevents.*"))
    end = (job_dir / "results.json").stat().st_mtime
    return int(event.name.split(".")[-2]), end - json.loads((job_dir / "results.json").read_text())["seconds"], end


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_as_a_multirun(compose_cfg, name):
    cfg = compose_cfg(f"+experiment={name}")
    assert cfg.replicates >= 16
    from hydra import compose, initialize_config_module
    with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
        hcfg = compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert "MULTIRUN" in str(hcfg.hydra.mode) and len(hcfg.hydra.sweeper.params) >= 1


@pytest.mark.slow
def test_vs_n_sweep_then_report_matches_theory(tmp_path):
    """Issue 6 acceptance, small: the vs_n preset (d = 4, N = 2d … 40d) through `python -m gsm`, then
    `gsm-report`: the CSV has one ok row per N, the PNG is a PNG, and w2_exact is within 3 s.e. of
    w2_predicted for every N ≥ 5d."""
    d, ns = 4, [8, 20, 40, 160]
    sweep(tmp_path, "+experiment=vs_n", f"data.dim={d}", "data.n=" + ",".join(map(str, ns)), "replicates=48",
          "train.steps=2000", "sampler.particles=200", "progress=false")
    assert report_main([str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert sorted(int(r["data.n"]) for r in rows) == ns and all(r["status"] == "ok" for r in rows)
    png = tmp_path / "report_data.n.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert list((tmp_path / "tb_report").glob("events.out.tfevents.*"))
    for r in rows:
        assert float(r["term_generalization"]) > 0 and float(r["relaxation_times"]) >= 5
        if int(r["data.n"]) >= 5 * d:
            mean, se, pred = float(r["w2_exact_mean"]), float(r["w2_exact_stderr"]), float(r["w2_predicted"])
            assert abs(mean - pred) <= 3 * se, r
            assert r["in_regime"] == "True"


@pytest.mark.slow
def test_sweep_with_a_diverging_job_finishes_and_the_report_lists_it(tmp_path):
    """One τ is so large that every replicate's SGD diverges: that job writes status `diverged` and
    exits 0, the sweep goes on, and gsm-report (python -m gsm.cli.report) lists it (also a missing job)."""
    sweep(tmp_path, *TINY, "train.tau=0.005,100")
    res = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["status"] for r in res] == ["ok", "diverged"]
    shutil.copytree(tmp_path / "1" / ".hydra", tmp_path / "2" / ".hydra")    # a job that never wrote results
    proc = subprocess.run([sys.executable, "-m", "gsm.cli.report", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "finished, diverged: job 1 (train.tau=100): every replicate diverged" in proc.stdout
    assert "missing job 2 (train.tau=100): no results.json" in proc.stdout
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["job"], r["train.tau"], r["status"]) for r in rows] == [
        ("0", "0.005", "ok"), ("1", "100", "diverged"), ("2", "100", "missing")]
    assert rows[1]["unstable_replicates"] == "3" and rows[1]["w2_exact_mean"] == ""
    assert (tmp_path / "report_train.tau.png").exists()


@pytest.mark.slow
def test_report_with_two_swept_parameters_draws_one_figure_per_combination(tmp_path):
    """model × data.n: x = data.n (the numeric parameter), one PNG per model."""
    sweep(tmp_path, *TINY, "model=linear,oracle", "data.n=20,40")
    out = report_main([str(tmp_path), "--no-tensorboard"])
    assert out == 0
    rows = read_csv(tmp_path / "report.csv")
    assert {(r["model"], r["data.n"]) for r in rows} == {(m, n) for m in ("linear", "oracle") for n in ("20", "40")}
    assert sorted(p.name for p in tmp_path.glob("report_*.png")) == [
        "report_data.n__model=linear.png", "report_data.n__model=oracle.png"]


@pytest.mark.slow
def test_a_sigint_to_a_joblib_sweeps_own_process_stops_the_sweep(tmp_path):
    """`kill -INT <gsm's pid>` during a joblib sweep of endless jobs: gsm holds SIGINT outside the run
    (gsm.cli.sigint), but the sweep's process only waits on its workers, so `JoblibSigint` releases it: exit
    130 at once, no job process left. Without the callback this waits for the jobs (10⁸ steps: for ever)."""
    import glob
    import signal
    import time
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "gsm", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             "seed=0,1,2,3", *TINY, "train.steps=100000000", "threads=1", f"hydra.sweep.dir={sweep_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    try:
        deadline = time.time() + 300
        while len(glob.glob(str(sweep_dir / "*" / "tb" / "events*"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)                        # both jobs are training
        proc.send_signal(signal.SIGINT)        # the sweep's own process only
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "gsm: interrupted by SIGINT", err[-3000:]
    time.sleep(1.0)
    left = subprocess.run(["pgrep", "-f", f"gsm.cli.job .*{sweep_dir}"], capture_output=True, text=True).stdout
    assert not left.strip(), left


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    """hydra/launcher=joblib through the `gsm` console script: 4 jobs on 2 loky workers. Each job runs in
    a process of its own (`python -m gsm.cli.job`, so that a killed job cannot break the worker pool): 4
    distinct processes; parallel: two of them overlap in time."""
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    if exe is None:
        pytest.skip("the gsm console script is not installed")
    # each job's run must outlast the stagger of the workers' start-ups (a child imports torch: ~2 s, more
    # under load); at 10 000 steps (~1 s) a CI run saw the two workers' jobs one after the other
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "train.steps=40000",
          "seed=0,1,2,3", cmd=(exe,))
    jobs = [job_interval(tmp_path / str(i)) for i in range(4)]
    assert len({pid for pid, _, _ in jobs}) == 4 and os.getpid() not in {pid for pid, _, _ in jobs}, jobs
    overlaps = [(a, b) for a in jobs for b in jobs if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlaps, jobs
    assert all(json.loads((tmp_path / str(i) / "results.json").read_text())["status"] == "ok" for i in range(4))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    """hydra/launcher=submitit_local (the code path of submitit_slurm) through `python -m gsm`: 2 jobs,
    each in its own submitit process, both ok, submitit's folder in the sweep dir."""
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY, "seed=0,1")
    jobs = [job_interval(tmp_path / str(i)) for i in range(2)]
    assert jobs[0][0] != jobs[1][0]
    assert all(json.loads((tmp_path / str(i) / "results.json").read_text())["status"] == "ok" for i in range(2))
    assert (tmp_path / ".submitit").is_dir()
