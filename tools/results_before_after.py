"""Every results.json number of a set of runs, before and after a change: two source trees, the same
commands, each value compared to a relative tolerance (issue 26: the spectral VP path rewritten).

    git archive d036318 | tar -x -C /tmp/base          # the tree before (its gsm.conf: conf/)
    python tools/results_before_after.py --before /tmp/base --after . [--spectrum lam.npy] [--only em]

Each case runs `python -m gsm <overrides>` with PYTHONPATH set to one tree. Compared: every number in
results.json (w2_exact, w2_empirical, w2_predicted, each prediction term, diagnostics, ...), except
`seconds` and the process record. Prints, per case, the largest relative difference and its key; exits 1
when one exceeds --rtol.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = {"seconds", "process", "config", "warnings"}


def cases(spectrum: str) -> dict:
    """name: overrides. The six chain schemes and the two exact laws at the spectrum's d (K = 1000), one
    init=prior run, train.solver=exact on the spectral path, DSM-SGD on the matrix path, and the defaults."""
    vp = ["sampler=vp", "model=oracle", "data=file", f"data.path={spectrum}", "sampler.steps=1000",
          "replicates=2", "sampler.figure=false"]
    out = {f"oracle {sc}": [*vp, f"sampler.scheme={sc}"] for sc in ("em", "ei", "ddpm", "euler", "heun", "rk4",
                                                                    "sde", "ode")}
    out["oracle em, figure"] = [*vp[:-1], "sampler.scheme=em", "replicates=1"]
    out["oracle heun init=prior"] = [*vp, "sampler.scheme=heun", "sampler.init=prior"]
    out["solver=exact em d=128"] = ["sampler=vp", "model=linear", "train.solver=exact", "data.dim=128",
                                    "replicates=4", "sampler.steps=200"]
    out["solver=exact rk4 init=prior d=64"] = ["sampler=vp", "model=linear", "train.solver=exact", "data.dim=64",
                                               "replicates=4", "sampler.steps=100", "sampler.scheme=rk4",
                                               "sampler.init=prior"]
    out["solver=sgd ei d=16"] = ["sampler=vp", "model=linear", "train.solver=sgd", "data.dim=16", "replicates=4",
                                 "sampler.steps=50", "sampler.scheme=ei", "train.steps=2000"]
    out["sampler=ddpm"] = ["sampler=ddpm"]
    out["defaults"] = []
    return out


def run(tree: Path, overrides: list, folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, "-m", "gsm", *overrides, "progress=false", f"hydra.run.dir={folder}"]
    subprocess.run(cmd, check=True, env=env, cwd=folder.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads((folder / "results.json").read_text())


def numbers(x, key=""):
    """(key, float) for every number in a results dict (nested keys joined by '.')."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in SKIP:
                yield from numbers(v, f"{key}.{k}" if key else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{key}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield key, float(x)


def compare(before: dict, after: dict, rtol: float):
    """(largest relative difference, its key, keys compared, keys missing on one side, the keys over rtol
    with their difference relative to the run's W2² scale |w2_exact| (a term at rounding level, e.g. a
    difference of two W2² values, can change relatively while its change is ≤ 1e-16 of W2²))."""
    b, a = dict(numbers(before)), dict(numbers(after))
    scale = abs((before.get("w2_exact") or {}).get("mean") or before.get("w2_predicted") or 0.0)
    worst, where, over = 0.0, "", {}
    for k in sorted(b.keys() & a.keys()):
        x, y = b[k], a[k]
        rel = 0.0 if x == y else abs(x - y) / max(abs(x), abs(y))
        if rel > worst:
            worst, where = rel, k
        if rel > rtol:
            over[k] = (x, y, abs(x - y) / scale if scale else float("inf"))
    return worst, where, len(b.keys() & a.keys()), sorted(b.keys() ^ a.keys()), over


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=Path("."))
    ap.add_argument("--spectrum", default="/tmp/me/lam.npy", help="a (d,) .npy spectrum (d = 3072, CIFAR-like)")
    ap.add_argument("--rtol", type=float, default=1e-12)
    ap.add_argument("--only", default="", help="the cases whose name contains this")
    args = ap.parse_args(argv)
    bad = 0
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; rtol {args.rtol:g}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, over) in enumerate(cases(args.spectrum).items()):
            if args.only not in name:
                continue
            before = run(args.before, over, Path(tmp) / f"b{i}")
            after = run(args.after, over, Path(tmp) / f"a{i}")
            worst, where, n, missing, over = compare(before, after, args.rtol)
            ok = worst <= args.rtol and not missing and before.get("status") == after.get("status") == "ok"
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {name:<34} {n:4d} numbers, max rel. diff {worst:.2e} ({where or '-'})"
                  f"  w2_exact {(before.get('w2_exact') or {}).get('mean')!r} → {(after.get('w2_exact') or {}).get('mean')!r}"
                  + (f"  missing on one side: {missing}" if missing else ""), flush=True)
            for k, (x, y, of_w2) in over.items():
                print(f"      {k}: {x!r} → {y!r}  (change {of_w2:.1e} of W2²)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
