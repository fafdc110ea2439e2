"""Amendments: how humans change a lab's constitution between sessions (propose, classify,
ratify, apply). Not built yet; the constitution already carries what it needs (`meta.version`,
`meta.parent_hash`, `constitution.check_succession`, the `[amendment]` section) and the ledger
has the event kinds (`amendment_proposed`, `_ratified`, `_rejected`, `_applied`)."""
