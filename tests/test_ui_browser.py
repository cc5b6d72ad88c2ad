"""The live page in a real browser (Debian's chromium, headless, driven by Selenium through
chromium-driver) against a live controller on real bridges: the page shows the chain by its
switches and wire, turns the link red and says SLOW without a reload when the impairment element
slows it, and its flow table shows flow events handed to the controller's flow store.

Until the IPFIX producer feeds the store, the controller runs with a test hook (this module run as
``python -m tests.test_ui_browser controller …``): a thread that adds the FlowEvents pickled into a
directory. The screenshot is kept under the test's tmp dir, and in RYU_NSM_SCREENSHOT_DIR when set
(``RYU_NSM_SCREENSHOT_DIR=docs`` remakes docs/ui.png).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.observe.flow_events import (
    Direction,
    DropKind,
    DropReason,
    FlowEvent,
    IPHeader,
    Layer4,
    Verdict,
    WireRef,
    Workload,
)

from .bridge_fabric import triangle

pytestmark = pytest.mark.ovs

NET = triangle("fu")
A, B, C = NET.bridges
CONN = "default/client/nsm-1"
DIRECT = f"{A}:1-{B}:1"  # the link the element slows
LEVEL = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-fast}
    spec: {networkService: echo, maxLatency: 10ms}
    """)
SLOW_MS = 30.0
INJECT_ENV = "RYU_NSM_TEST_FLOW_DIR"


def _serve_with_injection() -> None:
    """The controller, with its flow store also fed from INJECT_ENV's directory of pickles."""
    from ryu_nsm import cli, wiring
    from ryu_nsm.observe.flow_store import FlowStore

    inbox = Path(os.environ[INJECT_ENV])

    class InjectedStore(FlowStore):
        def __init__(self, capacity: int) -> None:
            super().__init__(capacity)
            threading.Thread(target=self._read, daemon=True).start()

        def _read(self) -> None:
            while True:
                for path in sorted(inbox.glob("*.pickle")):
                    self.add(pickle.loads(path.read_bytes()))
                    path.unlink()
                time.sleep(0.1)

    wiring.FlowStore = InjectedStore
    sys.exit(cli.main(sys.argv[1:]))


class InjectingController(ControllerProcess):
    """ControllerProcess running this module's hook instead of ``ryu_nsm.cli``."""

    def __init__(self, *args, inbox: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inbox = inbox
        self.sent = 0

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        os.environ[INJECT_ENV] = str(self.inbox)
        real = sys.executable
        try:
            # ControllerProcess runs `python -m ryu_nsm.cli …`; a wrapper makes that this module.
            wrapper = self.inbox / "python"
            wrapper.write_text(f"#!/bin/sh\nshift 2\ncd {Path(__file__).parent.parent}\n"
                               f'exec {real} -m tests.test_ui_browser "$@"\n')
            wrapper.chmod(0o755)
            sys.executable = str(wrapper)
            return super().start(timeout)
        finally:
            sys.executable = real

    def inject(self, events: list[FlowEvent]) -> None:
        path = self.inbox / f"{self.sent:04d}.tmp"
        path.write_bytes(pickle.dumps(events))
        path.rename(path.with_suffix(".pickle"))  # whole or not at all
        self.sent += 1


def echo_flows(now: float) -> list[FlowEvent]:
    """A ping and a refused telnet on the echo wire, as the producer would report them."""
    wire = WireRef(CONN, "echo", "default", "client", "server")
    client, server = Workload("default", "client"), Workload("default", "server")
    ip = IPHeader(NET.client_ip, NET.server_ip, 4)
    return [
        FlowEvent(now, A, Verdict.FORWARDED, wire, Direction.TO_ENDPOINT, ip=ip,
                  l4=Layer4("ICMPv4", icmp_type=8), source=client, destination=server),
        FlowEvent(now + 0.01, B, Verdict.FORWARDED, wire, Direction.TO_CLIENT,
                  ip=IPHeader(NET.server_ip, NET.client_ip, 4), l4=Layer4("ICMPv4"), source=server,
                  destination=client),
        FlowEvent(now + 0.02, A, Verdict.DROPPED, wire, Direction.TO_ENDPOINT,
                  DropReason(DropKind.POLICY, "no-telnet"), ip=ip,
                  l4=Layer4("TCP", 40123, 23, frozenset({"SYN"})), source=client, destination=server),
    ]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromium-driver is missing: scripts/setup installs it"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        # The page is made for 1280×800 of viewport: grow the window by what its frame takes.
        inner = driver.execute_script("return window.innerHeight")
        driver.set_window_size(1280, 800 + 800 - inner)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fabric(tmp_path):
    with NET.echo(tmp_path, LEVEL, impaired=True) as built:
        yield built


def read(driver, selector: str, name: str | None = None) -> list[str]:
    """The attribute ``name`` (else the text) of every element ``selector`` finds, read in one go:
    the page redraws its map whenever the scene changes, so element handles go stale."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map((e) => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent)", selector, name)


def attribute(driver, selector: str, name: str) -> str | None:
    found = read(driver, selector, name)
    return found[0] if found else None


def measured_ms(label: str) -> float | None:
    """The measured latency a link's label shows ("… 31.2ms measured …"), None before any."""
    found = re.search(r"([0-9.]+)ms measured", label)
    return float(found.group(1)) if found else None


def keep_screenshot(driver, tmp_path: Path) -> Path:
    shot = tmp_path / "ui.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("RYU_NSM_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["RYU_NSM_SCREENSHOT_DIR"]) / "ui.png")
    return shot


