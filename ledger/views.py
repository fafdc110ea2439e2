"""The auditor's views of the ledger: sessions, experiments, refusals, gate transitions, budgets
and constitutions, as DuckDB TEMP views over the `events` table.

`install_views(con)` (re)creates them on any connection to a ledger file: a read-only one
(`ledger.query.open_readonly`) or a cursor of the controller's live connection. TEMP views live
in the connection's own temporary catalog, so they write nothing to the file, work on a
read-only database, and are invisible to every other connection (each cursor installs its own).
Every view is derived from events only (typed columns first, the JSON body where the payload is
needed), so what a view says can always be traced back to hash-chained events. `VIEW_DOCS`
documents every column in one sentence; `docs/auditing.md` is written from it
(`render_docs()`), and a test keeps the two and the views' real columns in step.
"""

from __future__ import annotations

import json
from typing import Any

from constitution.schema import PeriodBudget

from . import payloads as P
from .events import Decision

# Every payload key a view reads is named here, through the event contract (`ledger.payloads`):
# a key that no writer writes fails at import, so views and writers cannot drift apart.
_STARTED = P.json_shape((P.SessionStarted, ("tag", "branch", "proposer", "isolation", "constitution_hash")))
_ENDED = P.json_shape((P.SessionEnded, ("reason",)))
_STEPS = P.json_shape(
    (P.Proposed, ("description", "hypothesis", "source", "parent_commit")),
    (P.Committed, ("parent", "diff")),
    (P.TrainingFinished, ("wall_seconds", "peak_rss_mb", "run")),
    (P.Decided, ("reason", "improvement", "description", "source", "threshold", "noise_sd", "noise_df")),
)
_REFUSED = P.json_shape((P.HarmRefused, ("refusals",)))
_TRANSITION = P.json_shape((P.GateTransition, ("from_state", "to_state", "rule", "evidence", "by")))
_USAGE_SHAPE = P.json_shape(
    (P.Decided, ("repair",)),
    (P.TrainingFinished, ("wall_seconds",)),
    (P.AgentCall, ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "dollars")),
)
_BUDGET_SHAPE = json.dumps({"payload": {"rules": {"budgets": {"session": {name: "DOUBLE" for name in PeriodBudget.model_fields}}}}})
_CONSTITUTION = P.json_shape(
    (P.ConstitutionLoaded, ("version", "hash", "reason")),
    (P.LabCreated, ("constitution_version", "constitution_hash")),
    (P.AmendmentApplied, ("amendment_id",)),
)
_AMENDMENT = P.json_shape(
    (P.AmendmentProposed, ("amendment_id", "by", "why", "version", "number", "path", "parent_version", "tier", "needed")),
    (P.AmendmentRatified, ("signed", "refused", "fingerprint")),
    (P.AmendmentRejected, ("reason",)),
    (P.AmendmentApplied, ("hash",)),
)
# a run of the candidate itself: run 0 is a run of its incumbent made for its decision
_OWN = "coalesce(p.run, 1) > 0"
_RAN = ", ".join(f"'{d}'" for d in Decision.group("ran"))

VIEW_SUMMARIES: dict[str, str] = {
    "sessions": "One row per session (a `session_started` event), summarised from its events.",
    "experiments": (
        "One row per `decided` event: an experiment's proposal, commit, training, evaluation and "
        "decision, joined by (session, experiment) between the previous decision of that experiment "
        "number and this one."
    ),
    "refusals": "One row per refusal listed in a `harm_refused` event's payload.",
    "gate_transitions": "One row per `gate_transition` event.",
    "budgets": (
        "One row per (session, resource): what the session consumed against the session limit of "
        "the constitution in force for it."
    ),
    "constitutions": (
        "One row per event that put a constitution in force: `lab_created`, `constitution_loaded` "
        "and `amendment_applied`."
    ),
    "amendments": (
        "One row per proposed amendment (an `amendment_proposed` event), with its ratifications, "
        "rejection and application folded in from the later amendment events of the same id."
    ),
    "agent_calls": (
        "One row per `agent_call` event: one Messages call of an agent proposer (its retried "
        "attempts included), or one step's summed usage for a proposer that reports sums."
    ),
}

