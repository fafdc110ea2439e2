"""The operator console (Textual). Not built yet; it will read the same live status the
controller publishes for `charter status` (`controller.live.status`, `.charter/status.json` and the
control socket) and never open the ledger file while a session runs."""
