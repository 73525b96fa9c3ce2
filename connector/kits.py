"""The configured CRM's kit, and its settings filled from the configuration.

An adapter never sees the connector's pydantic models: each kit declares a frozen settings dataclass, and
:func:`adapter_settings` fills it by field name from ``[crm]`` (secrets revealed as plain strings) and
from ``[writeback]`` (``tag_field``, ``tag_field_label``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import SecretStr

from adapters import kit as kit_named
from adapters.base import AdapterConfigError, CrmKit
from connector.config import ConfigError, LoadedConfig


def crm_kit(config: LoadedConfig) -> CrmKit[Any]:
    return kit_named(config.crm.kind)


def config_values(config: LoadedConfig) -> dict[str, Any]:
    """Every value an adapter's settings may ask for, by name."""
    crm = config.crm
    values: dict[str, Any] = {}
    for name in type(crm).model_fields:
        value = getattr(crm, name)
        values[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    values["tag_field"] = config.settings.writeback.field
    values["tag_field_label"] = config.settings.writeback.field_label
    values["writeback_batches_in_flight"] = config.settings.writeback.batches_in_flight
    values["products"] = needs_products(config)
    return values


def needs_products(config: LoadedConfig) -> bool:
    """Pull product rows: ``[products] pull``, or when unset, when a rule or a ``[[product_cycle]]`` uses them."""
    wanted = config.settings.products.pull
    return config.rules.uses_products if wanted is None else wanted


def adapter_settings(config: LoadedConfig, kit: CrmKit[Any] | None = None) -> Any:
    """The kit's settings dataclass for this configuration."""
    kit = kit or crm_kit(config)
    values = config_values(config)
    names = {f.name for f in dataclasses.fields(kit.settings)}
    return kit.settings(**{k: v for k, v in values.items() if k in names})


def as_config_error(exc: AdapterConfigError) -> ConfigError:
    """An adapter's configuration error, reported like the connector's own (exit code 2)."""
    return ConfigError(str(exc))
