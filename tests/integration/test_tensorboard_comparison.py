"""The run's comparison as TensorBoard gets it (docs/tensorboard.md), read back from the event file with
tensorboard's own EventAccumulator: the comparison images and Markdown table, the Custom Scalars margin
charts (band: measured ± 2 s.e.; line: the prediction) and the HParams summaries. The numbers are checked
against results.json, recomputed here (z = (mean − predicted)/√(s.e.² + e²), e the prediction's own error bar); the served side, in a real
browser, is tools/tensorboard_screenshots.py and the slow tests of test_tensorboard.py."""
import json
import math
import re

import numpy as np
import pytest

SMALL = ("replicates=4", "data.dim=4", "train.steps=300", "sampler.steps=50", "sampler.particles=100",
         "progress=false")


def accumulator(tb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def f32(x):
    return float(np.float32(x))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One small default-sampler run (Langevin, linear score, DSM-SGD): (run dir, results, accumulator)."""
    import torch
    from hydra import compose, initialize_config_module

    from gsm.pipeline.run import run
    out = tmp_path_factory.mktemp("run")
    (out / ".hydra").mkdir()
    (out / ".hydra" / "overrides.yaml").write_text("- data.n=60\n- sampler.steps=50\n")   # as Hydra writes it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_module(version_base="1.3", config_module="gsm.conf"):
            res = run(compose(config_name="config", overrides=[*SMALL, "data.n=60"]), out)
    finally:
        torch.set_num_threads(threads)
    assert res["status"] == "ok"
    return out, json.loads((out / "results.json").read_text()), accumulator(out / "tb")


def test_the_comparison_images_are_written_and_saved(default_run):
    from PIL import Image
    out, res, acc = default_run
    assert {"eval/comparison", "eval/comparison_w2_empirical"} <= set(acc.Tags()["images"])
    image = acc.Images("eval/comparison")[0]
    assert image.step == res["config"]["train"]["steps"] and image.width >= 600 and image.height >= 250
    for name in ("eval_comparison", "eval_comparison_w2_empirical"):
        with Image.open(out / "figures" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width >= 600


def test_the_comparison_table_adds_up_and_states_z_and_the_verdict(default_run):
    _, res, acc = default_run
    text = acc.Tensors("eval/comparison/text_summary")[0].tensor_proto.string_val[0].decode()
    verdict = "regime: ok" if res["regime"]["ok"] else "regime: OUT OF REGIME"     # 300 SGD steps: out
    assert text.splitlines()[0].startswith(verdict), text
    law = text.split("**w2_empirical**")[0]
    rows = re.findall(r"^\| (\w+) \| ([-0-9.e]+) \| (\d+) % \|", law, re.M)
    assert {name for name, _, _ in rows} >= {"optimization"}, law
    # the terms (4 significant digits each) add up to w2_predicted, their shares to 100 % (rounded)
    assert sum(float(v) for _, v, _ in rows) == pytest.approx(res["w2_predicted"], rel=2e-3), law
    assert abs(sum(int(s) for _, _, s in rows) - 100) <= len(rows), law
    m = res["w2_exact"]
    z = (m["mean"] - res["w2_predicted"]) / math.hypot(m["stderr"], res["w2_predicted_error"])   # both error bars
    assert f"**{m['mean']:.4g} ± {2 * m['stderr']:.2g}** (2 s.e.) | z = {z:+.2f}" in law, law
    assert "| particles |" in text.split("**w2_empirical**")[1]      # the 1/M term: the particles' table only


def test_the_margin_charts_band_the_measurement_around_the_prediction_line(default_run):
    from tensorboard.plugins.custom_scalar import layout_pb2
    _, res, acc = default_run
    steps = res["config"]["train"]["steps"]
    content = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    series = [s for cat in layout_pb2.Layout.FromString(content).category for c in cat.chart for s in c.margin.series]
    assert {(s.value, s.lower, s.upper) for s in series} == {
        ("margin/w2_predicted", "margin/w2_exact_lower", "margin/w2_exact_upper"),
        ("margin/w2_predicted_empirical", "margin/w2_empirical_lower", "margin/w2_empirical_upper")}
    for mkey, pkey in (("w2_exact", "w2_predicted"), ("w2_empirical", "w2_predicted_empirical")):
        m = res[mkey]
        want = {f"margin/{mkey}_lower": m["mean"] - 2 * m["stderr"], f"margin/{mkey}_upper": m["mean"] + 2 * m["stderr"],
                f"margin/{pkey}": res[pkey]}
        for tag, value in want.items():      # a level from step 0 to the last SGD step
            assert {(e.step, e.value) for e in acc.Scalars(tag)} == {(0, f32(value)), (steps, f32(value))}, tag
    z = (res["w2_exact"]["mean"] - res["w2_predicted"]) / math.hypot(res["w2_exact"]["stderr"], res["w2_predicted_error"])
    assert [(e.step, e.value) for e in acc.Scalars("eval/w2_exact_z")] == [(steps, pytest.approx(z, abs=1e-5))]


def test_hparams_are_in_the_runs_own_event_file_with_the_typed_keys_first(default_run):
    from tensorboard.plugins.hparams import plugin_data_pb2
    out, res, acc = default_run
    assert [p.name for p in (out / "tb").iterdir() if p.is_dir()] == []     # no sub-run folder
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"eval/w2_exact", "eval/w2_predicted", "eval/w2_exact_z", "regime/ok"} <= metrics
    assert metrics <= set(acc.Tags()["scalars"])           # the plugin reads each metric's last value
    differs = {h.name for h in experiment.hparam_infos if h.differs}
    assert differs == {"data.n", "sampler.steps"}          # overrides.yaml's keys: listed first
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["data.n"].number_value == 60 and hparams["train.tau"].number_value == res["config"]["train"]["tau"]
    assert hparams["model._target_"].string_value == res["config"]["model"]["_target_"]
