"""The operator console, `charter tui` (Textual): `app` composes it, `feed` brings its data (the
controller's live channel while one runs, the ledger file read-only when none does), `model` folds
ledger events into what it shows, `components/` holds one widget or screen per module, `cli` is its
subcommand. It never holds the ledger file while a session runs."""
