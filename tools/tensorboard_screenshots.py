"""TensorBoard as a user sees it: starts `tensorboard --logdir DIR --port <free>` (default flags), waits
until it serves, checks over its HTTP API that every run's comparison (image and text `eval/comparison`)
and hparams are there, and takes headless Chromium screenshots of the Time Series, Custom Scalars,
Images, Text and HParams tabs into OUT (<tab>.png).

    python tools/tensorboard_screenshots.py /tmp/h4/run /tmp/h4/shots/run
    python tools/tensorboard_screenshots.py /tmp/h4/sweep /tmp/h4/shots/sweep --budget 30000

Needs Debian's `chromium` (apt-get install -y chromium). Exit status 1 when a check fails (the message
says which), 0 otherwise; the screenshots are to be looked at."""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

TABS = ("timeseries", "custom_scalars", "images", "text", "hparams")
COMPARISON = "eval/comparison"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str, data: bytes | None = None):
    req = urllib.request.Request(f"http://localhost:{port}/{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


@contextmanager
def tensorboard(logdir: Path, log: Path):
    """`tensorboard --logdir logdir --port <free port>` with its default flags; yields the port; ends it."""
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or shutil.which("tensorboard")
    if exe is None:
        sys.exit("tensorboard_screenshots: no `tensorboard` executable (pip install tensorboard)")
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "--logdir", str(logdir), "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_runs(port: int, runs: int, seconds: float = 120) -> dict:
    """Polls /data/plugin/images/tags until `runs` runs serve the comparison image (the loader reads the
    event files in the background); returns {run: [image tags]} as served then."""
    served, deadline = {}, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            served = get_json(port, "data/plugin/images/tags")
        except (OSError, urllib.error.URLError):     # not listening yet
            time.sleep(1.0)
            continue
        if sum(COMPARISON in tags for tags in served.values()) >= runs:
            break
        time.sleep(1.0)
    return served


def served_checks(port: int, runs: int) -> list[str]:
    """What is missing from what the server serves: the comparison image and text of each run, the
    Custom Scalars margin charts, one HParams session per run with its W2² metrics. [] when all is there."""
    problems = []
    images = wait_for_runs(port, runs)
    texts = get_json(port, "data/plugin/text/tags")
    for name, served in (("image", images), ("text", texts)):
        have = [run for run, tags in served.items() if {COMPARISON, COMPARISON + "/text_summary"} & set(tags)]
        if len(have) < runs:
            problems.append(f"{COMPARISON} {name} served for {len(have)} of {runs} runs: {sorted(have)}")
    layout = get_json(port, "data/plugin/custom_scalars/layout")
    margins = [c for cat in layout.get("category", []) for c in cat["chart"] if "margin" in c]
    if not margins:
        problems.append(f"no Custom Scalars margin chart in {layout}")
    query = json.dumps({"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                                   "STATUS_FAILURE", "STATUS_RUNNING"],
                        "colParams": [], "startIndex": 0, "sliceSize": 1000}).encode()
    groups = get_json(port, "data/plugin/hparams/session_groups", query).get("sessionGroups", [])
    experiment = get_json(port, "data/plugin/hparams/experiment", json.dumps({"experimentName": ""}).encode())
    metrics = {m["name"]["tag"] for m in experiment.get("metricInfos", [])}
    if len(groups) < runs:
        problems.append(f"HParams: {len(groups)} session groups for {runs} runs")
    if not {"eval/w2_exact", "eval/w2_predicted", "regime/ok"} <= metrics:
        problems.append(f"HParams metrics {sorted(metrics)} lack eval/w2_exact, eval/w2_predicted or regime/ok")
    return problems


def screenshot(port: int, tab: str, png: Path, budget_ms: int, size: str) -> None:
    """One headless Chromium screenshot of http://localhost:<port>/#<tab>, in a fresh profile."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("tensorboard_screenshots: no chromium (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                        f"--screenshot={png}", f"--window-size={size}", f"http://localhost:{port}/#{tab}"],
                       capture_output=True, timeout=240, check=False)


def count_runs(logdir: Path) -> int:
    """The runs under logdir: folders with results.json whose status is ok (each writes a comparison)."""
    found = [p for p in [logdir, *logdir.rglob("*")] if (p / "results.json").is_file()]
    return sum(json.loads((p / "results.json").read_text()).get("status") == "ok" for p in found)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logdir", type=Path, help="a run or sweep folder (what `tensorboard --logdir` gets)")
    ap.add_argument("out", type=Path, help="folder for <tab>.png and tensorboard.log")
    ap.add_argument("--budget", type=int, default=20000, help="Chromium's --virtual-time-budget, ms")
    ap.add_argument("--size", default="1600,1200", help="Chromium's --window-size")
    ap.add_argument("--tabs", nargs="+", default=list(TABS), choices=TABS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = count_runs(args.logdir)
    with tensorboard(args.logdir, args.out / "tensorboard.log") as port:
        problems = served_checks(port, runs)
        for tab in args.tabs:
            screenshot(port, tab, args.out / f"{tab}.png", args.budget, args.size)
            print(f"{args.out / (tab + '.png')}")
    for p in problems:
        print(f"tensorboard_screenshots: {p}", file=sys.stderr)
    print(f"{runs} runs served: {'ok' if not problems else 'MISSING (above)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