def test_the_live_page_shows_the_chain_a_slowing_link_and_flows(fabric, browser, tmp_path):
    topo, requests, element = fabric
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with InjectingController(topo, [requests], tmp_path / "ctl.log", inbox=inbox) as ctl:
        NET.connect(ctl.of_port)
        ctl.wait_connections(lambda cs: (cs.get(CONN, {}).get("measured") or {}).get("met") is True, 30)
        browser.get(ctl.url + "/ui")
        svg = "#map "

        # The chain: its switches, its end boxes and its wire, by name in the SVG.
        wire = svg + f'[data-connection="{CONN}"]'
        assert wait_for(lambda: attribute(browser, wire, "data-sla") == "met", 15)
        assert set(read(browser, svg + ".switch", "data-switch")) == {A, B, C}
        assert {A, B, C} <= set(read(browser, svg + ".switch text"))
        assert set(read(browser, svg + ".end", "data-end")) == {"default:client", "default:server"}
        assert set(read(browser, svg + ".end text")) == {"client", "server"}
        label = svg + f'[data-link-label="{DIRECT}"]'
        assert wait_for(lambda: measured_ms(read(browser, label)[0]) is not None, 10)
        # Through the element the link may already measure above its declared 1ms: far below SLOW_MS.
        assert measured_ms(read(browser, label)[0]) < SLOW_MS / 2
        assert "client → server" in read(browser, "#chains .chain h3")[0]

        # Flow events reach the table through the same stream as observe, and its filters apply.
        ctl.inject(echo_flows(time.time()))
        rows = "#flows tbody tr"
        assert wait_for(lambda: len(read(browser, rows)) == 3, 10)
        assert "DROPPED (POLICY_DENIED)" in read(browser, "#flows tr.dropped")[0]
        browser.find_element("css selector", "#filters select[name=verdict] option[value=DROPPED]").click()
        browser.find_element("css selector", "#filters button").click()
        assert wait_for(lambda: len(read(browser, rows)) == 1, 5)
        (shown,) = read(browser, rows)
        assert "default/server:23" in shown and "no-telnet" in shown

        # The direct link slows: without a reload, it turns slow (red, dashed) and says so.
        browser.execute_script("window.notReloaded = true")
        element.set(delay_ms=SLOW_MS)
        direct = svg + f'[data-link="{DIRECT}"]'
        assert wait_for(lambda: attribute(browser, direct, "data-state") == "slow"
                        and measured_ms(read(browser, label)[0]) >= SLOW_MS, 30)
        assert read(browser, label)[0].endswith("SLOW")
        stroke = browser.execute_script(
            "return getComputedStyle(document.querySelector(arguments[0])).stroke", direct + " line")
        assert stroke == "rgb(198, 40, 40)"
        assert browser.execute_script("return window.notReloaded") is True

        # The loop moves the wire off the slow link; the page follows it through C.
        ctl.wait_connections(lambda cs: cs[CONN]["path"] == [A, C, B], 30)
        assert wait_for(lambda: f"path {A}–{C}–{B}" in read(browser, "#chains .hop")[0], 10)
        browser.find_element("css selector", "#filters select[name=verdict] option[value='']").click()
        browser.find_element("css selector", "#filters button").click()
        assert wait_for(lambda: len(read(browser, rows)) == 3, 10)
        shot = keep_screenshot(browser, tmp_path)
        assert shot.stat().st_size > 10_000
        assert ctl.errors() == []


if __name__ == "__main__":
    _serve_with_injection()
