#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one command, each step logged on its own:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: gpu_check/)
#
#   1. nvidia-smi and torch's view of the device              -> OUT_DIR/device.txt
#   2. the CUDA-only tests (skipped on CPU runs of pytest)      -> OUT_DIR/tests.log
#   3. python -m benchmarks gpu (MFU, compiled layers, packed attention, loss GEMM shapes,
#      audio generation)                                        -> OUT_DIR/gpu.json, OUT_DIR/gpu.log
#   4. a short bf16 fit of the demo config on the GPU, then a resume from its last checkpoint
#                                                               -> OUT_DIR/fit.log
#   5. python -m benchmarks.gpu_probe: the step's parts and variants side by side, and profiles
#                                      -> OUT_DIR/probe.json, OUT_DIR/profile*.txt, OUT_DIR/probe.log
#
# A failing step is reported and the next one still runs; the exit status is the number of failed
# steps. STEPS="2 3" runs only those steps; FIT_STRATEGY=recipes/configs/strategies/fsdp.yaml adds a
# strategy overlay to step 4.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:-gpu_check}
steps=${STEPS:-"1 2 3 4 5"}
mkdir -p "$out"
failed=0

run_step() {  # run_step NAME LOG COMMAND...: run, keep stdout+stderr, count a failure
    local name=$1 log=$2
    shift 2
    echo "[gpu_check] $name ..."
    local start=$SECONDS
    if "$@" >"$log" 2>&1; then
        echo "[gpu_check] $name: ok ($((SECONDS - start)) s)"
    else
        echo "[gpu_check] $name: FAILED with status $? ($((SECONDS - start)) s); see $log"
        tail -n 20 "$log"
        failed=$((failed + 1))
    fi
}

if ! python -c "import torch" 2>/dev/null; then
    echo "[gpu_check] torch is not importable: install the project first (pip install -e \".[dev]\")" >&2
    exit 2
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu_check] no CUDA device visible to torch: nothing to check" >&2
    exit 2
fi

device_info() {
    nvidia-smi || true
    python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
}

fit_and_resume() {
    local root=$out/fit overlay=()
    [[ -n ${FIT_STRATEGY:-} ]] && overlay=(--config "$FIT_STRATEGY")
    local common=(--config recipes/configs/demo.yaml "${overlay[@]}" --trainer.accelerator=gpu
        --trainer.devices=1 --trainer.precision=bf16-mixed --trainer.default_root_dir="$root"
        --trainer.enable_progress_bar=false --data.batches_per_epoch=10 --model.probe.num_clips=8)
    python -m recipes.bagpiper fit "${common[@]}" --trainer.max_steps=20 || return 1
    local ckpt
    ckpt=$(find "$root" -name 'last.ckpt' -o -name 'epoch=*-step=20.ckpt' | head -n 1)
    [[ -n $ckpt ]] || { echo "no checkpoint under $root"; return 1; }
    python -m recipes.bagpiper fit "${common[@]}" --trainer.max_steps=30 --ckpt_path="$ckpt"
}

for step in $steps; do
    case $step in
        1) run_step "device" "$out/device.txt" device_info ;;
        2) run_step "CUDA tests" "$out/tests.log" python -m pytest -q -rs -p no:cacheprovider \
               tests/model/test_cuda.py tests/model/test_loss.py tests/backbones/test_packing.py tests/encoders/test_mel.py ;;
        3) run_step "GPU benchmarks" "$out/gpu.log" \
               python -m benchmarks gpu --threads 0 --out "$out/gpu.json" ;;
        4) run_step "bf16 fit + resume" "$out/fit.log" fit_and_resume ;;
        5) run_step "probe" "$out/probe.log" python -m benchmarks.gpu_probe --out "$out" ;;
        *) echo "[gpu_check] unknown step $step (steps are 1 2 3 4 5)" >&2; failed=$((failed + 1)) ;;
    esac
done
echo "[gpu_check] done: $failed failed step(s); logs in $out/"
exit "$failed"
