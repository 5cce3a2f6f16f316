"""Headless Chromium driven over the DevTools protocol, for the tests that use the UI as a person does: open a
page, wait for what a person would wait for, click, read the page. (No browser-automation library is in the
pinned stack; the protocol is a websocket and a few JSON messages.)"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket  # websocket-client

from tests.processes import stop_process_group

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-allow-origins=*", "--window-size=1600,3000"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium with one page. Every wait is bounded; close() stops the browser's process group."""

    def __init__(self, profile: Path, timeout: float = 60):
        port = free_port()
        self.process = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}",
                                         f"--remote-debugging-port={port}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ids = itertools.count(1)
        try:
            target = self._page_target(port, timeout)
            self.socket = websocket.create_connection(target, timeout=timeout)
        except BaseException:
            stop_process_group(self.process)
            raise

    @staticmethod
    def _page_target(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Chromium's DevTools did not answer on port {port} within {timeout} s")
            time.sleep(0.2)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; the events that arrive before its answer are skipped."""
        request = next(self.ids)
        self.socket.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == request:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = ""):
        """The expression's value once it is truthy; fails after `timeout` seconds naming what it waited for."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what or expression}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        import base64
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop_process_group(self.process)
