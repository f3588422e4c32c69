"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(capsys, pararel_dir, monkeypatch):
    monkeypatch.setenv("LEGIBILITY_PARAREL", str(pararel_dir))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has a Python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert "neurons, p(correct)" in capsys.readouterr().out
