#!/usr/bin/env bash
# GPU checks, in one run (docs/benchmarks.md, "GPU"):
#   1. training step throughput of the shipped network (its spec and weights, models/medai-ref.pt) on CUDA,
#      AMP (float16 autocast + GradScaler) against float32 in the same run, with GPU utilisation (nvidia-smi);
#   2. the real training loop (`medai train`: synthetic phantoms prepared on the CPU, AMP on CUDA), samples/s;
#   3. serving: scripts/bench_predict.py --device cuda (medai on onnxruntime's CUDA provider against MONAI on
#      CUDA, and the network alone: onnxruntime CUDA against torch eager CUDA);
#   4. the GPU tests (pytest -m gpu tests/test_gpu.py).
# Needs torch for CUDA and, for 3-4, onnxruntime-gpu. Exits 0 with a message when there is no GPU.
#
#   scripts/gpu_check.sh [STEPS] [BATCH] [PHANTOMS]     (defaults: 300 steps, batch 16, 480 phantoms)
#   OUT=dir keeps the logs and JSON reports there (default: a temporary folder);
#   STAGES="3 4" runs only those checks (default: "1 2 3 4").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
STEPS="${1:-300}"
BATCH="${2:-16}"
PHANTOMS="${3:-480}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
STAGES=" ${STAGES:-1 2 3 4} "
stage() { [[ "$STAGES" == *" $1 "* ]]; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible to torch (torch build: $("$PY" -c 'import torch; print(torch.__version__)')); nothing to check."
    exit 0
fi

echo "gpu_check: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) | $("$PY" -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "| onnxruntime", o.__version__, o.get_available_providers())')"

if stage 1; then
LOG="$(mktemp)"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 >"$LOG" &
SMI=$!
trap 'kill "$SMI" 2>/dev/null || true; rm -f "$LOG"' EXIT

echo "== 1. training step throughput: AMP against float32 =="
"$PY" - "$STEPS" "$BATCH" <<'PY'
import sys, time
import torch
from medai.training.network import count_params, load_checkpoint

steps, batch = int(sys.argv[1]), int(sys.argv[2])
torch.backends.cudnn.benchmark = True
device = torch.device("cuda")
model, ckpt = load_checkpoint("models/medai-ref.pt", device=device)
shape = tuple(ckpt["model_spec"]["input_shape"])
model.train()
model = model.to(memory_format=torch.channels_last_3d)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.rand(batch, 1, *shape, device=device).to(memory_format=torch.channels_last_3d)
y = torch.randint(0, 3, (batch,), device=device)
loss_fn = torch.nn.CrossEntropyLoss()

def run(amp: bool) -> float:
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    for _ in range(20):  # warm-up (cudnn autotuning)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - t0)
    print(f"gpu_check: {'AMP fp16' if amp else 'float32 '} | {torch.cuda.get_device_name()} | "
          f"{count_params(model):,} params | input {shape} | batch {batch} | {steps} steps | {rate:.0f} samples/s "
          f"| peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    return rate

amp, fp32 = run(True), run(False)
print(f"gpu_check: AMP / float32 = {amp / fp32:.2f}x")
PY

kill "$SMI" 2>/dev/null || true
sleep 0.6
awk -F', ' 'NF==2 {n++; u+=$1; if ($1>m) m=$1; mem=$2} END {if (n) printf "gpu_check: GPU utilisation mean %.0f%% max %d%% over %d samples, memory used %d MiB\n", u/n, m, n, mem}' "$LOG"
fi

if stage 2; then
echo "== 2. the training loop: medai train on $PHANTOMS synthetic phantoms, AMP on CUDA =="
"$PY" -m medai.cli train --synthetic "$PHANTOMS" --epochs 3 --batch-size "$BATCH" --workers 6 \
    --prep-workers "$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))" --device cuda --no-progress --no-cache \
    --out-dir "$OUT/train" >"$OUT/train.log" 2>&1 || { tail -20 "$OUT/train.log"; exit 1; }
"$PY" - "$OUT/train/log.csv" "$PHANTOMS" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
n = int(sys.argv[2])
for r in rows:
    print(f"gpu_check: medai train epoch {int(float(r['epoch']))}: {float(r['seconds']):.1f} s "
          f"(train + validation) | {n / float(r['seconds']):.0f} training phantoms/s | loss {float(r['train_loss']):.3f}")
PY
fi

if stage 3; then
    echo "== 3. serving: bench_predict --device cuda =="
    if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
        "$PY" scripts/bench_predict.py --device cuda --threads "${BENCH_THREADS:-4}" --repeats 3 --monai-repeats 2 \
            --json "$OUT/predict-cuda.json" || echo "gpu_check: bench_predict exited $? (its CPU targets)"
    else
        echo "gpu_check: onnxruntime has no CUDA provider (install onnxruntime-gpu); the serving check is skipped."
    fi
fi

if stage 4; then
    echo "== 4. tests: pytest -m gpu =="
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
fi
