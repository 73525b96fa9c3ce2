"""A placement opened in headless Chromium as the sandbox portal opens it: the portal's page
(``GET /_sandbox/apps/frame``) POSTs the frame form into an iframe, and the browser itself enforces the
handler's framing headers (widgets/_includes/widget_data.md: a handler that forbids framing leaves an empty
area). Skips, saying why, when chromium is not installed (as tests/test_dashboard_browser.py)."""

from __future__ import annotations

import json
import time

import pytest

from sandbox.bitrix24 import running_portal
from tests.receiver import receiving
from tests.test_dashboard_browser import _skip_reason, browser

pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _page(request: dict, portal_origin: str) -> tuple[int, str, dict]:
    options = request["form"].get("PLACEMENT_OPTIONS", "{}")
    body = (f'<!doctype html><html><body><p id="hello">{request["form"].get("PLACEMENT", "")} '
            f'{json.loads(options).get("ID", "")} {request["query"].get("LANG", "")}</p></body></html>')
    headers = {"Content-Type": "text/html; charset=utf-8"}
    if request["path"] == "/tab-deny":
        headers["X-Frame-Options"] = "DENY"
    elif request["path"] == "/tab-elsewhere":
        headers["Content-Security-Policy"] = "frame-ancestors https://another.bitrix24.com"
    else:
        headers["Content-Security-Policy"] = f"frame-ancestors {portal_origin}"
    return 200, body, headers


def _frame_text(driver, timeout: float = 15.0) -> str | None:
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.switch_to.frame("placement-frame")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = driver.find_elements(By.ID, "hello")
        if found:
            return found[0].text
        time.sleep(0.1)
    return None


def test_the_tab_renders_in_the_portal_frame_only_when_its_headers_allow(tmp_path):
    with receiving() as rx, running_portal(generate=(10, 10)) as portal:
        origin = portal.base_url
        rx.answer = lambda request: _page(request, origin) if request["path"].startswith("/tab") else (200, "OK", {})
        answer = portal.install_app(rx.url + "/install", scope="crm,placement")
        token = rx.wait_for(1)[0]["form"]["auth[access_token]"]
        for placement, path in (("CRM_CONTACT_DETAIL_TAB", "/tab-ok"), ("CRM_DEAL_DETAIL_TAB", "/tab-deny"),
                                ("CRM_COMPANY_DETAIL_TAB", "/tab-elsewhere")):
            status, body = portal.call("placement.bind", {"PLACEMENT": placement, "HANDLER": rx.url + path}, auth=token)
            assert status == 200 and body["result"] is True
        driver = browser()
        try:
            driver.get(f"{origin}/_sandbox/apps/frame?placement=CRM_CONTACT_DETAIL_TAB&id=5&lang=en&user_id=3")
            assert _frame_text(driver) == "CRM_CONTACT_DETAIL_TAB 5 en"
            posted = rx.requests[-1]
            assert posted["verb"] == "POST" and posted["path"] == "/tab-ok"
            assert posted["form"]["APPLICATION_TOKEN"] == answer["application_token"]
            assert posted["form"]["member_id"] == portal.info["member_id"]
            seen = len(rx.requests)
            driver.get(f"{origin}/_sandbox/apps/frame?placement=CRM_DEAL_DETAIL_TAB&id=8")
            assert _frame_text(driver, timeout=3) is None  # X-Frame-Options: DENY -> an empty area
            driver.get(f"{origin}/_sandbox/apps/frame?placement=CRM_COMPANY_DETAIL_TAB&id=9")
            assert _frame_text(driver, timeout=3) is None  # frame-ancestors names another portal
            assert [r["path"] for r in rx.requests[seen:]] == ["/tab-deny", "/tab-elsewhere"]  # posted, not shown
        finally:
            driver.quit()
