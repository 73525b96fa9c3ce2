"""The application's pages in headless Chromium as the sandbox portal opens them (``GET /_sandbox/apps/frame``
POSTs the frame form into an iframe; the browser enforces the connector's framing headers and keeps its
session cookie): the main page is the portal's dashboard in the frame and its links work inside it (the
session cookie travels with them); the installation page of an app with an installation wizard calls
``BX24.installFinish()`` through the sandbox's stand-in BX24 library, and the portal then counts the app
installed. Skips, saying why, when chromium is not installed (as tests/test_dashboard_browser.py)."""

from __future__ import annotations

import time

import pytest

from connector.apps.bitrix24_app import name_of
from sandbox.bitrix24 import running_portal
from tests.apps_stack import B24_CLIENT_ID, B24_CLIENT_SECRET, app_env, free_port, wait_for, web_service
from tests.test_dashboard_browser import _skip_reason, browser

pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""), pytest.mark.slow]


def _in_frame(driver, element_id: str, timeout: float = 20.0):
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.switch_to.frame("placement-frame")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = driver.find_elements(By.ID, element_id)
        if found:
            return found[0]
        time.sleep(0.1)
    return None


def _parent_text(driver, element_id: str, expected: str, timeout: float = 20.0) -> str:
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.ID, element_id).text
        if text == expected:
            break
        time.sleep(0.1)
    return text


def test_the_main_page_is_the_dashboard_inside_the_portal_frame(postgres_url, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_portal(generate=(30, 60), limits=False) as portal:
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=portal.base_url + "/oauth/token/")
        with web_service(postgres_url, env, port, monkeypatch) as service:
            answer = portal.install_app(base + "/apps/bitrix24/install", scope="crm,placement,user_brief",
                                        client_id=B24_CLIENT_ID, client_secret=B24_CLIENT_SECRET,
                                        main_url=base + "/apps/bitrix24/app")
            assert answer["delivery"]["status"] == 200
            name = name_of(portal.info["member_id"])
            wait_for(lambda: bool(portal.control("GET", "apps")["apps"][-1]["options"]), 30, "the bindings")
            assert service.workers.sync_portal(name, "test") == "ok"
            driver = browser()
            try:
                driver.get(f"{portal.base_url}/_sandbox/apps/frame?placement=DEFAULT&user_id=1&lang=en")
                assert _in_frame(driver, "matrix") is not None, "the main page stayed empty: the frame was refused"
                assert driver.find_elements(By.ID, "settings")  # an administrator
                driver.find_element(By.CSS_SELECTOR, "nav.tabs a[href$='/flows']").click()  # inside the frame
                assert _in_frame(driver, "flows") is not None, "the frame's session did not carry to the next page"
                assert driver.execute_script("return location.pathname") == f"/ui/p/{name}/flows"
                driver.find_element(By.ID, "settings-tab").click()
                assert _in_frame(driver, "settings") is not None
                # another user: no settings tab, and the settings page is refused in the frame too
                driver.get(f"{portal.base_url}/_sandbox/apps/frame?placement=DEFAULT&user_id=4&lang=ru")
                assert _in_frame(driver, "read-only") is not None
                assert not driver.find_elements(By.ID, "settings-tab")
                driver.get(f"{base}/ui/p/{name}/settings")  # the viewer's cookie, top level
                assert "403" in driver.find_element(By.TAG_NAME, "h1").text
            finally:
                driver.quit()


def test_the_installation_page_calls_install_finish_in_the_portal_frame(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_portal(generate=(5, 5), limits=False) as portal:
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=portal.base_url + "/oauth/token/",
                      LIFECYCLE_BITRIX24_JS_URL=portal.base_url + "/_sandbox/apps/bx24.js")
        with web_service(postgres_url, env, port, monkeypatch) as service:
            app = portal.install_app(base + "/apps/bitrix24/install", mode="wizard", send=False,
                                     scope="crm,placement,user_brief", client_id=B24_CLIENT_ID,
                                     client_secret=B24_CLIENT_SECRET)
            assert app["installed"] is False and app["delivery"] is None
            driver = browser()
            try:
                driver.get(f"{portal.base_url}/_sandbox/apps/frame?install=1&app={B24_CLIENT_ID}&user_id=1&lang=en")
                assert _parent_text(driver, "install-state", "finished") == "finished", \
                    "the portal never heard BX24.installFinish() from the installation page"
                state = _in_frame(driver, "install-state")
                assert state is not None and state.get_attribute("data-state") == "finishing"
                assert driver.execute_script("return window.BX24.calls") == ["installFinish"]
            finally:
                driver.quit()
            installed = next(a for a in portal.control("GET", "apps")["apps"] if a["client_id"] == B24_CLIENT_ID)
            assert installed["installed"] is True and installed["events"] and installed["placements"]
            name = name_of(portal.info["member_id"])
            assert service.workers.registry().get(name).state == "active"
