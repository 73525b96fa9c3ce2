"""The operator commands: --version, help texts, init, check, config show, runs, members, sandbox --print-env.

``lifecycle check`` runs against the Bitrix24, amoCRM and ads sandboxes over HTTP with problems planted
(wrong webhook code, a webhook without a needed scope, an unknown pipeline, an unknown user, a bad
cabinet token); every one is reported in one run and the sandboxes' counters show no write request."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from connector.cli import build_parser, main
from connector.config import load_config
from sandbox.ads.testing import running_ads
from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal
from tests.conftest import ROOT

BITRIX_READS = {"scope", "crm.category.list", "crm.status.list", "user.get"}
AMO_READ_VERBS = ("GET ",)


def campaign(pipeline: str, users: list[int]) -> str:
    return f"""
[[campaign]]
name = "repeat"
segment = "lifecycle.promising_asleep"
auto_approve = true
responsible = {json.dumps(users)}
on_enter = [{{ action = "deal", title = "Repeat sale: {{name}}", pipeline = "{pipeline}" }}]
"""


def audience(ads, token: str) -> str:
    y = ads.info["yandex"] if hasattr(ads, "info") else ads.control("GET", "info")["yandex"]
    return f"""
[[audience]]
segment = "status.former"
cabinet = "yandex"
name = "Former customers"

