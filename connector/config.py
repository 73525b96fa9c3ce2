"""Configuration: one TOML file, validated with pydantic-settings, overridable from the environment.

* ``--config`` names the file (default ``./lifecycle.toml``).
* Every key can be overridden by ``LIFECYCLE_<SECTION>__<KEY>`` (for example
  ``LIFECYCLE_CRM__TIMEZONE=Asia/Yekaterinburg``); lists and tables are given as JSON.
  The environment wins over the file.
* An unknown key or a wrong type is a :class:`ConfigError` naming the key and the file (or the
  environment variable it came from).
* Relative paths (``crm.path``, a relative ``sqlite:///`` state URL) resolve against the folder of the
  config file, not the current directory.
* Custom segment rules are compiled here, once, against the feature schema: a typo in a rule stops the
  start-up with the segment's name and the position of the mistake.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from connector.logs import ENV_PREFIX, SECRET_KEYS  # noqa: E402 - defined with the redaction that uses them
from rules.engine import SegmentEngine
from rules.features import CustomField
from rules.language import FeatureType, RuleError
from rules.settings import ProductCycleConfig, ProductsConfig
from rules.settings import BirthdayPreset, CadencePreset, LifecyclePreset, PredictedPreset, PresetName, SegmentsConfig  # noqa: F401 - re-exported
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrmConfig(_Section):
    kind: str = Field(description="Which CRM to read: a kit in adapters.KITS (csv, bitrix24, amocrm)")
    name: str = Field("default", description="Key of this CRM account in the state store")
    path: Path | None = Field(None, description="csv: folder with contacts.csv, deals.csv, companies.csv")
    timezone: str = "Europe/Moscow"
    customer: Literal["contact", "company"] = "contact"
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = Field("auto", description='csv: "auto" (UTF-8, or Windows-1251 when detected), "utf-8", "cp1251", ...')
    # Bitrix24: an inbound webhook, or a local/marketplace app's OAuth credentials.
    webhook_url: SecretStr | None = None
    client_endpoint: str | None = Field(None, description="OAuth: https://PORTAL/rest/")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = Field(None, description="OAuth: first refresh token; rotations go to the state store")
    oauth_token_url: str = "https://oauth.bitrix.info/oauth/token/"
    ca_file: Path | None = Field(None, description="extra CA certificate to trust (self-hosted portals, the sandbox)")
    # amoCRM: the account address and a long-lived token, or an OAuth integration.
    base_url: str | None = Field(None, description="amoCRM: https://SUBDOMAIN.amocrm.ru (or .kommo.com)")
    access_token: SecretStr | None = Field(None, description="amoCRM: long-lived token of a private integration")
    redirect_uri: str | None = Field(None, description="amoCRM OAuth: the integration's redirect URI")
    authorization_code: SecretStr | None = Field(None, description="amoCRM OAuth: code for the very first exchange")
    birthday_field: str | None = Field(None, description="amoCRM: contact field holding birthdays (name or id)")
    requests_per_second: float = Field(
        None, gt=0, validate_default=False,
        description="Bitrix24 leaky-bucket drain: 2 (5 on Enterprise); amoCRM: 7")  # type: ignore[assignment]
    burst: int = Field(50, ge=1, description="leaky-bucket size: 50 (250 on Enterprise)")
    overlap_minutes: float = Field(10, ge=0, description="incremental pulls re-read this much before the cursor")
    reconcile_hours: float = Field(24, ge=0, description="how often to list all ids to notice deletions")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from adapters import KITS

        if value not in KITS:
            raise ValueError(f"unknown CRM kind {value!r}; use one of: {', '.join(KITS)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        if value == "auto":
            return value
        try:
            ascii_compatible = codecs.lookup(value) and "id,\n".encode(value) == b"id,\n"
        except (LookupError, UnicodeError):
            ascii_compatible = False
        if not ascii_compatible:
            raise ValueError(f"encoding {value!r} is not a known ASCII-compatible encoding; use 'auto', 'utf-8' or 'cp1251'")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Moscow'") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _defaults_by_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("requests_per_second") is None:
            data = {**data, "requests_per_second": 7.0 if data.get("kind") == "amocrm" else 2.0}
        return data

    @model_validator(mode="after")
    def _kind_needs(self) -> CrmConfig:
        if self.kind == "csv" and self.path is None:
            raise ValueError("kind = 'csv' needs path = 'FOLDER' (the folder holding contacts.csv and deals.csv)")
        if self.kind == "bitrix24":
            oauth = (self.client_endpoint, self.client_id, self.client_secret)
            if self.webhook_url is None and not all(oauth):
                raise ValueError(
                    "kind = 'bitrix24' needs webhook_url (inbound webhook, best given as LIFECYCLE_CRM__WEBHOOK_URL) "
                    "or client_endpoint, client_id and client_secret (OAuth app)"
                )
            if self.webhook_url is not None and not self.webhook_url.get_secret_value().startswith(("http://", "https://")):
                raise ValueError("webhook_url must look like https://PORTAL/rest/USER_ID/CODE/")
            if self.webhook_url is not None:
                _check_url_port("webhook_url", self.webhook_url.get_secret_value())
            if self.client_endpoint:
                _check_url_port("client_endpoint", self.client_endpoint)
        if self.kind == "amocrm":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("kind = 'amocrm' needs base_url = 'https://SUBDOMAIN.amocrm.ru' (your account's address)")
            _check_url_port("base_url", self.base_url)
            oauth = (self.client_id, self.client_secret, self.redirect_uri)
            if self.access_token is None and not all(oauth):
                raise ValueError(
                    "kind = 'amocrm' needs access_token (a long-lived token, best given as LIFECYCLE_CRM__ACCESS_TOKEN) "
                    "or client_id, client_secret and redirect_uri (OAuth integration) with authorization_code or "
                    "refresh_token for the first run"
                )
        return self


def _check_url_port(key: str, url: str) -> None:
    """A URL the HTTP client would reject with a traceback (port 99999, no host): a clear error instead,
    which never repeats the URL (a webhook URL is a secret)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        raise ValueError(f"{key}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{key}: no host name; it must look like https://HOST/...")


