"""``lifecycle amocrm widget``: the archive has the files amoCRM documents, valid JSON in both languages,
logos of the documented sizes, and a script.js whose card tab asks the connector for the page (with the
``$authorizedAjax`` token) and frames it. The script runs under node with a stand-in for amoCRM's page
objects (``define``, jQuery, ``APP.data.current_card``, ``self.$authorizedAjax``)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile

import pytest

from connector.apps.amocrm_widget import IMAGES, SESSION_PATH, WidgetError, build_widget
from connector.cli import main

SERVER = "https://lifecycle.example.com"
DOCUMENTED = {"manifest.json", "script.js", "i18n/ru.json", "i18n/en.json", *(f"images/{n}" for n in IMAGES)}


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= _keys(value, path + ".") if isinstance(value, dict) else {path}
    return out


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.fixture
def archive(tmp_path):
    out = tmp_path / "widget.zip"
    assert main(["amocrm", "widget", "--out", str(out), "--public-url", SERVER + "/"]) == 0
    return out


def test_archive_has_the_documented_files_and_valid_json(archive):
    with zipfile.ZipFile(archive) as z:
        assert set(z.namelist()) == DOCUMENTED
        manifest = json.loads(z.read("manifest.json"))
        langs = {lang: json.loads(z.read(f"i18n/{lang}.json")) for lang in ("ru", "en")}
        script = z.read("script.js").decode()
    widget = manifest["widget"]
    assert widget["interface_version"] == 2 and widget["locale"] == ["ru", "en"] and widget["installation"] is True
    assert widget["support"]["link"] == SERVER
    assert manifest["locations"][:2] == ["ccard-0", "card_sdk"]  # web_sdk/card.md: a tab in the contact card
    assert _keys(langs["ru"]) == _keys(langs["en"])  # structure.md: both files of the same structure
    for field in ("name", "description", "short_description"):
        key = widget[field]
        assert _lookup(langs["ru"], key) != _lookup(langs["en"], key)
        assert any("а" <= ch <= "я" for ch in _lookup(langs["ru"], key).lower())
    assert langs["en"]["tab"]["title"] == "Lifecycle" and langs["ru"]["tab"]["title"] == "Жизненный цикл"
    for callback in ("loadPreloadedData", "loadElements", "linkCard", "searchDataInCard"):
        assert f"{callback}:" in script
    assert "$authorizedAjax" in script and json.dumps(SERVER) in script


def test_logos_have_the_documented_sizes(archive):
    with zipfile.ZipFile(archive) as z:
        for name, (width, height) in IMAGES.items():
            data = z.read(f"images/{name}")
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
            assert struct.unpack(">II", data[16:24]) == (width, height), name
            assert len(data) <= 300 * 1024


def test_the_same_options_build_the_same_bytes(tmp_path, archive):
    again = build_widget(tmp_path / "again.zip", public_url=SERVER)
    assert again.read_bytes() == archive.read_bytes()
    both = build_widget(tmp_path / "both.zip", public_url=SERVER, cards=("contact", "company"))
    with zipfile.ZipFile(both) as z:
        assert json.loads(z.read("manifest.json"))["locations"] == ["ccard-0", "comcard-0", "card_sdk", "settings"]


def test_bad_options_get_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIFECYCLE_PUBLIC_URL", raising=False)
    out = str(tmp_path / "w.zip")
    assert main(["amocrm", "widget", "--out", out]) == 2
    assert "--public-url" in capsys.readouterr().err
    for url in ("http://lifecycle.example.com", "ftp://x", "lifecycle.example.com", "https://x.example/?a=1"):
        assert main(["amocrm", "widget", "--out", out, "--public-url", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --public-url") and err.count("\n") == 1
    assert main(["amocrm", "widget", "--out", str(tmp_path / "no" / "w.zip"), "--public-url", SERVER]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(WidgetError):
        build_widget(out, public_url=SERVER, cards=("lead",))
    monkeypatch.setenv("LIFECYCLE_PUBLIC_URL", SERVER)
    assert main(["amocrm", "widget", "--out", out]) == 0


HARNESS = r"""
const fs = require('fs');
const source = fs.readFileSync(process.argv[2], 'utf8');
const scenario = JSON.parse(process.argv[3]);
const langs = JSON.parse(process.argv[4]);
const log = {ajax: [], tab: []};
function element(html) {
  const el = {html: html, attrs: {}, css_: null, text_: null, children: [],
    attr(k, v) { this.attrs[k] = v; return this; }, css(v) { this.css_ = v; return this; },
    text(v) { this.text_ = v; return this; }};
  return el;
}
const tab = {empty() { log.tab.push('empty'); this.children = []; return this; },
             append(child) { this.children.push(child); log.tab.push(child); return this; }, children: []};
function $(arg) { return arg === '#lifecycle_widget' ? tab : element(arg); }
global.window = global;
global.APP = {data: {current_card: {id: scenario.card_id}}};
let factory = null;
global.define = function (deps, fn) { factory = fn; };
eval(source);
const Widget = factory($);
const self = new Widget();
self.langs = langs;
self.get_settings = () => ({widget_code: 'lifecycle_widget'});
self.system = () => ({area: 'ccard', amouser_id: '7'});
self.$authorizedAjax = function (options) {
  log.ajax.push(options);
  const d = {done(cb) { if (scenario.ok) cb(scenario.answer); return d; },
             fail(cb) { if (!scenario.ok) cb({status: 401}); return d; }};
  return d;
};
self.callbacks.loadPreloadedData().then(() => {
  const last = tab.children[tab.children.length - 1];
  return Promise.all([self.callbacks.loadElements(), self.callbacks.searchDataInCard(), self.callbacks.linkCard()])
    .then((other) => console.log(JSON.stringify({ajax: log.ajax, last: last, other: other})));
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("lang", ["ru", "en"])
def test_the_tab_frames_the_page_the_connector_returns(tmp_path, archive, lang):
    with zipfile.ZipFile(archive) as z:
        (tmp_path / "script.js").write_bytes(z.read("script.js"))
        langs = json.loads(z.read(f"i18n/{lang}.json"))
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)

    def run(scenario: dict) -> dict:
        done = subprocess.run(["node", str(harness), str(tmp_path / "script.js"), json.dumps(scenario), json.dumps(langs)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    page = SERVER + "/apps/amocrm/card/abc?lang=" + lang
    framed = run({"card_id": "42", "ok": True, "answer": {"url": page}})
    assert framed["ajax"] == [{"url": SERVER + SESSION_PATH, "method": "POST", "dataType": "json",
                               "data": {"entity": "contact", "id": 42, "lang": lang}}]
    assert framed["last"]["html"] == '<iframe class="lifecycle-tab-frame"></iframe>'
    assert framed["last"]["attrs"] == {"src": page, "title": langs["tab"]["title"], "referrerpolicy": "no-referrer"}
    elsewhere = run({"card_id": "42", "ok": True, "answer": {"url": "https://evil.example.com/x"}})
    assert elsewhere["last"]["text_"] == langs["tab"]["error"]  # only the connector's own pages are framed
    failed = run({"card_id": "42", "ok": False})
    assert failed["last"]["text_"] == langs["tab"]["error"]
    no_card = run({"card_id": None, "ok": True, "answer": {}})
    assert no_card["ajax"] == [] and no_card["last"]["text_"] == langs["tab"]["no_card"]
    assert framed["other"] == [[], [], None]  # card_sdk's product callbacks: nothing linked
