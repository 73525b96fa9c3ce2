"""config.example.toml and the bundled sample stay valid and give a real report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_example_config_runs_on_the_bundled_sample(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "lifecycle.toml"
    shutil.copy(ROOT / "config.example.toml", config)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "connector.cli", *a, "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert run("sync").returncode == 0
    proc = run("report", "--as-of", "2026-11-23", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["customers"] == 300
    cells = [v for k, v in out["segments"].items() if k.startswith("lifecycle.")]
    assert len(cells) == 9 and sum(cells) > 0
    assert out["segments"]["status.prospect"] + out["segments"]["status.current"] + out["segments"]["status.former"] == 300
    assert (tmp_path / "lifecycle.db").exists()
