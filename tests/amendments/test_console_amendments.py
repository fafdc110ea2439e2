"""The console's amendments tab on a real lab whose ledger holds a real proposal, a signed
ratification and a refused attempt: it shows who must still ratify, by the amendments package's
own rules (a refused attempt never counts), read-only."""

from __future__ import annotations

import asyncio
import time

from test_process import propose, ratify
from tui.app import CharterApp
from tui.feed import Source

SAFETY_S = 30


def test_the_amendments_tab_says_who_must_still_ratify(lab, charter, keys):
    aid = propose(charter, lab, "evaluation.eval_tokens=8192", why="more eval tokens")  # constitutional: 2 needed
    assert ratify(charter, lab, aid, "alice", keys["alice"].private).code == 0
    assert ratify(charter, lab, aid, "mallory", keys["mallory"].private).code == 1  # not listed: refused, ledgered

    async def go():
        app = CharterApp(lab, "alice", refresh_s=0.2)
        async with app.run_test(size=(200, 50)) as pilot:
            deadline = time.monotonic() + SAFETY_S
            table = app.query_one("#amendments")
            while not (app.source == Source.LEDGER and table.row_count):
                assert time.monotonic() < deadline, "the amendments tab never filled"
                await pilot.pause(0.05)
            return [str(c) for c in table.get_row_at(0)]

    row = asyncio.run(go())
    columns = ["id", "status", "tier", "version", "proposed by", "ratified by", "must still ratify", "why"]
    got = dict(zip(columns, row))
    assert got["id"] == aid[:12] and got["status"] == "pending" and got["tier"] == "constitutional"
    assert got["proposed by"] == "carol" and got["ratified by"] == "alice"  # mallory's refused attempt is not counted
    assert got["must still ratify"] == "1 more of: bob"
    assert got["why"] == "more eval tokens"
