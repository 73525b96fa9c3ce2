"""The dashboard in a real browser: headless Debian Chromium driven by Selenium (chromium-driver), against
`lifecycle run` (a subprocess) syncing the Bitrix24 sandbox. Screenshots of each page go to
test-output/dashboard/ (LIFECYCLE_UPDATE_SCREENSHOTS=1 also copies two into docs/img/ for the README). Skips, saying why, only when chromium cannot be installed (scripts/test-browser.sh)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sandbox.bitrix24 import running_portal
from tests.test_daemon import daemon, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "dashboard"
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PASSWORD = "browser test password"


def _skip_reason() -> str | None:
    if os.environ.get("LIFECYCLE_TEST_BROWSER_SKIP"):
        return os.environ["LIFECYCLE_TEST_BROWSER_SKIP"]
    if not (CHROMIUM.exists() and DRIVER.exists()):
        return "chromium / chromedriver are not installed: run `scripts/test-browser.sh install` (or `make test`)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def cli(config: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "connector.cli", *args, "--config", str(config)], input=stdin,
                          capture_output=True, text=True, cwd=config.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
                "--lang=en-US"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=options)


def sign_in(driver, base: str, email: str, password: str = PASSWORD) -> str:
    from selenium.webdriver.common.by import By

    driver.get(base + "/ui/login")
    driver.find_element(By.ID, "email").clear()
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    click(driver, driver.find_element(By.ID, "sign-in"))
    errors = driver.find_elements(By.ID, "login-error")
    return errors[0].text if errors else ""


def click(driver, element) -> None:
    """Click a link or button and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_driver) -> bool:
        try:
            page.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:  # Chromium may say this instead of "stale element" mid-navigation
            if "does not belong to the document" in str(exc):
                return True
            raise

    WebDriverWait(driver, 30).until(replaced)


def fetch(driver, url: str) -> tuple[int, bytes]:
    """GET with the browser's session cookie (downloads do not show in headless Chromium)."""
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_dashboard_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By

    with running_portal(generate=(400, 1200), seed=5) as portal:
        config = tmp_path / "lifecycle.toml"
        config.write_text(
            f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
            f'overlap_minutes = 0\nreconcile_hours = 0\n[state]\nurl = "sqlite:///state.db"\n[ui]\nlanguage = "en"\n'
            f'[schedule]\nevery = "1h"\n[daemon]\nhost = "127.0.0.1"\n', encoding="utf-8")
        cli(config, "users", "add", "admin@example.com", "--role", "admin", stdin=PASSWORD + "\n")
        cli(config, "users", "add", "b-viewer@example.com", "--role", "viewer", "--portal", "portal-b", stdin=PASSWORD + "\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"

        def synced() -> bool:
            try:
                with sqlite3.connect(tmp_path / "state.db") as conn:
                    return conn.execute("SELECT count(*) FROM dash_snapshots").fetchone()[0] > 0
            except sqlite3.Error:
                return False

        with daemon(config, port):
            wait_for(synced, 120, "the daemon's first sync never stored a dashboard snapshot")
            driver = browser()
            try:
                assert sign_in(driver, base, "admin@example.com") == ""
                assert driver.current_url.endswith("/ui/")
                shot(driver, "portfolio")
                click(driver, driver.find_element(By.LINK_TEXT, "default"))
                # the matrix on the page equals `lifecycle report --format json` for the same day
                cells = {td.get_attribute("data-segment"): int(td.find_element(By.CLASS_NAME, "count").text)
                         for td in driver.find_elements(By.CSS_SELECTOR, "#matrix td.cell")}
                report = json.loads(cli(config, "report", "--format", "json"))
                assert len(cells) == 9 and cells == {k: report["segments"][k] for k in cells}
                assert driver.find_elements(By.CSS_SELECTOR, ".chart svg")
                shot(driver, "overview")
                driver.set_window_size(390, 844)
                shot(driver, "overview-phone")
                driver.set_window_size(1280, 1000)

                # a flows cell lists exactly the customers `report --flows` lists
                click(driver, driver.find_element(By.LINK_TEXT, "Flows"))
                start = driver.find_element(By.NAME, "from").get_attribute("value")
                end = driver.find_element(By.NAME, "to").get_attribute("value")
                links = [a for a in driver.find_elements(By.CSS_SELECTOR, "#flows td a")
                         if a.find_element(By.XPATH, "..").get_attribute("data-from")
                         != a.find_element(By.XPATH, "..").get_attribute("data-to")]
                assert links, "no customer moved in 30 days"
                td = links[0].find_element(By.XPATH, "..")
                src, dst = td.get_attribute("data-from"), td.get_attribute("data-to")
                click(driver, links[0])
                listed = sorted(int(a.get_attribute("data-id")) for a in driver.find_elements(By.CSS_SELECTOR, "#flow-members a"))
                flows = json.loads(cli(config, "report", "--flows", start, end, "--format", "json"))
                expected = next(t["members"] for t in flows["transitions"] if (t["from"], t["to"]) == (src, dst))
                assert listed == expected
                shot(driver, "flows")

                # a segment's members, its export equal to `report --members`
                driver.get(base + "/ui/p/default/segments/status.current?sort=monetary&order=desc")
                assert driver.find_elements(By.CSS_SELECTOR, "#members tbody tr")
                shot(driver, "members")
                href = driver.find_element(By.ID, "export-csv").get_attribute("href")
                status, body = fetch(driver, href)
                exported = sorted(int(line.split(",", 1)[0]) for line in body.decode().splitlines()[1:])
                members = json.loads(cli(config, "report", "--format", "json", "--segment", "status.current"))
                assert status == 200 and exported == sorted(int(i) for i in members["members"]["status.current"])
                first = driver.find_element(By.CSS_SELECTOR, "#members tbody tr a")
                click(driver, first)
                assert driver.find_elements(By.ID, "current-segments")
                shot(driver, "customer")
                for page in ("campaigns", "audiences", "runs"):
                    click(driver, driver.find_element(By.LINK_TEXT, page.capitalize()))
                    shot(driver, page)
                click(driver, driver.find_element(By.ID, "logout"))
                assert "/ui/login" in driver.current_url

                # a viewer of portal B cannot reach this portal's pages, members, customer or export
                assert sign_in(driver, base, "b-viewer@example.com") == ""
                for path in ("/ui/p/default/", "/ui/p/default/segments/status.current",
                             f"/ui/p/default/customers/{exported[0]}"):
                    driver.get(base + path)
                    assert driver.find_element(By.ID, "error-message").text == "Not found.", path
                for path in ("/api/v1/portals/default/segments/status.current/members.csv",
                             f"/api/v1/portals/default/customers/{exported[0]}"):
                    assert fetch(driver, base + path)[0] == 404
                shot(driver, "viewer-refused")
                driver.delete_all_cookies()

                # a wrong password is refused; the sixth quick attempt is throttled
                for _ in range(5):
                    assert sign_in(driver, base, "b-viewer@example.com", "not the password") == "Wrong e-mail or password."
                assert sign_in(driver, base, "b-viewer@example.com") == "Too many attempts: wait a minute and try again."
                shot(driver, "login-throttled")
            finally:
                driver.quit()
    docs = ROOT / "docs" / "img"
    if os.environ.get("LIFECYCLE_UPDATE_SCREENSHOTS"):  # refresh the README's two screenshots on request only
        for name in ("overview", "flows"):
            shutil.copyfile(SHOTS / f"{name}.png", docs / f"dashboard-{name}.png")
