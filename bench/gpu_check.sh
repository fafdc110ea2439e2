#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU path of issue 16, checked in one short script (docs/gpu.md).
#
#   bash bench/gpu_check.sh prepare        # HERE (a CPU machine with the registry): wheels, corpus
#   bash bench/gpu_check.sh short          # ON THE DEVICE: CUDA in the sandbox, FA3 or fallback, a 60 s session
#   bash bench/gpu_check.sh long           # ON THE DEVICE, if time is left: one 300 s baseline run
#
# `prepare` fills bench/.gpu-check/ (wheels for the device's Python 3.12 of what it lacks, and the
# offline corpus as text files); that folder is untracked and not ignored, so it travels with the
# work tree to the device. `short` and `long` need no network and write everything to $OUT:
# results.txt (key: value lines), vram.csv (nvidia-smi every 0.5 s), the session's JSONL, the
# ledger's rows. Each phase stays under the device tool's 10 minutes a command:
#   short: install ~1 min, sandbox + FA3 probes ~1 min, session = baseline (1 run) + 1 experiment,
#          each 60 s of training + evaluation: ~4 min
#   long:  install ~1 min, one 300 s baseline + evaluation: ~7 min
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=bench/.gpu-check
PHASE=${1:-short}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
say() { echo "$*" | tee -a "$OUT/results.txt"; }