VIEW_DOCS: dict[str, dict[str, str]] = {
    "sessions": {
        "session": "Session id, as in `events.session`.",
        "started": "UTC time of the session's `session_started` event.",
        "ended": "UTC time of its last `session_ended` event; NULL while it runs or if the controller died.",
        "tag": "The run tag the session was started with.",
        "branch": "The git branch the session committed its experiments to.",
        "proposer": "Name of the proposer that suggested the session's changes.",
        "isolation": "Sandbox isolation level chosen at start (`bubblewrap` or `none`).",
        "constitution_hash": "Canonical hash of the constitution the session started under.",
        "end_reason": "Why the session ended, from its `session_ended` event; NULL if it has not ended.",
        "experiments": "Highest experiment number decided in the session (the baseline is experiment 0).",
        "keeps": "Number of `keep` decisions in the session.",
        "baseline_bpb": "val_bpb of the session's baseline (experiment 0); NULL if it crashed.",
        "best_bpb": "val_bpb of the last kept experiment, or the baseline if nothing was kept.",
        "final_gate": "The last gate state recorded by one of the session's events (its end, if it ended).",
    },
    "experiments": {
        "seq": "seq of the `decided` event.",
        "ts": "UTC time of the decision.",
        "session": "Session the experiment belongs to.",
        "experiment": "Experiment number within the session (0 = baseline; repair baselines get their own number).",
        "description": "One-line description of the change, from its `proposed` event (untrusted agent text).",
        "hypothesis": "The proposer's hypothesis, from its `proposed` event (untrusted agent text); NULL for baselines.",
        "source": "Where the proposal came from (`baseline`, `repair`, or the proposer's source label).",
        "val_bpb": "Validation bits per byte the decision used (mean of its runs); NULL if nothing was measured.",
        "decision": "baseline, keep, discard, crash, timeout, refused or interrupted.",
        "reason": "The controller's reason for the decision.",
        "parent_commit": "Commit the change was made on top of.",
        "candidate_commit": "Commit holding the change (for a baseline: the commit measured); NULL if it was never committed.",
        "diff": "Unified diff of the change, from its `committed` event (untrusted agent text); NULL if never committed.",
        "improvement": "How much the candidate improved on the incumbent's mean val_bpb (positive = better), as the keep rule computed it.",
        "threshold": "The improvement the keep rule required of it, from the noise and both sides' numbers of runs; NULL if it was never measured.",
        "noise_sd": "Run-to-run sd of val_bpb the keep rule used (the prior pooled with every repeated run of the lab).",
        "noise_df": "Degrees of freedom of that sd (the prior's plus the measured repeats').",
        "train_seconds": "Wall-clock seconds of all its training runs, from `training_finished` events "
                         "(its own: not a run of its incumbent made for its decision, run 0).",
        "eval_seconds": "Wall-clock seconds of all its evaluations, from `evaluated` events.",
        "peak_rss_mb": "Largest peak resident memory of its training runs, in MB.",
        "runs": "Number of its training runs (more than 1 when a keep was confirmed; a run of its incumbent, run 0, not counted).",
        "gate_state": "Gate state when the decision was recorded.",
    },
    "refusals": {
        "seq": "seq of the `harm_refused` event.",
        "ts": "UTC time of the refusal.",
        "session": "Session of the refused proposal.",
        "experiment": "Experiment number of the refused proposal.",
        "rule": "Harm-test rule that refused it (or `malformed` / `empty`).",
        "path": "File the offending change is in; NULL when the refusal is about the whole proposal.",
        "line": "Line of the offending change in that file; NULL when not tied to a line.",
        "evidence": "The matched text or the reason, as the harm test reported it (untrusted agent text may appear).",
        "hard": "True if it matched a hard constraint (the gate goes to STOP).",
    },
    "gate_transitions": {
        "seq": "seq of the `gate_transition` event.",
        "ts": "UTC time of the transition.",
        "session": "Session it happened in; NULL for an operator command given while no controller ran.",
        "from_state": "Gate state before (RUN, THROTTLE, FREEZE or STOP).",
        "to_state": "Gate state after.",
        "rule": "Constitution rule that fired, or `probation`, `integrity`, `operator-pause`, `operator-stop`, `operator-resume`.",
        "evidence": "The metric values or operator reason behind the transition.",
        "who": "Who made it: `controller` or `person:NAME`.",
    },
    "budgets": {
        "session": "Session id.",
        "resource": "experiments, device_seconds, wall_hours, agent_tokens, agent_dollars or disk_mb.",
        "used": "Amount consumed, summed from the session's events as the controller counts it; NULL for disk_mb, which the ledger does not record.",
        "limit": "The session limit for the resource in the constitution in force (`budgets.session`); NULL if no full constitution was recorded.",
    },
    "constitutions": {
        "seq": "seq of the event that put this constitution in force.",
        "ts": "UTC time of that event.",
        "session": "Session that loaded it; NULL for lab-level events (init, prepare, amendments).",
        "version": "The constitution's `meta.version`.",
        "hash": "Canonical hash of the constitution.",
        "reason": "Why it was recorded: lab created, loaded at session start, pins added, amendment applied.",
    },
    "amendments": {
        "seq": "seq of the `amendment_proposed` event.",
        "session": "NULL: amendments are lab-level events, made between sessions.",
        "id": "The amendment id: sha256 of the exact proposed constitution text.",
        "number": "Its number in the lab's `amendments/` folder (`NNNN-<slug>.toml`).",
        "path": "That file, relative to the lab (committed on the lab's main line).",
        "tier": "minor, major or constitutional, as classified from its diff when proposed.",
        "proposer": "Who proposed it: a person's name, or `agent:<model>` for an agent.",
        "why": "The proposer's reason.",
        "proposed": "UTC time it was proposed.",
        "parent_version": "The version in force it was proposed against.",
        "version": "The version it makes when applied.",
        "needed": "Ratifications its tier needed under the constitution in force when proposed.",
        "ratifications": "Ratifications that count (refused attempts excluded).",
        "ratified_by": "Each counting ratifier with the SHA256 fingerprint of the key that signed, or `(unsigned)`, joined by `; `.",
        "refused_ratifications": "Ratification attempts that were refused (wrong key, proposer, agent, bad signature, tampered file ...).",
        "status": "applied, rejected, ratified (enough ratifications, not applied yet) or pending.",
        "rejected_by": "Who rejected it; NULL if nobody did.",
        "rejected_why": "The rejection's reason; NULL if not rejected.",
        "applied": "UTC time it was applied; NULL if not applied.",
        "applied_version": "The constitution version it put in force; NULL if not applied.",
        "applied_hash": "Canonical hash of the constitution it put in force; NULL if not applied.",
    },
    "agent_calls": {
        "seq": "seq of the `agent_call` event.",
        "ts": "UTC time it was recorded (after the proposing step returned).",
        "session": "Session it was made in.",
        "experiment": "The experiment the agent was proposing.",
        "agent": "Who acted: `agent:<model>` (an agent is never a person's `--by`).",
        "proposer": "Proposer kind that made the call (`anthropic`, ...).",
        "model": "Model id the call asked for.",
        "calls": "Model calls this row stands for (1 for an agent proposer; a step's count for summed rows).",
        "request_id": "The API's request id (`request-id` header); empty when the request never got an answer.",
        "stop_reason": "The reply's stop reason (`tool_use`, `end_turn`, `max_tokens`, ...), or `error: ...` for a failed attempt.",
        "input_tokens": "Input tokens billed at the input price (cached tokens not included, as the API reports).",
        "output_tokens": "Output tokens.",
        "cache_read_tokens": "Input tokens read from the prompt cache.",
        "cache_write_tokens": "Input tokens written to the prompt cache.",
        "dollars": "The call's cost at the constitution's prices (`proposer.prices`).",
        "latency_ms": "Milliseconds from the request to its answer (or failure).",
        "tool_calls": "Tool uses the reply asked for.",
        "tool_errors": "Of those, the ones refused by the tool scope or malformed.",
        "tool_refusals": "One line per refused tool call (`tool(path): why`), joined by `; `.",
    },
}

