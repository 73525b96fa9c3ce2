"""config.example.toml and the bundled sample stay valid and give a real report."""

from __future__ import annotations

import json

import pytest
import shutil
import re
import subprocess
import sys

from tests.conftest import ROOT, run_cli


def test_example_config_runs_on_the_bundled_sample(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "lifecycle.toml"
    shutil.copy(ROOT / "config.example.toml", config)
    run = lambda *a: run_cli([*a, "--config", str(config)])  # noqa: E731
    assert run("sync").returncode == 0
    proc = run("report", "--as-of", "2026-11-23", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["customers"] == 300
    cells = [v for k, v in out["segments"].items() if k.startswith("lifecycle.")]
    assert len(cells) == 9 and sum(cells) > 0
    assert out["segments"]["status.prospect"] + out["segments"]["status.current"] + out["segments"]["status.former"] == 300
    assert (tmp_path / "lifecycle.db").exists()



def _sandbox_example_matches_csv(tmp_path, system: str, env_from_info) -> tuple[dict, dict, str]:
    """Serve the bundled sample with `lifecycle sandbox SYSTEM --import-csv` (a subprocess, as a user would
    start it), sync it (in-process) through examples/SYSTEM.toml and check it gives exactly the CSV source's members.
    Returns the sandbox's first line, its contacts as /_sandbox/state shows them, and the sync output."""
    import os
    import urllib.request

    sandbox = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "sandbox", system, "--port", "0",
         "--import-csv", str(ROOT / "examples" / "sample")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        info = json.loads(sandbox.stdout.readline())
        config = tmp_path / f"{system}.toml"
        shutil.copy(ROOT / "examples" / f"{system}.toml", config)
        env = env_from_info(info)

        def run(config, *args):
            proc = run_cli([*args, "--config", str(config)], env=env)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        synced = run(config, "sync")
        assert "pull (full)" in synced and "write-back:" in synced
        csv_config = tmp_path / "csv.toml"
        csv_config.write_text(f'[crm]\nkind = "csv"\npath = "{(ROOT / "examples" / "sample").as_posix()}"\n'
                              '[state]\nurl = "sqlite:///csv.db"\n', encoding="utf-8")
        run(csv_config, "sync")
        reports = [json.loads(run(c, "report", "--as-of", "2026-11-23", "--format", "json", "--members"))
                   for c in (config, csv_config)]
        assert reports[0]["customers"] == 300
        assert reports[0]["members"] == reports[1]["members"]
        with urllib.request.urlopen(f"{info['control_url']}state?entity=contacts", timeout=60) as answer:
            contacts = json.loads(answer.read())["contacts"]
        return info, contacts, synced
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


def test_bitrix24_example_against_a_sandbox_imported_from_the_sample_matches_the_csv_source(tmp_path):
    info, contacts, synced = _sandbox_example_matches_csv(
        tmp_path, "bitrix24", lambda info: {"LIFECYCLE_CRM__WEBHOOK_URL": info["webhook_url"]})
    assert info["webhook_code"] not in synced
    assert sum(1 for c in contacts if c.get("UF_CRM_LIFECYCLE")) == 300  # every contact has a status.* segment


def test_amocrm_example_against_a_sandbox_imported_from_the_sample_matches_the_csv_source(tmp_path):
    info, contacts, synced = _sandbox_example_matches_csv(
        tmp_path, "amocrm",
        lambda info: {"LIFECYCLE_CRM__BASE_URL": info["base_url"], "LIFECYCLE_CRM__ACCESS_TOKEN": info["access_token"]})
    assert info["access_token"] not in synced
    statuses = {"status.prospect", "status.current", "Former customer"}  # status.former has a label
    per_contact = [{t["name"] for t in (c.get("_embedded") or {}).get("tags") or []} & statuses for c in contacts]
    assert len(per_contact) == 300 and all(len(s) == 1 for s in per_contact)  # exactly one status each


def test_the_commented_campaign_example_is_valid_when_uncommented(tmp_path):
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    block = text[text.index("# --- Campaigns"):text.index("# --- Ad audiences")].splitlines()[1:]
    toml = [line[2:] for line in block if line.startswith("# ") and not line.startswith("# #")
            and not line[2:].startswith(("Actions", "Templates", "{recency", "Run ", " "))]
    config = tmp_path / "lifecycle.toml"
    config.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "https://example.bitrix24.ru/rest/1/x/"\n' + "\n".join(toml),
                      encoding="utf-8")
    from connector.config import load_config

    loaded = load_config(config)
    assert [c.name for c in loaded.settings.campaign] == ["winback", "repeat"]
    assert loaded.settings.pressure.max_touches == 3 and loaded.settings.executor.batch_size == 50


def test_the_commented_audience_example_is_valid_when_uncommented(tmp_path, monkeypatch):
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    block = text[text.index("# --- Ad audiences"):].splitlines()[1:]
    toml = [line[2:] for line in block if line.startswith("# ") and not line.startswith("# #")
            and not line[2:].startswith(("Credentials", "LIFECYCLE_", " "))]
    config = tmp_path / "lifecycle.toml"
    (tmp_path / "crm").mkdir()
    config.write_text('[crm]\nkind = "csv"\npath = "crm"\n' + "\n".join(toml), encoding="utf-8")
    from connector.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="LIFECYCLE_AUDIENCES__YANDEX_TOKEN"):
        load_config(config)  # a cabinet without its credentials is named with the variable to set
    for key in ("YANDEX_TOKEN", "VK_CLIENT_ID", "VK_CLIENT_SECRET", "GOOGLE_ACCESS_TOKEN", "META_ACCESS_TOKEN"):
        monkeypatch.setenv(f"LIFECYCLE_AUDIENCES__{key}", "x")
    loaded = load_config(config)
    assert [a.cabinet for a in loaded.settings.audience] == ["yandex", "vk", "google", "meta"]


def test_demo_runs_end_to_end_with_write_back_and_an_audience():
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "demo", "--customers", "400"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "Lifecycle matrix" in out and "UF_CRM_LIFECYCLE updated" in out
    assert out.count("HTTP requests") == 3
    reorder = re.search(r'reorder campaign: (\d+) call tasks "due soon" created', out)  # issue 17: cyclical products
    assert reorder and int(reorder.group(1)) > 0 and "Reorder reminders" in out
    assert "audience 'Former customers' in the sandbox Yandex Audience" in out and "+0 -0" in out
    # the dashboard's URL and a login for the demo portal; without a terminal the demo does not wait
    assert "/ui/p/default/" in out and "login demo@example.com, password " in out
