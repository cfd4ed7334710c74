"""The dashboard in a real browser: headless Chromium, driven by Selenium, on a real
`taskmux serve` of a copy of examples/webapp."""

from __future__ import annotations

import http.client
import inspect
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from chromium import chromium, set_viewport
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import REPO, Workspace, make_project, serving

from taskmux_mcp.bridge import bridge_call
from taskmux_mcp.endpoint import ServerInfo

T = TypeVar("T")
EXAMPLE = REPO / "examples" / "webapp"
TASKS = ("setup", "api", "worker")
WAIT_S = 30


def copy_example(project: Workspace) -> None:
    """The example project's files in the test's project folder."""
    for path in EXAMPLE.iterdir():
        if path.is_file() and path.suffix in (".py", ".toml"):
            shutil.copy(path, project.root / path.name)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, ServerInfo]]:
    """The example project, started, under a real `taskmux serve` (one for the module)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TMUX", raising=False)
        patch.delenv("TASKMUX_PROJECT", raising=False)
        for project in make_project(patch.setenv, tmp_path_factory.mktemp("example")):
            copy_example(project)
            with serving(project) as (_, info):
                started = project.cli("start", timeout=90)
                assert started.returncode == 0, started.stdout + started.stderr
                yield project, info


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module's tests."""
    with chromium() as driver:
        yield driver


@pytest.fixture
def page(browser: webdriver.Chrome, example: tuple[Workspace, ServerInfo]) -> webdriver.Chrome:
    """The dashboard opened through the login URL, with every task's row shown."""
    _, info = example
    set_viewport(browser, 1280, 900)
    browser.get(info.dashboard_url)
    wait_for(browser, lambda: all(row_state(browser, name) for name in TASKS))
    return browser


def wait_for(driver: webdriver.Chrome, condition: Callable[[], T], timeout: float = WAIT_S) -> T:
    """Poll the page until condition() is truthy (a stale element is asked again)."""
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    try:
        what = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        what = repr(condition)
    return wait.until(lambda _: condition(), f"not met within {timeout}s: {what}")


def row(driver: webdriver.Chrome, name: str) -> WebElement | None:
    """A task's row in the task table."""
    rows = driver.find_elements(By.CSS_SELECTOR, f'#tasks tbody tr[data-task="{name}"]')
    return rows[0] if rows else None


def row_state(driver: webdriver.Chrome, name: str) -> str | None:
    """The state a task's row shows."""
    found = row(driver, name)
    if found is None:
        return None
    return found.find_element(By.CSS_SELECTOR, ".badge").text or None


def cell(driver: webdriver.Chrome, name: str, label: str) -> str:
    """The text of one labelled cell of a task's row."""
    found = row(driver, name)
    assert found is not None, name
    return found.find_element(By.CSS_SELECTOR, f'td[data-label="{label}"]').text


def status_of(info: ServerInfo, project: Workspace) -> dict[str, dict[str, Any]]:
    """Every task's status, asked of the bridge directly."""
    result = bridge_call(project.open().paths, "status", {})
    return {task["name"]: task for task in result["tasks"]}


