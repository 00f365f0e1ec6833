"""TensorBoard as users open it: `gsm` / `gsm-report` through their console scripts, then the real
`tensorboard --logdir <dir>` server with its default flags (the fast loader), read over its HTTP API.
Every scalar must be served, with the value of results.json to float32 precision. Also: each run's
figures as PNG files in <run>/figures/."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from gsm.cli.report import NOT_TERMS

SMALL = ["replicates=4", "train.steps=2000", "threads=1", "progress=false", "data.dim=4", "sampler.steps=100",
         "sampler.particles=100"]


def script(name: str) -> str:
    """The console script installed next to this Python (skip the test when there is none)."""
    exe = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if exe is None:
        pytest.skip(f"the {name} console script is not installed")
    return exe


def run_script(*args, cwd=None, timeout=600):
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Server:
    """A running `tensorboard --logdir <logdir> --port <port>` (default flags otherwise)."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log

    def get(self, path: str, **query):
        return json.loads(self.get_bytes(path, **query))

    def get_bytes(self, path: str, **query) -> bytes:
        url = f"http://localhost:{self.port}/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()

    def image(self, run: str, tag: str) -> bytes:
        """The bytes the images plugin serves for the last sample of `tag`, as the dashboard fetches them."""
        last = self.get("data/plugin/images/images", run=run, tag=tag, sample=0)[-1]
        return self.get_bytes("data/plugin/images/individualImage?" + last["query"])

    def scalar_tags(self) -> dict:
        """{run: {tag, ...}} of the scalars plugin."""
        return {run: set(tags) for run, tags in self.get("data/plugin/scalars/tags").items()}

    def wait_for_scalars(self, run: str, tags, seconds: float = 60) -> set:
        """Polls until `run` serves every tag in `tags` (the loader reads the files in the background),
        at most `seconds`; returns the tags it serves then (the caller asserts)."""
        served, deadline = set(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                served = self.scalar_tags().get(run, set())
            except OSError:          # not listening yet
                served = set()
            if set(tags) <= served:
                break
            time.sleep(0.5)
        return served

    def scalar(self, run: str, tag: str) -> dict:
        """{step: value} of one served scalar."""
        return {step: value for _, step, value in self.get("data/plugin/scalars/scalars", run=run, tag=tag)}

    def tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""


@contextmanager
def tensorboard(logdir: Path, tmp_path: Path):
    """The server over `logdir`, killed on exit whatever happens."""
    port, log = free_port(), tmp_path / "tensorboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([script("tensorboard"), "--logdir", str(logdir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Server(port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def f32(x: float) -> float:
    return float(np.float32(x))


def custom_chart_tags(layout: dict) -> set:
    """The scalar tags of the Custom Scalars charts (multiline and margin)."""
    tags = set()
    for chart in (c for cat in layout.get("category", []) for c in cat["chart"]):
        tags |= set(chart.get("multiline", {}).get("tag", []))
        tags |= {s[k] for s in chart.get("margin", {}).get("series", []) for k in ("value", "lower", "upper")}
    return tags


def assert_run_served(server: Server, run: str, res: dict, images=("spectrum/target_vs_learned", "theory/kernels"),
                      extra=()):
    """eval/*, theory/<every prediction term>, the custom chart's tags and `extra` are served scalars with
    the results.json values (float32); the images are served too."""
    step = res["config"]["train"]["steps"]
    want = {"eval/w2_exact": res["w2_exact"]["mean"], "eval/w2_empirical": res["w2_empirical"]["mean"],
            "eval/w2_predicted": res["w2_predicted"], "eval/w2_predicted_empirical": res["w2_predicted_empirical"],
            **{f"theory/{k}": v for k, v in res["prediction_terms"].items()}, "regime/ok": float(res["regime"]["ok"])}
    if "w2_exact_stationary" in res:     # Langevin
        want["eval/w2_exact_stationary"] = res["w2_exact_stationary"]["mean"]
    expected = {"train/dsm_loss", *want, *extra}
    served = server.wait_for_scalars(run, expected)
    assert expected <= served, (sorted(expected - served), server.tail())
    chart = custom_chart_tags(server.get("data/plugin/custom_scalars/layout"))
    assert {"margin/w2_predicted", "margin/w2_exact_lower", "margin/w2_exact_upper"} <= chart <= served, (chart, served)
    for tag, value in want.items():
        assert server.scalar(run, tag) == {step: f32(value)}, tag
    images = {"eval/comparison", "eval/comparison_w2_empirical", *images}
    assert images <= set(server.get("data/plugin/images/tags").get(run, {})), server.tail()
    assert "eval/comparison/text_summary" in server.get("data/plugin/text/tags").get(run, []), server.tail()


def assert_pngs(run_dir: Path, names):
    from PIL import Image
    for name in names:
        with Image.open(run_dir / "figures" / f"{name}.png") as im:
            im.load()
            assert im.format == "PNG" and min(im.size) >= 16, (name, im.size)


@pytest.mark.slow
def test_default_tensorboard_serves_every_scalar_of_a_run(tmp_path):
    """`gsm` (Langevin), then `tensorboard --logdir <run>`: every eval/theory scalar, the custom chart's tags
    and both images are served, the scalars equal to results.json's numbers in float32."""
    out = tmp_path / "run"
    run_script(script("gsm"), *SMALL, f"hydra.run.dir={out}")
    res = json.loads((out / "results.json").read_text())
    with tensorboard(out, tmp_path) as server:
        assert_run_served(server, "tb", res)
        served = {tag: server.image("tb", tag) for tag in ("theory/kernels", "eval/comparison")}
    assert_pngs(out, ["spectrum_target_vs_learned", "theory_kernels"])
    for tag, png in served.items():     # TensorBoard shows the very PNG the run wrote
        assert png == (out / "figures" / (tag.replace("/", "_") + ".png")).read_bytes(), tag


@pytest.mark.slow
def test_default_tensorboard_serves_the_diffusion_trajectory(tmp_path):
    """sampler=ddpm: also diffusion/w2_trajectory_{learned,oracle}, one point per timestep t_k (K = 10)."""
    out = tmp_path / "run"
    run_script(script("gsm"), *SMALL, "sampler=ddpm", "sampler.steps=10", f"hydra.run.dir={out}")
    res = json.loads((out / "results.json").read_text())
    traj = ("diffusion/w2_trajectory_learned", "diffusion/w2_trajectory_oracle")
    with tensorboard(out, tmp_path) as server:
        assert_run_served(server, "tb", res, extra=traj)
        for tag in traj:
            points = server.scalar("tb", tag)
            assert len(points) == 11 and all(np.isfinite(v) and v >= 0 for v in points.values()), (tag, points)


@pytest.mark.slow
def test_default_tensorboard_serves_a_texture_run(tmp_path):
    """`gsm data=texture model=fourier_linear` (16×16 here): its scalars, the regime verdict and its four
    images (source, ADSN sample, learned samples, radial spectrum) are served."""
    out = tmp_path / "run"
    run_script(script("gsm"), "data=texture", "model=fourier_linear", "data.size=16", "data.n=8",
               "train.steps=2000", "train.solver=sgd", "threads=1", "progress=false", f"hydra.run.dir={out}")
    res = json.loads((out / "results.json").read_text())
    images = ("texture/source", "texture/adsn_sample", "texture/learned_samples", "spectrum/radial_target_vs_learned")
    with tensorboard(out, tmp_path) as server:
        assert_run_served(server, "tb", res, images=images)


@pytest.mark.slow
def test_default_tensorboard_serves_the_report_of_a_sweep(tmp_path):
    """`gsm -m data.n=20,40`, `gsm-report`, then `tensorboard --logdir <sweep>/tb_report` (README, Studies):
    the report's scalars <study>/<column> at step N and its figure are served, equal to each job's
    results.json in float32."""
    sweep = tmp_path / "sweep"
    run_script(script("gsm"), "-m", *SMALL, "data.n=20,40", f"hydra.sweep.dir={sweep}")
    run_script(script("gsm-report"), str(sweep))
    jobs = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2)]
    terms = [k for k in jobs[0]["prediction_terms"] if k not in NOT_TERMS]      # the report's term_<k> columns
    tags = {"data.n/w2_exact_mean", "data.n/w2_predicted", *(f"data.n/term_{k}" for k in terms)}
    with tensorboard(sweep / "tb_report", tmp_path) as server:
        served = server.wait_for_scalars(".", tags)
        assert tags <= served, (sorted(tags - served), server.tail())
        for tag in tags:
            key = tag.split("/")[1]
            want = {j["config"]["data"]["n"]: f32(j["w2_exact"]["mean"] if key == "w2_exact_mean" else
                                                    j["w2_predicted"] if key == "w2_predicted" else
                                                    j["prediction_terms"][key[5:]]) for j in jobs}
            assert server.scalar(".", tag) == want, tag
        assert "report/data.n" in server.get("data/plugin/images/tags").get(".", {}), server.tail()