# --- the SQL ----------------------------------------------------------------------------------
# Bodies are canonical JSON; `from_json(body, shape)` parses one body once into a typed struct
# (absent keys and values of the wrong type become NULL). Filters on the typed `kind` column come
# first so only the events a view needs are parsed.

_SESSIONS = f"""
CREATE OR REPLACE TEMP VIEW sessions AS
WITH started AS (
    SELECT session, seq, ts, from_json(body, '{_STARTED}').payload AS p
    FROM events
    WHERE kind = 'session_started'
), ended AS (
    SELECT session, max(ts) AS ended,
           arg_max(from_json(body, '{_ENDED}').payload.reason, seq) AS end_reason
    FROM events
    WHERE kind = 'session_ended'
    GROUP BY session
), decided AS (
    SELECT session,
           max(experiment) AS experiments,
           count(*) FILTER (WHERE decision = 'keep') AS keeps,
           arg_min(val_bpb, seq) FILTER (WHERE decision = 'baseline' AND experiment = 0) AS baseline_bpb,
           arg_max(val_bpb, seq) FILTER (WHERE decision = 'keep') AS last_keep_bpb
    FROM events
    WHERE kind = 'decided'
    GROUP BY session
), gate AS (
    SELECT session, arg_max(gate_state, seq) AS final_gate
    FROM events
    WHERE gate_state IS NOT NULL AND session IS NOT NULL
    GROUP BY session
)
SELECT s.session, s.ts AS started, e.ended, s.p.tag AS tag, s.p.branch AS branch,
       s.p.proposer AS proposer, s.p.isolation AS isolation, s.p.constitution_hash AS constitution_hash,
       e.end_reason, coalesce(d.experiments, 0) AS experiments, coalesce(d.keeps, 0) AS keeps,
       d.baseline_bpb, coalesce(d.last_keep_bpb, d.baseline_bpb) AS best_bpb, g.final_gate
FROM started s
LEFT JOIN ended e USING (session)
LEFT JOIN decided d USING (session)
LEFT JOIN gate g USING (session)
ORDER BY s.seq
"""

