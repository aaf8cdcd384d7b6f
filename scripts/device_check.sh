#!/usr/bin/env bash
# One prepared GPU check of the efficiency work (imagen.flops, unet.attention, compile / channels_last), in under
# 8 minutes on one GPU. Writes JSON lines to $OUT/device_check.jsonl (OUT defaults to docs/), one per measurement:
#   {"check": NAME, "rc": 0, "wall_s": ..., "cmd": "...", "result": <the benchmark's JSON line> | {...}}
#   {"check": NAME, "rc": 1, ..., "error": "<the failing command's error line>"}   (and the script goes on)
#   {"check": NAME, "skipped": "time budget"}                                     (past BUDGET_S)
#
#   bash scripts/device_check.sh                 # the GPU check
#   DEVICE=cpu bash scripts/device_check.sh      # a 1-step version of every check on CPU (tiny stand-ins)
#
# In order (the budget skips the last ones first):
#   1. setup: requirements-gpu.txt (xformers) installed if missing, the GPU's name.
#   2. train throughput + MFU, eager, per U-Net (tiny, base_300m, base_2b, sr256_600m, sr256_standard): the config
#      (sdpa) vs channels_last vs attention=xformers, interleaved in one process (bench.compare).
#   3. python train.py trainer=gpu: a tiny run end to end (shapes world, few steps, sample grid, checkpoint).
#   4. a 2-job multirun with trainer=ddp on the one GPU (trainer.devices=1).
#   5. sampling s/image (tiny, base_300m; sdpa, xformers).
#   6. torch.compile per U-Net: compile vs eager (+ compile+xformers for the first), one process each (slow to compile).
#   7. the data pipeline's images/s per dataloader worker (64 and 256 px JPEG shards).
# Environment: PYTHON (default .venv/bin/python, else python3), OUT, DEVICE (cuda | cpu), BUDGET_S (default 450),
# OVERRIDES: Hydra overrides for every benchmark and train.py run, e.g. OVERRIDES="encoder.path=/models/minilm".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/docs}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-450}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
mkdir -p "$OUT"
RESULTS=$OUT/device_check.jsonl
WORK=$(mktemp -d "${TMPDIR:-/tmp}/imagen-device-check-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
START=$(date +%s)

elapsed() { echo $(($(date +%s) - START)); }

# emit CHECK RC WALL CMD STDOUT_FILE STDERR_FILE: one JSON line into $RESULTS (and on stdout).
emit() {
  "$PYTHON" - "$@" >>"$RESULTS" <<'PY'
import json, sys
check, rc, wall, cmd, out_file, err_file = sys.argv[1:7]
line = {"check": check, "rc": int(rc), "wall_s": int(wall), "cmd": cmd}
result = None
for text in reversed(open(out_file, errors="replace").read().splitlines()):
    try:
        result = json.loads(text)
        break
    except ValueError:
        continue
if result is not None:
    line["result"] = result
if int(rc) != 0:
    errors = [l.strip() for l in open(err_file, errors="replace").read().splitlines() if l.strip()]
    marked = [l for l in errors if l.startswith("error:") or "Error" in l or "error" in l]
    line["error"] = (marked or errors or ["(no error output)"])[-1][:2000]
    if int(rc) in (124, 137):
        line["error"] = f"timed out ({wall} s): " + line["error"]
print(json.dumps(line))
PY
  tail -n 1 "$RESULTS"
}

# run CHECK TIMEOUT_S CMD...: runs CMD (under timeout, capped by the budget left) and records it; never fails.
# With POST set (a command of this shell), its JSON line, run after a successful CMD, is the check's result.
run() {
  local check=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - $(elapsed)))
  if [ "$left" -lt 20 ]; then
    printf '{"check": "%s", "skipped": "time budget (%s s) spent"}\n' "$check" "$BUDGET_S" | tee -a "$RESULTS"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $check (limit ${limit} s): $*" >&2
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/out" 2>"$WORK/err"
  rc=$?
  if [ "$rc" -eq 0 ] && [ -n "${POST:-}" ]; then
    $POST >>"$WORK/out" 2>>"$WORK/err" || rc=$?
  fi
  emit "$check" "$rc" $(($(date +%s) - t0)) "$*" "$WORK/out" "$WORK/err"
  return 0
}

read -r -a EXTRA <<<"${OVERRIDES:-}"
BENCH=("$PYTHON" scripts/benchmark.py "${EXTRA[@]}")

# ---------------------------------------------------------------------------------------------- 1. setup
if [ "$DEVICE" = cpu ]; then
  TRAINER=cpu
  XF_OK=0
  run setup_device 60 "$PYTHON" -c "import json, platform, torch; print(json.dumps({'device': 'cpu', 'processor': platform.processor(), 'torch': torch.__version__, 'threads': torch.get_num_threads()}))"
