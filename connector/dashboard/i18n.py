"""Russian and English: gettext catalogues (Babel) under ``locale/<lang>/LC_MESSAGES/messages.po``, shipped as
package data and compiled in memory when first used (no build step, so a fresh ``pip install .`` works)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from connector.dashboard.labels import LANGUAGES

LOCALE = Path(__file__).with_name("locale")


@lru_cache(maxsize=None)
def translations(language: str) -> Translations:
    lang = language if language in LANGUAGES else "en"
    with (LOCALE / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)
