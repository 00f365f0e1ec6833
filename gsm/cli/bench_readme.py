"""`python -m gsm.bench --only readme`: the README tour's times, measured as a user meets them.

Each command of the README's tour block ("A five-minute tour") runs as typed, `bash -c <command>` in a
fresh empty folder (so it writes its own outputs/, and `gsm-report` with no argument finds the sweep
before it), whole-command wall time, imports included. A command is repeated (median of `repeat`) when
its first run took under CHEAP seconds. The table, with the load average before each command and the
machine, replaces what lies between the README's MARKERS, when README.md (beside the package, a clone)
has them. `--dry-run` lists the commands without running them.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gsm.cli.bench_docs import replace_between

README = Path(__file__).resolve().parents[2] / "README.md"
MARKERS = ("<!-- gsm.bench readme: begin -->", "<!-- gsm.bench readme: end -->")
CHEAP = 20.0                     # seconds: commands below this are repeated
NOT_TIMED = ("tensorboard",)     # a server: it does not end


def tour_commands(text: str) -> list[str]:
    """The commands of the tour's bash block (comments stripped), those that end by themselves."""
    block = re.search(r"## A five-minute tour.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [c for c in lines if c and not c.startswith(NOT_TIMED)]


def timed(command: str) -> tuple[float, int]:
    """(wall seconds, exit status) of one run of `command` in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="gsm-bench-readme-") as cwd:
        t = time.perf_counter()
        code = subprocess.call(["bash", "-c", command], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        return time.perf_counter() - t, code


def measure(commands: list[str], repeat: int = 3) -> list[dict]:
    """[{command, seconds (median), runs, load (1-min average before the first run), status}]."""
    rows = []
    for command in commands:
        load = os.getloadavg()[0]
        first, code = timed(command)
        times = [first] + [timed(command)[0] for _ in range(repeat - 1 if first < CHEAP and code == 0 else 0)]
        rows.append({"command": command, "seconds": statistics.median(times), "runs": len(times), "load": load,
                     "status": code})
    return rows


def markdown(rows: list[dict], machine: str) -> str:
    """The README's table of tour times."""
    lines = [f"Measured by `python -m gsm.bench --only readme` ({machine}): whole-command wall time, median of "
             f"the runs, with the 1-minute load average before the command.", "",
             "| command | seconds | runs | load |", "|---|---|---|---|"]
    for r in rows:
        failed = "" if r["status"] == 0 else f" (exit {r['status']})"
        lines.append(f"| `{r['command']}` | {r['seconds']:.0f}{failed} | {r['runs']} | {r['load']:.1f} |")
    return "\n".join(lines)


def rewrite_readme(table: str, path: Path = README) -> bool:
    """Puts `table` between the MARKERS of README.md; False when there is no README with them."""
    if not path.is_file():
        return False
    text = replace_between(path.read_text(), *MARKERS, table)
    if text is None:
        return False
    path.write_text(text)
    return True