class StateConfig(_Section):
    url: str = "sqlite:///lifecycle.db"
    columnar: bool = Field(True, description="the recompute reads a Parquet copy of the mirror (connector.store.columnar)")
    columnar_dir: str | None = Field(None, description="folder of that copy; default: next to an SQLite file, "
                                                       "or the user's cache folder for PostgreSQL")


class PredictionsConfig(_Section):
    """``[predictions]``: per-customer predictions (P(alive), expected purchases, value)."""

    enabled: bool | None = Field(None, description="true/false; unset: on when a rule, preset or template uses them")
    model: Literal["mbgnbd", "bgnbd", "pareto"] = "mbgnbd"
    refit_days: int = Field(1, ge=1, description="refit the model at most this often (days); stored parameters between")
    min_repeat_buyers: int = Field(50, ge=10, description="fewer customers with a repeat purchase: no predictions")
    next_purchase_min_p_alive: float = Field(0.2, ge=0, le=1, description="next_purchase_median_days is null below this")
    annual_discount_rate: float = Field(0.0, ge=0, lt=10, description="clv_365d discount rate per year (0.1 = 10 %)")


class KpiConfig(_Section):
    active_share_target: float = Field(0.30, ge=0, le=1)


class FieldConfig(_Section):
    type: FeatureType = "string"
    source: str | None = Field(None, description="CRM field id or CSV header; defaults to the field's name")


class SegmentRule(_Section):
    name: str = Field(pattern=NAME_PATTERN)
    when: str
    static: bool = False


class WritebackConfig(_Section):
    tag_segments: tuple[str, ...] = Field((), description="glob patterns of segments written onto the customer")
    field: str = Field("UF_CRM_LIFECYCLE", pattern=r"^UF_CRM_[A-Z0-9_]{1,43}$")
    field_label: str = "Lifecycle segments"
    reconcile_days: float = Field(7, ge=0, description="how often every customer's tags are compared with the mirror "
                                  "(a full reconciliation); in between only customers who moved or changed are (0: every sync)")
    batches_in_flight: int = Field(3, ge=1, le=10, description="write batches sent at once per portal (the rate "
                                   "limiter still paces them)")


