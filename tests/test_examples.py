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


def test_bitrix24_example_against_a_sandbox_imported_from_the_sample_matches_the_csv_source(tmp_path):
    # The bundled sample served by `lifecycle sandbox bitrix24 --import-csv` (a subprocess, as a user would
    # start it) and read through examples/bitrix24.toml gives exactly the members the CSV source gives.
    import os

    sandbox = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "sandbox", "bitrix24", "--port", "0", "--no-limits",
         "--import-csv", str(ROOT / "examples" / "sample")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        info = json.loads(sandbox.stdout.readline())
        shutil.copy(ROOT / "examples" / "bitrix24.toml", tmp_path / "bitrix24.toml")
        env = {**os.environ, "LIFECYCLE_CRM__WEBHOOK_URL": info["webhook_url"]}

        def run(config, *args):
            proc = subprocess.run([sys.executable, "-m", "connector.cli", *args, "--config", str(config)],
                                  capture_output=True, text=True, timeout=120, env=env)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        synced = run(tmp_path / "bitrix24.toml", "sync")
        assert "pull (full)" in synced and "write-back:" in synced
        assert info["webhook_code"] not in synced
        csv_config = tmp_path / "csv.toml"
        csv_config.write_text(f'[crm]\nkind = "csv"\npath = "{(ROOT / "examples" / "sample").as_posix()}"\n'
                              '[state]\nurl = "sqlite:///csv.db"\n', encoding="utf-8")
        run(csv_config, "sync")
        reports = [json.loads(run(c, "report", "--as-of", "2026-11-23", "--format", "json", "--members"))
                   for c in (tmp_path / "bitrix24.toml", csv_config)]
        assert reports[0]["customers"] == 300
        assert reports[0]["members"] == reports[1]["members"]
        import urllib.request

        with urllib.request.urlopen(f"{info['control_url']}state?entity=contacts", timeout=60) as answer:
            state = json.loads(answer.read())
        tagged = sum(1 for c in state["contacts"] if c.get("UF_CRM_LIFECYCLE"))
        assert tagged == 300  # every contact is in exactly one status.* segment
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


def test_amocrm_example_against_a_sandbox_imported_from_the_sample_matches_the_csv_source(tmp_path):
    # The bundled sample served by `lifecycle sandbox amocrm --import-csv` and read through
    # examples/amocrm.toml gives exactly the members the CSV source gives, and tags every contact.
    import os
    import urllib.request

    sandbox = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "sandbox", "amocrm", "--port", "0",
         "--import-csv", str(ROOT / "examples" / "sample")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        info = json.loads(sandbox.stdout.readline())
        shutil.copy(ROOT / "examples" / "amocrm.toml", tmp_path / "amocrm.toml")
        env = {**os.environ, "LIFECYCLE_CRM__BASE_URL": info["base_url"], "LIFECYCLE_CRM__ACCESS_TOKEN": info["access_token"]}

        def run(config, *args):
            proc = subprocess.run([sys.executable, "-m", "connector.cli", *args, "--config", str(config)],
                                  capture_output=True, text=True, timeout=120, env=env)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        synced = run(tmp_path / "amocrm.toml", "sync")
        assert "pull (full)" in synced and "write-back:" in synced and info["access_token"] not in synced
        csv_config = tmp_path / "csv.toml"
        csv_config.write_text(f'[crm]\nkind = "csv"\npath = "{(ROOT / "examples" / "sample").as_posix()}"\n'
                              '[state]\nurl = "sqlite:///csv.db"\n', encoding="utf-8")
        run(csv_config, "sync")
        reports = [json.loads(run(c, "report", "--as-of", "2026-11-23", "--format", "json", "--members"))
                   for c in (tmp_path / "amocrm.toml", csv_config)]
        assert reports[0]["customers"] == 300
        assert reports[0]["members"] == reports[1]["members"]
        with urllib.request.urlopen(f"{info['control_url']}state?entity=contacts", timeout=60) as answer:
            state = json.loads(answer.read())
        statuses = {"status.prospect", "status.current", "Former customer"}  # status.former has a label
        per_contact = [{t["name"] for t in (c.get("_embedded") or {}).get("tags") or []} & statuses for c in state["contacts"]]
        assert len(per_contact) == 300 and all(len(s) == 1 for s in per_contact)  # exactly one status each
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