if [ "$PHASE" = prepare ]; then
  mkdir -p "$HERE/wheels" "$HERE/corpus"
  # what the device's Python 3.12 lacks (field notes: it has torch, pyarrow, tiktoken, numpy)
  pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$HERE/wheels" \
    duckdb pydantic transitions tomlkit rustbpe textual matplotlib tqdm kernels anthropic nvidia-ml-py
  rm -f "$HERE"/wheels/numpy-* "$HERE"/wheels/torch-*  # the device's own are kept
  # the offline corpus (Debian's Python docs), as text files prepare.py --source DIR reads
  tmp=$(mktemp -d); (cd "$tmp" && apt-get download python3.11-doc >/dev/null && dpkg-deb -x ./*.deb x)
  cp -r "$tmp"/x/usr/share/doc/python3.11/html/_sources/. "$HERE/corpus/"; rm -rf "$tmp"
  du -sh "$HERE"/*
  exit 0
fi

# -- on the device ------------------------------------------------------------------------------
: > "$OUT/results.txt"
say "phase: $PHASE"
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
say "python: $(python3 --version 2>&1), torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
python3 -m venv --system-site-packages /tmp/gpuvenv && . /tmp/gpuvenv/bin/activate
pip install -q --no-index --find-links "$HERE/wheels" duckdb pydantic transitions tomlkit rustbpe textual \
  matplotlib tqdm kernels anthropic nvidia-ml-py
pip install -q --no-deps --no-build-isolation -e .
command -v bwrap >/dev/null || { apt-get install -y -q bubblewrap >/dev/null 2>&1 || true; }
say "bwrap: $(command -v bwrap || echo missing)"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/vram.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT

if [ "$PHASE" = short ]; then
  # 1. CUDA inside the training sandbox (bwrap allow-list + gpu_binds), then with /sys too if not
  python3 - <<'EOF' 2>&1 | tee -a "$OUT/results.txt"
import sys, tempfile
from pathlib import Path
from controller.execution import gpu, gpu_binds, sandbox
print("probe:", gpu.probe())
print("binds:", [f"{b.option} {b.dest}" for b in gpu_binds.gpu_binds(Path("/"), gpu_binds.ld_cache_paths(),
      tuple(f"/usr/{n}" for n in sandbox.USR_DIRS))])
code = "import torch; x = torch.ones(2048, 2048, device='cuda'); print('cuda ok', torch.cuda.get_device_name(), float((x @ x).sum()))"
level, detail = sandbox.detect_level()
for extra in ((), ("/sys",)):
    gpu_binds.EXTRA_PATHS = extra
    d = Path(tempfile.mkdtemp())
    spec = sandbox.SandboxSpec(argv=[sys.executable, "-c", code], cwd=d, writable=[d], hidden=[], timeout_s=120,
                               env=sandbox.minimal_env(d), memory_mb=32000, max_processes=512, max_file_mb=64,
                               stdout_path=d / "log")
    r = sandbox.run(spec, level)
    print(f"sandbox_cuda (level {level}, extra {list(extra)}): rc {r.returncode}: {r.log_tail.strip()[-300:]}")
    if r.returncode == 0:
        break
# a Ray worker's view (issue 17): only GPU 0's node shown, named by UUID; CUDA must find it as its one device
try:
    (dev0,) = gpu.assigned([0])
    d = Path(tempfile.mkdtemp())
    one = "import torch; print('one gpu', torch.cuda.device_count(), torch.cuda.get_device_name(), float(torch.ones(8, device='cuda').sum()))"
    spec = sandbox.SandboxSpec(argv=[sys.executable, "-c", one], cwd=d, writable=[d], hidden=[], timeout_s=120,
                               env=sandbox.minimal_env(d, {"CUDA_VISIBLE_DEVICES": dev0.uuid}), memory_mb=32000,
                               max_processes=512, max_file_mb=64, stdout_path=d / "log", gpus=(dev0.minor,))
    r = sandbox.run(spec, level)
    print(f"sandbox_one_gpu ({dev0}): rc {r.returncode}: {r.log_tail.strip()[-300:]}")
except gpu.GpuAssignmentError as e:
    print(f"sandbox_one_gpu: not checked: {e}")
EOF
  # 2. FA3 through kernels, offline as a governed run has it, then as the network allows
  (cd trainer && HF_HUB_OFFLINE=1 python3 -c 'import train; print("attention offline:", train.load_flash_attention()[1:])') 2>&1 | tail -1 | tee -a "$OUT/results.txt"
  (cd trainer && timeout 60 python3 -c 'import train; print("attention online:", train.load_flash_attention()[1:])') 2>&1 | tail -1 | tee -a "$OUT/results.txt" || true
  SECONDS_BUDGET=60 MAX_EXPERIMENTS=1
else
  SECONDS_BUDGET=300 MAX_EXPERIMENTS=0
fi

# 3. a governed session on a gpu lab: the owner may edit the constitution before its first session
LAB=/tmp/gpulab-$PHASE; rm -rf "$LAB"
charter init "$LAB" --profile gpu >/dev/null
python3 - "$LAB" "$SECONDS_BUDGET" <<'EOF'
import sys, tomlkit
from pathlib import Path
p = Path(sys.argv[1]) / "constitution.toml"
doc = tomlkit.parse(p.read_text())
doc["budgets"]["experiment"]["training_seconds"] = float(sys.argv[2])
doc["decision"]["baseline_runs"] = 1
doc["decision"]["confirmation_runs"] = 0
import shutil
if not shutil.which("bwrap"):
    doc["sandbox"]["allow_weaker"] = True  # reported below as isolation "none"
p.write_text(tomlkit.dumps(doc))
EOF
git -C "$LAB" commit -qam "gpu check: ${SECONDS_BUDGET}s runs, one baseline run"
export CHARTER_CACHE_DIR=/tmp/gpu-check-cache
charter prepare --lab "$LAB" --source "$PWD/$HERE/corpus" | tee -a "$OUT/results.txt"
START=$(date +%s)
charter run --lab "$LAB" --max-experiments "$MAX_EXPERIMENTS" --jsonl > "$OUT/session-$PHASE.jsonl" 2> "$OUT/session-$PHASE.err" || true
say "session_wall_seconds: $(( $(date +%s) - START ))"
tail -3 "$OUT/session-$PHASE.err" | tee -a "$OUT/results.txt"

# 4. the figures, from the ledger (and the run dirs for the model's config)
python3 - "$LAB" "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/results.txt"
import json, sys
from pathlib import Path
from controller import audit
from controller.policy.device import run_mfu
from controller.workspace.lab import find_lab
lab, out = find_lab(sys.argv[1]), Path(sys.argv[2])
q = lambda sql: audit.query(lab, sql, limit=1000)
rows = q("select seq, ts, kind, experiment, body from events order by seq")
(out / "events.json").write_text(json.dumps([dict(zip(rows["columns"], r)) for r in rows["rows"]], default=str))
from datetime import datetime
ev = [dict(zip(rows["columns"], r)) for r in rows["rows"]]
for e in ev:  # body is the canonical JSON of the event; its payload is the typed part
    e["payload"], e["ts"] = json.loads(e["body"])["payload"], datetime.fromisoformat(str(e["ts"]))
for e in ev:
    p = e["payload"]
    if e["kind"] == "training_finished":
        s = p.get("stats", {})
        run_dirs = sorted((lab.runs_dir).rglob(f"{e['experiment']:04d}-{p.get('run', 1)}"))
        cfg = json.loads((run_dirs[0] / "config.json").read_text())["kwargs"] if run_dirs else {}
        name = p.get("device_name") or s.get("device_name", "")
        print(f"exp {e['experiment']}: isolation {p.get('isolation')} rc {p.get('returncode')} wall {p.get('wall_seconds')} s; "
              f"attention {s.get('attention')} ({s.get('attention_fallback')}); tokens/s {s.get('tokens_per_second')}; "
              f"steps {s.get('steps')}; startup {s.get('startup_seconds')} s; mfu {run_mfu(cfg, s, name)} on {name!r}; "
              f"vram: controller {p.get('peak_vram_mb')} MB, torch (run's claim) {s.get('peak_memory_mb')} MB")
    elif e["kind"] == "evaluated":
        print(f"exp {e['experiment']}: eval {p.get('wall_seconds')} s, status {p.get('status')}, val_bpb {p.get('result', {}).get('val_bpb')}")
# governance overhead: an experiment's time from `proposed` to `decided` minus its training and evaluation
by = {}
for e in ev:
    d = by.setdefault(e["experiment"], {"train": 0.0, "eval": 0.0})
    p = e["payload"]
    if e["kind"] == "proposed": d["start"] = e["ts"]
    if e["kind"] == "decided": d["end"] = e["ts"]
    if e["kind"] == "training_finished": d["train"] += float(p.get("wall_seconds") or 0)
    if e["kind"] == "evaluated": d["eval"] += float(p.get("wall_seconds") or 0)
for n, d in sorted((k, v) for k, v in by.items() if k is not None):
    if "start" in d and "end" in d:
        total = (d["end"] - d["start"]).total_seconds()
        print(f"exp {n}: total {total:.1f} s = training {d['train']:.1f} + evaluation {d['eval']:.1f} + governance {total - d['train'] - d['eval']:.1f}")
EOF
say "vram_peak_nvidia_smi_mb: $(cut -d, -f2 "$OUT/vram.csv" | sort -n | tail -1)"
