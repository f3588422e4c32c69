"""`pip install legibility` into an environment that already holds torch keeps that torch, and the core
(no extras: no matplotlib) imports and runs `legibility score`.

Slow (about 2-3 minutes on 2 cores: most of it is unpacking the torch wheel into a fresh venv).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_facts, tiny_lm

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk (constraints.txt); offline-installable


def _run(cmd: list, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_pip_install_keeps_the_users_torch_and_the_core_runs_score(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "venv", str(venv)], env)  # isolated: no system site-packages
    py, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, TORCH], env)  # the user's torch, installed before us
    probe = "import os, torch; f = torch.__file__; s = os.stat(f); print(torch.__version__, f, s.st_ino, s.st_mtime_ns)"
    before = _run([py, "-c", probe], env).stdout.split()

    _run([*pip, str(ROOT)], env)  # plain `pip install .`, no constraints, no extras

    after = _run([py, "-c", probe], env).stdout.split()
    assert after == before, "pip replaced the torch that was installed before legibility"
    listed = _run([py, "-m", "pip", "list", "--format", "json"], env).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "legibility" in names
    assert "matplotlib" not in names and "ray" not in names  # optional parts stay out of the core

    # The core runs the main job; figures are skipped with a one-line hint instead of failing.
    model = tmp_path / "tiny"
    lm = tiny_lm("llama")
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    facts = tmp_path / "facts.jsonl"
    rows = [
        {"subject": f.subject, "relation": f.relation, "object": f.object, "prompts": list(f.prompts)}
        for f in tiny_facts()[:2]
    ]
    facts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    args = ["score", "--model", str(model), "--facts", str(facts), "--out", str(out), "--steps", "2"]
    loose = ["--known-top-k", "1000", "--known-share", "0.0", "--no-progress", "--metrics", "none"]
    done = _run(
        [str(venv / "bin" / "legibility"), *args, *loose], {**env, "HOME": str(tmp_path)}, timeout=300
    )
    assert (out / "scorecard.json").exists() and (out / "neurons.jsonl").exists()
    assert not (out / "layers.png").exists()
    assert "matplotlib is not installed: skipped layers.png" in done.stderr
    assert "pip install 'legibility[report]'" in done.stderr


def test_figures_without_matplotlib_are_skipped_with_a_hint(tmp_path, monkeypatch):
    from legibility import LegibilityError
    from legibility.report.figures import layers_figure, suppression_figure
    from legibility.report.plotting import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    records = [{"neurons": [[0, 1]]}]
    with pytest.warns(UserWarning, match=r"skipped layers.png \(pip install 'legibility\[report\]'"):
        assert layers_figure(records, 2, tmp_path / "layers.png") is None
    with pytest.warns(UserWarning, match="skipped suppression.png"):
        assert suppression_figure({}, tmp_path / "suppression.png") is None
    assert not any(tmp_path.iterdir())
    with pytest.raises(LegibilityError, match=r"needs matplotlib: pip install 'legibility\[report\]'"):
        pyplot()  # what the sweep report's frontier calls
