"""The page in a real headless Chromium, served by `streamlit run` against a real cluster:
title, live events of a put, an upload through the page, the banner and the recovery.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe): a plain
--dump-dom returns before Streamlit's websocket has drawn anything. Screenshots and the DOM
are kept under test-artifacts/.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from client.api import AegisClient
from run_cluster import free_base_port

from .conftest import start_cluster

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Headless Chromium: commands on its fd 3, answers on its fd 4, NUL-separated JSON."""

    def __init__(self, exe: str, profile: Path, width: int = 1600, height: int = 2400) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # Above 9, so the shell's "3<&N 4>&M" below cannot overwrite one with the other
        # (bash: dash takes single-digit descriptors only).
        to_child, from_child = (self._high(fd) for fd in (to_child, from_child))
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--remote-debugging-pipe",
                f"--window-size={width},{height}", "about:blank"]
        # A shell puts our pipe ends on fds 3 and 4 (preexec_fn is unsafe with threads,
        # and this test process has some).
        self.log = open(profile.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_child} 4>&{from_child}', "bash", *args],
            pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT)
        os.close(to_child)
        os.close(from_child)
        self.width, self.height = width, height
        self._buf = b""
        self._ids = 0
        self.session: str | None = None

    @staticmethod
    def _high(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def call(self, method: str, timeout: float = 30.0, browser: bool = False, **params):
        self._ids += 1
        msg: dict = {"id": self._ids, "method": method, "params": params}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._in], [], [], left)[0]:
                    raise TimeoutError(f"no answer to {method} from chromium")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise ConnectionError("chromium closed its pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._ids:      # anything else is an event: skip it
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank", browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True,
                                 browser=True)["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, check, timeout: float = 30.0, what: str = "text") -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; page text:\n{text[:3000]}")
            time.sleep(0.3)

    def screenshot(self, path: Path, settle: float = 10.0) -> None:
        """A PNG of the viewport, once Streamlit's lazily loaded elements (charts, graphs,
        buttons) have replaced their loading skeletons, or after `settle` seconds."""
        deadline = time.monotonic() + settle
        while (self.js("document.querySelectorAll('[data-testid=stSkeleton]').length")
               and time.monotonic() < deadline):
            time.sleep(0.2)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def dom(self) -> str:
        return self.js("document.documentElement.outerHTML") or ""

    def set_file(self, selector: str, file: Path) -> None:
        root = self.call("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        assert node, f"no element matches {selector}"
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(file)])

    def click(self, selector: str, text: str) -> bool:
        """Click the first `selector` element whose text has `text` (icons are ligature
        text, so labels are matched by inclusion)."""
        return bool(self.js(
            f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.innerText.includes({json.dumps(text)}));"
            " if (el) { el.click(); return true; } return false; })()"))

    def wait_js(self, expression: str, timeout: float = 30.0, what: str = "a condition"):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.3)
        return value

    def downloads_to(self, folder: Path) -> None:
        self.call("Browser.setDownloadBehavior", browser=True, behavior="allow",
                  downloadPath=str(folder))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5, browser=True)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)
        self.log.close()


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout}s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A cluster of 2 DataNodes plus `streamlit run viz/app.py` as its viz role."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    tmp = tmp_path_factory.mktemp("vizbrowser")
    c = start_cluster(tmp, datanodes=2, viz=True, viz_port=free_base_port(span=1))
    try:
        wait_http(f"http://127.0.0.1:{c.viz_port}/_stcore/health")
        yield c, tmp
    finally:
        c.stop()


@pytest.fixture
def browser(served):
    _, tmp = served
    b = Chromium(CHROMIUM, tmp / f"profile-{time.monotonic_ns()}")
    try:
        yield b
    finally:
        b.close()


def no_tracebacks(b: Chromium) -> None:
    assert not b.js("document.querySelectorAll('[data-testid=stException]').length")