else
  TRAINER=gpu
  if ! "$PYTHON" -c "import xformers.ops" 2>/dev/null; then
    run install_gpu_extras 90 "$PYTHON" -m pip install --retries 1 --timeout 20 -r requirements-gpu.txt
  fi
  run setup_device 60 "$PYTHON" -c "
import importlib.util, json, subprocess, torch
smi = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'], capture_output=True, text=True).stdout.strip()
xf = importlib.util.find_spec('xformers')
print(json.dumps({'device': torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'nvidia_smi': smi, 'torch': torch.__version__, 'cuda': torch.version.cuda, 'xformers': __import__('xformers').__version__ if xf else None}))"
  tail -n 1 "$RESULTS" | "$PYTHON" -c "import json, sys; print('GPU:', json.loads(sys.stdin.read()).get('result', {}).get('device'))"
  if "$PYTHON" -c "import torch, xformers.ops; assert torch.cuda.is_available()" 2>/dev/null; then XF_OK=1; else XF_OK=0; fi
fi

# The U-Nets and their benchmark settings (batch sizes as docs/bench_h100.jsonl and docs/bench_sr_h100.jsonl).
if [ "$DEVICE" = cpu ]; then
  STEPS=(bench.steps=1 bench.warmup=1 bench.repeats=1 bench.device=cpu)
  NAMES=(tiny sr_tiny sr_tiny_standard)
  declare -A ARGS=(
    [tiny]="unet=tiny image_size=16 unet.channel_mult=[1,2] unet.attn_resolutions=[8] bench.batch_size=2"
    [sr_tiny]="unet=sr_tiny stage=sr64 image_size=32 stage.low_res_size=16 bench.batch_size=2"
    [sr_tiny_standard]="unet=sr_tiny_standard stage=sr64 image_size=32 stage.low_res_size=16 unet.attn_resolutions=[8] bench.batch_size=2"
  )
else
  STEPS=(bench.steps=5 bench.warmup=2 bench.repeats=3)
  NAMES=(tiny base_300m base_2b sr256_600m sr256_standard)
  declare -A ARGS=(
    [tiny]="unet=tiny image_size=32 bench.batch_size=128"
    [base_300m]="unet=base_300m image_size=64 optim=adafactor bench.batch_size=32"
    [base_2b]="unet=base_2b image_size=64 optim=adafactor bench.batch_size=16"
    [sr256_600m]="unet=sr256_600m stage=sr256 optim=adam bench.batch_size=8"
    [sr256_standard]="unet=sr256_standard stage=sr256 optim=adam bench.batch_size=8"
  )
fi

# ---------------------------------------------------------------------------------------------- 2. eager throughput
for name in "${NAMES[@]}"; do
  # shellcheck disable=SC2086  # ARGS holds space-separated overrides
  if [ "$XF_OK" = 1 ]; then
    run "train_$name" 150 "${BENCH[@]}" ${ARGS[$name]} "${STEPS[@]}" "bench.compare=[channels_last,attention=xformers]"
  else
    run "train_$name" 150 "${BENCH[@]}" ${ARGS[$name]} "${STEPS[@]}" "bench.compare=[channels_last]"
  fi
done
# xformers where it cannot run: the one-line build-time error, recorded (what unet.attention=xformers says on CPU).
[ "$XF_OK" = 1 ] || run "train_tiny_xformers" 60 "${BENCH[@]}" ${ARGS[tiny]} "${STEPS[@]}" unet.attention=xformers
# The optimiser's share: base_300m with Adam (foreach) instead of Adafactor (whose torch implementation reads three
# scalars per parameter tensor back to the host every step), and cuDNN autotuning (Trainer(benchmark=True)).
if [ "$DEVICE" != cpu ]; then
  run train_base_300m_adam 120 "${BENCH[@]}" unet=base_300m image_size=64 optim=adam bench.batch_size=32 "${STEPS[@]}" \
    "bench.compare=[cudnn_benchmark,channels_last+cudnn_benchmark]"
fi

# ---------------------------------------------------------------------------------------------- 3. train.py end to end
if [ "$DEVICE" = cpu ]; then
  TRAIN_SIZE=(image_size=16 unet.channel_mult=[1,2] unet.attn_resolutions=[8] data.batch_size=4 sampler.steps=2
    data.n_train=64 data.samples_per_shard=32)
  TRAIN_STEPS=(trainer.max_steps=2 trainer.val_check_interval=2)
else
  TRAIN_SIZE=(data.batch_size=64 sampler.steps=10 data.n_train=4096 data.samples_per_shard=1024)
  TRAIN_STEPS=(trainer.max_steps=150 trainer.val_check_interval=150)