# ------------------------------------------------------------------------------------ figures as PNGs

def test_a_run_writes_its_figures_as_pngs(compose_cfg, tmp_path, one_thread):
    from gsm.pipeline.run import run
    res = run(compose_cfg("replicates=2", "data.dim=3", "train.steps=200", "sampler.steps=20",
                          "sampler.particles=20", "progress=false", "figures=true"), tmp_path)
    assert res["status"] == "ok"
    assert_pngs(tmp_path, ["spectrum_target_vs_learned", "theory_kernels"])


def test_a_texture_run_writes_its_figures_as_pngs(compose_cfg, tmp_path, one_thread):
    from gsm.pipeline.run import run
    res = run(compose_cfg("data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "replicates=2",
                          "train.steps=100", "sampler.steps=20", "sampler.particles=4", "progress=false", "figures=true"),
              tmp_path)
    assert res["status"] == "ok"
    assert_pngs(tmp_path, ["spectrum_radial_target_vs_learned", "texture_source", "texture_adsn_sample",
                           "texture_learned_samples"])


COMPARISON = ["eval_comparison", "eval_comparison_w2_empirical"]
LINEAR = [*COMPARISON, "spectrum_target_vs_learned", "theory_kernels"]
NEURAL = ["eval_comparison", "spectrum_target_vs_learned", "theory_kernels"]
FIGURES = {   # backend or sampler: (its tiny overrides, the PNGs it writes)
    "langevin": (["data.dim=3", "sampler.steps=10"], LINEAR),
    "ddpm": (["sampler=ddpm", "data.dim=3", "sampler.steps=10"], LINEAR),
    "ddim": (["sampler=ddim", "data.dim=3", "sampler.steps=10"], LINEAR),
    "vp_spectral": (["sampler=vp", "model=oracle", "data.dim=3", "sampler.steps=10"],
                    [*COMPARISON, "vp_trajectory_all_schemes"]),
    "vp_matrix": (["sampler=vp", "data.dim=3", "sampler.steps=10"], [*LINEAR, "vp_trajectory_all_schemes"]),
    "edm": (["sampler=edm", "data.dim=3", "sampler.steps=5", "train.solver=exact"], LINEAR),
    "diffusers": (["sampler=diffusers", "sampler.scheduler=DDIMScheduler", "data.dim=3", "sampler.steps=5",
                   "train.solver=exact"], LINEAR),
    "flow": (["sampler=flow", "objective=cfm", "data.dim=3", "sampler.steps=5"], LINEAR),
    "mlp": (["model=mlp", "data.dim=3", "sampler.steps=10"], NEURAL),
    "texture": (["data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "sampler.steps=20",
                 "sampler.particles=4"], [*COMPARISON, "spectrum_radial_target_vs_learned", "texture_adsn_sample",
                                          "texture_learned_samples", "texture_source", "texture_source_vs_samples"]),
    "mixture_linear": (["data=mixture", "data.dim=3", "sampler=ddpm", "sampler.steps=10"], LINEAR),
    "mixture_neural": (["data=mixture", "data.dim=3", "model=mlp", "sampler=ddpm", "sampler.steps=10"], NEURAL),
    "dataset_probe": (["data=digits", "data.n=200", "sampler=ddpm", "sampler.steps=10", "eval.probe=true",
                       "eval.probe_points=80", "data.ot_particles=16"], [*LINEAR, "probe_gaussian_structure"]),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_backend_draws_its_figures(name, compose_cfg, tmp_path, one_thread):
    """Each backend's and sampler's figures, drawn and readable (the other tests compose with figures=false,
    tests/conftest.py): exactly the PNGs listed, each a real image."""
    from gsm.pipeline.run import run
    overrides, pngs = FIGURES[name]
    res = run(compose_cfg("replicates=2", "train.steps=100", "sampler.particles=20", "progress=false", "figures=true",
                          *overrides), tmp_path)
    assert res["status"] == "ok"
    assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == sorted(pngs)
    assert_pngs(tmp_path, pngs)


def test_figures_false_draws_no_figure_and_changes_no_number(compose_cfg, tmp_path, one_thread):
    """figures=false (the schedulers preset): no PNG, the same results.json numbers as with figures, on the
    matrix (DDPM), texture and spectral backends; a value that is not a bool is a one-line error."""
    from gsm.pipeline.run import run
    from gsm.pipeline.spec import ConfigError
    tiny = ("replicates=2", "train.steps=200", "sampler.particles=20", "progress=false")
    cases = {"matrix": ("sampler=ddpm", "data.dim=3", "sampler.steps=10", "train.steps=200"),
             "texture": ("data=texture", "model=fourier_linear", "data.size=16", "data.n=8", "sampler.steps=20"),
             "spectral": ("sampler=vp", "model=oracle", "data.dim=3", "sampler.steps=10")}
    for name, case in cases.items():
        on, off = (run(compose_cfg(*tiny, *case, f"figures={f}"), tmp_path / f"{name}_{f}") for f in ("true", "false"))
        assert not list((tmp_path / f"{name}_false").glob("figures/*.png")), name
        for key in ("w2_exact", "w2_empirical", "w2_predicted", "prediction_terms", "regime"):
            assert on.get(key) == off.get(key), (name, key)
        if name == "matrix":
            assert list((tmp_path / f"{name}_true").glob("figures/*.png"))
    with pytest.raises(ConfigError, match=r"^figures must be one of true \| false, got maybe$"):
        run(compose_cfg(*tiny, "figures=maybe"), tmp_path / "bad")
