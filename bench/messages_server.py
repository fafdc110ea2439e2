"""A local stand-in for the Anthropic Messages API, for tests, benchmarks and the docs' demo.

It speaks `POST /v1/messages` over real HTTP (stdlib `http.server`), so the real `anthropic` SDK
talks to it unchanged through `ANTHROPIC_BASE_URL`. Replies come from a script: a list of steps,
each a reply (content blocks and a stop reason) or an error (status and error type), taken in
order; when the list is empty, the built-in `lr_agent` answers: it reads train.py, scales
LEARNING_RATE by the next of its factors with `edit_file`, and submits. Usage is computed from
the request and reply sizes (about 4 characters a token) and reported the way the API does
(`input_tokens` excludes cached tokens; the system prompt and tools count as a cache write on
the first request and a cache read after). Every request is kept in `requests`.

    python bench/messages_server.py --port 8765    # then ANTHROPIC_BASE_URL=http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

LR_FACTORS = (3.0, 0.5, 2.0, 0.7, 1.5)


def tool_use(name: str, **arguments: Any) -> dict:
    return {"type": "tool_use", "name": name, "input": arguments}


def reply(*blocks: dict, stop_reason: str | None = None) -> dict:
    return {"content": list(blocks), "stop_reason": stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn")}


def error(status: int, kind: str, message: str = "scripted error", retry_after: float | None = None) -> dict:
    return {"error": {"status": status, "type": kind, "message": message, "retry_after": retry_after}}


def _last_tool_results(body: dict) -> list[dict]:
    last = body["messages"][-1]
    content = last.get("content")
    return [c for c in content if isinstance(c, dict) and c.get("type") == "tool_result"] if isinstance(content, list) else []


def _previous_tool(body: dict) -> str | None:
    if len(body["messages"]) < 2:
        return None
    prev = body["messages"][-2].get("content")
    uses = [c for c in prev if isinstance(c, dict) and c.get("type") == "tool_use"] if isinstance(prev, list) else []
    return uses[-1]["name"] if uses else None


def lr_agent(body: dict, proposal_index: int) -> dict:
    """A tiny deterministic agent: read train.py, scale its learning rate, submit."""
    tool = _previous_tool(body)
    results = _last_tool_results(body)
    if tool is None:
        return reply({"type": "text", "text": "Reading the training script."}, tool_use("read_file", path="train.py"))
    if tool == "read_file":
        text = str(results[0].get("content", "")) if results else ""
        m = re.search(r"^LEARNING_RATE = [^\n#]*", text, flags=re.M)
        if not m:
            return reply(tool_use("submit", description="nothing to change", hypothesis="none"))
        factor = LR_FACTORS[proposal_index % len(LR_FACTORS)]
        old = m.group(0)
        value = float(old.split("=", 1)[1])
        new = f"LEARNING_RATE = {value * factor:.3g} "
        return reply(tool_use("edit_file", path="train.py", old_text=old, new_text=new))
    if tool == "edit_file":
        factor = LR_FACTORS[proposal_index % len(LR_FACTORS)]
        return reply(tool_use("submit", description=f"learning rate x{factor:g}",
                              hypothesis="the step size limits progress in a short budget",
                              lesson=f"trying learning rate x{factor:g}"))
    return reply(tool_use("list_files"))


class MessagesServer:
    """`with MessagesServer(script) as server:` serves on 127.0.0.1 at `server.url`."""

    def __init__(self, script: list[dict] | None = None, policy: Callable[[dict, int], dict] = lr_agent,
                 port: int = 0, input_scale: float = 0.25):
        self.script = list(script or [])
        self.policy = policy
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.replies: list[dict] = []  # what each 200 answer reported (usage included)
        self.input_scale = input_scale
        self._lock = threading.Lock()
        self._cached: set[str] = set()
        self._proposals = 0
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "MessagesServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, body: dict) -> tuple[int, dict, dict]:
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            first_turn = len(body.get("messages", [])) == 1
            step = self.script.pop(0) if self.script else self.policy(body, self._proposals - (not first_turn))
            if "error" in step:
                e = step["error"]
                headers = {"retry-after": str(e["retry_after"])} if e.get("retry_after") is not None else {}
                return e["status"], {"type": "error", "error": {"type": e["type"], "message": e["message"]}}, headers
            if "raw" in step:  # a malformed body, sent as is
                return 200, step["raw"], {}
            content = []
            for i, block in enumerate(step["content"]):
                block = dict(block)
                if block["type"] == "tool_use":
                    block.setdefault("id", f"toolu_{n:04d}_{i}")
                content.append(block)
            prefix = json.dumps([body.get("system"), body.get("tools")])
            prefix_tokens = int(len(prefix) * self.input_scale)
            rest_tokens = int(len(json.dumps(body.get("messages"))) * self.input_scale) + 1
            cached = prefix in self._cached
            self._cached.add(prefix)
            usage = {"input_tokens": rest_tokens, "output_tokens": int(len(json.dumps(content)) * 0.25) + 1,
                     "cache_read_input_tokens": prefix_tokens if cached else 0,
                     "cache_creation_input_tokens": 0 if cached else prefix_tokens}
            message = {"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": body.get("model", ""),
                       "content": content, "stop_reason": step.get("stop_reason", "end_turn"), "stop_sequence": None,
                       "usage": usage}
            self.replies.append(message)
            self._proposals += first_turn  # conversations answered: the policy's proposal index
            return 200, message, {}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad JSON"}}, {})
                    return
                if not self.path.startswith("/v1/messages"):
                    self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}, {})
                    return
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, payload, headers = server._answer(body)
                self._send(status, payload, headers)

            def _send(self, status: int, payload: Any, headers: dict) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("request-id", f"req_{len(server.requests):04d}")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    with MessagesServer(port=args.port) as server:
        print(f"scripted Messages API at {server.url} (ANTHROPIC_BASE_URL={server.url}); Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