fi
COMMON=(logger=csv data.root="$WORK/data" data.gen_procs=2 data.world.n_eval=2 data.eval_repeats=2
  trainer.log_every_n_steps=10 ++callbacks.throughput.window_size=10 callbacks.model_checkpoint.every_n_train_steps=1000
  callbacks.ema.start_step=1)
train_summary() { # the job.json statuses under a folder and the last logged throughput / MFU / loss of its metrics.csv
  "$PYTHON" - "$1" <<'PY'
import csv, json, sys
from pathlib import Path
runs = sorted(Path(sys.argv[1]).rglob("job.json"))
out = {"jobs": len(runs), "status": [json.loads(p.read_text()).get("status") for p in runs]}
for path in sorted(Path(sys.argv[1]).rglob("metrics.csv"))[:1]:
    rows = list(csv.DictReader(path.open()))
    for key in sorted({k for row in rows for k in row if "per_sec" in k or "mfu" in k or k == "train/loss"}):
        values = [row[key] for row in rows if row.get(key)]
        if values:
            out[key] = float(values[-1])
print(json.dumps(out))
PY
}
POST="train_summary $WORK/train_e2e" run train_py_e2e 150 "$PYTHON" train.py "trainer=$TRAINER" "${EXTRA[@]}" "${COMMON[@]}" \
  "${TRAIN_SIZE[@]}" "${TRAIN_STEPS[@]}" "hydra.run.dir=$WORK/train_e2e"

# ---------------------------------------------------------------------------------------------- 4. ddp multirun
ACCEL=()
[ "$DEVICE" = cpu ] && ACCEL=(trainer.accelerator=cpu)
POST="train_summary $WORK/multirun" run ddp_multirun_2_jobs 180 "$PYTHON" train.py -m trainer=ddp trainer.devices=1 \
  "${ACCEL[@]}" "${EXTRA[@]}" "${COMMON[@]}" "${TRAIN_SIZE[@]}" trainer.max_steps=4 trainer.val_check_interval=4 seed=0,1 \
  "hydra.sweep.dir=$WORK/multirun"

# ---------------------------------------------------------------------------------------------- 5. sampling
if [ "$DEVICE" = cpu ]; then SAMPLE=(sampler=ddim sampler.steps=2 bench.repeats=1); else SAMPLE=(sampler=ddim sampler.steps=20 bench.repeats=2); fi
for name in tiny base_300m; do
  [ -n "${ARGS[$name]:-}" ] || continue
  run "sample_$name" 90 "${BENCH[@]}" ${ARGS[$name]} bench.mode=sample "${SAMPLE[@]}" bench.batch_size=8
  if [ "$XF_OK" = 1 ]; then
    run "sample_${name}_xformers" 90 "${BENCH[@]}" ${ARGS[$name]} bench.mode=sample "${SAMPLE[@]}" bench.batch_size=8 \
      unet.attention=xformers
  fi
done

# ---------------------------------------------------------------------------------------------- 6. torch.compile
# Compilation takes a minute or more per U-Net: the paper-size ones first, the budget skips the rest.
if [ "$DEVICE" = cpu ]; then COMPILE_NAMES=(tiny); else COMPILE_NAMES=(base_300m sr256_600m base_2b sr256_standard tiny); fi
for name in "${COMPILE_NAMES[@]}"; do
  variants="compile"
  [ "$XF_OK" = 1 ] && [ "$name" = "${COMPILE_NAMES[0]}" ] && variants="compile,compile+attention=xformers"
  run "compile_$name" 240 "${BENCH[@]}" ${ARGS[$name]} "${STEPS[@]}" "bench.compare=[$variants]"
done

# ---------------------------------------------------------------------------------------------- 7. data pipeline
# images/s per dataloader worker at 64 and 256 px from img2dataset-style JPEG shards: sizes data.num_workers.
if [ "$DEVICE" = cpu ]; then
  run data_pipeline 60 "${BENCH[@]}" bench.mode=data bench.batch_size=4 bench.batches=1 bench.repeats=1 \
    bench.data_samples=8 "bench.resolutions=[64]" "bench.workers=[0]"
else
  run data_pipeline 120 "${BENCH[@]}" bench.mode=data bench.batch_size=32 bench.batches=5 bench.repeats=3 \
    bench.data_samples=512 "bench.resolutions=[64,256]" "bench.workers=[0,4,8]"
fi

echo "device_check: $(grep -c '"rc": 0' "$RESULTS") ok, $(grep -c '"error"' "$RESULTS") failed, $(grep -c '"skipped"' "$RESULTS") skipped in $(elapsed) s -> $RESULTS" >&2