def request(port: int, path: str) -> None:
    """A GET to the example's api, which prints its request line to its log."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def log_text(driver: webdriver.Chrome) -> str:
    """Everything the log pane shows."""
    return str(driver.find_element(By.ID, "log").text)


def test_the_login_url_shows_every_task_of_the_example_with_its_state(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, info = example
    assert page.current_url == f"{info.url}/"  # the token left the address bar
    assert page.find_element(By.ID, "project").text == "taskmux-example"
    wait_for(page, lambda: page.find_element(By.ID, "connection").text == "live")
    truth = status_of(info, project)
    assert {name: row_state(page, name) for name in TASKS} == {
        name: truth[name]["state"] for name in TASKS
    }
    assert truth["setup"]["state"] == "exited" and truth["api"]["state"] == "running"
    assert cell(page, "setup", "last exit") == "code 0"
    assert cell(page, "api", "pid") == str(truth["api"]["pid"])
    assert cell(page, "api", "health") == "healthy"
    link = row(page, "api").find_element(By.CSS_SELECTOR, 'td[data-label="port"] a')  # type: ignore[union-attr]
    assert link.text == str(truth["api"]["port"])
    assert link.get_attribute("href") == f"http://127.0.0.1:{truth['api']['port']}/"
    first = cell(page, "worker", "uptime")
    wait_for(page, lambda: cell(page, "worker", "uptime") != first)  # it ticks
    events = page.find_element(By.ID, "events").text
    assert "monitor_started" in events and "started" in events
    logged = page.get_log("browser")
    assert not [entry for entry in logged if entry["level"] == "SEVERE"], logged  # CSP included


def test_stop_and_start_buttons_turn_a_row_to_stopped_and_back(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, info = example
    assert row_state(page, "worker") == "running"
    page.find_element(By.CSS_SELECTOR, '#tasks tr[data-task="worker"] [data-action="stop"]').click()
    wait_for(page, lambda: row_state(page, "worker") == "stopped")
    assert status_of(info, project)["worker"]["state"] == "stopped"  # really stopped
    assert cell(page, "worker", "pid") == "—"
    wait_for(page, lambda: "stopped" in page.find_element(By.ID, "events").text)
    start = page.find_element(
        By.CSS_SELECTOR, '#tasks tr[data-task="worker"] [data-action="start"]'
    )
    wait_for(page, start.is_enabled)
    start.click()
    wait_for(page, lambda: row_state(page, "worker") == "running")
    assert status_of(info, project)["worker"]["state"] == "running"
    wait_for(
        page, lambda: cell(page, "worker", "pid") == str(status_of(info, project)["worker"]["pid"])
    )
    assert page.find_elements(By.CSS_SELECTOR, "#errors li") == []


def test_what_another_process_does_shows_up_live(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, _ = example
    assert project.cli("stop", "worker").returncode == 0
    wait_for(page, lambda: row_state(page, "worker") == "stopped")
    assert project.cli("start", "worker", "--no-wait").returncode == 0
    wait_for(page, lambda: row_state(page, "worker") == "running")
    events = page.find_element(By.ID, "events").text
    assert "stopped" in events and "worker" in events


def test_a_line_printed_after_the_page_loaded_appears_in_the_log_pane_as_text(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, info = example
    Select(page.find_element(By.ID, "log-task")).select_by_value("api")
    wait_for(page, lambda: "api listening on" in log_text(page))  # the history came first
    marker = f"/mark-{uuid.uuid4().hex[:8]}-<b>not-bold</b>"
    assert marker not in log_text(page)
    port = status_of(info, project)["api"]["port"]
    request(port, marker)
    wait_for(page, lambda: marker in log_text(page))
    assert page.find_elements(By.CSS_SELECTOR, "#log b") == []  # text, never markup


def test_the_log_pane_scrolls_along_unless_scrolled_up(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, info = example
    port = status_of(info, project)["api"]["port"]
    for number in range(60):  # more lines than the pane shows
        request(port, f"/filler-{number}")
    Select(page.find_element(By.ID, "log-task")).select_by_value("api")
    log = page.find_element(By.ID, "log")
    wait_for(page, lambda: "/filler-59" in log_text(page))
    at_end = "return arguments[0].scrollHeight - arguments[0].scrollTop - arguments[0].clientHeight"
    wait_for(page, lambda: page.execute_script(at_end, log) < 8)  # it followed
    page.execute_script("arguments[0].scrollTop = 0", log)  # the reader scrolls up
    latest = page.find_element(By.ID, "log-end")
    wait_for(page, latest.is_displayed)
    request(port, "/while-reading")
    wait_for(page, lambda: "/while-reading" in log_text(page))
    assert page.execute_script("return arguments[0].scrollTop", log) == 0  # left where it was
    latest.click()
    wait_for(page, lambda: page.execute_script(at_end, log) < 8)
    assert not latest.is_displayed()


def test_a_narrow_window_still_shows_every_row_and_its_buttons(
    page: webdriver.Chrome,
) -> None:
    set_viewport(page, 400, 800)
    wait_for(page, lambda: page.execute_script("return window.innerWidth") == 400)
    for name in TASKS:
        found = row(page, name)
        assert found is not None and found.is_displayed(), name
        assert found.rect["x"] >= 0 and found.rect["x"] + found.rect["width"] <= 400, found.rect
        stop = found.find_element(By.CSS_SELECTOR, '[data-action="stop"]')
        assert stop.is_displayed() and stop.rect["x"] + stop.rect["width"] <= 400
        for label in ("state", "pid", "uptime", "last exit"):
            shown = found.find_element(By.CSS_SELECTOR, f'td[data-label="{label}"]')
            assert shown.is_displayed() and shown.rect["x"] + shown.rect["width"] <= 400
            assert page.execute_script(  # each value says what it is: the table's head is gone
                "return getComputedStyle(arguments[0], '::before').content", shown
            ) == json.dumps(label)
    assert not page.find_element(By.CSS_SELECTOR, "#tasks thead").is_displayed()
    assert page.execute_script("return document.documentElement.scrollWidth") <= 400


def test_without_the_token_the_page_shows_nothing_of_the_project(
    example: tuple[Workspace, ServerInfo],
) -> None:
    _, info = example
    with chromium() as fresh:  # a profile that never logged in
        for url in (f"{info.url}/", f"{info.url}/?token=wrong-{uuid.uuid4().hex}"):
            fresh.get(url)
            text = fresh.find_element(By.TAG_NAME, "body").text
            assert text.strip() == "401 Unauthorized", text
            source = fresh.page_source
            assert not any(name in source for name in (*TASKS, "taskmux-example")), source
            assert fresh.find_elements(By.ID, "tasks") == []
        assert fresh.get_cookies() == []


RECONNECT_PROJECT = """
name = "reconnecting"
[tasks.ticker]
command = "echo ticker-up; sleep 1000"
stop_grace_period = 0.5
[tasks.broken]
command = "echo boom-$((6*7)); exit 3"
auto_start = false
restart_policy = "no"
"""


def test_the_page_reconnects_says_when_its_login_is_void_and_shows_errors_plainly(
    project: Workspace,
) -> None:
    project.write(RECONNECT_PROJECT)
    with chromium() as driver:
        with serving(project) as (_, info):
            port = info.port
            driver.get(info.dashboard_url)
            wait_for(driver, lambda: row_state(driver, "broken") == "stopped")
            driver.find_element(
                By.CSS_SELECTOR, 'tr[data-task="broken"] [data-action="start"]'
            ).click()
            error = wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#errors li"))
            assert "start broken:" in error[0].text and "boom-42" in error[0].text, error[0].text
        badge = driver.find_element(By.ID, "connection")
        wait_for(driver, lambda: "disconnected; retrying" in badge.text)
        assert "stale" in str(driver.find_element(By.TAG_NAME, "body").get_attribute("class"))
        server_json = project.open().paths.server
        assert json.loads(server_json.read_text())["pid"] == 0
        with serving(project, "--port", str(port)):  # the same port, the same token
            wait_for(driver, lambda: badge.text == "live")
            driver.find_element(
                By.CSS_SELECTOR, 'tr[data-task="ticker"] [data-action="start"]'
            ).click()
            wait_for(driver, lambda: row_state(driver, "ticker") == "running")
            Select(driver.find_element(By.ID, "log-task")).select_by_value("ticker")
            wait_for(driver, lambda: "ticker-up" in log_text(driver))
        server_json.unlink()  # the next server draws a new token: the page's cookie is void
        with serving(project, "--port", str(port)):
            wait_for(driver, lambda: "not logged in" in badge.text)


def test_kill_asks_first_and_does_nothing_when_refused(
    page: webdriver.Chrome, example: tuple[Workspace, ServerInfo]
) -> None:
    project, info = example
    pid = status_of(info, project)["api"]["pid"]
    page.find_element(By.CSS_SELECTOR, 'tr[data-task="api"] [data-action="kill"]').click()
    alert = wait_for(page, lambda: page.switch_to.alert)
    assert "Kill api?" in alert.text
    alert.dismiss()
    assert "kill" not in page.find_element(By.ID, "activity").text  # nothing was sent
    assert status_of(info, project)["api"]["pid"] == pid
    assert row_state(page, "api") == "running"
