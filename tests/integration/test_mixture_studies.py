"""The beyond-Gaussian studies end to end, tiny: `gsm -m +experiment=where_theory_stops` (and memorization) through
the CLI, then gsm-report writes their tables and figures (docs/beyond_gaussian.md)."""
import subprocess
import sys

import pytest

from gsm.cli.report import main as report_main

pytest.importorskip("ot", reason="data=mixture needs pip install 'gsm[mixture]'")
TINY = ["replicates=2", "sampler.particles=40", "data.ot_particles=40", "train.log_every=10", "figures=false"]   # the report draws its own


def sweep(sweep_dir, *overrides):
    proc = subprocess.run([sys.executable, "-m", "gsm", "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_where_theory_stops_tiny_sweep_then_report(tmp_path):
    sweep(tmp_path, "+experiment=where_theory_stops", "data.separation=0,4", "data.n=20", "model=linear,mlp,oracle",
          "train.steps=20")
    assert report_main([str(tmp_path), "--no-tensorboard"]) == 0
    md = (tmp_path / "report_where_theory_stops.md").read_text()
    assert (tmp_path / "report_where_theory_stops.png").read_bytes()[:4] == b"\x89PNG"
    assert md.count("| 4 | ") == 3 and "| 0 | oracle |" in md and "* N = 20: the MLP" in md
    assert md.startswith("Sampler: DDPM, K = 10."), md[:200]


@pytest.mark.slow
def test_where_theory_stops_flow_tiny_sweep_then_report(tmp_path):
    """The flow arm's preset runs the exact and the empirical mixture velocities (sampler=flow, objective=cfm)."""
    sweep(tmp_path, "+experiment=where_theory_stops_flow", "data.separation=4", "data.n=20", "model=empirical,oracle")
    assert report_main([str(tmp_path), "--no-tensorboard"]) == 0
    md = (tmp_path / "report_where_theory_stops.md").read_text()
    assert "| 4 | oracle |" in md and "| 4 | empirical |" in md
    assert md.startswith("Sampler: Flow (euler), K = 10."), md[:200]


@pytest.mark.slow
def test_memorization_tiny_sweep_then_report(tmp_path):
    sweep(tmp_path, "+experiment=memorization", "data.n=4,8", "train.steps=10,20", "model=mlp,empirical")
    assert report_main([str(tmp_path), "--no-tensorboard"]) == 0
    md = (tmp_path / "report_memorization.md").read_text()
    assert (tmp_path / "report_memorization.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 4 | 10 |" in md and "| 8 | 20 |" in md and "| N | onset (steps) |" in md
