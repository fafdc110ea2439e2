"""Amendments: how people change a lab's constitution between sessions, and only through ratification.

A proposal is the exact text of the next constitution (`proposal`), diffed field by field against
the one in force (`diff`) and classified minor / major / constitutional (`tiers`); its id is the
sha256 of that text. Listed ratifiers sign the id with `ssh-keygen -Y sign` (`signatures`); who may
ratify, reject or apply, and when, is decided by `duty` over the history folded from the ledger
(`history`). `process` runs the steps on a real lab: the ledger records each one (refused
ratifications too) and `main_line` commits proposals and applied versions on the lab's `main`.
`cli` is `charter amend ...`. The pure modules (diff, tiers, proposal, patch, duty, history) touch
no files, processes or databases.
"""
