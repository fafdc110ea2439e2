"""The governor: the `charter` CLI and everything that enforces a lab's constitution.

`policy/` holds the pure decisions (gates, keep rule, budgets, outcomes, harm test, the
constitution in force): functions of data, tested without processes. The edges run processes
and state: `session/` sequences one experiment's steps and records them, `execution/` runs a job
in the sandbox, `workspace/` is the lab's git tree, `live/` the versioned channel to a running
controller, `proposers/` where ideas come from. Imports flow one way: controller -> constitution,
ledger.
"""
