"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through
chromedriver, against `zbroker monitor` watching a real broker with two nodes.

Chromium and chromedriver come from the system (`apt-get install chromium chromium-driver`,
which `.ci/run` does); without them this test fails and says so, it never skips. Set
ZTB_DASHBOARD_SCREENSHOT=PATH to keep a screenshot of the page as the test leaves it (the
README's picture is made so)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from client import Client
from tests.e2e.conftest import Cluster
from tests.support import wait_until

NONE = "\u2013"  # what the page shows for a figure it has not got (an en dash)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, as root in a container, on a machine without outside network: these keep
# Chromium from reaching for Google's services at start.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1200",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The page redraws its tables every second: read them in one script, not element by element
# (an element found before a redraw is stale after it).
ROWS = """return [...document.querySelectorAll('#nodes tbody tr[data-node]')].map(
  (row) => [row.dataset.node, row.cells[6].textContent]);"""


def node_rows(driver: webdriver.Chrome) -> list[str]:
    return sorted(name for name, _ in driver.execute_script(ROWS))


def nodes_done(driver: webdriver.Chrome) -> int:
    return sum(int(done.replace(",", "")) for _, done in driver.execute_script(ROWS))


def figure(driver: webdriver.Chrome, element_id: str) -> str:
    text = driver.execute_script(f"return document.getElementById('{element_id}').textContent;")
    return str(text)


def test_the_page_lists_the_nodes_and_its_throughput_moves_while_tasks_run(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    cluster.start_broker()
    cluster.start_node(name="n1", functions="math")
    cluster.start_node(name="n2", functions="math")
    cluster.wait_nodes("n1", "n2")
    url = cluster.start_monitor("--interval", "0.25")
    browser.get(url)
    wait_until(lambda: node_rows(browser) == ["n1", "n2"], 20, what="both nodes listed")
    assert figure(browser, "broker-state") == "up"
    assert figure(browser, "node-count") == "2"

    stop = threading.Event()
    ran = []

    def load() -> None:  # tasks flowing until the page has shown them
        with Client(cluster.url) as client:
            while not stop.is_set():
                ran.extend(client.map("add", [(i, i) for i in range(500)]))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    seen: set[str] = set()
    try:

        def moving() -> bool:
            text = figure(browser, "throughput").replace(",", "")
            if text not in ("", NONE, "0"):
                assert float(text) > 0, f"throughput shows {text!r}"
                seen.add(text)
            return len(seen) >= 3  # three different figures: it moves

        wait_until(moving, 30, what="the throughput figure to move", alive=cluster.processes)
        wait_until(
            lambda: figure(browser, "latency") != f"{NONE} / {NONE}", 10, what="a latency figure"
        )
    finally:
        stop.set()
        worker.join(timeout=30)
    assert ran and not worker.is_alive()
    wait_until(lambda: nodes_done(browser) >= len(ran), 10, what="the nodes' done counts")
    shot = os.environ.get("ZTB_DASHBOARD_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)
