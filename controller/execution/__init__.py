"""Running untrusted code: the bubblewrap sandbox and the runner that turns one job (commit, work
dir, device) into a training + evaluation outcome with its stats and post-checks."""