_EXPERIMENTS = f"""
CREATE OR REPLACE TEMP VIEW experiments AS
WITH steps AS (
    SELECT seq, ts, session, experiment, kind, decision, val_bpb, gate_state, commit_sha, body,
           min(CASE WHEN kind = 'decided' THEN seq END) OVER (
               PARTITION BY session, experiment ORDER BY seq
               ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS decided_seq
    FROM events
    WHERE kind IN ('proposed', 'committed', 'training_finished', 'evaluated', 'decided')
      AND experiment IS NOT NULL
), parsed AS (
    SELECT *,
           from_json(body, '{_STEPS}').payload AS p
    FROM steps
    WHERE decided_seq IS NOT NULL
)
SELECT decided_seq AS seq,
       max(ts) FILTER (WHERE kind = 'decided') AS ts,
       session,
       experiment,
       coalesce(nullif(arg_max(p.description, seq) FILTER (WHERE kind = 'proposed'), ''),
                arg_max(p.description, seq) FILTER (WHERE kind = 'decided')) AS description,
       nullif(arg_max(p.hypothesis, seq) FILTER (WHERE kind = 'proposed'), '') AS hypothesis,
       coalesce(nullif(arg_max(p.source, seq) FILTER (WHERE kind = 'proposed'), ''),
                arg_max(p.source, seq) FILTER (WHERE kind = 'decided')) AS source,
       arg_max(val_bpb, seq) FILTER (WHERE kind = 'decided') AS val_bpb,
       arg_max(decision, seq) FILTER (WHERE kind = 'decided') AS decision,
       arg_max(p.reason, seq) FILTER (WHERE kind = 'decided') AS reason,
       coalesce(nullif(arg_max(p.parent_commit, seq) FILTER (WHERE kind = 'proposed'), ''),
                arg_max(p.parent, seq) FILTER (WHERE kind = 'committed')) AS parent_commit,
       coalesce(arg_max(commit_sha, seq) FILTER (WHERE kind = 'committed'),
                arg_max(commit_sha, seq) FILTER (WHERE kind = 'decided' AND decision = 'baseline')) AS candidate_commit,
       arg_max(p.diff, seq) FILTER (WHERE kind = 'committed') AS diff,
       arg_max(p.improvement, seq) FILTER (WHERE kind = 'decided') AS improvement,
       arg_max(p.threshold, seq) FILTER (WHERE kind = 'decided') AS threshold,
       arg_max(p.noise_sd, seq) FILTER (WHERE kind = 'decided') AS noise_sd,
       arg_max(p.noise_df, seq) FILTER (WHERE kind = 'decided') AS noise_df,
       sum(p.wall_seconds) FILTER (WHERE kind = 'training_finished' AND {_OWN}) AS train_seconds,
       sum(p.wall_seconds) FILTER (WHERE kind = 'evaluated' AND {_OWN}) AS eval_seconds,
       max(p.peak_rss_mb) FILTER (WHERE kind = 'training_finished' AND {_OWN}) AS peak_rss_mb,
       count(*) FILTER (WHERE kind = 'training_finished' AND {_OWN}) AS runs,
       arg_max(gate_state, seq) FILTER (WHERE kind = 'decided') AS gate_state
FROM parsed
GROUP BY decided_seq, session, experiment
ORDER BY seq
"""

