"""Config: validation names the key and the file, the environment overrides, paths resolve against the
config's folder, and rules are checked at load time."""

from __future__ import annotations

import pytest

from connector.config import ConfigError, load_config
from tests.conftest import BASE_CONFIG


def load_with(ws, extra: str = "", base: str = BASE_CONFIG):
    ws.write_config(extra, base=base)
    return load_config(ws.config_path)


def error_of(ws, extra: str = "", base: str = BASE_CONFIG) -> str:
    with pytest.raises(ConfigError) as info:
        load_with(ws, extra, base)
    return str(info.value)


def test_defaults_and_relative_paths_resolve_against_the_config_folder(ws, monkeypatch, tmp_path):
    monkeypatch.chdir("/")
    config = load_with(ws)
    assert config.crm.path == ws.crm.resolve()
    assert config.state_url == f"sqlite:///{(ws.root / 'state.db').resolve()}"
    assert config.settings.segments.lifecycle.recency_days == (60, 90)
    assert config.settings.kpi.active_share_target == 0.30
    assert "lifecycle.regular_asleep" in config.rules.segment_names


def test_unknown_key_names_the_key_and_the_file(ws):
    msg = error_of(ws, "[segments.lifecycle]\nrecency_dayz = [1, 2]\n")
    assert str(ws.config_path) in msg
    assert "segments.lifecycle.recency_dayz: unknown key" in msg


def test_unknown_section_is_an_error(ws):
    assert "crmm: unknown key" in error_of(ws, "[crmm]\nkind='csv'\n")


def test_wrong_type_names_the_key(ws):
    msg = error_of(ws, "[kpi]\nactive_share_target = 'a lot'\n")
    assert "kpi.active_share_target" in msg and "'a lot'" in msg


def test_bad_values_say_what_is_expected(ws):
    assert "three increasing counts" in error_of(ws, "[segments.lifecycle]\npurchase_bins = [1, 4, 2]\n")
    bad_tz = BASE_CONFIG.replace("Europe/Moscow", "Mars/Olympus")
    assert "unknown time zone 'Mars/Olympus'" in error_of(ws, base=bad_tz)
    no_path = BASE_CONFIG.replace('path = "crm"\n', "")
    assert "needs path" in error_of(ws, base=no_path)


