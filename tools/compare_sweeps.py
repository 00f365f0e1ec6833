"""Compare two multirun sweeps cell by cell: `python tools/compare_sweeps.py <sweep A> <sweep B>`.

The cells are matched by their overrides (`<job>/.hydra/overrides.yaml`, order ignored, and `progress=` and
`figures=`, which should change no number, left out: this tool is how that is checked); for each pair the
relative difference |a − b| / max(|a|, |b|) of w2_exact's mean, w2_predicted, every prediction term and
w2_empirical's mean (where both have it) is taken, and the largest of each is printed. Exits 1 when the
two sweeps do not hold the same cells or the same prediction terms. Used for the before/after tables of
docs/performance.md ("Sweeps").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


IGNORED = ("progress=", "figures=")     # overrides that change no number


def cells(sweep) -> dict:
    """{sorted overrides: results.json} of every job folder of a sweep."""
    out = {}
    for job in sorted(p for p in Path(sweep).iterdir() if p.name.isdigit()):
        typed = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        overrides = tuple(sorted(o for o in typed if not o.startswith(IGNORED)))
        out[overrides] = json.loads((job / "results.json").read_text())
    return out


def relative(a, b) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))


def largest_differences(a: dict, b: dict) -> dict:
    """{quantity: the largest relative difference over the cells} for the cells of two sweeps."""
    worst = {"w2_exact": 0.0, "w2_predicted": 0.0, "terms": 0.0}
    for key, ra in a.items():
        rb = b[key]
        worst["w2_exact"] = max(worst["w2_exact"], relative(ra["w2_exact"]["mean"], rb["w2_exact"]["mean"]))
        worst["w2_predicted"] = max(worst["w2_predicted"], relative(ra["w2_predicted"], rb["w2_predicted"]))
        ta, tb = ra["prediction_terms"], rb["prediction_terms"]
        if ta.keys() != tb.keys():
            sys.exit(f"cell {key}: prediction terms differ: {sorted(ta)} vs {sorted(tb)}")
        worst["terms"] = max([worst["terms"], *(relative(ta[t], tb[t]) for t in ta)])
        if ra.get("w2_empirical") and rb.get("w2_empirical"):
            worst["w2_empirical"] = max(worst.get("w2_empirical", 0.0),
                                        relative(ra["w2_empirical"]["mean"], rb["w2_empirical"]["mean"]))
    return worst


def main(argv) -> None:
    a, b = cells(argv[0]), cells(argv[1])
    if a.keys() != b.keys():
        sys.exit(f"the sweeps hold different cells: {len(a)} and {len(b)}, {len(a.keys() ^ b.keys())} unmatched")
    statuses = sorted({(a[k]["status"], b[k]["status"]) for k in a})
    worst = largest_differences(a, b)
    print(f"{len(a)} cells; statuses {statuses}; largest relative difference: "
          + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
