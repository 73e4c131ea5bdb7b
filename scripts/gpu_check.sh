#!/usr/bin/env bash
# GPU training check: a few hundred AMP training steps of the default model on CUDA, reporting samples/s
# and GPU utilisation (nvidia-smi sampled every 0.5 s). Exits 0 with a message when there is no GPU.
#
#   scripts/gpu_check.sh [STEPS] [BATCH]     (defaults: 300 steps, batch 16)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
STEPS="${1:-300}"
BATCH="${2:-16}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch (torch build: $("$PY" -c 'import torch; print(torch.__version__)')); nothing to check."
    exit 0
fi

LOG="$(mktemp)"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 >"$LOG" &
SMI=$!
trap 'kill "$SMI" 2>/dev/null || true; rm -f "$LOG"' EXIT

"$PY" - "$STEPS" "$BATCH" <<'PY'
import sys, time
import torch
from medai.training.network import ModelSpec, build_model, count_params

steps, batch = int(sys.argv[1]), int(sys.argv[2])
torch.backends.cudnn.benchmark = True
spec = ModelSpec()
device = torch.device("cuda")
model = build_model(spec).to(device).to(memory_format=torch.channels_last_3d)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cuda")
x = torch.rand(batch, 1, *spec.input_shape, device=device).to(memory_format=torch.channels_last_3d)
y = torch.randint(0, spec.n_classes, (batch,), device=device)
loss_fn = torch.nn.CrossEntropyLoss()

def step():
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss

for _ in range(20):  # warm-up (cudnn autotuning)
    step()
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(steps):
    loss = step()
torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(f"gpu_check: {torch.cuda.get_device_name()} | {count_params(model):,} params | input {spec.input_shape} "
      f"| batch {batch} | {steps} AMP steps in {dt:.1f} s | {steps * batch / dt:.0f} samples/s "
      f"| peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB | final loss {float(loss):.3f}")
PY

kill "$SMI" 2>/dev/null || true
sleep 0.6
awk -F', ' 'NF==2 {n++; u+=$1; if ($1>m) m=$1; mem=$2} END {if (n) printf "gpu_check: GPU utilisation mean %.0f%% max %d%% over %d samples, memory used %d MiB\n", u/n, m, n, mem}' "$LOG"
