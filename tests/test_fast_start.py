"""Fast start (issue 20, item 6): ``lifecycle --help`` and ``lifecycle report`` never load the CRM clients
(aiohttp, fast-bitrix24, requests/httpx, the adapters' client modules) nor numpy/scipy's prediction models.

Each check runs a fresh interpreter and looks at ``sys.modules`` after the command: it asserts which modules
are absent, not how long anything took."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from connector.model_cli import COUNT_MODELS, MODELS

ROOT = Path(__file__).resolve().parents[1]
HTTP = ("aiohttp", "fast_bitrix24", "httpx", "requests", "adapters.bitrix24.client", "adapters.amocrm.client",
        "adapters.bitrix24", "adapters.amocrm")
PROBE = """
import io, json, sys, contextlib
from connector.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _probe(argv: list[str], cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_loads_no_crm_client_nor_scipy(tmp_path: Path) -> None:
    got = _probe(["--help"], tmp_path)
    assert got["code"] == 0 and "report" in got["out"]
    loaded = set(got["modules"])
    assert not loaded & {*HTTP, "scipy", "numpy", "polars", "pydantic", "sqlalchemy", "rich"}, loaded & {*HTTP, "scipy"}


def test_report_on_a_bitrix24_portal_loads_no_crm_client(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.toml").write_text(
        '[crm]\nkind = "bitrix24"\nname = "p"\ntimezone = "Europe/Moscow"\n'
        'webhook_url = "http://127.0.0.1:9/rest/1/secret/"\n[state]\nurl = "sqlite:///state.db"\n'
        '[writeback]\ntag_segments = ["lifecycle.*"]\n', encoding="utf-8")
    got = _probe(["report", "--format", "json"], tmp_path)
    assert got["code"] == 0, got["out"]
    assert json.loads(got["out"])["customers"] == 0
    loaded = set(got["modules"])
    assert not loaded & set(HTTP), sorted(loaded & set(HTTP))
    assert "connector.pipeline" in loaded  # the probe did run the report


def test_parser_model_choices_match_the_models() -> None:
    from rules.predict import models

    assert MODELS == models.MODELS and COUNT_MODELS == models.COUNT_MODELS
