"""Start-up (issue 26): a tiny run imports nothing heavy that it does not use. Which modules, not how long
(the seconds are `python -m gsm.bench --only startup`)."""
import json
import os
import shutil
import subprocess
import sys

# The console script run in this interpreter, then the heavy modules it left in sys.modules.
WRAPPER = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
heavy = ["matplotlib", "sympy", "torch.fx.experimental.symbolic_shapes", "diffusers", "torch._dynamo", "scipy",
         "boto3", "botocore", "fsspec"]
print("MODULES " + json.dumps({m: m in sys.modules for m in heavy}))
"""


def imported_by(tmp_path, *overrides):
    exe = shutil.which("gsm", path=os.path.dirname(sys.executable)) or shutil.which("gsm")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, exe, "replicates=2", "train.steps=100", "sampler.steps=10",
                           "progress=false", f"hydra.run.dir={tmp_path}", *overrides],
                          capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES ")]
    assert line and (tmp_path / "results.json").is_file(), proc.stderr[-2000:]
    return json.loads(line[-1][len("MODULES "):])


def test_tiny_run_imports_no_heavy_module_it_does_not_use(tmp_path):
    mods = imported_by(tmp_path)
    assert not any(mods[m] for m in ("sympy", "torch.fx.experimental.symbolic_shapes", "diffusers",
                                     "torch._dynamo", "scipy")), mods
    # TensorBoard's remote file systems (gfile's s3:// and fsspec support), 0.2 s: a run's event file is local
    assert not any(mods[m] for m in ("boto3", "botocore", "fsspec")), mods


def test_run_without_figures_does_not_import_matplotlib(tmp_path):
    """A P–G cell (sampler=vp, the exact score, sampler.figure=false) draws nothing: no matplotlib; a default
    run draws its spectrum figure: matplotlib, imported when drawn."""
    cell = imported_by(tmp_path / "cell", "sampler=vp", "model=oracle", "sampler.figure=false", "data.dim=4")
    assert not cell["matplotlib"], cell


def test_figures_false_also_stops_a_samplers_own_figure(tmp_path):
    """figures=false reaches the samplers' own log hooks: sampler=vp on the full-matrix path (a DSM-SGD score)
    draws its trajectory figure unless figures=false, and then imports no matplotlib and writes no PNG; its
    trajectory scalars stay."""
    run = tmp_path / "vp"
    mods = imported_by(run, "sampler=vp", "sampler.steps=5", "data.dim=3", "figures=false")
    assert not mods["matplotlib"], mods
    assert not list(run.glob("figures/*.png"))
    drawn = tmp_path / "drawn"
    imported_by(drawn, "sampler=vp", "sampler.steps=5", "data.dim=3", "figures=true")
    assert (drawn / "figures" / "vp_trajectory_all_schemes.png").is_file()


def test_remote_file_systems_hidden_only_while_tensorboard_imports():
    """torch_summary_writer hides boto3/botocore/fsspec from TensorBoard's import only: importing them
    afterwards works (sys.modules holds no None left behind)."""
    code = ("import sys; from gsm.pipeline.interrupt import REMOTE_FILE_SYSTEMS, torch_summary_writer\n"
            "w = torch_summary_writer()\n"
            "assert w.__name__ == 'SummaryWriter' and not set(REMOTE_FILE_SYSTEMS) & set(sys.modules), sys.modules\n"
            "import importlib.util\n"
            "for m in REMOTE_FILE_SYSTEMS:\n"
            "    if importlib.util.find_spec(m) is not None:\n"
            "        __import__(m)\n"
            "print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "OK", proc.stderr[-2000:]
