"""`proposer.kind = "anthropic"`: Claude through the anthropic SDK's Messages API, with tool use.

One proposing step is one fresh conversation: the system prompt is the lab's `program.md` plus
the rules in force in plain words (cached, with the tool definitions, as the stable prefix); the
first message says where the lab stands and carries the agent's journal (its last one-line
lessons), so a session of hundreds of experiments keeps a bounded prompt; anything older comes
from the `history` tool. Every tool is answered by `agent_tools.ToolScope`, never by the prompt.

Each Messages call becomes one `AgentCall` (model, request id, stop reason, tokens, dollars at the
constitution's prices, latency, tool calls and refusals), which the session ledgers. Before every
call the worst case it could cost (the prompt so far, bounded by its bytes, plus
`max_tokens_per_call` output) is checked against what the session's and the day's agent budgets have left: a call that
could exceed them is not made and the step reports `out_of_budget`. 429, 5xx, overloaded and
connection errors are retried with bounded exponential backoff, each attempt ledgered; every
other failure (an error status, an empty or refused answer, no `submit` within `max_turns`) ends
the step as a recorded failure, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import anthropic

from constitution import Constitution
from controller.proposers import brief
from controller.proposers.agent_tools import TOOLS, AmendmentRequest, ToolScope
from controller.proposers.base import AgentUsage, ProposalContext, ProposerResult
from controller.proposers.registry import ProposerError, ProposerOptions

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
JOURNAL_LINES = 12
BACKOFF_CAP_S = 30.0
CALL_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Attempt:
    """What one Messages request came back with: a reply, or the error that ended it."""

    message: Any | None
    usage: AgentUsage
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None


class AnthropicProposer:
    name = "anthropic"

    def __init__(self, rules: Constitution, client: anthropic.Anthropic, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.rules, self.client, self.backoff_s, self.sleep = rules, client, backoff_s, sleep
        self.model = rules.proposer.model
        self.amendment_requests: list[AmendmentRequest] = []  # filed by `charter run` when the session ends
        self.tools = [dict(t) for t in TOOLS]
        self.tools[-1] = dict(self.tools[-1], cache_control={"type": "ephemeral"})

    # -- one proposing step ---------------------------------------------------------------------
    def propose(self, ctx: ProposalContext) -> ProposerResult:
        calls: list[AgentUsage] = []
        scope = ToolScope(ctx, list(self.rules.proposer.readable))
        try:
            return self._propose(ctx, calls, scope)
        except Exception as e:  # whatever breaks, the calls made so far are still ledgered and paid for
            return ProposerResult(None, calls=tuple(calls), failure=f"the agent step broke: {type(e).__name__}: {brief.clean(str(e), 200)}")
        finally:
            self.amendment_requests += scope.amendments

    def _propose(self, ctx: ProposalContext, calls: list[AgentUsage], scope: ToolScope) -> ProposerResult:
        p = self.rules.proposer
        system = [{"type": "text", "text": brief.system_prompt(ctx.readable.get("program.md", ""), self.rules),
                   "cache_control": {"type": "ephemeral"}}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": first_message(ctx, self.rules)}]
        sent = None  # messages the last answered request carried
        for _ in range(p.max_turns):
            over = self._over_budget(ctx, calls, system, messages, sent)
            if over:
                return ProposerResult(None, calls=tuple(calls), out_of_budget=over)
            if ctx.deadline is not None and time.time() > ctx.deadline - 5:
                return ProposerResult(None, calls=tuple(calls), failure="the proposing deadline came before the agent submitted")
            reply, failure = self._call(ctx, system, messages, calls)
            if reply is None:
                return ProposerResult(None, calls=tuple(calls), failure=failure)
            sent = len(messages)
            content = [block.model_dump(exclude_none=True) for block in reply.content]
            uses = [b for b in reply.content if getattr(b, "type", "") == "tool_use"]
            if reply.stop_reason == "refusal":
                return ProposerResult(None, calls=tuple(calls), failure="the model refused to answer")
            messages.append({"role": "assistant", "content": content or [{"type": "text", "text": "(empty)"}]})
            results = []
            for use in uses:
                before = len(scope.refusals)
                text, is_error = scope.call(use.name, use.input)
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": text, "is_error": is_error})
                calls[-1] = _with_tools(calls[-1], scope.refusals[before:])
                if scope.submitted is not None:
                    return ProposerResult(dataclasses.replace(scope.submitted, source=f"anthropic:{self.model}"), calls=tuple(calls))
            if not results:  # an answer without tool use: remind, once per turn, that only submit ends it
                results = [{"type": "text", "text": "Use the tools: edit an editable file, then call submit."}]
            messages.append({"role": "user", "content": results})
        return ProposerResult(None, calls=tuple(calls),
                              failure=f"the agent did not call submit within proposer.max_turns = {p.max_turns}")

    def _call(self, ctx: ProposalContext, system, messages, calls: list[AgentUsage]) -> tuple[Any | None, str]:
        """One Messages call with bounded retries; every attempt is appended to `calls`."""
        retries = self.rules.proposer.retries
        for attempt_no in range(retries + 1):
            attempt = self._attempt(ctx, system, messages)
            calls.append(attempt.usage)
            if attempt.message is not None:
                if not attempt.message.content and attempt.message.stop_reason != "refusal":
                    return None, "the model returned an empty answer"
                return attempt.message, ""
            if not attempt.retryable or attempt_no == retries:
                tail = f" after {attempt_no + 1} attempts" if attempt.retryable else ""
                return None, f"the Messages API failed{tail}: {attempt.error}"
            wait = min(BACKOFF_CAP_S, self.backoff_s * 2 ** attempt_no) * (0.5 + random.random() / 2)
            if attempt.retry_after is not None:
                wait = min(BACKOFF_CAP_S, max(wait, attempt.retry_after))
            if ctx.deadline is not None and time.time() + wait > ctx.deadline - 5:
                return None, f"the Messages API failed and the deadline leaves no time to retry: {attempt.error}"
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, ctx: ProposalContext, system, messages) -> Attempt:
        p = self.rules.proposer
        # the call must end before the step's deadline, with room to return its result
        timeout = CALL_TIMEOUT_S if ctx.deadline is None else max(1.0, min(CALL_TIMEOUT_S, ctx.deadline - time.time() - 5))
        started = time.perf_counter()
        try:
            reply = self.client.messages.create(model=self.model, max_tokens=p.max_tokens_per_call, system=system,
                                                tools=self.tools, messages=_cache_last_turn(messages), timeout=timeout)
        except anthropic.APIStatusError as e:
            kind, message = _error_body(e)
            retry = e.status_code in RETRYABLE_STATUS or kind == "overloaded_error"
            return Attempt(None, self._usage(None, started, f"error: {e.status_code} {kind}".strip(), _request_id(e)),
                           retry, f"{e.status_code} {kind}: {brief.clean(message, 200)}", _retry_after(e))
        except anthropic.APIConnectionError as e:  # timeouts included
            what = "timeout" if isinstance(e, anthropic.APITimeoutError) else "connection error"
            return Attempt(None, self._usage(None, started, f"error: {what}"), True, f"{what}: {brief.clean(str(e), 200)}")
        except (anthropic.AnthropicError, ValueError, TypeError) as e:  # an answer the SDK could not read
            return Attempt(None, self._usage(None, started, "error: unreadable answer"), False,
                           f"unreadable answer ({type(e).__name__}: {brief.clean(str(e), 200)})")
        uses = sum(getattr(b, "type", "") == "tool_use" for b in reply.content or [])
        return Attempt(reply, self._usage(reply, started, str(reply.stop_reason or ""), getattr(reply, "_request_id", None) or "", uses))

    def _usage(self, reply, started: float, stop: str, request_id: str = "", tool_calls: int = 0) -> AgentUsage:
        u = getattr(reply, "usage", None)
        counts = [max(0, int(getattr(u, k, 0) or 0)) for k in
                  ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
        seconds = time.perf_counter() - started
        return AgentUsage(model=self.model, calls=1, input_tokens=counts[0], output_tokens=counts[1],
                          cache_read_tokens=counts[2], cache_write_tokens=counts[3],
                          dollars=round(self.rules.proposer.prices.dollars(*counts), 8), seconds=round(seconds, 4),
                          request_id=request_id or "", stop_reason=stop[:80], latency_ms=round(seconds * 1000, 2),
                          tool_calls=tool_calls)

    def _over_budget(self, ctx: ProposalContext, calls: list[AgentUsage], system, messages, sent: int | None) -> str | None:
        """The budget the next call could exceed in the worst case, or None. The prompt's tokens
        are bounded by its UTF-8 bytes (no token is shorter than a byte): the whole request's before
        the first answer, then the last answer's reported input plus the bytes added since."""
        if ctx.budget is None:
            return None
        prices, out = self.rules.proposer.prices, self.rules.proposer.max_tokens_per_call
        answered = [c for c in calls if c.request_id and not c.stop_reason.startswith("error")]
        if answered and sent is not None:
            last = answered[-1]
            prompt = (last.input_tokens + last.cache_read_tokens + last.cache_write_tokens + last.output_tokens
                      + len(json.dumps(messages[sent:]).encode()))
        else:
            prompt = len(json.dumps([system, self.tools, messages]).encode())
        spent_tokens = sum(c.input_tokens + c.output_tokens + c.cache_read_tokens + c.cache_write_tokens for c in calls)
        if spent_tokens + prompt + out > ctx.budget.tokens:
            return "agent_tokens"
        worst = prices.dollars(0, out) + prompt * max(prices.dollars(1, 0), prices.dollars(0, 0, 0, 1))
        if sum(c.dollars for c in calls) + worst > ctx.budget.dollars:
            return "agent_dollars"
        return None