class ActionConfig(_Section):
    """One thing a campaign does for a customer (``on_enter`` / ``on_exit`` items)."""

    action: Literal["call_task", "deal", "bizproc", "email", "salesbot", "stage"]
    title: str = Field(min_length=1, description="template over customer fields and features, e.g. 'Call {name}'")
    description: str = Field("", description="call_task: the task text (the script)")
    due_in_days: int = Field(1, ge=0, le=365, description="deadline in working days from the run")
    kind: Literal["task", "todo"] = Field("task", description="Bitrix24: tasks.task.add or crm.activity.todo.add")
    pipeline: str | None = Field(None, description="deal: pipeline (Bitrix24 category / amoCRM pipeline), name or id")
    stage: str | None = Field(None, description="deal: stage / status, name or id; default the pipeline's first")
    script: str = Field("", description="deal: the call script (deal COMMENTS, and the text of its call task)")
    task_title: str | None = Field(None, description="deal: title of the call task on the deal")
    # The CRM's own channels (docs/campaigns.md "Channels"; connector/channels.py)
    template: str | None = Field(None, description="bizproc: Bitrix24 workflow template, id or name")
    parameters: dict[str, str] = Field(default_factory=dict, description="bizproc: template parameters (templates)")
    body: str = Field("", description="email: the message body (template); title is the subject")
    mailbox: str | None = Field(None, description="email: the sender, 'Name <address>' or an address of the portal")
    bot_id: int | None = Field(None, ge=1, description="salesbot: the amoCRM Salesbot id")
    confirm_minutes: int = Field(10, ge=0, le=1440, description="salesbot: how long amoCRM may take to start the bot "
                                 "before a run still unconfirmed by its first step counts as not started")

    @model_validator(mode="after")
    def _deal_needs_pipeline(self) -> ActionConfig:
        if self.action == "deal" and not self.pipeline:
            raise ValueError("action 'deal' needs pipeline = '...' (the repeat-sales pipeline, by name or id)")
        from connector.channels import check_action

        check_action(self)
        return self


class CampaignConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    segment: str
    cooldown_days: int = Field(0, ge=0, description="no new actions for a customer re-entering within this many days")
    responsible: Literal["owner"] | tuple[int, ...] = Field(
        "owner", description="'owner' (the customer's responsible) or user ids for round-robin")
    daily_cap_per_rep: int | None = Field(None, ge=1)
    on_enter: tuple[ActionConfig, ...] = ()
    on_exit: tuple[ActionConfig, ...] = ()
    # issue 18: a safe start and measured results
    auto_approve: bool = Field(False, description="send the first batch without `lifecycle campaigns approve NAME`")
    include_current_members: bool = Field(False, description="act once on everyone already in the segment when added")
    max_actions_per_run: int | None = Field(None, ge=1, description="at most this many actions per run; oldest entry first")
    holdout_percent: float = Field(0, ge=0, le=90, description="share of customers kept out as a control group")
    attribution_days: int = Field(30, ge=1, le=365, description="a purchase this many days after the entry counts")
    close_on_exit: bool = Field(True, description="complete the open call task (and move the open deal) when the customer leaves")
    close_deal_stage: str | None = Field(None, description="stage (name or id) an open campaign deal moves to on exit")

    @field_validator("responsible")
    @classmethod
    def _some_users(cls, value: Any) -> Any:
        if isinstance(value, tuple) and (not value or any(v <= 0 for v in value)):
            raise ValueError("responsible must be 'owner' or a non-empty list of positive user ids")
        return value


class PressureConfig(_Section):
    max_touches: int | None = Field(None, ge=1, description="at most this many actions per customer per period")
    period_days: int = Field(30, ge=1)
    do_not_contact: str | None = Field(None, description="customer field; a true value excludes the customer")


