"""gsm-report on the beyond-Gaussian studies (`gsm.cli.mixture_report`), from synthetic results.json rows:
+experiment=where_theory_stops (separation × N × score) and +experiment=memorization (steps × N)."""
import json

import pytest

from gsm.cli.mixture_report import onset
from gsm.cli.report import report

PNG = b"\x89PNG\r\n\x1a\n"


def stat(mean, se=0.01):
    return {"mean": mean, "stderr": se, "n": 16}


def write_job(folder, i, overrides, results):
    job = folder / str(i)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "results.json").write_text(json.dumps({"status": "ok", **results}))


def mixture_results(sep, n, steps, score, ot, mem=0.01):
    linear = score == "linear"
    out = {"config": {"data": {"separation": sep, "n": n}, "train": {"steps": steps}, "model": {},
                      "sampler": {"_target_": "gsm.samplers.flow.Flow", "scheme": "euler", "steps": 10}},
           "w2_ot_debiased": stat(ot), "w2_ot_surrogate": stat(0.05 * sep), "w2_empirical_debiased": stat(0.01),
           "mode_weights": {"mean": [0.5, 0.5], "stderr": [0.01, 0.01], "true": [0.5, 0.5], "n": 16},
           "memorized_fraction": stat(mem), "memorized_fraction_fresh": stat(0.01, 0.002), "data_gaussian": sep == 0}
    if linear:
        out.update(w2_exact=stat(0.002, 0.0002), w2_predicted=0.002)
    else:
        out.update(w2_exact=None, w2_predicted_linear=0.002)
    return out


def test_where_theory_stops_report(tmp_path):
    """The table has every column and cell, the answers name the Δ where the MLP wins and where the prediction
    stops (z > 3), and the figure is written."""
    cells = [(0, "linear", 0.002), (0, "mlp", 0.004), (4, "linear", 0.2), (4, "mlp", 0.03)]
    for i, (sep, score, ot) in enumerate(cells):
        write_job(tmp_path, i, [f"data.separation={sep}", "data.n=40", f"model={score}"],
                  mixture_results(sep, 40, 3000, score, ot))
    out = report(tmp_path, tensorboard=False)
    md = (tmp_path / "report_where_theory_stops.md").read_text()
    assert (tmp_path / "report_where_theory_stops.png").read_bytes()[:8] == PNG
    assert {p.name for p in out["figures"]} >= {"report_where_theory_stops.png", "report_where_theory_stops.md"}
    assert md.startswith("Sampler: Flow (euler), K = 10.")      # the DDPM and flow arms tell apart
    assert ("| Δ | score | w2_ot_debiased | Gaussian-fit bound | linear prediction | z | w2_ot_surrogate | "
            "mode weight 1 (true) | memorized (fresh) |") in md
    assert "| 4 | linear | 0.2 ± 0.01 | 0.002 ± 0.0002 | 0.002 | +19.8 | 0.2 ± 0.01 | 0.5 ± 0.01 (0.5) |" in md
    assert "| 4 | mlp | 0.03 ± 0.01 | 0.01 ± 0.01 | 0.002 | +2.8 |" in md
    assert "| 0 | linear | 0.002 ± 0.01 | 0.002 ± 0.0002 | 0.002 | +0.0 | 0 ± 0.01 | — (—) |" in md   # Δ = 0
    assert ("* N = 40: the MLP beats the linear score (by > 2 s.e.) at Δ = 4; the linear score beats the MLP at "
            "Δ = none.") in md
    assert "  * linear: the linear prediction is off by > 3 s.e. first at Δ = 4 (z: Δ 0: +0.0, Δ 4: +19.8)." in md
    assert "  * mlp: the linear prediction is off by > 3 s.e. first at Δ = none" in md


def test_memorization_report(tmp_path):
    """Per N the memorised fraction against steps with its chance level, the onset, the steps at ½ and the
    empirical score's limit; the figure is written."""
    curves = {8: (0.01, 0.3, 0.9), 32: (0.01, 0.02, 0.4)}
    i = 0
    for n, mems in curves.items():
        for steps, mem in zip((100, 1000, 10000), mems):
            write_job(tmp_path, i, [f"train.steps={steps}", f"data.n={n}", "model=mlp"],
                      mixture_results(4, n, steps, "mlp", 0.1, mem))
            i += 1
        write_job(tmp_path, i, [f"train.steps=100", f"data.n={n}", "model=empirical"],
                  mixture_results(4, n, 100, "empirical", 0.3, 0.99))
        i += 1
    report(tmp_path, tensorboard=False)
    md = (tmp_path / "report_memorization.md").read_text()
    assert (tmp_path / "report_memorization.png").read_bytes()[:8] == PNG
    assert "| 8 | 1000 | 0.3 ± 0.01 | 0.01 ± 0.002 | 0.1 ± 0.01 |" in md
    assert "| 8 | 1000 | 2.15e+03 | 0.99 ± 0.01 |" in md        # ½ at 10^(3 + 0.2/0.6)
    assert "| 32 | 10000 | none | 0.99 ± 0.01 |" in md           # 0.4 − 0.01 > 3 s.e., yet below ½
    assert ("Onset found for N = 8, 32: it grows with N (to within the grid's step between training-step values). "
            "Onset / N: 125, 312.") in md


def test_onset_rules():
    c = lambda steps, mem: {"steps": steps, "mem": mem, "mem_se": 0.01, "fresh": 0.01, "fresh_se": 0.0}  # noqa: E731
    assert onset([c(10, 0.01), c(100, 0.02), c(1000, 0.1)]) == (1000, None)
    first, half = onset([c(10, 0.2), c(100, 0.8)])
    assert first == 10 and half == pytest.approx(10 ** 1.5)
