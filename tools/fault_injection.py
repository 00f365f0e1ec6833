"""Fault injection: a multirun sweep with the joblib launcher, faults injected while it runs, then a
check that every job ends with exactly one truthful status and that gsm-report accounts for every job.

    python tools/fault_injection.py                    # 50 jobs, 2 workers (≈ 2–3 min on 2 cores)
    python tools/fault_injection.py --jobs 60 --workers 4 --seed 3 --keep

Faults, on jobs drawn at random (seeded): SIGKILL to a job's process while it runs (expected: `lost`,
or `ok` if it had already written its final record), SIGTERM (`interrupted`, or `ok` likewise), a user
model that raises (`user_models.FaultOnSeed`: `failed` with the message) and a job folder made read-only
while the job runs (`ok`: the final record is written in place, or atomically when running as root, for
whom permission bits do not apply). Every other job must be `ok`. Checks: every results.json is strict
JSON; an ended record is complete (ok: the W2 numbers, seconds; failed: error; interrupted: signal);
nothing is left `running`; the sweep ran every job (a killed job does not abort it) and exited 1 (some
failed); gsm-report's rows and statuses are the same as these. Exit status 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"     # user_models.FaultOnSeed lives there
JOB = ["replicates=2", "data.dim=3", "data.n=30", "train.steps=5000", "sampler.steps=1000", "sampler.particles=50",
       "progress=false", "threads=1", "model=custom", "model._target_=user_models.FaultOnSeed"]
OK_KEYS = ("config", "w2_exact", "w2_empirical", "w2_predicted", "seconds", "unstable_replicates")


def read(path: Path):
    """results.json as strict JSON (NaN/Infinity rejected); None while absent or mid-write."""
    def reject(token):
        raise ValueError(f"not strict JSON: {token}")
    try:
        return json.loads(path.read_text(), parse_constant=reject)
    except (OSError, ValueError):
        return None


def plan(jobs: int, rng: random.Random) -> dict:
    """{job: fault}: ~10 % SIGKILL, ~10 % SIGTERM, one raising model, one read-only folder."""
    n = max(1, jobs // 10)
    picked = rng.sample(range(jobs), 2 * n + 2)
    faults = {j: "SIGKILL" for j in picked[:n]}
    faults.update({j: "SIGTERM" for j in picked[n:2 * n]})
    faults[picked[2 * n]] = "raise"
    faults[picked[2 * n + 1]] = "read-only"
    return faults


def sweep(sweep_dir: Path, jobs: int, workers: int, faults: dict) -> tuple[int, dict]:
    """Runs the sweep, injecting the signal and read-only faults into jobs once they record `running`.
    Returns (the sweep's exit status, {job: what was done})."""
    raising = next(j for j, f in faults.items() if f == "raise")
    env = {**os.environ, "GSM_FAULT_SEED": str(raising),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "gsm", "-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}",
           f"seed=range(0,{jobs})", *JOB, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    done = {}
    while proc.poll() is None:
        for job, fault in faults.items():
            if job in done or fault == "raise":
                continue
            res = read(sweep_dir / str(job) / "results.json")
            if not res or res.get("status") != "running":
                continue
            if fault == "read-only":
                os.chmod(sweep_dir / str(job), stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
            else:
                try:
                    os.kill(res["process"]["pid"], getattr(signal, fault))
                except ProcessLookupError:
                    pass
            done[job] = fault
        time.sleep(0.05)
    stderr = proc.stderr.read()
    for job in faults:                        # for cleanup and for the report to read
        d = sweep_dir / str(job)
        if d.exists():
            os.chmod(d, 0o755)
    return proc.returncode, {"done": done, "stderr": stderr}


def expected(fault, res) -> set:
    """The statuses that are true for a job given its fault and what it recorded."""
    if fault == "SIGKILL":
        return {"lost", "ok"}
    if fault == "SIGTERM":
        return {"interrupted", "ok"}
    if fault == "raise":
        return {"failed"}
    return {"ok"}


def check(sweep_dir: Path, jobs: int, faults: dict, code: int, injected: dict) -> list[str]:
    from gsm.cli.report import report
    from gsm.pipeline.status import job_status
    problems = []
    statuses = {}
    for job in range(jobs):
        d = sweep_dir / str(job)
        res = read(d / "results.json")
        if res is None:
            problems.append(f"job {job}: no results.json, or not strict JSON")
            continue
        status = job_status(d, res)
        statuses[job] = status
        fault = faults.get(job) if job in injected["done"] or faults.get(job) == "raise" else None
        if status not in expected(fault, res):
            problems.append(f"job {job} ({fault or 'no fault'}): status {status}, expected {expected(fault, res)}")
        if status == "ok" and not all(k in res and res[k] is not None for k in OK_KEYS):
            problems.append(f"job {job}: ok but incomplete: {sorted(res)}")
        if status == "failed" and not (res.get("error", {}).get("message", "").startswith("injected fault")):
            problems.append(f"job {job}: failed without the user model's message: {res.get('error')}")
        if status == "interrupted" and res.get("signal") != "SIGTERM":
            problems.append(f"job {job}: interrupted without signal SIGTERM: {res.get('signal')}")
    if code != 1:
        problems.append(f"the sweep exited {code}, expected 1 (some jobs failed)")
    rows = report(sweep_dir, tensorboard=False)["rows"]
    seen = {r["job"]: r["status"] for r in rows}
    if seen != statuses:
        problems.append(f"gsm-report disagrees: {sorted(set(seen.items()) ^ set(statuses.items()))}")
    return problems, statuses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, help="the sweep folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the sweep folder")
    args = ap.parse_args(argv)
    faults = plan(args.jobs, random.Random(args.seed))
    sweep_dir = args.dir or Path(tempfile.mkdtemp(prefix="gsm_faults_")) / "sweep"
    t = time.time()
    code, injected = sweep(sweep_dir, args.jobs, args.workers, faults)
    problems, statuses = check(sweep_dir, args.jobs, faults, code, injected)
    sent = Counter(injected["done"].values())
    print(f"{args.jobs} jobs, {args.workers} joblib workers, {time.time() - t:.0f} s; sweep exit status {code}")
    print(f"faults planned: {dict(Counter(faults.values()))}; injected while running: {dict(sent)}"
          f" (the others had ended before)")
    print(f"statuses: {dict(Counter(statuses.values()))}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if problems:
        print(injected["stderr"][-3000:])
    print("fault injection: " + ("FAILED" if problems else "passed"))
    if not args.keep and args.dir is None:
        shutil.rmtree(sweep_dir.parent, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