[audiences]
yandex_url = "{y['base_url']}"
yandex_token = "{token}"
"""


def ads_info(ads) -> dict:
    return ads.control("GET", "info")


def write(tmp_path, crm_section: str, extra: str) -> str:
    path = tmp_path / "lifecycle.toml"
    path.write_text("[crm]\n" + crm_section + '[state]\nurl = "sqlite:///state.db"\n' + extra, encoding="utf-8")
    return str(path)


def ads_requests(ads) -> dict:
    return {k: v for k, v in ads.counters()["requests"].items() if " " in k}


def test_check_on_bitrix24_reports_every_planted_problem_in_one_run_and_writes_nothing(tmp_path, capsys):
    with running_portal(generate=(20, 40), time_scale=50) as portal, running_ads() as ads:
        scoped = portal.add_webhook(["crm", "user"])  # no "task": the deal's call task could not be created
        y = ads_info(ads)["yandex"]
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{scoped}"\nrequests_per_second = 500\n',
                       campaign("No such pipeline", [987654]) +
                       f'[[audience]]\nsegment = "status.former"\ncabinet = "yandex"\n'
                       f'[audiences]\nyandex_url = "{y["base_url"]}"\nyandex_token = "y0_wrong"\n')
        portal.reset_counters()
        ads.reset_counters()
        assert main(["check", "--config", config]) == 1
        out, err = capsys.readouterr()
        problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
        assert len(problems) == 4, out
        assert any("lacks scope 'task'" in p for p in problems)
        assert any("pipeline 'No such pipeline'" in p for p in problems)
        assert any("987654" in p for p in problems)
        assert any("yandex" in p and "status.former" in p.lower() or "yandex" in p for p in problems)
        assert err.strip().startswith("error: 4 problem(s) found") and len(err.strip().splitlines()) == 1
        methods = portal.counters()["methods"]
        assert set(methods) <= BITRIX_READS, methods  # read methods only
        assert all(k.split()[1] == "GET" for k in ads_requests(ads)), ads_requests(ads)
        assert portal.state()["deals"] == [] or all(d.get("ORIGINATOR_ID") != "crm-lifecycle" for d in portal.state()["deals"])
        assert scoped.split("/")[-2] not in out + err  # the webhook code is a secret


def test_check_on_bitrix24_reports_a_wrong_webhook_code_and_a_bad_cabinet_token_together(tmp_path, capsys):
    with running_portal(generate=(5, 5)) as portal, running_ads() as ads:
        wrong = portal.webhook_url.rstrip("/").rsplit("/", 1)[0] + "/wrongcode123456/"
        y = ads_info(ads)["yandex"]
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{wrong}"\n',
                       f'[[audience]]\nsegment = "status.former"\ncabinet = "yandex"\n'
                       f'[audiences]\nyandex_url = "{y["base_url"]}"\nyandex_token = "y0_wrong"\n')
        assert main(["check", "--config", config]) == 1
        out, err = capsys.readouterr()
        problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
        assert len(problems) == 2, out
        assert "Bitrix24 connection" in problems[0] and "yandex" in problems[1]
        assert "wrongcode123456" not in out + err


def test_check_on_amocrm_reports_unknown_pipeline_user_and_bad_cabinet_token_without_writing(tmp_path, capsys):
    with running_account(generate=(20, 40)) as acct, running_ads() as ads:
        meta = ads_info(ads)["meta"]
        config = write(tmp_path, f'kind = "amocrm"\nbase_url = "{acct.info["base_url"]}"\n'
                                 f'access_token = "{acct.info["access_token"]}"\n',
                       campaign("No such pipeline", [987654]) +
                       f'[[audience]]\nsegment = "status.former"\ncabinet = "meta"\nad_account_id = "{meta["ad_account_id"]}"\n'
                       f'[audiences]\nmeta_url = "{meta["base_url"]}"\nmeta_access_token = "EAAwrong"\n'
                       f'meta_api_version = "{meta["api_version"]}"\n')
        acct.reset_counters()
        assert main(["check", "--config", config]) == 1
        out, _ = capsys.readouterr()
        problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
        assert len(problems) == 3, out
        assert any("pipeline 'No such pipeline'" in p for p in problems)
        assert any("987654" in p for p in problems)
        assert any("meta" in p for p in problems)
        routes = acct.counters()["by_route"]
        assert routes and all(r.startswith(AMO_READ_VERBS) for r in routes), routes
        assert all(k.split()[1] == "GET" for k in ads_requests(ads)), ads_requests(ads)


def test_check_on_amocrm_with_a_wrong_token_is_one_problem(tmp_path, capsys):
    with running_account(generate=(5, 5)) as acct:
        config = write(tmp_path, f'kind = "amocrm"\nbase_url = "{acct.info["base_url"]}"\naccess_token = "wrong-token"\n', "")
        assert main(["check", "--config", config]) == 1
        out, err = capsys.readouterr()
        assert [line for line in out.splitlines() if line.startswith("PROBLEM")][0].startswith("PROBLEM  amoCRM connection")
        assert "wrong-token" not in out + err


def test_check_passes_on_a_sound_bitrix24_config(tmp_path, capsys):
    with running_portal(generate=(20, 40), time_scale=50) as portal:
        users = sorted(int(u["ID"]) for u in portal.state()["users"])[:2]
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n',
                       campaign("1", users))
        assert main(["check", "--config", config]) == 0
        out = capsys.readouterr().out
        assert "PROBLEM" not in out and "everything a sync needs is in place" in out
        assert "campaign 'repeat': pipelines and stages exist" in out and "campaign 'repeat': users exist" in out


def test_check_with_an_invalid_config_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "nope"\n', encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "crm.kind" in err


# -- the CLI itself ---------------------------------------------------------------------------------

def test_version_and_every_subcommand_has_a_description_and_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("lifecycle 0.")
    from connector.cli_help import _subparsers

    parser = build_parser()
    seen = 0
    for name, sub in _subparsers(parser).items():
        for each in [sub, *_subparsers(sub).values()]:
            assert each.description, name
            assert each.epilog and each.epilog.startswith("example: lifecycle "), name
            seen += 1
    assert seen >= 12


def test_global_options_work_before_and_after_the_subcommand():
    parser = build_parser()
    args = parser.parse_args(["-q", "--log-format", "json", "runs"])
    assert args.quiet and args.log_format == "json" and not args.debug
    args = parser.parse_args(["runs", "-v", "--log-format", "text"])
    assert args.debug and args.log_format == "text" and not args.quiet
    args = parser.parse_args(["sandbox", "bitrix24", "--verbose"])
    assert args.args == ["--verbose"] and not args.debug  # the sandbox's own option


def test_init_writes_a_starter_config_that_loads_and_never_echoes_the_secret(tmp_path, capsys):
    target = tmp_path / "lifecycle.toml"
    url = "https://portal.example.ru/rest/1/s3cr3tc0de4567/"
    assert main(["init", "--kind", "bitrix24", "--url", url, "-o", str(target)]) == 0
    out, err = capsys.readouterr()
    assert "s3cr3tc0de4567" not in out + err
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    text = target.read_text(encoding="utf-8")
    assert text.count("\n#") >= 3  # commented
    config = load_config(target)
    assert config.crm.kind == "bitrix24" and config.crm.webhook_url.get_secret_value() == url
    assert main(["init", "--kind", "bitrix24", "--url", url, "-o", str(target)]) == 2  # never overwrites silently
    assert capsys.readouterr().err.startswith("error: ") and target.read_text(encoding="utf-8") == text
    amo = tmp_path / "amo.toml"
    assert main(["init", "--kind", "amocrm", "--url", "https://x.amocrm.ru", "--token", "tok-SECRET-123", "-o", str(amo)]) == 0
    out, err = capsys.readouterr()
    assert "tok-SECRET-123" not in out + err
    assert load_config(amo).crm.access_token.get_secret_value() == "tok-SECRET-123"


def test_init_without_a_kind_off_a_terminal_is_one_line_exit_2(tmp_path, capsys):
    assert main(["init", "-o", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kind" in err[0]


def test_config_show_names_the_source_of_each_setting_and_masks_secrets(tmp_path, capsys, monkeypatch):
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "amocrm"\nbase_url = "https://x.amocrm.ru"\naccess_token = "tok-SECRET-123"\n'
                    'timezone = "Asia/Yekaterinburg"\n', encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_KPI__ACTIVE_SHARE_TARGET", "0.4")
    assert main(["config", "show", "--format", "json", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tok-SECRET-123" not in out
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows["crm.timezone"] == {"key": "crm.timezone", "value": '"Asia/Yekaterinburg"', "source": "file"}
    assert rows["kpi.active_share_target"]["source"] == "env LIFECYCLE_KPI__ACTIVE_SHARE_TARGET"
    assert rows["kpi.active_share_target"]["value"] == "0.4"
    assert rows["crm.overlap_minutes"]["source"] == "default"
    assert rows["crm.access_token"]["value"] == "*** (set)"
    assert rows["crm.client_secret"]["value"] == "(not set)"
    assert main(["config", "show", "--config", str(path)]) == 0
    table = capsys.readouterr().out
    assert "tok-SECRET-123" not in table and "crm.timezone" in table


def _csv_workspace(ws):
    ws.write_contacts([
        {"id": 1, "name": "Анна [bold]Иванова[/bold]", "phone": "+79001112233", "email": "anna@example.ru",
         "responsible_id": "7", "created_at": "2024-01-10"},
        {"id": 2, "name": "Boris", "phone": "+79004445566", "email": "boris@example.ru", "responsible_id": "8",
         "created_at": "2024-01-10"},
        {"id": 3, "name": "Never bought", "created_at": "2024-01-10"},
    ])
    ws.write_deals([
        {"id": 10, "contact_id": 1, "status": "won", "amount": 1500, "created_at": "2024-02-01", "closed_at": "2024-02-02"},
        {"id": 11, "contact_id": 2, "status": "won", "amount": 700, "created_at": "2024-03-01", "closed_at": "2024-03-02"},
        {"id": 12, "contact_id": 2, "status": "won", "amount": 300, "created_at": "2024-04-01", "closed_at": "2024-04-02"},
    ])
    return str(ws.write_config())


def test_members_lists_names_phones_emails_responsible_and_features(ws, capsys):
    config = _csv_workspace(ws)
    assert main(["-q", "sync", "--config", config]) == 0
    capsys.readouterr()
    assert main(["members", "status.former", "--format", "json", "--config", config]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[1] == {"id": 2, "name": "Boris", "phone": "+79004445566", "email": "boris@example.ru",
                       "responsible_id": "8", "responsible": None, "purchases": 2, "monetary": 1000.0,
                       "recency_days": rows[1]["recency_days"]}  # a CSV source stores no users: no name
    assert rows[1]["recency_days"] > 300
    assert main(["members", "status.former", "--format", "csv", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id,name,phone,email,responsible_id,responsible,purchases,monetary,recency_days"
    assert lines[2].startswith("2,Boris,+79004445566,boris@example.ru,8,,2,1000.0,")
    assert main(["members", "status.former", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "Анна [bold]Иванова[/bold]" in table and "anna@example.ru" in table  # as written, on one line
    assert "user id" in table


def test_members_name_the_responsible_from_the_stored_users(ws, capsys):
    from connector.pipeline import open_store

    config = _csv_workspace(ws)
    assert main(["-q", "sync", "--config", config]) == 0
    store = open_store(load_config(config))
    store.save_users([(7, "Ольга Петрова", True), (8, "Ivan Sidorov", False)])  # as a CRM sync stores them (0008)
    store.close()
    capsys.readouterr()
    assert main(["members", "status.former", "--format", "json", "--config", config]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["responsible_id"], r["responsible"]) for r in rows] == [("7", "Ольга Петрова"), ("8", "Ivan Sidorov")]
    assert main(["members", "status.former", "--format", "csv", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split(",")[4:6] == ["7", "Ольга Петрова"] and lines[2].split(",")[4:6] == ["8", "Ivan Sidorov"]
    assert main(["members", "status.former", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "Ольга Петрова (7)" in table and "Ivan Sidorov (8)" in table


def test_members_of_an_unknown_segment_is_one_line_exit_2(ws, capsys):
    config = _csv_workspace(ws)
    assert main(["members", "status.formr", "--config", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'status.former'" in err[0]


def test_runs_lists_history_failed_runs_and_skipped_records(ws, capsys):
    config = _csv_workspace(ws)
    with (ws.crm / "deals.csv").open("a", encoding="utf-8") as fh:
        fh.write("13,2,,won,lots,,2024-05-01,2024-05-02\n")
    assert main(["-q", "sync", "--config", config]) == 0
    (ws.crm / "deals.csv").write_text("id,contact_id\nnot-a-file-we-can-use", encoding="utf-8")
    (ws.crm / "deals.csv").unlink()
    assert main(["-q", "sync", "--config", config]) != 0
    capsys.readouterr()
    assert main(["runs", "--format", "json", "--config", config]) == 0
    answer = json.loads(capsys.readouterr().out)
    runs = answer["runs"]
    assert [r["status"] for r in runs] == ["failed", "ok"]
    assert [(e["run"], e["record"]) for e in answer["skipped_records"]] == [(runs[1]["id"], "deals.csv:5")]
    assert "lots" in answer["skipped_records"][0]["error"]
    assert runs[1]["stats"]["customers"] == 3 and "deals.csv" in runs[0]["error"]
    assert main(["runs", "--failed", "--format", "json", "--config", config]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["failed"]
    assert main(["runs", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "Runs (newest first)" in table and "records the pull skipped" in table and "deals.csv:5" in table


# -- sandbox --print-env ----------------------------------------------------------------------------

def test_print_env_lines_point_lifecycle_at_each_sandbox(tmp_path):
    from connector.cli_tools import env_lines

    with running_portal(generate=(5, 5)) as portal:
        lines = env_lines("bitrix24", portal.info)
        assert f"export LIFECYCLE_CRM__WEBHOOK_URL={portal.webhook_url}" in lines
    with running_account(generate=(5, 5)) as acct:
        lines = env_lines("amocrm", acct.info)
        assert f"export LIFECYCLE_CRM__ACCESS_TOKEN={acct.info['access_token']}" in lines
    with running_ads() as ads:
        info = ads_info(ads)
        lines = env_lines("ads", info)
        assert f"export LIFECYCLE_AUDIENCES__YANDEX_TOKEN={info['yandex']['token']}" in lines


def test_sandbox_print_env_serves_and_its_exports_make_a_working_config(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "sandbox", "bitrix24", "--print-env",
                             "--generate", "10:20"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(3)]
        assert lines[0].startswith("# lifecycle sandbox bitrix24 at http://127.0.0.1:")
        assert lines[1] == "export LIFECYCLE_CRM__KIND=bitrix24"
        assert lines[2].startswith("export LIFECYCLE_CRM__WEBHOOK_URL=http://127.0.0.1:")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
        env.update(dict(line[len("export "):].split("=", 1) for line in lines[1:]))
        env["LIFECYCLE_STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
        checked = subprocess.run([sys.executable, "-m", "connector.cli", "check"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "Bitrix24 answers" in checked.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bitrix24_sandbox_webhook_with_chosen_scopes_refuses_other_methods():
    with running_portal(generate=(3, 3)) as portal:
        scoped = portal.add_webhook(["crm"])
        status, body = portal.call("scope", base=scoped)
        assert status == 200 and body["result"] == ["basic", "crm"]
        status, body = portal.call("tasks.task.list", base=scoped)
        assert status == 401 and body["error"] == "insufficient_scope"
        assert portal.call("user.get", base=scoped)[1]["error"] == "insufficient_scope"
        status, body = portal.call("batch", {"cmd": {"a": "crm.contact.list?select[0]=ID", "b": "tasks.task.list"}},
                                   base=scoped)
        assert status == 200 and body["result"]["result_error"]["b"]["error"] == "insufficient_scope"
        assert body["result"]["result"]["a"]  # the crm command ran
        assert portal.call("tasks.task.list")[0] == 200  # the portal's own webhook keeps every scope
        assert "task" in portal.call("scope")[1]["result"]


def test_runs_lists_the_per_record_errors_of_failed_campaign_actions(tmp_path, capsys):
    with running_portal(generate=(30, 45), time_scale=50) as portal:
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n',
                       '[[campaign]]\nname = "winback"\nsegment = "status.former"\nauto_approve = true\n'
                       'on_enter = [{ action = "call_task", title = "Call {name}" }]\n[executor]\nmax_attempts = 1\n')
        # every batch (the task creation; a pull of fewer than 50 records needs none) answers without results
        portal.faults(kind="status", method="batch", status=200,
                      body={"result": {"result": {}, "result_error": {}, "result_total": {}, "result_next": {}}})
        assert main(["-q", "sync", "--format", "json", "--config", config]) == 0
        failed = json.loads(capsys.readouterr().out)["actions_failed"]
        assert failed > 0
        assert main(["runs", "--format", "json", "--config", config]) == 0
        errors = json.loads(capsys.readouterr().out)["record_errors"]
        assert len(errors) == failed
        assert {(e["campaign"], e["action"], e["attempts"]) for e in errors} == {("winback", "call_task", 1)}
        assert all(e["error"] and isinstance(e["customer_id"], int) for e in errors)
        assert main(["runs", "--config", config]) == 0
        assert "campaign actions that failed" in capsys.readouterr().out


def test_check_on_bitrix24_reports_a_missing_bizproc_scope_and_template_of_a_channel_campaign(tmp_path, capsys):
    with running_portal(generate=(20, 40), time_scale=50) as portal:
        scoped = portal.add_webhook(["crm", "user"])  # no "bizproc": business processes cannot be started
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{scoped}"\nrequests_per_second = 500\n',
                       '[[campaign]]\nname = "reach"\nsegment = "status.former"\n'
                       'on_enter = [{ action = "bizproc", title = "Win back {name}", template = "Win-back e-mail" }]\n')
        assert main(["check", "--config", config]) == 1
        out, _ = capsys.readouterr()
        problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
        assert any("lacks scope 'bizproc'" in p for p in problems), out
        assert any("'reach': the webhook lacks the 'bizproc' scope" in p for p in problems), out
        path = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n',
                     '[[campaign]]\nname = "reach"\nsegment = "status.former"\n'
                     'on_enter = [{ action = "bizproc", title = "Win back {name}", template = "Nope" }]\n')
        assert main(["check", "--config", path]) == 1
        out, _ = capsys.readouterr()
        assert "'reach': template 'Nope' is not a business-process template" in out
        path = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n',
                     '[[campaign]]\nname = "reach"\nsegment = "status.former"\n'
                     'on_enter = [{ action = "bizproc", title = "Win back {name}", template = "Win-back e-mail" }]\n')
        assert main(["check", "--config", path]) == 0
        out, _ = capsys.readouterr()
        assert "campaign 'reach': channels (business-process templates, stages, rights) exist" in out
        assert portal.state()["workflows"] == []


def test_check_on_bitrix24_reports_a_missing_mail_scope_and_an_unknown_sender(tmp_path, capsys):
    with running_portal(generate=(20, 40), time_scale=50) as portal:
        mail = ('on_enter = [{ action = "email", title = "Hi {name}", body = "Hello", mailbox = "%s" }]\n')
        scoped = portal.add_webhook(["crm", "user"])  # no "mail": the senders cannot be listed
        config = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{scoped}"\nrequests_per_second = 500\n',
                       '[[campaign]]\nname = "reach"\nsegment = "status.former"\n' + mail % "Shop <shop@example.com>")
        assert main(["check", "--config", config]) == 1
        out, _ = capsys.readouterr()
        assert "lacks scope 'mail'" in out and "'reach': the webhook lacks the 'mail' scope" in out, out
        path = write(tmp_path, f'kind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n',
                     '[[campaign]]\nname = "reach"\nsegment = "status.former"\n' + mail % "Nobody <nobody@example.com>")
        assert main(["check", "--config", path]) == 1
        out, _ = capsys.readouterr()
        assert "mailbox 'Nobody <nobody@example.com>' is not an e-mail sender" in out
        assert "Admin Sandbox <user1@sandbox.local>" in out and "Shop <shop@example.com>" in out
        assert portal.state()["activities"] == []
