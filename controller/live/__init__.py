"""The live channel to a running controller: a versioned protocol over a Unix socket (server and
client) and the typed status snapshot it and `status.json` carry."""