_REFUSALS = f"""
CREATE OR REPLACE TEMP VIEW refusals AS
SELECT seq, ts, session, experiment,
       r.rule AS rule, r.path AS path, r.line AS line, r.evidence AS evidence,
       coalesce(r.hard, false) AS hard
FROM (
    SELECT seq, ts, session, experiment,
           unnest(from_json(body, '{_REFUSED}').payload.refusals) AS r
    FROM events
    WHERE kind = 'harm_refused'
)
"""

_GATE_TRANSITIONS = f"""
CREATE OR REPLACE TEMP VIEW gate_transitions AS
SELECT seq, ts, session,
       p."from" AS from_state,
       coalesce(nullif(p."to", ''), gate_state) AS to_state,
       coalesce(nullif(p.rule, ''), rule) AS rule,
       p.evidence AS evidence,
       coalesce(nullif(p.by, ''), actor) AS who
FROM (
    SELECT seq, ts, session, gate_state, rule, actor,
           from_json(body, '{_TRANSITION}').payload AS p
    FROM events
    WHERE kind = 'gate_transition'
)
"""

# Usage is counted exactly as controller.policy.budgets.usage_from_events does (a contract test
# holds them together): experiments = decisions that ran (Decision.group("ran"), repair runs
# excluded); device seconds = training plus evaluation wall seconds; agent tokens = every token of
# every agent call, cached ones included; wall hours from the session's start to its end (or now).

_BUDGETS = f"""
CREATE OR REPLACE TEMP VIEW budgets AS
WITH parsed AS (
    SELECT session, seq, ts, kind, decision, body,
           from_json(body, '{_USAGE_SHAPE}').payload AS p
    FROM events
    WHERE session IS NOT NULL
      AND kind IN ('session_started', 'session_ended', 'decided', 'training_finished', 'evaluated', 'agent_call',
                   'constitution_loaded')
), usage AS (
    SELECT session,
           min(seq) FILTER (WHERE kind = 'session_started') AS start_seq,
           min(ts) FILTER (WHERE kind = 'session_started') AS started,
           max(ts) FILTER (WHERE kind = 'session_ended') AS ended,
           count(*) FILTER (WHERE kind = 'decided' AND decision IN ({_RAN})
                            AND NOT coalesce(p.repair, false)) AS experiments,
           coalesce(sum(p.wall_seconds) FILTER (WHERE kind IN ('training_finished', 'evaluated')), 0) AS device_seconds,
           coalesce(sum(coalesce(p.input_tokens, 0) + coalesce(p.output_tokens, 0) + coalesce(p.cache_read_tokens, 0)
                        + coalesce(p.cache_write_tokens, 0)) FILTER (WHERE kind = 'agent_call'), 0) AS agent_tokens,
           coalesce(sum(p.dollars) FILTER (WHERE kind = 'agent_call'), 0) AS agent_dollars,
           arg_max(body, seq) FILTER (WHERE kind = 'constitution_loaded' AND strpos(body, '"rules":') > 0) AS own_body
    FROM parsed
    GROUP BY session
    HAVING start_seq IS NOT NULL
), full_loads AS (
    SELECT seq, from_json(body, '{_BUDGET_SHAPE}').payload.rules.budgets.session AS lim
    FROM events
    WHERE kind = 'constitution_loaded' AND session IS NULL AND strpos(body, '"rules":') > 0
), wide AS (
    -- the constitution in force: the session's own latest full `constitution_loaded`, else the
    -- latest full one recorded outside any session before the session started
    SELECT u.*, coalesce(from_json(u.own_body, '{_BUDGET_SHAPE}').payload.rules.budgets.session, f.lim) AS lim,
           (epoch_us(coalesce(u.ended, make_timestamp(epoch_us(now())))) - epoch_us(u.started)) / 3.6e9 AS wall_hours
    FROM usage u
    ASOF LEFT JOIN full_loads f ON u.start_seq > f.seq
)
SELECT session, r.resource AS resource, r.used AS used, r."limit" AS "limit"
FROM (
    SELECT session, unnest([
        {{'resource': 'experiments', 'used': CAST(experiments AS DOUBLE), 'limit': lim.experiments}},
        {{'resource': 'device_seconds', 'used': device_seconds, 'limit': lim.device_seconds}},
        {{'resource': 'wall_hours', 'used': wall_hours, 'limit': lim.wall_hours}},
        {{'resource': 'agent_tokens', 'used': agent_tokens, 'limit': lim.agent_tokens}},
        {{'resource': 'agent_dollars', 'used': agent_dollars, 'limit': lim.agent_dollars}},
        {{'resource': 'disk_mb', 'used': CAST(NULL AS DOUBLE), 'limit': lim.disk_mb}}
    ]) AS r
    FROM wide
)
"""

