"""The CRM kits: one registry, each kit whole, its settings filled from the configuration by field name."""

from __future__ import annotations

import dataclasses

import pytest

from adapters import KITS, kit
from adapters.base import AdapterConfigError, CrmKit, check_users, marker
from connector.config import ConfigError, load_config
from connector.kits import adapter_settings, as_config_error, crm_kit


def test_every_registered_kit_loads_under_its_own_name_with_frozen_settings():
    assert list(KITS) == ["bitrix24", "amocrm", "csv"]
    for name in KITS:
        found = kit(name)
        assert isinstance(found, CrmKit) and found.name == name
        assert dataclasses.is_dataclass(found.settings) and found.settings.__dataclass_params__.frozen
        assert callable(found.make_source)
    assert kit("csv").make_tag_writer is None and kit("csv").make_action_sink is None
    assert all(kit(n).make_tag_writer and kit(n).make_action_sink for n in ("bitrix24", "amocrm"))
    with pytest.raises(KeyError, match="known: bitrix24, amocrm, csv"):
        kit("sugarcrm")


def _config(tmp_path, body: str):
    path = tmp_path / "lifecycle.toml"
    path.write_text(body, encoding="utf-8")
    return load_config(path)


def test_bitrix24_settings_come_from_crm_and_writeback_and_hide_secrets(tmp_path):
    config = _config(tmp_path, '[crm]\nkind = "bitrix24"\ncustomer = "company"\nburst = 250\n'
                               'webhook_url = "https://portal.example/rest/1/topsecretcode/"\n'
                               '[writeback]\nfield = "UF_CRM_SEGS"\nfield_label = "Segs"\n')
    settings = adapter_settings(config)
    assert type(settings).__name__ == "Bitrix24Settings" and crm_kit(config).name == "bitrix24"
    assert (settings.customer, settings.burst, settings.requests_per_second) == ("company", 250, 2.0)
    assert (settings.tag_field, settings.tag_field_label) == ("UF_CRM_SEGS", "Segs")
    assert settings.webhook_url == "https://portal.example/rest/1/topsecretcode/"  # a plain string for the client
    assert "topsecretcode" not in repr(settings)


def test_amocrm_settings_take_the_kind_default_rate_and_hide_the_token(tmp_path):
    config = _config(tmp_path, '[crm]\nkind = "amocrm"\nbase_url = "https://acme.amocrm.ru"\n'
                               'access_token = "tok-very-secret"\ntimezone = "Asia/Yekaterinburg"\n')
    settings = adapter_settings(config)
    assert type(settings).__name__ == "AmoSettings"
    assert (settings.base_url, settings.requests_per_second, settings.timezone) == (
        "https://acme.amocrm.ru", 7.0, "Asia/Yekaterinburg")
    assert settings.access_token == "tok-very-secret" and "tok-very-secret" not in repr(settings)


def test_csv_settings_carry_the_resolved_folder(tmp_path):
    (tmp_path / "crm").mkdir()
    config = _config(tmp_path, '[crm]\nkind = "csv"\npath = "crm"\ndelimiter = ";"\n')
    settings = adapter_settings(config)
    assert settings.path == (tmp_path / "crm").resolve() and settings.delimiter == ";"


def test_an_unknown_kind_names_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"crm\.kind: unknown CRM kind 'sugar'; use one of: bitrix24, amocrm, csv"):
        _config(tmp_path, '[crm]\nkind = "sugar"\n')


def test_adapter_config_errors_become_config_errors_with_the_same_message():
    @dataclasses.dataclass
    class Campaign:
        name: str
        responsible: object

    with pytest.raises(AdapterConfigError) as err:
        check_users([Campaign("a", "owner"), Campaign("b", (1, 5, 9))], {1, 2}, "of this portal")
    assert str(err.value) == "[[campaign]] 'b': responsible users [5, 9] are not active users of this portal"
    converted = as_config_error(err.value)
    assert isinstance(converted, ConfigError) and str(converted) == str(err.value)
    assert marker("k") == marker("k") != marker("k2") and marker("k").startswith("lc") and len(marker("k")) == 14


def test_the_pipeline_has_no_crm_switch_and_names_no_crm_package():
    """connector/pipeline.py finds the CRM through its kit: no `kind ==` switch, no import of a CRM package."""
    from tests.conftest import ROOT

    source = (ROOT / "connector" / "pipeline.py").read_text(encoding="utf-8")
    assert "kind ==" not in source and "kind !=" not in source
    for package in ("adapters.bitrix24", "adapters.amocrm", "adapters.csv_files"):
        assert package not in source, package
