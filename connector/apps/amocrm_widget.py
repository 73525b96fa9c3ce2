"""The amoCRM widget archive: a "Lifecycle" tab in the contact card that frames the customer page.

Layout and fields as amoCRM documents them (amocrm.ru/developers, Markdown copy biradrags/amo-docs 001c0f3):

* integrations/structure.md: ``manifest.json`` (required; ``widget.name``/``description``/
  ``short_description`` are keys into the i18n files, ``version``, ``interface_version`` 2, ``init_once``,
  ``locale``, ``installation``, ``support.link``/``email``; ``locations``; ``settings``), ``script.js``
  (required), ``i18n/{ru,en}.json`` of the same structure, ``images/`` with logo_main.png 400x272,
  logo_small.png 108x108, logo.png 130x100, logo_medium.png 240x84, logo_min.png 84x84, logo_dp.png 174x109.
* web_sdk/card.md, "Добавление новой вкладки": a card tab needs the locations ``ccard-0`` (contact;
  ``comcard-0`` company) and ``card_sdk`` and the four callbacks ``loadPreloadedData``, ``loadElements``,
  ``linkCard``, ``searchDataInCard``; without products, ``loadPreloadedData`` may render anything into
  ``$('#' + self.get_settings().widget_code)`` and resolve ``{}``.
* web_sdk/mechanics.md: ``self.$authorizedAjax({url})`` sends the request with ``X-Auth-Token`` (a JWT signed
  with the integration's secret; oauth/disposable-tokens.md); the server must allow CORS from the account.
  integrations/requirements.md §3.2: iframes are allowed (code from the iframe is not executed by amoCRM).

The tab asks the connector (``POST {public_url}/apps/amocrm/widget/session`` with the JWT, form
``entity``, ``id``, ``lang``) for a short-lived page address and frames it; the connector checks the JWT
with :func:`connector.apps.verify.verify_widget_token`. The current card comes from
``APP.data.current_card`` (integrations/script_js.md).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

SESSION_PATH = "/apps/amocrm/widget/session"
IMAGES = {"logo_main.png": (400, 272), "logo_small.png": (108, 108), "logo.png": (130, 100),
          "logo_medium.png": (240, 84), "logo_min.png": (84, 84), "logo_dp.png": (174, 109)}
LOCATIONS = {"contact": "ccard-0", "company": "comcard-0"}
LANGS = ("ru", "en")
_FIXED_TIME = (2026, 1, 1, 0, 0, 0)  # zip entries carry a fixed date: the same input builds the same bytes

I18N = {
    "ru": {
        "widget": {"name": "Жизненный цикл",
                   "short_description": "Сегмент клиента, история переходов и кампании в карточке контакта",
                   "description": "Вкладка «Жизненный цикл» в карточке контакта: текущие сегменты клиента, история "
                                  "переходов с датами, покупки и средний интервал между ними, задачи и сделки "
                                  "кампаний и рекламные аудитории. Данные считает коннектор crm-lifecycle."},
        "tab": {"lang": "ru", "title": "Жизненный цикл", "loading": "Загружаем данные клиента…",
                "error": "Не удалось открыть страницу клиента. Обновите карточку; если не поможет, сообщите администратору.",
                "no_card": "Откройте вкладку из карточки контакта."},
    },
    "en": {
        "widget": {"name": "Lifecycle",
                   "short_description": "The customer's segment, history of moves and campaigns in the contact card",
                   "description": "A \"Lifecycle\" tab in the contact card: the customer's current segments, the history "
                                  "of moves with dates, purchases and the usual interval between them, the campaigns' "
                                  "tasks and deals, and the ad audiences. Computed by the crm-lifecycle connector."},
        "tab": {"lang": "en", "title": "Lifecycle", "loading": "Loading the customer…",
                "error": "The customer page could not be opened. Reload the card; if that does not help, tell your administrator.",
                "no_card": "Open the tab from a contact card."},
    },
}

SCRIPT = r"""define(['jquery'], function ($) {
  'use strict';
  // crm-lifecycle: a "Lifecycle" tab in the card (locations ccard-0 + card_sdk), built by
  // `lifecycle amocrm widget`. The page comes from the connector at __SERVER__ and is framed.
  var SERVER = __SERVER_JSON__;
  var SESSION_PATH = __SESSION_JSON__;

  var CustomWidget = function () {
    var self = this;

    function text(key) {
      var langs = self.langs || {};
      return (langs.tab && langs.tab[key]) || key;
    }

    function tab() {
      return $('#' + self.get_settings().widget_code);
    }

    function lang() {
      return text('lang') === 'en' ? 'en' : 'ru';  // each i18n file names its own language
    }

    function showMessage($tab, key) {
      var $p = $('<p class="lifecycle-tab-message"></p>');
      $p.text(text(key));
      $tab.empty().append($p);
    }

    function renderTab(type, id) {
      var $tab = tab();
      if (!id) {
        showMessage($tab, 'no_card');
        return Promise.resolve({});
      }
      showMessage($tab, 'loading');
      return new Promise(function (resolve) {
        self.$authorizedAjax({
          url: SERVER + SESSION_PATH,
          method: 'POST',
          dataType: 'json',
          data: {entity: type, id: id, lang: lang()}
        }).done(function (answer) {
          if (!answer || typeof answer.url !== 'string' || answer.url.indexOf(SERVER + '/') !== 0) {
            showMessage($tab, 'error');
            resolve({});
            return;
          }
          var $frame = $('<iframe class="lifecycle-tab-frame"></iframe>');
          $frame.attr('src', answer.url);
          $frame.attr('title', text('title'));
          $frame.attr('referrerpolicy', 'no-referrer');
          $frame.css({width: '100%', height: '720px', border: '0'});
          $tab.empty().append($frame);
          resolve({});
        }).fail(function () {
          showMessage($tab, 'error');
          resolve({});
        });
      });
    }

    function currentCard() {
      var card = (window.APP && APP.data && APP.data.current_card) || {};
      return {id: card.id ? parseInt(card.id, 10) : 0};
    }

    this.callbacks = {
      settings: function () { return true; },
      init: function () { return true; },
      bind_actions: function () { return true; },
      render: function () { return true; },
      dpSettings: function () { return true; },
      advancedSettings: function () { return true; },
      destroy: function () { return true; },
      onSave: function () { return true; },
      // card_sdk: the tab. No products are linked, so these callbacks only draw the page.
      loadPreloadedData: function () {
        var system = self.system() || {};
        var type = system.area === 'comcard' ? 'company' : 'contact';
        return renderTab(type, currentCard().id);
      },
      loadElements: function () { return Promise.resolve([]); },
      linkCard: function () { return Promise.resolve(); },
      searchDataInCard: function () { return Promise.resolve([]); }
    };
    return this;
  };

  return CustomWidget;
});
"""


class WidgetError(ValueError):
    """A bad option for the widget archive; the message says what to fix."""


def _check_server(public_url: str, allow_http: bool) -> str:
    parts = urlsplit(public_url.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise WidgetError(f"--public-url must be the connector's address, like https://lifecycle.example.com "
                          f"(got {public_url!r})")
    if parts.scheme == "http" and not allow_http:
        raise WidgetError("--public-url must use https: amoCRM pages are https and browsers block an http frame in them")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def manifest(*, version: str, cards: tuple[str, ...], support_link: str, support_email: str | None) -> dict:
    support = {"link": support_link}
    if support_email:
        support["email"] = support_email
    return {
        "widget": {"name": "widget.name", "description": "widget.description",
                   "short_description": "widget.short_description", "version": version, "interface_version": 2,
                   "init_once": False, "locale": list(LANGS), "installation": True, "support": support},
        "locations": [LOCATIONS[c] for c in cards] + ["card_sdk", "settings"],
        "settings": {},
    }


def png(width: int, height: int) -> bytes:
    """A plain logo: a teal field with a lighter band (no image library needed)."""
    band = range(height * 2 // 5, height * 3 // 5)
    rows = b"".join(b"\x00" + (bytes((0x4F, 0xC3, 0xC9)) if y in band else bytes((0x1F, 0x6F, 0x8B))) * width
                    for y in range(height))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def build_widget(out: str | Path, *, public_url: str, version: str = "1.0.0", cards: tuple[str, ...] = ("contact",),
                 support_link: str | None = None, support_email: str | None = None, allow_http: bool = False) -> Path:
    """Write the archive to ``out``; returns its path. Raises :class:`WidgetError` on a bad option."""
    server = _check_server(public_url, allow_http)
    unknown = [c for c in cards if c not in LOCATIONS]
    if not cards or unknown:
        raise WidgetError(f"cards must be among {', '.join(LOCATIONS)} (got {', '.join(unknown) or 'none'})")
    script = (SCRIPT.replace("__SERVER_JSON__", json.dumps(server)).replace("__SESSION_JSON__", json.dumps(SESSION_PATH))
              .replace("__SERVER__", server))
    files: dict[str, bytes] = {
        "manifest.json": json.dumps(manifest(version=version, cards=tuple(dict.fromkeys(cards)),
                                             support_link=support_link or server, support_email=support_email),
                                    ensure_ascii=False, indent=2).encode("utf-8"),
        "script.js": script.encode("utf-8"),
    }
    for lang in LANGS:
        files[f"i18n/{lang}.json"] = json.dumps(I18N[lang], ensure_ascii=False, indent=2).encode("utf-8")
    for name, (width, height) in IMAGES.items():
        files[f"images/{name}"] = png(width, height)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise WidgetError(f"the folder {path.parent} does not exist: create it or choose another --out")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def add_parser(sub) -> None:
    """``lifecycle amocrm widget``'s arguments (kept here so cli.py stays small)."""
    amocrm = sub.add_parser("amocrm", help="amoCRM integration tools: the card widget archive")
    amocrm_sub = amocrm.add_subparsers(dest="amocrm_command", required=True)
    widget = amocrm_sub.add_parser("widget", help="build the widget archive: a Lifecycle tab in the contact card")
    widget.add_argument("--out", default="widget.zip", help="where to write the archive (default widget.zip)")
    widget.add_argument("--public-url", help="the connector's https address as amoCRM users' browsers reach it "
                                             "(default: LIFECYCLE_PUBLIC_URL)")
    widget.add_argument("--card", action="append", choices=tuple(LOCATIONS),
                        help="which cards get the tab (repeatable; default contact)")
    widget.add_argument("--widget-version", default="1.0.0", help="the version shown in amoCRM (raise it per upload)")
    widget.add_argument("--support-email", help="support e-mail shown in amoCRM (the support link is the public URL)")
    widget.add_argument("--allow-http", action="store_true", help=argparse.SUPPRESS)  # tests: http on loopback


def widget_command(args, out) -> int:
    """``lifecycle amocrm widget --out widget.zip --public-url https://...``."""
    import os
    import sys

    public_url = args.public_url or os.environ.get("LIFECYCLE_PUBLIC_URL")
    if not public_url:
        print("error: give --public-url https://your-connector.example (the address amoCRM users' browsers reach; "
              "or set LIFECYCLE_PUBLIC_URL)", file=sys.stderr)
        return 2
    try:
        path = build_widget(args.out, public_url=public_url, version=args.widget_version,
                            cards=tuple(args.card or ("contact",)), support_email=args.support_email,
                            allow_http=args.allow_http)
    except WidgetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.print(f"wrote {path} ({path.stat().st_size} bytes): upload it in amoCRM, amoMarket > your integration > "
              f"widget archive")
    return 0
