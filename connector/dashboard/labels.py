"""Human labels of the preset segments in Russian and English (the dashboard's defaults; ``[labels]`` in the
config overrides them). Custom segments are shown by their name unless ``[labels]`` gives one."""

from __future__ import annotations

ROW_LABELS = {
    "ru": {"new": "Новые", "promising": "Перспективные", "regular": "Постоянные"},
    "en": {"new": "New", "promising": "Promising", "regular": "Regular"},
}
COLUMN_LABELS = {
    "ru": {"active": "активные", "sleeping": "засыпающие", "asleep": "уснувшие"},
    "en": {"active": "active", "sleeping": "sleeping", "asleep": "asleep"},
}
OTHER_LABELS = {
    "ru": {
        "status.prospect": "Потенциальные (без покупок)", "status.current": "Текущие клиенты",
        "status.former": "Бывшие клиенты", "cadence.frequent": "Покупают часто", "cadence.periodic": "Покупают периодически",
        "cadence.rare": "Покупают редко", "cadence.lapsed": "Перестали покупать", "birthday.soon": "Скоро день рождения",
        "prospect": "Потенциальные (без покупок)", "absent": "Нет в CRM",
    },
    "en": {
        "status.prospect": "Prospects (no purchase)", "status.current": "Current customers",
        "status.former": "Former customers", "cadence.frequent": "Buy frequently", "cadence.periodic": "Buy periodically",
        "cadence.rare": "Buy rarely", "cadence.lapsed": "Stopped buying", "birthday.soon": "Birthday soon",
        "prospect": "Prospects (no purchase)", "absent": "Not in the CRM",
    },
}
LANGUAGES = ("ru", "en")


def default_label(segment: str, language: str) -> str:
    """The built-in label of ``segment`` in ``language`` (ru | en), or the name itself for custom segments."""
    lang = language if language in LANGUAGES else "en"
    if segment.startswith("lifecycle."):
        row, _, column = segment.removeprefix("lifecycle.").partition("_")
        if row in ROW_LABELS[lang] and column in COLUMN_LABELS[lang]:
            return f"{ROW_LABELS[lang][row]} {COLUMN_LABELS[lang][column]}"
    return OTHER_LABELS[lang].get(segment, segment)


def label(segment: str, language: str, overrides: dict[str, str] | None = None) -> str:
    if overrides and segment in overrides:
        return overrides[segment]
    return default_label(segment, language)
