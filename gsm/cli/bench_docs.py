"""`python -m gsm.bench --write-docs`: the benchmark writes its own numbers into docs/performance.md.

Each benchmark that ran replaces its section of the page (docs/performance.md beside the package, i.e. a
clone), between `<!-- gsm.bench KEY DEVICE: begin -->` and `<!-- gsm.bench KEY DEVICE: end -->`. A section
states the command that reproduces it, the machine, the 1-minute load average before and after, the wall
seconds, the date, and every figure the benchmark printed, its ratios to the baseline included. A section
the page lacks is appended at its end; the sections of benchmarks that did not run are left as they were.
"""
from __future__ import annotations

import datetime
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def markers(key: str, device: str) -> tuple[str, str]:
    """The begin and end comments of benchmark `key`'s section on `device`."""
    return f"<!-- gsm.bench {key} {device}: begin -->", f"<!-- gsm.bench {key} {device}: end -->"


def replace_between(text: str, begin: str, end: str, body: str) -> str | None:
    """`text` with what lies between the markers `begin` and `end` replaced by `body` (one line break each
    side); None when either marker is missing."""
    if begin not in text or end not in text.split(begin, 1)[1]:
        return None
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"


def figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def section(key: str, figures: dict, *, command: str, machine: str, loads: tuple[float, float],
            seconds: float) -> str:
    """The markdown of one benchmark's run: a heading, how it was measured, and a table of its figures."""
    when = datetime.date.today().isoformat()
    lines = [f"#### `{key}`", "",
             f"`{command}` on {machine}, {when}: {seconds:.0f} s, load average {loads[0]:.2f} before and "
             f"{loads[1]:.2f} after.", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {figure(v)} |" for name, v in figures.items()]
    return "\n".join(lines)


def write_sections(sections: dict[tuple[str, str], str], path: Path = PAGE) -> bool:
    """Puts each (key, device) → markdown of `sections` between its markers in `path`, appending the
    sections it lacks; False when there is no such page (an installed package)."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text()
    for (key, device), body in sections.items():
        begin, end = markers(key, device)
        new = replace_between(text, begin, end, body)
        text = new if new is not None else f"{text.rstrip()}\n\n{begin}\n{body}\n{end}\n"
    path.write_text(text)
    return True
