#!/usr/bin/env bash
# Debian packages the project needs on a CI machine (run as root; no-ops when already there).
set -euo pipefail

# bubblewrap: the reference sandbox for train.py and the evaluator's model worker
command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)

# ssh-keygen: ratifiers sign amendments with `ssh-keygen -Y sign`, the controller verifies with -Y verify
command -v ssh-keygen >/dev/null || (apt-get update -qq && apt-get install -y -qq openssh-client)

# `setup-system.sh test`: also chromium, for the test that loads `charter tui --serve` in a real
# headless browser (the main job does not need it)
if [ "${1:-}" = "test" ]; then
    command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
fi
