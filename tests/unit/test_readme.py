"""The README's Python API example runs as written."""
import re
from pathlib import Path


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "tensor(" in capsys.readouterr().out
