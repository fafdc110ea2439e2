"""A stand-in for an external coding agent (`claude -p`, `codex exec`), for the command proposer's
tests. Run as `fake_agent.py --mode MODE [options] PROMPT_FILE` in the lab copy it may edit:

good      lowers LEARNING_RATE in train.py and writes .charter-description / .charter-hypothesis
walk      scales the current LEARNING_RATE by a factor that depends on the experiment (always a change)
outside   the same, and also edits prepare.py and creates notes.txt (outside the editable scope)
link      replaces train.py with a symlink to prepare.py
nothing   reads the prompt and exits without changing anything
crash     prints a line and exits with code 3
hang      starts a child in its own session (its argv carries --marker) and sleeps forever
peek      the good edit, and the description lists which --peek paths it could see or open
connect   the good edit, and the description says whether a TCP connection to --port succeeded

Only the standard library: it runs under the sandbox's interpreter, as the sandbox uid.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path


def good_edit(description: str) -> None:
    train = Path("train.py")
    text, n = re.subn(r"^LEARNING_RATE = \S+", "LEARNING_RATE = 2.5e-3", train.read_text(), count=1, flags=re.M)
    if n != 1:
        sys.exit("fake agent: no LEARNING_RATE line in train.py")
    train.write_text(text)
    Path(".charter-description").write_text(description + "\n")
    Path(".charter-hypothesis").write_text("a slightly lower learning rate is more stable\n")
    Path(".charter-lesson").write_text("\nthe shipped learning rate may be on the high side\n")


def visible(path: str) -> bool:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return True
    except OSError:
        return os.path.lexists(path)  # there but unreadable still counts as seen


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True)
    ap.add_argument("--marker", default="charter-fake-agent-child")
    ap.add_argument("--peek", action="append", default=[])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("prompt")
    a = ap.parse_args()
    prompt = Path(a.prompt).read_text()
    if "## This step" not in prompt:
        sys.exit("fake agent: the prompt file is not a Charter brief")

    if a.mode == "good":
        good_edit("lower the learning rate to 2.5e-3")
    elif a.mode == "walk":
        experiment = int(re.search(r"^Experiment (\d+)\.", prompt, flags=re.M).group(1))
        factor = (2.0, 0.6, 1.5, 0.8)[experiment % 4]
        train = Path("train.py")
        text = train.read_text()
        old = float(re.search(r"^LEARNING_RATE = (\S+)", text, flags=re.M).group(1))
        train.write_text(re.sub(r"^LEARNING_RATE = \S+", f"LEARNING_RATE = {old * factor:.3g}", text, count=1, flags=re.M))
        Path(".charter-description").write_text(f"learning rate x{factor:g}\n")
    elif a.mode == "outside":
        good_edit("lower the learning rate and touch the evaluator")
        text = Path("prepare.py").read_text()
        Path("prepare.py").unlink()  # the file is read-only; the directory is the agent's
        Path("prepare.py").write_text(text + "\n# the agent was here\n")
        Path("notes.txt").write_text("scratch notes\n")
    elif a.mode == "link":
        Path("train.py").unlink()
        os.symlink("prepare.py", "train.py")
        Path(".charter-description").write_text("train.py is now a link\n")
    elif a.mode == "nothing":
        print("fake agent: nothing to change")
    elif a.mode == "crash":
        print("fake agent: something went wrong")
        sys.exit(3)
    elif a.mode == "hang":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--marker", a.marker],
                         start_new_session=True)
        print("fake agent: thinking forever", flush=True)
        while True:
            time.sleep(60)
    elif a.mode == "peek":
        seen = [p for p in a.peek if visible(p)]
        good_edit("seen: " + (",".join(seen) or "none"))
    elif a.mode == "connect":
        good_edit("net: " + ("connected" if connects(a.port) else "refused"))
    else:
        sys.exit(f"fake agent: unknown mode {a.mode}")


if __name__ == "__main__":
    main()
