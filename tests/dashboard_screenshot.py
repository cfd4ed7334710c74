"""Take docs/dashboard.png: the dashboard of examples/webapp (started, one task restarted by
hand) in headless Chromium. Run: .venv/bin/python tests/dashboard_screenshot.py [PATH]."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from chromium import chromium
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from support import REPO, make_project, serving, wait_until
from test_dashboard import TASKS, copy_example, log_text, row_state, wait_for

WIDTH, HEIGHT = 1280, 770


def main() -> None:
    """Serve a copy of the example on a private tmux server, and photograph its dashboard."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.png"
    os.environ.pop("TMUX", None)
    with tempfile.TemporaryDirectory(prefix="dashboard-shot-") as folder:
        for project in make_project(os.environ.__setitem__, Path(folder)):
            copy_example(project)
            with serving(project) as (_, info), chromium(WIDTH, HEIGHT) as driver:
                assert project.cli("start", timeout=90).returncode == 0
                driver.get(info.dashboard_url)
                wait_for(driver, lambda: all(row_state(driver, name) for name in TASKS))
                driver.find_element(
                    By.CSS_SELECTOR, 'tr[data-task="worker"] [data-action="restart"]'
                ).click()
                wait_for(
                    driver, lambda: "stop=restart" in driver.find_element(By.ID, "events").text
                )
                Select(driver.find_element(By.ID, "log-task")).select_by_value("worker")
                wait_until(lambda: log_text(driver).count("worker got") >= 4, timeout=30)
                driver.execute_script("document.activeElement.blur()")  # no focus ring
                ActionChains(driver).move_to_element(
                    driver.find_element(By.TAG_NAME, "h1")
                ).perform()
                driver.save_screenshot(str(target))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