_AGENT_CALL = P.json_shape((P.AgentCall, (
    "proposer", "model", "calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "dollars", "seconds", "request_id", "stop_reason", "latency_ms", "tool_calls", "tool_errors", "tool_refusals")))

_AGENT_CALLS = f"""
CREATE OR REPLACE TEMP VIEW agent_calls AS
SELECT seq, ts, session, experiment, actor AS agent, p.proposer AS proposer, p.model AS model,
       CAST(p.calls AS BIGINT) AS calls, p.request_id AS request_id, p.stop_reason AS stop_reason,
       CAST(p.input_tokens AS BIGINT) AS input_tokens, CAST(p.output_tokens AS BIGINT) AS output_tokens,
       CAST(p.cache_read_tokens AS BIGINT) AS cache_read_tokens, CAST(p.cache_write_tokens AS BIGINT) AS cache_write_tokens,
       p.dollars AS dollars,
       coalesce(nullif(p.latency_ms, 0), p.seconds * 1000) AS latency_ms,
       CAST(p.tool_calls AS BIGINT) AS tool_calls, CAST(p.tool_errors AS BIGINT) AS tool_errors,
       array_to_string(p.tool_refusals, '; ') AS tool_refusals
FROM (
    SELECT seq, ts, session, experiment, actor, from_json(body, '{_AGENT_CALL}').payload AS p
    FROM events
    WHERE kind = 'agent_call'
)
"""

_CONSTITUTIONS = f"""
CREATE OR REPLACE TEMP VIEW constitutions AS
SELECT seq, ts, session,
       CAST(coalesce(nullif(p.version, 0), p.constitution_version) AS BIGINT) AS version,
       coalesce(nullif(p.hash, ''), p.constitution_hash) AS hash,
       CASE kind
           WHEN 'lab_created' THEN 'lab created'
           WHEN 'amendment_applied' THEN coalesce('amendment applied: ' || p.amendment_id, 'amendment applied')
           ELSE coalesce(nullif(p.reason, ''), CASE WHEN session IS NOT NULL THEN 'loaded at session start' ELSE 'loaded' END)
       END AS reason
FROM (
    SELECT seq, ts, session, kind,
           from_json(body, '{_CONSTITUTION}').payload AS p
    FROM events
    WHERE kind IN ('lab_created', 'constitution_loaded', 'amendment_applied')
)
"""

_AMENDMENTS = f"""
CREATE OR REPLACE TEMP VIEW amendments AS
WITH ev AS (
    SELECT seq, ts, session, kind, from_json(body, '{_AMENDMENT}').payload AS p
    FROM events
    WHERE kind IN ('amendment_proposed', 'amendment_ratified', 'amendment_rejected', 'amendment_applied')
), proposed AS (
    SELECT p.amendment_id AS id, min(seq) AS seq, arg_min(session, seq) AS session, min(ts) AS proposed, arg_min(p, seq) AS p
    FROM ev WHERE kind = 'amendment_proposed'
    GROUP BY 1
), ratified AS (
    SELECT p.amendment_id AS id,
           count(*) FILTER (WHERE coalesce(p.refused, '') = '') AS ratifications,
           count(*) FILTER (WHERE coalesce(p.refused, '') <> '') AS refused_ratifications,
           string_agg(p.by || ' ' || CASE WHEN p.signed THEN p.fingerprint ELSE '(unsigned)' END, '; ' ORDER BY seq)
               FILTER (WHERE coalesce(p.refused, '') = '') AS ratified_by
    FROM ev WHERE kind = 'amendment_ratified'
    GROUP BY 1
), rejected AS (
    SELECT p.amendment_id AS id, min(ts) AS rejected, arg_min(p.by, seq) AS rejected_by, arg_min(p.reason, seq) AS rejected_why
    FROM ev WHERE kind = 'amendment_rejected'
    GROUP BY 1
), applied AS (
    SELECT p.amendment_id AS id, min(ts) AS applied, arg_min(p.version, seq) AS applied_version, arg_min(p.hash, seq) AS applied_hash
    FROM ev WHERE kind = 'amendment_applied'
    GROUP BY 1
)
SELECT pr.seq, pr.session, pr.id, CAST(pr.p.number AS BIGINT) AS number, pr.p.path AS path, pr.p.tier AS tier, pr.p.by AS proposer,
       pr.p.why AS why, pr.proposed, CAST(pr.p.parent_version AS BIGINT) AS parent_version,
       CAST(pr.p.version AS BIGINT) AS version, CAST(pr.p.needed AS BIGINT) AS needed,
       coalesce(r.ratifications, 0) AS ratifications, r.ratified_by, coalesce(r.refused_ratifications, 0) AS refused_ratifications,
       CASE WHEN a.applied IS NOT NULL THEN 'applied'
            WHEN j.rejected IS NOT NULL THEN 'rejected'
            WHEN coalesce(r.ratifications, 0) >= pr.p.needed THEN 'ratified'
            ELSE 'pending' END AS status,
       j.rejected_by, j.rejected_why, a.applied, CAST(a.applied_version AS BIGINT) AS applied_version, a.applied_hash
FROM proposed pr
LEFT JOIN ratified r USING (id)
LEFT JOIN rejected j USING (id)
LEFT JOIN applied a USING (id)
ORDER BY pr.seq
"""

VIEW_SQL: dict[str, str] = {
    "sessions": _SESSIONS,
    "experiments": _EXPERIMENTS,
    "refusals": _REFUSALS,
    "gate_transitions": _GATE_TRANSITIONS,
    "budgets": _BUDGETS,
    "constitutions": _CONSTITUTIONS,
    "agent_calls": _AGENT_CALLS,
    "amendments": _AMENDMENTS,
}

VIEWS: tuple[str, ...] = tuple(VIEW_DOCS)


def install_views(con: Any) -> None:
    """Create (or replace) every auditor view as a TEMP view on `con`.

    `con` is a DuckDB connection or cursor on a ledger file (read-only is fine): TEMP views live
    in that connection's temporary catalog and write nothing to the file.
    """
    for name in VIEWS:
        con.execute(VIEW_SQL[name])


def views_installed(con: Any) -> bool:
    """True if every auditor view exists as a TEMP view on this connection."""
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE temporary AND list_contains(?, view_name)",
        [list(VIEWS)],
    ).fetchall()
    return {r[0] for r in rows} == set(VIEWS)


def ensure_views(con: Any) -> None:
    """Install the views on `con` unless they are already there."""
    if not views_installed(con):
        install_views(con)


def render_docs() -> str:
    """The views' reference as Markdown: one section per view, one sentence per column."""
    out = []
    for view, columns in VIEW_DOCS.items():
        out.append(f"### `{view}`\n\n{VIEW_SUMMARIES[view]}\n\n| column | meaning |\n|---|---|")
        out.extend("| `%s` | %s |" % (col, text.replace("|", "\\|")) for col, text in columns.items())
        out.append("")
    return "\n".join(out)
