"""`python -m gsm.bench --only readme`: which commands it times, and where its table goes (no timing
asserted: the times themselves are the README's, measured by the command)."""
import re
import subprocess
import sys

from gsm.cli.bench_readme import MARKERS, README, markdown, measure, rewrite_readme, tour_commands


def test_dry_run_lists_the_tour_commands_and_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gsm.bench", "--only", "readme", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.splitlines()
    block = re.search(r"## A five-minute tour.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    typed = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert listed == [c for c in typed if not c.startswith("tensorboard")]     # the server is not timed
    assert listed[0] == "gsm" and "gsm -m +experiment=vs_n && gsm-report" in listed
    assert list(tmp_path.iterdir()) == []          # nothing ran: no outputs/


def test_the_readme_has_the_markers_the_table_goes_between():
    text = README.read_text()
    assert text.count(MARKERS[0]) == 1 and text.count(MARKERS[1]) == 1
    assert text.index(MARKERS[0]) > text.index("## A five-minute tour") and text.index(MARKERS[0]) < text.index("## Documentation")


def test_the_table_replaces_only_what_lies_between_the_markers(tmp_path):
    rows = measure(["true", "exit 3"], repeat=3)       # the shell's own commands: instant
    assert [(r["command"], r["runs"], r["status"]) for r in rows] == [("true", 3, 0), ("exit 3", 1, 3)]
    table = markdown(rows, "a test machine")
    assert "| `true` |" in table and "(exit 3) | 1 |" in table
    page = tmp_path / "README.md"
    page.write_text(f"before\n{MARKERS[0]}\nold table\n{MARKERS[1]}\nafter\n")
    assert rewrite_readme(table, page)
    assert page.read_text() == f"before\n{MARKERS[0]}\n{table}\n{MARKERS[1]}\nafter\n"
    assert not rewrite_readme(table, tmp_path / "absent.md")
    assert tour_commands("## A five-minute tour\n```bash\ngsm a=1   # c\ntensorboard --logdir x\n```") == ["gsm a=1"]
