"""Where results are, as the user meets it: `gsm` and `gsm -m` end with their folder, `gsm-report` reads a
folder of single runs and, with no argument, the latest sweep; `gsm.load_runs` gives one row per run."""
import json
import subprocess
import sys

import pytest

import gsm

TINY = ["replicates=2", "train.steps=100", "sampler.steps=10", "progress=false"]


def console(*args, cwd):
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two single runs under <tmp>/outputs/2026-01-01/ (the layout of outputs/<date>/<time>)."""
    cwd = tmp_path_factory.mktemp("user")
    runs = {}
    for name, tau in (("00-00-01", "0.005"), ("00-00-02", "0.01")):
        proc = console("gsm", *TINY, f"train.tau={tau}", f"hydra.run.dir=outputs/2026-01-01/{name}", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        runs[name] = proc.stdout
    return cwd, runs


def test_a_run_ends_by_printing_its_folder(two_runs):
    cwd, runs = two_runs
    for name, stdout in runs.items():
        assert stdout.strip().splitlines()[-1] == f"gsm: results in outputs/2026-01-01/{name}"


def test_gsm_report_reads_a_folder_of_single_runs(two_runs):
    cwd, _ = two_runs
    proc = console("gsm-report", "outputs/2026-01-01", "--no-tensorboard", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "2 jobs in outputs/2026-01-01, swept: train.tau" in proc.stdout and "2 ok" in proc.stdout
    lines = (cwd / "outputs/2026-01-01/report.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("00-00-01,ok,") and lines[2].startswith("00-00-02,ok,")


def test_load_runs_gives_one_row_per_run_with_config_and_numbers(two_runs):
    pytest.importorskip("pandas")
    cwd, _ = two_runs
    df = gsm.load_runs(cwd / "outputs")
    assert list(df["run"]) == ["2026-01-01/00-00-01", "2026-01-01/00-00-02"]
    assert list(df["train.tau"]) == [0.005, 0.01] and list(df["sampler.steps"]) == [10, 10]
    for _, row in df.iterrows():
        res = json.loads((cwd / "outputs" / row["run"] / "results.json").read_text())
        assert row["status"] == res["status"] == "ok" and row["dir"] == str(cwd / "outputs" / row["run"])
        assert (row["w2_exact_mean"], row["w2_exact_stderr"]) == (res["w2_exact"]["mean"], res["w2_exact"]["stderr"])
        assert (row["w2_empirical_mean"], row["w2_empirical_stderr"]) == (res["w2_empirical"]["mean"],
                                                                          res["w2_empirical"]["stderr"])
        assert row["w2_predicted"] == res["w2_predicted"]
        assert row["w2_predicted_empirical"] == res["w2_predicted_empirical"]
        assert row["in_regime"] == res["regime"]["ok"] and row["seconds"] == res["seconds"]


def test_load_runs_without_pandas_names_the_extra(two_runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"^gsm.load_runs needs pandas: pip install 'gsm\[tables\]'$"):
        gsm.load_runs(two_runs[0] / "outputs")


def test_a_sweep_ends_by_printing_its_folder_and_gsm_report_finds_the_latest(tmp_path):
    proc = console("gsm", "-m", *TINY, "train.tau=0.004,0.005", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = sorted(tmp_path.glob("outputs/multirun/*/*"))
    assert len(sweep) == 1
    where = sweep[0].relative_to(tmp_path).as_posix()
    assert proc.stdout.strip().splitlines()[-1] == f"gsm: results in {where}"
    report = console("gsm-report", "--no-tensorboard", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"gsm-report: {where} (the latest") and "2 ok" in report.stdout
    assert (sweep[0] / "report.csv").exists()
