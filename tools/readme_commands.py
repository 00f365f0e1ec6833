"""Every `gsm …` command in the README's and docs' code blocks, run as a user types it.

    python tools/readme_commands.py            # the commands CI runs (tests/integration/test_readme_commands.py)
    python tools/readme_commands.py --all      # every page's commands, the long ones (LONG) too

For each command it prints its wall time, the measured and predicted W2² (w2_exact against w2_predicted,
or a neural score's w2_empirical_debiased against w2_predicted_linear), z and the regime verdict. A
command passes when it exits 0 with status ok, and either |z| ≤ 3 or the run says it is out of regime
(regime.ok false, with reasons). CI_OVERRIDES lists the extra overrides CI adds to a command (the README
says so next to it); LONG lists the commands CI does not run, with why.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# commands CI does not run (each still passes under `--all`), with the reason
LONG = {
    "gsm model=mlp optim=adam optim.lr=1e-3 train.batch_size=128 model.width=128 model.depth=3":
        "a width-128 MLP under 500 Langevin steps × 2000 particles × 64 replicates: minutes on 2 cores",
    "gsm +experiment=linear_vs_mlp": "a 6-job sweep with MLP jobs: minutes on 2 cores",
    "gsm data=texture model=fourier_linear data.size=256 data.n=16 replicates=2 sampler.particles=16 train.tau=2e-4":
        "a 256×256 texture (d = 65 536): minutes on a loaded 2-core machine",
    "gsm -m +experiment=vs_n": "a 7-job sweep (≈ 50 s); the presets and gsm-report are tested by tests/integration/test_studies.py",
    "gsm +experiment=where_theory_stops": "a 48-job sweep with 12 MLP jobs: 4 min 14 s idle (docs/beyond_gaussian.md)",
    "gsm +experiment=memorization": "a 30-job sweep with MLP jobs up to 10000 steps: 2 min 45 s idle",
}
CI_REPLICATES = "replicates=16"     # what CI adds to every other command (the README says so)
# extra overrides CI adds (replicates only: the README says so beside the command)
# an MLP has no prediction to meet (the check is its status and verdict): CI trains it on a sixth of the SGD steps
CI_OVERRIDES = {
    "gsm model=mlp": ["replicates=4", "train.steps=4000"],
    "gsm model=mlp sampler=ddpm model.embedding=learned": ["replicates=4", "train.steps=1000"],
}
SKIP_PATTERNS = (
    r"\$PARTITION", r"hydra/launcher=submitit", r"_target_=my_pkg",   # a cluster; a user package (own tests)
    r"_target_=my_", r"hydra\.searchpath", r"data\.path=",          # files of the user's (docs' own tests)
    r"--cfg", r"--help", r"\.\.\.",
)


# CI runs the commands of these pages; the other pages' commands are variants that their own test files
# cover (tests/theory/test_vp.py, test_diffusers.py, test_edm.py, test_studies.py): `--all` runs them too
CI_PAGES = ("README.md", "diffusion.md", "neural.md", "textures.md")


def readme_commands(pages=None) -> list[str]:
    """The `gsm …` lines of every ```bash block (comments stripped, continuation lines joined), of the
    README and docs/ (or of the pages named in `pages`)."""
    cmds = []
    for path in DOCS:
        if pages is not None and path.name not in pages:
            continue
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                for part in line.split("&&"):       # `pip install … && gsm`: the gsm part
                    part = re.sub(r"^(OMP_NUM_THREADS=\d+\s+)", "", part.strip())
                    if re.match(r"^gsm(\s|$)", part) and "|" not in part \
                            and not any(re.search(p, part) for p in SKIP_PATTERNS):
                        cmds.append(re.sub(r"\s+", " ", part))
    return list(dict.fromkeys(cmds))


def ci_overrides(cmd: str) -> list[str]:
    """The overrides CI adds to `cmd`: its own (CI_OVERRIDES), else fewer replicates unless it sets them."""
    if cmd in CI_OVERRIDES:
        return CI_OVERRIDES[cmd]
    # textures already default to R = 4 (conf/data/texture.yaml)
    return [] if "replicates=" in cmd or "data=texture" in cmd else [CI_REPLICATES]


def _numbers(res: dict):
    """(measured mean, s.e., predicted) of a finished run, or None."""
    if res.get("w2_exact"):
        m, p = res["w2_exact"], res.get("w2_predicted")
    elif res.get("w2_empirical_debiased"):
        m, p = res["w2_empirical_debiased"], res.get("w2_predicted_linear")
    else:
        return None
    return m["mean"], m["stderr"], p


def check(res: dict) -> tuple[bool, str]:
    """(passes, one line): status ok and |z| ≤ 3, or out of regime with reasons."""
    if res.get("status") != "ok":
        return False, f"status {res.get('status')}"
    regime = res.get("regime") or {}
    nums = _numbers(res)
    z = math.nan
    if nums and nums[2] is not None:
        diff = nums[0] - nums[2]
        # the oracle score: every replicate is the same, s.e. 0, and the law is the prediction to rounding
        z = diff / nums[1] if nums[1] else (0.0 if abs(diff) <= 1e-8 * max(1.0, abs(nums[2])) else math.inf)
    line = (f"measured {nums[0]:.4g} ± {nums[1]:.2g}, predicted {nums[2]:.4g}, z = {z:+.2f}; " if nums else "") \
        + ("in regime" if regime.get("ok") else f"OUT OF REGIME: {(regime.get('reasons') or ['?'])[0]}")
    neural = "w2_predicted_linear" in res            # no prediction of its own: its verdict is the check
    if neural:
        return bool(regime.get("ok")), line
    # a linear run agrees within 3 s.e., or misses and its verdict says why (out of regime, a reason listed)
    explained = regime.get("ok") is False and bool(regime.get("reasons"))
    if abs(z) > 3 and explained:
        line += f" (|z| = {abs(z):.2g} > 3 accepted: out of regime with a reason)"
    return abs(z) <= 3 or explained, line


def run_command(cmd: str, out: Path, extra=()) -> tuple[bool, str, float]:
    """Runs `cmd` (+ extra overrides) in its own output folder; returns (passes, summary, seconds)."""
    multirun = " -m " in f" {cmd} " or "+experiment=" in cmd
    where = f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}"
    args = shlex.split(cmd)[1:] + list(extra) + ["progress=false", where]     # as the shell would: 'k=[a,b]'
    t0 = time.time()
    proc = subprocess.run(["gsm", *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.time() - t0
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", seconds
    files = sorted(out.glob("*/results.json")) if multirun else [out / "results.json"]
    checks = [check(json.loads(f.read_text())) for f in files]
    if not checks:
        return False, "no results.json", seconds
    bad = [line for ok, line in checks if not ok]
    summary = checks[0][1] if len(checks) == 1 else f"{len(checks)} jobs, {len(bad)} failing" + \
        (f": {bad[0]}" if bad else "")
    return not bad, summary, seconds


def main(argv=None) -> int:
    every = "--all" in (argv if argv is not None else sys.argv[1:])
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, cmd in enumerate(readme_commands(None if every else CI_PAGES)):
            if cmd in LONG and not every:
                print(f"skipped (LONG: {LONG[cmd]}): {cmd}")
                continue
            extra = [] if every else ci_overrides(cmd)
            ok, line, seconds = run_command(cmd, Path(tmp) / str(i), extra)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {cmd} {' '.join(extra)}\n           {line}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