class CalendarConfig(_Section):
    holidays: tuple[date, ...] = ()
    weekend: tuple[int, ...] = Field((6, 7), description="ISO weekdays that are not working days (6 = Saturday)")
    deadline_time: str = Field("18:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class ExecutorConfig(_Section):
    batch_size: int = Field(50, ge=1, le=50, description="actions per batch request (Bitrix24 batch / amoCRM POST)")
    max_attempts: int = Field(5, ge=1, description="give an action up after this many failed tries")
    max_actions_per_run: int | None = Field(None, ge=1, description="at most this many actions per run over all campaigns")


class AudienceConfig(_Section):
    """One segment kept in step with one ad-cabinet audience."""

    segment: str
    cabinet: Literal["yandex", "vk", "google", "meta"]
    name: str | None = Field(None, description="audience name in the cabinet; default the segment's label")
    id_type: Literal["emails", "phones"] = Field("emails", description="vk: a users list holds one identifier type")
    user_list_id: str | None = Field(None, description="google: the Customer Match list (productDestinationId)")
    operating_account_id: str | None = Field(None, description="google: the Google Ads account holding the list")
    login_account_id: str | None = Field(None, description="google: the manager account used to log in (optional)")
    ad_account_id: str | None = Field(None, description="meta: the ad account (digits, without act_)")

    @model_validator(mode="after")
    def _cabinet_ids(self) -> AudienceConfig:
        if self.cabinet == "google" and not (self.user_list_id and self.operating_account_id):
            raise ValueError("cabinet 'google' needs user_list_id and operating_account_id")
        if self.cabinet == "meta" and not self.ad_account_id:
            raise ValueError("cabinet 'meta' needs ad_account_id")
        return self


class AudiencesConfig(_Section):
    default_region: str = Field("RU", min_length=2, max_length=2, description="phones without a country code")
    yandex_url: str = "https://api-audience.yandex.ru"
    yandex_token: SecretStr | None = None
    vk_url: str = "https://ads.vk.com"
    vk_client_id: str | None = None
    vk_client_secret: SecretStr | None = None
    google_url: str = "https://datamanager.googleapis.com"
    google_access_token: SecretStr | None = None
    meta_url: str = "https://graph.facebook.com"
    meta_access_token: SecretStr | None = None
    meta_api_version: str = "v25.0"
    ca_file: Path | None = None


class ScheduleConfig(_Section):
    every: str | None = Field(None, pattern=r"^\d+\s*[smhd]$", description="e.g. '1h', '30m': sync this often")
    at: tuple[str, ...] = Field((), description="daily times in the CRM time zone, e.g. ['07:00', '13:00']")

    @field_validator("at")
    @classmethod
    def _times(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for t in value:
            if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", t):
                raise ValueError(f"at: {t!r} is not HH:MM")
        return value


class DaemonConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    debounce_seconds: float = Field(10, ge=0, description="a webhook triggers an incremental sync this long after the last one")
    max_wait_seconds: float = Field(60, ge=0, description="webhooks that keep coming delay that sync at most this long")
    lock_seconds: float = Field(3600, gt=0, description="a crashed holder's sync lock expires after this long")
    bitrix24_application_token: SecretStr | None = Field(None, description="auth[application_token] of outbound webhooks")
    amocrm_webhook_secret: SecretStr | None = Field(None, description="the secret path part of the amoCRM webhook URL")

    @model_validator(mode="after")
    def _max_wait_covers_debounce(self) -> DaemonConfig:
        if self.max_wait_seconds < self.debounce_seconds:
            raise ValueError("max_wait_seconds must be at least debounce_seconds")
        return self


class UiConfig(_Section):
    """The dashboard (connector/dashboard): the language of its pages; each account may override it."""

    language: Literal["ru", "en"] = "ru"


class Settings(BaseSettings):
    """The whole configuration. Built by :func:`load_config`; do not instantiate directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    crm: CrmConfig
    state: StateConfig = StateConfig()
    segments: SegmentsConfig = SegmentsConfig()
    kpi: KpiConfig = KpiConfig()
    fields: dict[str, FieldConfig] = {}
    segment: tuple[SegmentRule, ...] = ()
    writeback: WritebackConfig = WritebackConfig()
    labels: dict[str, str] = Field({}, description="segment name -> label shown in the CRM")
    campaign: tuple[CampaignConfig, ...] = ()
    pressure: PressureConfig = PressureConfig()
    calendar: CalendarConfig = CalendarConfig()
    executor: ExecutorConfig = ExecutorConfig()
    audience: tuple[AudienceConfig, ...] = ()
    audiences: AudiencesConfig = AudiencesConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    daemon: DaemonConfig = DaemonConfig()
    predictions: PredictionsConfig = PredictionsConfig()
    ui: UiConfig = UiConfig()
    products: ProductsConfig = ProductsConfig()  # issue 17: product rows
    product_cycle: tuple[ProductCycleConfig, ...] = ()  # issue 17: cyclical products (rules/reorder.py)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file's content arrives as init kwargs).
        return (env_settings, init_settings)

    @field_validator("labels")
    @classmethod
    def _label_preset(cls, v: dict[str, str]) -> dict[str, str]:
        if "preset" in v and v["preset"] not in ("ru", "en"):
            raise ValueError(f'[labels] preset must be "ru" or "en" (the language of the preset segments\' default '
                             f"labels), not {v['preset']!r}")
        return v

    @field_validator("fields")
    @classmethod
    def _field_names(cls, v: dict[str, FieldConfig]) -> dict[str, FieldConfig]:
        for name in v:
            if not re.match(FIELD_NAME_PATTERN, name):
                raise ValueError(f"custom field name {name!r} must be a plain identifier (letters, digits, _)")
        return v


class _TextOnlySettings(Settings):
    """Settings from the text alone: no ``LIFECYCLE_*`` source (:func:`load_config_text`, environment=False)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[override]
        return (init_settings,)


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings plus where they came from and the compiled segment rules."""

    settings: Settings
    path: Path
    rules: SegmentEngine  # compiled from the settings by compile_engine

    @property
    def crm(self) -> CrmConfig:
        return self.settings.crm

    @property
    def state_url(self) -> str:
        return self.settings.state.url

    def tagged_segments(self) -> list[str]:
        """Segments written back onto customers ([writeback] tag_segments globs), in engine order."""
        patterns = self.settings.writeback.tag_segments
        return [n for n in self.rules.segment_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def label(self, segment: str) -> str:
        """What reps read for ``segment`` (tags on cards, ``{segment_label}`` in templates): ``[labels]`` for it;
        else, with ``[labels] preset = "ru" | "en"``, the preset segments' built-in label in that language;
        else the segment's name."""
        labels = self.settings.labels
        if segment in labels and segment != "preset":
            return labels[segment]
        preset = labels.get("preset")
        if preset in ("ru", "en"):
            from connector.dashboard.labels import default_label

            return default_label(segment, preset)
        return segment


def _location(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """Turn a pydantic error location into what a user sees in the TOML file."""
    if not loc:
        return "(top level)"
    if loc[0] in ("segment", "campaign", "audience") and len(loc) > 1 and isinstance(loc[1], int):
        table = loc[0]
        entries = data.get(table)
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else {}
        name = entry.get("name") if isinstance(entry, dict) else None
        head = f"[[{table}]] #{loc[1] + 1}" + (f" ({name!r})" if name else "")
        rest = ".".join(str(p) for p in loc[2:])
        return f"{head} {rest}".strip()
    return ".".join(str(p) for p in loc)


def _env_var_for(loc: tuple[Any, ...]) -> str | None:
    """The environment variable that set this key, if any (names are case-insensitive)."""
    wanted = (ENV_PREFIX + "__".join(str(p) for p in loc)).upper()
    for key in os.environ:
        if key.upper() == wanted:
            return key
    # A JSON value given for a whole section, e.g. LIFECYCLE_SEGMENTS__LIFECYCLE='{...}'
    for depth in range(len(loc) - 1, 0, -1):
        prefix = (ENV_PREFIX + "__".join(str(p) for p in loc[:depth])).upper()
        for key in os.environ:
            if key.upper() == prefix:
                return key
    return None


def _describe(err: ValidationError, path: Path, data: dict[str, Any]) -> str:
    lines = [f"{path}: invalid configuration:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _location(loc, data)
        env = _env_var_for(loc)
        source = f" (from environment variable {env})" if env else ""
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling and section (see config.example.toml)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if "input" in e and e["type"] not in ("value_error",) and not SECRET_KEYS & {str(p) for p in loc}:
                msg += f" (got {e['input']!r})"
        lines.append(f"  {where}{source}: {msg}")
    return "\n".join(lines)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    crm = settings.crm
    updates: dict[str, Any] = {}
    crm_paths = {
        key: (base / value).resolve()
        for key in ("path", "ca_file")
        if (value := getattr(crm, key)) is not None and not value.is_absolute()
    }
    if crm_paths:
        updates["crm"] = crm.model_copy(update=crm_paths)
    ca = settings.audiences.ca_file
    if ca is not None and not ca.is_absolute():
        updates["audiences"] = settings.audiences.model_copy(update={"ca_file": (base / ca).resolve()})
    url = settings.state.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            updates["state"] = StateConfig(url="sqlite:///" + str((base / rel).resolve()))
    return settings.model_copy(update=updates) if updates else settings


def _register_raw_secrets(data: Any) -> None:
    """Secrets in the file and the environment are masked from the start: an error about another key
    (or a bad secret) can never print one."""
    from connector import logs

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS and isinstance(value, str):
                    logs.register_secrets([value])
                elif key == "url" and isinstance(value, str) and (m := re.match(r"^[^:]+://[^:/@]*:([^@]+)@", value)):
                    logs.register_secrets([m.group(1)])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    logs.register_env_secrets()


def _env_overrides() -> list[tuple[str, str, str]]:
    """(variable, section, value) of every ``LIFECYCLE_<SECTION>[__KEY]`` variable."""
    out = []
    for key, value in os.environ.items():
        if key.upper().startswith(ENV_PREFIX):
            section = key[len(ENV_PREFIX):].split("__", 1)[0].lower()
            out.append((key, section, value))
    return out


def _check_env_sections() -> None:
    """``LIFECYCLE_STATEE__URL`` is a typo, not a variable to ignore: a nested variable must name a section."""
    known = set(Settings.model_fields)
    for key, section, _ in _env_overrides():
        if "__" in key[len(ENV_PREFIX):] and section not in known:
            import difflib

            close = difflib.get_close_matches(section, sorted(known), n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}__...?)" if close else ""
            raise ConfigError(f"environment variable {key}: unknown section {section!r}{hint}; "
                              f"known: {', '.join(sorted(known))}")


def _describe_env_error(exc: SettingsError) -> str:
    """pydantic-settings could not parse an environment value (malformed JSON): name the variable."""
    match = re.search(r'field "([^"]+)"', str(exc))
    section = match.group(1).lower() if match else ""
    candidates = [(k, v) for k, s, v in _env_overrides() if s == section] or [(k, v) for k, _, v in _env_overrides()]
    for key, value in candidates:
        if value.lstrip()[:1] in ("{", "[", '"'):
            import json

            try:
                json.loads(value)
            except ValueError as err:
                return (f"environment variable {key}: not valid JSON ({type(err).__name__} at position "
                        f"{getattr(err, 'pos', '?')}); lists and tables are given as JSON, e.g. "
                        f"{ENV_PREFIX}SCHEDULE__AT='[\"07:00\"]' or '{{\"key\": \"value\"}}'")
    names = ", ".join(k for k, _ in candidates) or f"{ENV_PREFIX}{section.upper()}"
    return (f"environment variable {names}: the value cannot be read for [{section}]; "
            "lists and tables are given as JSON")


def compile_engine(settings: Settings) -> SegmentEngine:
    """The segment engine for these settings (presets, ``[fields]``, ``[[segment]]`` rules)."""
    fields = {name: CustomField(name=name, type=f.type, source=f.source or name) for name, f in settings.fields.items()}
    return SegmentEngine.compile(settings.segments, fields, settings.segment, settings.product_cycle)


def load_config(path: str | Path | None = "lifecycle.toml") -> LoadedConfig:
    """Read, validate and compile the configuration; raise ConfigError with a fix-it message.

    ``path=None`` (no ``--config``): LIFECYCLE_CONFIG, ./lifecycle.toml, or the environment alone
    (connector/envfiles.py); ``LIFECYCLE_..._FILE`` secrets are read first in every case."""
    from connector.envfiles import ENV_ONLY, EnvFileError, config_source, expand_secret_files

    try:
        expand_secret_files()
        source = config_source(path)
    except EnvFileError as exc:
        raise ConfigError(str(exc)) from None
    path = ENV_ONLY if source is None else source
    if source is not None and not path.is_file():
        raise ConfigError(
            f"config file {path} not found; copy config.example.toml to {path} and edit it, or pass --config FILE"
        )
    try:
        data = {} if source is None else tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    loaded = _validated(data, path, Path.cwd() if source is None else path.resolve().parent)
    return LoadedConfig(settings=loaded.settings, path=path if source is None else path.resolve(), rules=loaded.rules)


def load_config_text(text: str, origin: str | Path, *, base: Path | None = None, environment: bool = True) -> LoadedConfig:
    """Validate a config's TOML text exactly as :func:`load_config` validates a file (the portal registry
    keeps configs in the database). ``origin`` labels errors and is the result's ``path``; relative paths
    resolve against ``base`` (default the current folder); ``environment=False``: no ``LIFECYCLE_*``
    overrides (a registry portal is its text alone)."""
    path = Path(origin)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _validated(data, path, base or Path.cwd(), environment=environment)


def _validated(data: dict[str, Any], path: Path, base: Path, *, environment: bool = True) -> LoadedConfig:
    _register_raw_secrets(data)
    if environment:
        _check_env_sections()
    try:
        settings = Settings(**data) if environment else _TextOnlySettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, data)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_env_error(exc)) from None
    settings = _resolve_paths(settings, base)

    try:
        engine = compile_engine(settings)
    except (RuleError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for pattern in settings.writeback.tag_segments:
        if not fnmatch.filter(engine.segment_names, pattern):
            raise ConfigError(f"{path}: writeback.tag_segments: {pattern!r} matches no segment; known: {', '.join(engine.segment_names)}")
    from connector.campaigns import check_campaigns

    try:
        check_campaigns(settings, engine)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return LoadedConfig(settings=settings, path=path, rules=engine)
