"""`charter tui --serve`: the console served to a browser through textual-serve, on a real lab. The
page loads over HTTP from 127.0.0.1, and the page's own websocket drives a real console process
whose screen shows the lab's gate. (No headless Chromium on these machines: the websocket is what
the browser's page would open, read here by a plain client.)"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from controller.workspace.lab import init_lab

aiohttp = pytest.importorskip("aiohttp", reason="--serve needs the serve extra (textual-serve)")
pytest.importorskip("textual_serve")

SAFETY_S = 60
ANSI = re.compile(r"\x1b\[[0-9;?$<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")


def plain(stream: str) -> str:
    return ANSI.sub("", stream)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_served_page_loads_and_its_console_shows_the_gate(tmp_path):
    lab = init_lab(tmp_path / "lab")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "tui", "--serve", "--port", str(port), "--lab", str(lab.root),
                             "--by", "alice"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SAFETY_S
        page = None
        while page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode()
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"the page did not load: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")
                time.sleep(0.2)
        assert "charter · lab" in page and "/ws" in page

        async def screen_text() -> str:
            seen = ""
            async with aiohttp.ClientSession() as client:
                async with client.ws_connect(f"ws://127.0.0.1:{port}/ws?width=140&height=40") as ws:
                    end = time.monotonic() + SAFETY_S
                    while time.monotonic() < end and not ("RUN" in plain(seen) and "no controller running" in plain(seen)):
                        try:
                            msg = await ws.receive(timeout=5)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            seen += msg.data
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            seen += msg.data.decode("utf-8", "replace")
                        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
            return plain(seen)

        text = asyncio.run(screen_text())
        assert "RUN" in text and "ledger head seq" in text and "no controller running" in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=SAFETY_S)
        except subprocess.TimeoutExpired:
            proc.kill()