def test_page_shows_title_and_the_events_of_a_put(served, browser):
    cluster, _ = served
    ARTIFACTS.mkdir(exist_ok=True)
    browser.open(f"http://127.0.0.1:{cluster.viz_port}/")
    browser.wait_for(lambda t: "AegisFS" in t and "(connected)" in t and "DataNodes up" in t,
                     what="the page with a connected feed")
    time.sleep(0.5)     # the SUB's subscription reaches the broker just after the connect
    with AegisClient(cluster.broker, timeout=10, key=cluster.key) as fs:
        fs.write_bytes("/browser/hello.txt", b"hello from the browser test\n" * 50)
    text = browser.wait_for(lambda t: "/browser/hello.txt" in t and "block.commit" in t,
                            what="file.commit of /browser/hello.txt in the live feed")
    assert "file.commit" in text
    browser.wait_for(lambda t: "browser/" in t, what="the redrawn listing")
    browser.screenshot(ARTIFACTS / "viz_browser.png")
    (ARTIFACTS / "viz_browser.html").write_text(browser.dom())
    assert browser.js("document.title") == "AegisFS"
    assert browser.js("document.querySelector('h1').innerText").strip() == "AegisFS"
    no_tracebacks(browser)


def wait_download(folder: Path, name: str, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    target = folder / name
    while not target.exists() or any(p.suffix == ".crdownload" for p in folder.iterdir()):
        assert time.monotonic() < deadline, f"{name} was not downloaded"
        time.sleep(0.2)
    return target.read_bytes()


def test_upload_and_download_through_the_page(served, browser, tmp_path):
    cluster, _ = served
    payload = os.urandom(300_000)
    local = tmp_path / "uploaded.bin"
    local.write_bytes(payload)
    browser.open(f"http://127.0.0.1:{cluster.viz_port}/")
    browser.wait_for(lambda t: "Upload into /" in t, what="the upload expander")
    assert browser.click("summary", "Upload into /")
    browser.wait_js("!!document.querySelector('input[type=file]')", what="the file uploader")
    browser.set_file("input[type=file]", local)
    # The browser sends the file to Streamlit as soon as it is chosen; then the form.
    browser.wait_js("(document.querySelector('[data-testid=stFileUploader]') || {})"
                    ".innerText.includes('uploaded.bin')", what="the chosen file")
    # The submit button is disabled while the file travels to the server, and a click on
    # it then is lost; clicking again is harmless (the form clears once submitted).
    deadline = time.monotonic() + 30
    while "Stored /uploaded.bin" not in browser.text():
        assert time.monotonic() < deadline, f"the upload did not finish:\n{browser.text()}"
        browser.js("[...document.querySelectorAll('button')].find(e => !e.disabled && "
                   "e.innerText.includes('Store in AegisFS'))?.click()")
        time.sleep(1)
    with AegisClient(cluster.broker, timeout=10, key=cluster.key) as fs:
        assert fs.read_bytes("/uploaded.bin") == payload
    # The page selects what it stored: its block graph and hex preview are shown.
    browser.wait_for(lambda t: "Namespace" in t and "Preview" in t and "00000000" in t,
                     what="the stored file's panel")
    browser.wait_js("!!document.querySelector('[data-testid=stGraphVizChart] svg')",
                    what="the block graph drawn as SVG")
    browser.screenshot(ARTIFACTS / "viz_browser_upload.png")
    no_tracebacks(browser)
    # Download: Streamlit asks the page for the bytes only when the button is pressed.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.downloads_to(downloads)
    assert browser.click("button", "Download uploaded.bin")
    assert wait_download(downloads, "uploaded.bin") == payload


def test_banner_while_the_broker_is_down_then_live_recovery(served, browser):
    cluster, _ = served
    browser.open(f"http://127.0.0.1:{cluster.viz_port}/")
    browser.wait_for(lambda t: "DataNodes up" in t, what="a healthy page")
    cluster.stop_role("broker")
    try:
        browser.wait_for(lambda t: "Cluster unreachable" in t, timeout=20,
                         what="the unreachable banner")
        browser.screenshot(ARTIFACTS / "viz_browser_down.png")
        no_tracebacks(browser)
    finally:
        cluster.start_role("broker")
    # No reload, no click: the page's timers bring it back.
    browser.wait_for(lambda t: "Cluster unreachable" not in t and "DataNodes up" in t
                     and "Namespace" in t, timeout=40, what="the page to recover")
    no_tracebacks(browser)