def first_message(ctx: ProposalContext, rules: Constitution) -> str:
    """Where the lab stands, the last few results and the agent's journal: bounded, whatever the
    length of the session."""
    items = list(ctx.lab_history) + list(ctx.history)
    recent = brief.history_records(ctx, 5)
    journal = [brief.clean(i.lesson) for i in items if i.lesson][-JOURNAL_LINES:]
    best = "none yet" if ctx.best_bpb is None else f"{ctx.best_bpb:.4f}"
    lines = [f"Experiment {ctx.experiment} of this session ({len(items)} experiments in this lab so far). "
             f"Best {rules.evaluation.metric}: {best}.",
             f"Editable: {', '.join(ctx.editable)}. Read them, make one change, then call submit.",
             "", "The last results (more with the history tool):", json.dumps(recent, indent=None)]
    if journal:
        lines += ["", "Your journal (your own one-line lessons, oldest first):"] + [f"- {j}" for j in journal]
    return "\n".join(lines) + brief.in_flight_note(ctx)


def _with_tools(call: AgentUsage, refusals: list[str]) -> AgentUsage:
    return dataclasses.replace(call, tool_errors=call.tool_errors + len(refusals), tool_refusals=list(call.tool_refusals) + refusals)


def _cache_last_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with a cache breakpoint on the last block, so the next turn reads the
    transcript so far from the cache (the system prompt and the tools hold the other two)."""
    last = dict(messages[-1])
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else [dict(b) for b in content]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return messages[:-1] + [dict(last, content=blocks)]


def _error_body(e: anthropic.APIStatusError) -> tuple[str, str]:
    """The error's type and message, from the API's JSON body when it sent one."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(err.get("type") or "")[:60], str(err.get("message") or e.message or "")


def _request_id(e: anthropic.APIStatusError) -> str:
    try:
        return str(e.response.headers.get("request-id") or "")[:120]
    except AttributeError:
        return ""


def _retry_after(e: anthropic.APIStatusError) -> float | None:
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def build(options: ProposerOptions) -> AnthropicProposer:
    if not options.rules.proposer.model:
        raise ProposerError("proposer kind 'anthropic' needs proposer.model (charter init --proposer anthropic --model MODEL)")
    key = os.environ.get("ANTHROPIC_API_KEY", "")
    if not key:
        raise ProposerError("proposer kind 'anthropic' needs ANTHROPIC_API_KEY in the environment")
    client = anthropic.Anthropic(api_key=key, base_url=os.environ.get("ANTHROPIC_BASE_URL") or None, max_retries=0)
    return AnthropicProposer(options.rules, client)
