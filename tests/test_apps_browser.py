"""The Lifecycle tab in headless Chromium as the sandbox portal opens it: the app installed by the portal's
own installation callback, one sync of the registered portal, then the portal's card page
(``GET /_sandbox/apps/frame``) POSTs the frame form into an iframe, and the browser enforces the
connector's ``frame-ancestors``. The tab shows the customer's segments and history exactly as the store
holds them. Skips, saying why, when chromium is not installed (as tests/test_dashboard_browser.py)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from connector.apps.bitrix24_app import name_of
from sandbox.bitrix24 import running_portal
from tests.apps_stack import app_env, free_port, history_of, segments_of, wait_for, web_service
from tests.test_apps_bitrix24 import _bound, _install
from tests.test_dashboard_browser import _skip_reason, browser

pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""), pytest.mark.slow]


def _frame_rows(driver, selector: str, timeout: float = 20.0) -> list[str] | None:
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.switch_to.frame("placement-frame")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.find_elements(By.ID, "history"):
            return [e.get_attribute(selector) or "" for e in driver.find_elements(By.CSS_SELECTOR, f"[{selector}]")]
        time.sleep(0.1)
    return None


def test_the_lifecycle_tab_in_the_portal_frame_shows_the_store(postgres_url, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    port = free_port()
    with running_portal(generate=(30, 60), limits=False) as portal:
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=portal.base_url + "/oauth/token/")
        with web_service(postgres_url, env, port, monkeypatch) as service:
            assert _install(portal, port)["delivery"]["status"] == 200
            name = name_of(portal.info["member_id"])
            wait_for(lambda: _bound(portal, port, name), 30, "the bindings")
            assert service.workers.sync_portal(name, "test") == "ok"  # the worker's job, run here
            engine = service.workers.registry().engine
            with engine.connect() as conn:
                customer = conn.execute(sa.text(
                    "SELECT customer_id FROM membership_events JOIN portal_keys k ON k.id = portal_id WHERE k.name = :p "
                    "GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1"), {"p": name}).scalar()
            driver = browser()
            try:
                driver.get(f"{portal.base_url}/_sandbox/apps/frame?placement=CRM_CONTACT_DETAIL_TAB&id={customer}"
                           "&lang=en&user_id=3")
                shown = _frame_rows(driver, "data-segment")
                assert shown is not None, "the tab stayed empty: the browser refused the frame"
                current = [e.get_attribute("data-segment") for e in
                           driver.find_elements(By.CSS_SELECTOR, "#current-segments li[data-segment]")]
                assert sorted(current) == sorted(segments_of(engine, name, customer))
                rows = driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")
                seen = [(r.get_attribute("data-segment"), r.get_attribute("data-event"),
                         r.find_elements(By.TAG_NAME, "td")[0].text) for r in rows]
                assert seen == history_of(engine, name, customer) and seen
                assert "Segments now" in driver.find_element(By.TAG_NAME, "body").text
            finally:
                driver.quit()
