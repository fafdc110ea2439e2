"""What the controller adds to each agent turn, and how big a proposal's prompt gets.

Overhead: a proposing step of the real `AnthropicProposer` against the local scripted Messages
server (`bench/messages_server.py`, answering at once), the real SDK over real HTTP, each turn's
tool dispatched by the real `ToolScope` on a scratch copy of train.py, and each call ledgered as
an `agent_call` event in a real DuckDB ledger. Per turn it reports the whole turn (request,
answer, tool) and the controller's share: the turn minus the server's own handling time and the
SDK's HTTP round trip, measured by the same SDK call on an empty reply. Target: the controller's
share at most 20 ms median per turn.

Prompt size: the first request of a proposal (system prompt, tools, first message) at experiment
1 and at experiment 200 of a lab whose history holds that many experiments with journal lines:
the agent's memory is bounded, so the two should be close.

    python bench/agent_overhead.py [--turns 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import anthropic  # noqa: E402

import constitution  # noqa: E402
from controller.proposers import AgentBudget, HistoryItem, ProposalContext  # noqa: E402
from controller.proposers.agent_tools import ToolScope  # noqa: E402
from controller.proposers.anthropic_agent import AnthropicProposer, first_message  # noqa: E402
from controller.proposers.brief import system_prompt  # noqa: E402
from ledger import Ledger  # noqa: E402
from ledger.record import Draft  # noqa: E402
from messages_server import MessagesServer, reply, tool_use  # noqa: E402


def rules() -> constitution.Constitution:
    text = constitution.default_text().replace('kind = "offline"', 'kind = "anthropic"').replace('model = ""', 'model = "bench-model"')
    return constitution.parse_text(text.replace("max_turns = 20 ", "max_turns = 500 "))


def context(work: Path, history: list[HistoryItem], n: int) -> ProposalContext:
    train = (REPO / "trainer" / "train.py").read_text()
    (work / "train.py").write_text(train)
    readable = {p: (REPO / "trainer" / p).read_text() for p in ("program.md", "prepare.py")}
    return ProposalContext(work, ["train.py"], {"train.py": train}, history, 2.6, n, time.time() + 3600,
                           AgentBudget(10**9, 10**6), readable=readable)


def turn_times(turns: int) -> dict:
    """Per-turn wall ms of a step of `turns` list_files calls ending in an edit and a submit, and
    per-call ms of the same SDK request answered with no tool (the round trip alone)."""
    r = rules()
    script = [reply(tool_use("list_files")) for _ in range(turns)]
    script += [reply(tool_use("edit_file", path="train.py", old_text="SEED = 42", new_text="SEED = 43")),
               reply(tool_use("submit", description="seed", hypothesis="none"))]
    with tempfile.TemporaryDirectory() as tmp, MessagesServer(script) as server, \
            Ledger.open(Path(tmp) / "ledger.duckdb") as led:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        proposer = AnthropicProposer(r, client)
        ctx = context(Path(tmp), [], 1)
        t0 = time.perf_counter()
        result = proposer.propose(ctx)
        step_s = time.perf_counter() - t0
        led.append_many([Draft(result.calls[0].KIND, "agent:bench-model", "bench", result.calls[0].to_json(), 0)])  # warm
        t1 = time.perf_counter()
        # what the session does with them: one transaction for the step's calls
        led.append_many(Draft(c.KIND, "agent:bench-model", "bench", c.to_json(), 1) for c in result.calls)
        ledger_ms = (time.perf_counter() - t1) * 1000 / len(result.calls)
        assert result.proposal is not None, result.failure
        # the bare round trip: the same SDK request, the server answering a text block
        bare = []
        msgs = [{"role": "user", "content": "hi"}]
        system = [{"type": "text", "text": system_prompt(ctx.readable["program.md"], r), "cache_control": {"type": "ephemeral"}}]
        for _ in range(min(turns, 100)):
            server.script.append(reply({"type": "text", "text": "ok"}))
            s = time.perf_counter()
            client.messages.create(model="bench-model", max_tokens=16, system=system, tools=proposer.tools, messages=msgs)
            bare.append((time.perf_counter() - s) * 1000)
        # tool dispatch alone
        scope = ToolScope(ctx, ["program.md", "prepare.py"])
        s = time.perf_counter()
        for _ in range(turns):
            scope.call("read_file", {"path": "train.py"})
        dispatch_ms = (time.perf_counter() - s) * 1000 / turns
    turns_done = len(result.calls)
    turn_ms = step_s * 1000 / turns_done
    return {"turns": turns_done, "turn_ms": turn_ms, "bare_call_ms": statistics.median(bare),
            "controller_ms": turn_ms - statistics.median(bare) + ledger_ms, "dispatch_ms": dispatch_ms,
            "ledger_ms": ledger_ms}


def prompt_sizes() -> dict:
    r = rules()

    def item(i: int) -> HistoryItem:
        return HistoryItem(f"change {i}: learning rate x1.{i % 9}", "discard", 2.6 - i / 1e4, "agent", None, -0.01,
                           reason="discarded: its run improved by -0.0100; required 0.0600 (95% one-sided)",
                           experiment=i, lesson=f"after {i} experiments: the rate is near its best")

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 200):
            ctx = context(Path(tmp), [item(i) for i in range(1, n)], n)
            system = system_prompt(ctx.readable["program.md"], r)
            first = first_message(ctx, r)
            out[n] = {"system_chars": len(system), "first_message_chars": len(first),
                      "request_chars": len(json.dumps([system, first]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rounds = [turn_times(args.turns) for _ in range(args.rounds)]
    keys = ("turn_ms", "bare_call_ms", "controller_ms", "dispatch_ms", "ledger_ms")
    print(f"{args.rounds} rounds of a {args.turns + 2}-turn proposing step (median of rounds [min, max]):\n")
    print("| per turn | ms |\n|---|---:|")
    for k in keys:
        xs = [r[k] for r in rounds]
        print(f"| {k} | {statistics.median(xs):.2f} [{min(xs):.2f}, {max(xs):.2f}] |")
    sizes = prompt_sizes()
    print("\n| experiment | system prompt chars | first message chars | first request chars |\n|---|---:|---:|---:|")
    for n, s in sizes.items():
        print(f"| {n} | {s['system_chars']} | {s['first_message_chars']} | {s['request_chars']} |")


if __name__ == "__main__":
    main()
