"""The governor: the `charter` CLI and everything that enforces a lab's constitution.

Pure decisions (`gates`, `keep_rule`, `budgets`, `harm_test`) are functions of data; the edges
run processes and state (`session` loop, `runner` + `sandbox`, `git_workspace`, `staging`,
`control` socket, `proposers`). Imports flow one way: controller -> constitution, ledger.
"""