def test_missing_file_and_broken_toml(ws, tmp_path):
    with pytest.raises(ConfigError, match="not found; copy config.example.toml"):
        load_config(tmp_path / "nope.toml")
    ws.config_path.write_text("[crm\nkind = 'csv'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(ws.config_path)


def test_environment_overrides_the_file(ws, monkeypatch):
    monkeypatch.setenv("LIFECYCLE_CRM__TIMEZONE", "Asia/Yekaterinburg")
    monkeypatch.setenv("LIFECYCLE_SEGMENTS__LIFECYCLE__RECENCY_DAYS", "[30, 45]")
    monkeypatch.setenv("LIFECYCLE_KPI__ACTIVE_SHARE_TARGET", "0.4")
    config = load_with(ws)
    assert config.crm.timezone == "Asia/Yekaterinburg"
    assert config.crm.path == ws.crm.resolve()  # the rest of [crm] still comes from the file
    assert config.settings.segments.lifecycle.recency_days == (30, 45)
    assert config.settings.kpi.active_share_target == 0.4


def test_bad_environment_value_names_the_variable(ws, monkeypatch):
    monkeypatch.setenv("LIFECYCLE_KPI__ACTIVE_SHARE_TARGET", "many")
    msg = error_of(ws)
    assert "kpi.active_share_target (from environment variable LIFECYCLE_KPI__ACTIVE_SHARE_TARGET)" in msg


def test_unknown_key_in_environment_names_the_variable(ws, monkeypatch):
    monkeypatch.setenv("LIFECYCLE_CRM__TIMEZONEE", "UTC")
    msg = error_of(ws)
    assert "crm.timezonee (from environment variable LIFECYCLE_CRM__TIMEZONEE): unknown key" in msg


def test_rule_errors_name_the_segment_and_the_position(ws):
    msg = error_of(ws, '[[segment]]\nname = "vip"\nwhen = "monetary > 10 and purchses >= 2"\n')
    assert "segment 'vip'" in msg and "purchses" in msg and "column 19" in msg and "purchases" in msg
    msg = error_of(ws, '[[segment]]\nname = "bad"\nwhen = "monetary >"\n')
    assert "segment 'bad'" in msg
    msg = error_of(ws, '[[segment]]\nname = "typed"\nwhen = "responsible_id == 17"\n')
    assert "segment 'typed'" in msg and "quote" in msg


def test_segment_entries_are_named_in_errors(ws):
    msg = error_of(ws, '[[segment]]\nname = "a"\nwhen = "has_phone"\n\n[[segment]]\nname = "b"\nwhenn = "x"\n')
    assert "[[segment]] #2 ('b') whenn: unknown key" in msg
    assert "[[segment]] #2 ('b') when: required key is missing" in msg


def test_segment_name_clashes_and_cycles(ws):
    assert "belongs to a preset" in error_of(ws, '[[segment]]\nname = "status.current"\nwhen = "has_phone"\n')
    twice = '[[segment]]\nname = "a"\nwhen = "has_phone"\n' * 2
    assert "defined twice" in error_of(ws, twice)
    cycle = '[[segment]]\nname = "a"\nwhen = "b"\n[[segment]]\nname = "b"\nwhen = "a and has_phone"\n'
    assert "cycle: a -> b -> a" in error_of(ws, cycle)


def test_rules_see_custom_fields_and_other_segments(ws):
    extra = """
[fields]
points = { type = "number" }
tier = { type = "string", source = "Loyalty tier" }

[[segment]]
name = "gold_sleepers"
when = "tier == 'gold' and points > 100 and (lifecycle.regular_asleep or vip)"

[[segment]]
name = "vip"
when = "monetary >= 100000"
"""
    config = load_with(ws, extra)
    names = [c.name for c in config.rules.custom]
    assert names == ["vip", "gold_sleepers"]  # dependencies first
    assert config.rules.fields["tier"].source == "Loyalty tier"


def test_rule_using_a_disabled_preset_is_an_error(ws):
    extra = '[segments]\npresets = ["lifecycle", "status"]\n[[segment]]\nname = "x"\nwhen = "cadence.lapsed"\n'
    assert "preset is not enabled" in error_of(ws, extra)


def test_webhook_max_wait_defaults_to_60_s_and_cannot_be_shorter_than_the_debounce(ws):
    assert load_with(ws).settings.daemon.max_wait_seconds == 60
    assert load_with(ws, "[daemon]\ndebounce_seconds = 5\nmax_wait_seconds = 5\n").settings.daemon.max_wait_seconds == 5
    assert "daemon: max_wait_seconds must be at least debounce_seconds" in error_of(
        ws, "[daemon]\ndebounce_seconds = 10\nmax_wait_seconds = 5\n")


# -- configuration from the environment alone, secrets from files (containers) ---------------------

@pytest.fixture
def clean_env(monkeypatch):
    """No LIFECYCLE_* variables from outside; whatever the loader sets is undone afterwards."""
    import os

    saved = dict(os.environ)
    for key in list(os.environ):
        if key.upper().startswith("LIFECYCLE_"):
            monkeypatch.delenv(key)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def test_no_file_configuration_entirely_from_the_environment(ws, clean_env, monkeypatch):
    ws.write_config("")  # the data folder; the config file itself is not read
    monkeypatch.chdir(ws.root)
    ws.config_path.unlink()
    clean_env.update({"LIFECYCLE_CRM__KIND": "csv", "LIFECYCLE_CRM__PATH": "crm",
                      "LIFECYCLE_STATE__URL": "sqlite:///env-state.db", "LIFECYCLE_KPI__ACTIVE_SHARE_TARGET": "0.4"})
    config = load_config(None)
    assert config.crm.kind == "csv" and config.crm.path == (ws.root / "crm").resolve()  # relative to the cwd
    assert config.state_url == f"sqlite:///{(ws.root / 'env-state.db').resolve()}"
    assert config.settings.kpi.active_share_target == 0.4 and "(environment)" in str(config.path)
    # a bad value still names the variable
    clean_env["LIFECYCLE_KPI__ACTIVE_SHARE_TARGET"] = "lots"
    with pytest.raises(ConfigError, match=r"kpi.active_share_target \(from environment variable LIFECYCLE_KPI__ACTIVE_SHARE_TARGET\)"):
        load_config(None)


def test_without_config_file_or_kind_the_error_says_what_to_set(ws, clean_env, monkeypatch):
    monkeypatch.chdir(ws.root)
    clean_env["LIFECYCLE_STATE__URL"] = "sqlite:////data/lifecycle.db"  # the image sets this one; it is not enough
    with pytest.raises(ConfigError) as info:
        load_config(None)
    message = str(info.value)
    assert "\n" not in message and "LIFECYCLE_CRM__KIND" in message and "--config" in message


def test_config_file_lookup_order(ws, clean_env, monkeypatch, tmp_path):
    ws.write_config("")
    monkeypatch.chdir(ws.root)  # ./lifecycle.toml exists here
    clean_env["LIFECYCLE_CRM__KIND"] = "csv"  # a file, when there is one, is still read (the env overrides keys)
    assert load_config(None).path == ws.config_path.resolve()
    other = tmp_path / "elsewhere.toml"
    clean_env["LIFECYCLE_CONFIG"] = str(other)
    with pytest.raises(ConfigError, match="elsewhere.toml not found"):
        load_config(None)
    other.write_text(ws.config_path.read_text().replace('path = "crm"', f'path = "{ws.crm}"'), encoding="utf-8")
    assert load_config(None).path == other.resolve()
    assert load_config(ws.config_path).path == ws.config_path.resolve()  # --config wins


def test_secrets_from_files(ws, clean_env, monkeypatch, tmp_path):
    ws.write_config("")
    secret = tmp_path / "kpi"
    secret.write_text("0.45\n", encoding="utf-8")  # one trailing newline is dropped, as Docker secrets have
    clean_env["LIFECYCLE_KPI__ACTIVE_SHARE_TARGET_FILE"] = str(secret)
    token = tmp_path / "token"
    token.write_text("app-token-from-a-secret", encoding="utf-8")
    clean_env["LIFECYCLE_DAEMON__BITRIX24_APPLICATION_TOKEN_FILE"] = str(token)
    config = load_config(ws.config_path)
    assert config.settings.kpi.active_share_target == 0.45
    assert config.settings.daemon.bitrix24_application_token.get_secret_value() == "app-token-from-a-secret"
    assert "LIFECYCLE_KPI__ACTIVE_SHARE_TARGET_FILE" not in clean_env  # not read again as an unknown key
    assert load_config(ws.config_path).settings.kpi.active_share_target == 0.45  # a second load in the process


@pytest.mark.parametrize("setup, expected", [
    (lambda d: {"LIFECYCLE_CRM__WEBHOOK_URL_FILE": str(d / "missing")}, r"LIFECYCLE_CRM__WEBHOOK_URL_FILE: file .*missing not found"),
    (lambda d: {"LIFECYCLE_CRM__WEBHOOK_URL_FILE": str(d)}, r"is a folder"),
    (lambda d: {"LIFECYCLE_CONFIG_FILE": str(d / "secret")}, r"name the config file with LIFECYCLE_CONFIG=PATH"),
    (lambda d: {"LIFECYCLE_CRM__WEBHOOK_URL_FILE": str(d / "empty")}, r"empty"),
    (lambda d: {"LIFECYCLE_CRM__WEBHOOK_URL_FILE": str(d / "secret"), "LIFECYCLE_CRM__WEBHOOK_URL": "https://other/"},
     r"LIFECYCLE_CRM__WEBHOOK_URL_FILE and LIFECYCLE_CRM__WEBHOOK_URL are both set"),
])
def test_secret_file_errors_name_the_variable_and_never_the_secret(ws, clean_env, tmp_path, setup, expected):
    ws.write_config("")
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    (tmp_path / "secret").write_text("https://portal.example/rest/1/s3cr3t-value/", encoding="utf-8")
    clean_env.update(setup(tmp_path))
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(ws.config_path)
    assert "s3cr3t-value" not in str(info.value) and "\n" not in str(info.value)


def test_lifecycle_run_unconfigured_prints_one_line_and_exits_2(tmp_path, clean_env):
    from tests.conftest import run_cli

    assert not [k for k in clean_env if k.upper().startswith("LIFECYCLE_")]
    proc = run_cli(["run"], cwd=tmp_path)  # no lifecycle.toml there, no LIFECYCLE_* variables
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no configuration") and "LIFECYCLE_CRM__KIND" in lines[0]
