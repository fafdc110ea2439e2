"""`charter tui --serve`: the console served to a browser through textual-serve, on a real lab. The
page loads over HTTP from 127.0.0.1, and the page's own websocket drives a real console process
whose screen shows the lab's gate, read by a plain websocket client; then the page in headless
Chromium (installed by .ci/setup-system.sh), driven through the DevTools protocol, paints the
paused lab's FREEZE badge. The terminal is drawn on a canvas, so the check is the badge's colour
in a screenshot."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
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


def serve(lab, port):
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "tui", "--serve", "--port", str(port), "--lab", str(lab.root),
                             "--by", "alice"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_page(port: int, proc) -> str:
    """The served page's HTML, once the server answers (it takes a moment to start)."""
    deadline = time.monotonic() + SAFETY_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"the page did not load: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}")
            time.sleep(0.2)


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=SAFETY_S)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_served_page_loads_and_its_console_shows_the_gate(tmp_path):
    lab = init_lab(tmp_path / "lab")
    port = free_port()
    proc = serve(lab, port)
    try:
        page = load_page(port, proc)
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
        stop_server(proc)


FREEZE_RGB = (30, 144, 255)  # dodgerblue: .gate-FREEZE in tui/app.tcss


def badge_pixels(png: bytes, rgb=FREEZE_RGB, tolerance: int = 20) -> int:
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for px in img.get_flattened_data() if all(abs(a - b) < tolerance for a, b in zip(px, rgb)))


async def chromium_screenshot(browser: str, url: str, profile, done) -> bytes:
    """Open `url` in headless Chromium and take screenshots until `done(png)` or SAFETY_S."""
    debug_port = free_port()
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={debug_port}",
                             f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + SAFETY_S
        async with aiohttp.ClientSession() as client:
            while True:
                try:
                    async with client.get(f"http://127.0.0.1:{debug_port}/json/list") as r:
                        pages = [t for t in json.loads(await r.text()) if t["type"] == "page"]
                    break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline and proc.poll() is None, "Chromium's DevTools endpoint never came up"
                    await asyncio.sleep(0.2)
            async with client.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 1_000_000))

                async def call(method: str, **params):
                    n = next(ids)
                    await ws.send_json({"id": n, "method": method, "params": params})
                    while True:
                        msg = await ws.receive_json(timeout=SAFETY_S)
                        if msg.get("id") == n:
                            return msg["result"]

                await call("Page.navigate", url=url)
                png = b""
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    png = base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
                    if done(png):
                        break
                return png
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Chromium's renderers and zygote with it
        proc.wait()


def test_the_served_page_in_headless_chromium_shows_the_gate(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is missing: bash .ci/setup-system.sh installs it"
    lab = init_lab(tmp_path / "lab")
    subprocess.run([sys.executable, "-m", "controller.cli", "pause", "--lab", str(lab.root), "--by", "alice",
                    "--reason", "seen from a browser"], check=True, capture_output=True)
    port = free_port()
    proc = serve(lab, port)
    try:
        load_page(port, proc)
        png = asyncio.run(chromium_screenshot(browser, f"http://127.0.0.1:{port}/", tmp_path / "profile",
                                              lambda shot: badge_pixels(shot) > 2000))
        (tmp_path / "served.png").write_bytes(png)
        # the badge is ~14 x 3 cells of dodgerblue: thousands of pixels; nothing else on the screen is that colour
        assert badge_pixels(png) > 2000, f"no FREEZE badge in the browser's screenshot ({tmp_path / 'served.png'})"
    finally:
        stop_server(proc)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False


def test_a_served_console_dies_with_its_server(tmp_path):
    """A server killed outright (no graceful shutdown) leaves no console behind: the kernel kills
    each one (PR_SET_PDEATHSIG), where before one kept running on its own, spinning a core."""
    lab = init_lab(tmp_path / "lab")
    port = free_port()
    proc = serve(lab, port)
    try:
        async def connect_then_kill() -> int:
            async with aiohttp.ClientSession() as client:
                deadline = time.monotonic() + SAFETY_S
                while True:
                    try:
                        ws = await client.ws_connect(f"ws://127.0.0.1:{port}/ws?width=100&height=30")
                        break
                    except aiohttp.ClientError:
                        assert time.monotonic() < deadline and proc.poll() is None, "the server never took a websocket"
                        await asyncio.sleep(0.2)
                seen = ""
                while "ledger head seq" not in plain(seen):  # the console is up and drawing
                    assert time.monotonic() < deadline, "the console never drew"
                    try:
                        msg = await ws.receive(timeout=5)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        seen += msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                consoles = children(proc.pid)
                assert len(consoles) == 1, consoles  # the console itself (exec'd), no shell in between
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                await ws.close()
                return consoles[0]

        console = asyncio.run(connect_then_kill())
        deadline = time.monotonic() + SAFETY_S
        while alive(console):
            if time.monotonic() > deadline:
                os.kill(console, signal.SIGKILL)  # leave no orphan spinning a core behind a failure
                raise AssertionError(f"console {console} outlived its server")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
