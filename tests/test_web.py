"""The web page in headless Debian Chromium (selenium), served by the real ``framechain rest``,
against real daemons running the live view, XPCS correlator and HDF5 writer plugins."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from _clients import speckle_stack
from harness import wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                 reason="Debian chromium/chromium-driver not installed "
                                        "(apt-get install -y chromium chromium-driver)")]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="fcweb-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1400"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def stack(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((8, 8), dtype=bool))     # frames are 64x64: the mask plugin drops every one
    with speckle_stack(tmp_path, [64, 64], live_per_second=4,
                       before=[("mask", "MaskPlugin", "framechain.plugins.mask", "frame_receiver", {"mask": str(mask)})],
                       after=[("hdf", "FileWriterPlugin", "framechain.plugins.hdf5_writer", "xpcs",
                               {"file": {"path": str(out), "prefix": "web"},
                                "dataset": {"data": {"datatype": "uint16", "dims": [64, 64]}}})]) as (pipe, server):
        yield pipe, server, out


def text(driver, element_id: str) -> str:
    """An element's text, read in one script call (the page rebuilds its tables every second)."""
    return driver.execute_script("const e = document.getElementById(arguments[0]); "
                                 "return e ? e.textContent.trim() : '';", element_id)


def live_pixels(driver) -> str | None:
    """The live image as the browser decoded it (a data URL), or None before it loaded."""
    return driver.execute_script("""
        const img = document.getElementById('live-image');
        if (img.hidden || !img.complete || !img.naturalWidth) return null;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0);
        return c.toDataURL();""")


def test_page_counters_live_image_g2_and_writer_buttons(stack, browser):
    pipe, server, out = stack
    browser.get(server.base + "/")
    wait_for(lambda: text(browser, "server-state") == "server connected", timeout=10, what="the page to poll")
    wait_for(lambda: text(browser, "fp0-state") == "connected", timeout=10, what="fp0 shown connected")
    assert text(browser, "writer-state") == "not writing"
    browser.find_element(By.ID, "start-source").click()
    wait_for(lambda: "running" in text(browser, "fr0-source"), timeout=10, what="the source to run")
    first = int(text(browser, "fp0-received"))
    wait_for(lambda: int(text(browser, "fp0-received") or 0) > first + 50, timeout=15,
             what="frames received to increase on the page")
    # the drops column sums every drop counter: the mask plugin's wrong-shape frames show up
    wait_for(lambda: int(text(browser, "fp0-mask-drops") or 0) > 20, timeout=15, what="mask drops on the page")
    assert pipe.plugin_status("mask")["frames_wrong_shape"] >= int(text(browser, "fp0-mask-drops"))
    # live image: loaded, 64x64, and changing
    img1 = wait_for(lambda: live_pixels(browser), timeout=15, what="the live image to load")
    assert browser.execute_script("return document.getElementById('live-image').naturalWidth") == 64
    wait_for(lambda: (p := live_pixels(browser)) and p != img1, timeout=15, what="the live image to change")
    # g2 curves from the correlator
    wait_for(lambda: "q-bin" in text(browser, "g2-info"), timeout=20, what="g2 results on the page")
    # writer buttons change the writer's status in the daemon and on the page
    browser.find_element(By.ID, "start-writing").click()
    wait_for(lambda: pipe.plugin_status("hdf")["writing"], timeout=10, what="the writer to start")
    wait_for(lambda: text(browser, "writer-state") == "writing", timeout=10, what="'writing' on the page")
    assert "HTTP 200" in text(browser, "response")
    wait_for(lambda: int(text(browser, "writer-written") or 0) > 10, timeout=15, what="frames written on the page")
    browser.find_element(By.ID, "stop-writing").click()
    wait_for(lambda: not pipe.plugin_status("hdf")["writing"], timeout=10, what="the writer to stop")
    wait_for(lambda: text(browser, "writer-state") == "not writing", timeout=10, what="'not writing' on the page")
    assert list(out.glob("web*.h5"))
    browser.find_element(By.ID, "stop-source").click()
    wait_for(lambda: "stopped" in text(browser, "fr0-source"), timeout=10, what="the source to stop")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
