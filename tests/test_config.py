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
