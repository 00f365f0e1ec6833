"""The flow_vs_diffusion study (`gsm +experiment=flow_vs_diffusion`) in gsm-report: W2² per method, NFE and field.

`write_flow_report(sweep_dir, rows)` (rows of `gsm.cli.report.job_row`, swept keys method, sampler.nfe and
score) writes, with the tables and the figure of the schedulers study (`gsm.cli.schedulers_report`):

* `report_flow_vs_diffusion.png`: one panel per field (oracle: the exact score / velocity; plugin: the
  empirical minimiser at N of the method's objective), x = NFE, measured w2_exact (mean ± 2 s.e., markers)
  and w2_predicted (lines) per method;
* `report_flow_vs_diffusion.md`: per field, a table method × NFE of "measured ± s.e. (predicted) #rank", and
  per NFE the best method and the Kendall τ between the exact-field ranking and the plug-in ranking: does the
  ranking at equal NFE survive a field learned from N samples?
"""
from __future__ import annotations

from pathlib import Path

from gsm.cli.schedulers_report import figure, markdown, results_by_cell
from gsm.io import savefig_atomic, write_text_atomic

NOTE = ("SGD at an equal budget is not in this study: objective=cfm has no SGD trainer yet (train.solver=sgd is "
        "refused), so the flow methods have only the exact and the plug-in velocity.\n")


def write_flow_report(sweep_dir, rows) -> list[Path]:
    """Writes report_flow_vs_diffusion.png and .md, prints the ranking comparison; returns the paths."""
    import matplotlib.pyplot as plt

    sweep_dir = Path(sweep_dir)
    t, nfes, methods = results_by_cell(rows, key="method")
    if not t:
        return []
    md = markdown(t, nfes, methods, item="method") + "\n" + NOTE
    md_path, png_path = sweep_dir / "report_flow_vs_diffusion.md", sweep_dir / "report_flow_vs_diffusion.png"
    write_text_atomic(md_path, md)
    fig = figure(t, nfes, methods)
    savefig_atomic(fig, png_path, dpi=120)
    plt.close(fig)
    print(md[md.index("### ranking"):])
    return [png_path, md_path]
