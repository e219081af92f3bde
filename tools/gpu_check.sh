#!/usr/bin/env bash
# One-lease GPU check: install the carried wheels, run the GPU tests, fit the quickstart (bf16-mixed, bf16-true,
# resume), two RL4VLM epochs on a tiny LLaVA-NeXT, and the rollout/update benchmarks on a random-weight 7B
# LLaVA-NeXT-Mistral. Every step is bounded by `timeout`, a failed step does not stop the others, and the whole
# run stays under GPU_CHECK_BUDGET_S (default 465 s). Results: one JSON line per step in $OUT/gpu_check.jsonl,
# all output in $OUT/gpu_check.log, a table in $OUT/gpu_check_summary.txt and at the end of stdout.
#
#   On a CPU machine with PyPI, once:   bash tools/prepare_gpu_check.sh           (fills gpu_wheels/)
#   On the GPU machine (device tool):   run  command="bash tools/gpu_check.sh"  carry=["gpu_wheels"]  timeout_s=540
#   CPU dry run of the same steps:      GPU_CHECK_DRY_RUN=1 bash tools/gpu_check.sh   (or --cpu-smoke)
#                                       accelerator cpu, tiny sizes, smoke-size "full:" model, nothing installed
#   Only some steps (setup always runs): GPU_CHECK_STEPS="bench_rollout bench_update" bash tools/gpu_check.sh
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=${GPU_CHECK_DRY_RUN:-0}
[[ "${1:-}" == "--cpu-smoke" ]] && DRY=1
PY=${PYTHON:-python3}
MODE=gpu
[[ "$DRY" == 1 ]] && MODE=cpu-dry-run
BUDGET=${GPU_CHECK_BUDGET_S:-$([[ "$DRY" == 1 ]] && echo 1500 || echo 465)}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
mkdir -p "$OUT"
JSONL=$OUT/gpu_check.jsonl
LOG=$OUT/gpu_check.log
: >"$JSONL"
: >"$LOG"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export SELU_CACHE=$WORK/cache PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [[ "$DRY" == 1 ]]; then
  ACC=cpu DEVICE=cpu BIG=full:llava_next_mistral_smoke
else
  ACC=gpu DEVICE=cuda BIG=full:llava_next_mistral_7b
fi
echo "gpu_check: mode $MODE, budget ${BUDGET}s, out $OUT, work $WORK" | tee -a "$LOG"

# ------------------------------------------------------------------------------------------------ helpers
cat >"$WORK/record.py" <<'PYEOF'
"""record.py STEP RC MILLISECONDS LIMIT LOGFILE MODE [SKIP_REASON]: one JSON line for a step."""
import json, sys

step, rc, millis, limit, logfile, mode = sys.argv[1:7]
skipped = sys.argv[7] if len(sys.argv) > 7 else ""
rc, seconds = int(rc), int(millis) / 1000
lines = []
if logfile != "-":
    with open(logfile, errors="replace") as f:
        lines = f.read().splitlines()
result = None
for line in reversed(lines):
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
        try:
            result = json.loads(line)
            break
        except ValueError:
            pass
row = {"step": step, "mode": mode, "ok": rc == 0 and not skipped, "rc": rc, "seconds": round(seconds, 1),
       "limit_s": int(limit), "timed_out": rc in (124, 137)}
if skipped:
    row["skipped"] = skipped
if result is not None:
    row["result"] = result
if rc != 0 or result is None:
    row["tail"] = [l[-300:] for l in lines[-15:]]
print(json.dumps(row))
PYEOF

cat >"$WORK/runinfo.py" <<'PYEOF'
"""runinfo.py SAVE_DIR: last logged scalars of a fit (all event files) and its last.ckpt's epoch, as JSON."""
import json, sys
from pathlib import Path

from selu_lightning.tb import read_scalars

root = Path(sys.argv[1])
scalars = {}
for events in sorted(root.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
    for tag, points in read_scalars(events).items():
        scalars.setdefault(tag, []).extend(points)
keep = ("train/loss", "train/loss_policy", "train/loss_value", "train/approx_kl", "train/success_rate",
        "val/success_rate", "perf/env_steps_per_s", "perf/gen_tokens_per_s", "train/parse_failure_rate", "epoch")
info = {"event_files": len(list(root.rglob("events.out.tfevents.*")))}
info.update({tag: scalars[tag][-1][1] for tag in keep if tag in scalars})
info["nonfinite"] = sorted(t for t, pts in scalars.items() if any(v != v or abs(v) == float("inf") for _, v in pts))
ckpts = sorted(root.rglob("last.ckpt"))
if ckpts:
    import torch

    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    info.update(ckpt_epoch=ckpt.get("epoch"), ckpt_global_step=ckpt.get("global_step"), ckpt=str(ckpts[0].relative_to(root)))
print(json.dumps(info))
if info["nonfinite"]:
    sys.exit(3)
PYEOF

selected() {  # setup steps always run; others only if listed in GPU_CHECK_STEPS (when set)
  [[ -z "${GPU_CHECK_STEPS:-}" || " setup env install_wheels install_project imports " == *" $1 "* ]] && return 0
  [[ " $GPU_CHECK_STEPS " == *" $1 "* ]]
}

FAILED=()
# run_step NAME CAP_S RESERVE_S CMD...: at most CAP_S seconds, leaving RESERVE_S of the budget for later steps.
run_step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  selected "$name" || return 0
  local now left limit rc t0 t1
  now=$(date +%s)
  left=$((DEADLINE - now - reserve))
  limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    "$PY" "$WORK/record.py" "$name" 1 0 0 - "$MODE" "no time left in the ${BUDGET}s budget" | tee -a "$JSONL"
    FAILED+=("$name")
    return 0
  fi
  printf '\n===== %s (limit %ss) %s\n$ %s\n' "$name" "$limit" "$(date -u +%H:%M:%S)" "$*" >>"$LOG"
  echo "--- $name (limit ${limit}s)"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  t1=$(date +%s%N)
  cat "$WORK/$name.log" >>"$LOG"
  "$PY" "$WORK/record.py" "$name" "$rc" "$(((t1 - t0) / 1000000))" "$limit" "$WORK/$name.log" "$MODE" | tee -a "$JSONL"
  ((rc == 0)) || FAILED+=("$name")
}

# Fit arguments shared by the quickstart steps; sizes: 2 rollouts of 64 steps (GPU) / 16 steps (CPU).
if [[ "$DRY" == 1 ]]; then
  QS_SIZE=(--data.num_envs=4 --data.steps_per_epoch=16 --data.val_episodes=4)
  RL_SIZE=(--trainer.accelerator=cpu --data.num_envs=4 --data.steps_per_epoch=8 --data.eval_num_envs=4
    --model.action_space.init_args.max_new_tokens=16)
  ROLLOUT_ARGS=(--n 4 --steps 8 --ref-steps 1 --new-tokens 8 --pad-to 16 --lora-r 8 --dtype float32)
  UPDATE_ARGS=(--buffer 8 --minibatch 4 --new-tokens 8 --pad-to 16 --lora-r 8 --dtype float32 --gradient-checkpointing)
else
  QS_SIZE=(--data.num_envs=16 --data.steps_per_epoch=64 --data.val_episodes=16)
  RL_SIZE=(--data.num_envs=8 --data.steps_per_epoch=16 --data.eval_num_envs=8
    --model.action_space.init_args.max_new_tokens=48)
  ROLLOUT_ARGS=(--n 32 --steps 64 --ref-steps 2 --new-tokens 256 --lora-r 128 --dtype bfloat16)
  UPDATE_ARGS=(--buffer 32 --minibatch 8 --new-tokens 256 --lora-r 128 --dtype bfloat16 --gradient-checkpointing)
fi
QS=(-m selu_lightning fit -c configs/quickstart.yaml "--trainer.accelerator=$ACC" --trainer.devices=1
  --trainer.max_epochs=2 --trainer.check_val_every_n_epoch=2 --trainer.enable_progress_bar=false "${QS_SIZE[@]}")

# fit.sh SAVE_DIR ARGS...: a selu fit, then its logged scalars and checkpoint epoch as the step's result line.
cat >"$WORK/fit.sh" <<'SHEOF'
dir=$1
shift
"$PY" "$@" "--trainer.logger.init_args.save_dir=$dir" "--trainer.default_root_dir=$dir" && "$PY" "$WORK/runinfo.py" "$dir"
SHEOF
export PY WORK
FIT=(bash "$WORK/fit.sh")

# pytest.sh ARGS...: pytest with a JUnit report, then a JSON line of its outcome. Exit 0 iff no selected test
# failed or errored and at least one passed; a test module that cannot even be imported here (an optional
# simulator missing on this machine) is counted under collection_errors but does not fail the step.
cat >"$WORK/pytest.sh" <<'SHEOF'
"$PY" -m pytest "$@" --junitxml="$WORK/pytest.xml"
"$PY" - "$WORK/pytest.xml" <<'PYEOF'
import json, sys
import xml.etree.ElementTree as ET

out = {"passed": 0, "failed": [], "errors": [], "skipped": 0, "collection_errors": []}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    name = f"{case.get('classname')}::{case.get('name')}"
    if case.find("failure") is not None:
        out["failed"].append(name)
    elif case.find("error") is not None:
        message = case.find("error").get("message", "")
        (out["collection_errors"] if "collection failure" in message else out["errors"]).append(name)
    elif case.find("skipped") is not None:
        out["skipped"] += 1
    else:
        out["passed"] += 1
print(json.dumps(out))
sys.exit(0 if out["passed"] and not out["failed"] and not out["errors"] else 1)
PYEOF
SHEOF
PYTEST=(bash "$WORK/pytest.sh")

# ------------------------------------------------------------------------------------------------ setup
cat >"$WORK/env.py" <<'PYEOF'
import json, os, platform, subprocess

import torch

try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError) as err:
    smi = f"no nvidia-smi: {err}"
print(json.dumps({"python": platform.python_version(), "executable": os.path.realpath(os.sys.executable),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "nvidia_smi": smi,
                  "cpus": os.cpu_count()}))
PYEOF
run_step env 60 0 "$PY" "$WORK/env.py"

WHEEL_REQS=("jsonargparse[signatures,omegaconf]" omegaconf gymnasium)
if [[ "$DRY" == 1 ]]; then
  # Nothing is installed here (and everything is already installed): only check that the wheel folder is there
  # and pip accepts the same request offline. prepare_gpu_check.sh checks the folder's dependencies are complete.
  run_step install_wheels 120 0 bash -c 'ls gpu_wheels/*.whl >/dev/null && "$0" -m pip install --dry-run --no-index \
    --find-links gpu_wheels "$@"' "$PY" "${WHEEL_REQS[@]}"
  run_step install_project 120 0 "$PY" -m pip install --dry-run --no-index --no-deps --no-build-isolation -e .
else
  run_step install_wheels 150 0 "$PY" -m pip install --no-index --no-cache-dir --find-links gpu_wheels "${WHEEL_REQS[@]}"
  # No index: the build backend (setuptools) must come from the machine; PYTHONPATH=$ROOT covers a failure here.
  run_step install_project 120 0 "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
fi
run_step imports 120 0 "$PY" -c '
import json, importlib.metadata as md
from transformers import AutoProcessor, AutoModelForImageTextToText  # noqa: F401
import jsonargparse, omegaconf, gymnasium, lightning, transformers, torch, peft  # noqa: F401
import selu_lightning.cli  # noqa: F401
v = {}
try:
    import torchvision  # noqa: F401  (a broken torchvision breaks AutoProcessor loading)
    v["torchvision_import"] = "ok"
except Exception as err:  # noqa: BLE001
    v["torchvision_import"] = f"{type(err).__name__}: {err}"[:200]
for name in ("torch", "torchvision", "transformers", "lightning", "peft", "jsonargparse", "omegaconf", "gymnasium",
             "tokenizers", "numpy", "selu_lightning"):
    try:
        v[name] = md.version(name)
    except md.PackageNotFoundError:
        v[name] = None
print(json.dumps(v))'
run_step count_7b 120 0 "$PY" tools/bench_common.py --count full:llava_next_mistral_7b

# ------------------------------------------------------------------------------------------------ tests
if [[ "$DRY" == 1 ]]; then
  run_step pytest_gpu 600 0 env SELU_GPU_TESTS_ON_CPU=1 "${PYTEST[@]}" -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider
else
  run_step pytest_gpu 200 240 "${PYTEST[@]}" -m gpu tests -q -rs -p no:cacheprovider --continue-on-collection-errors
fi

# ------------------------------------------------------------------------------------------------ fits
run_step quickstart_bf16_mixed 120 220 "${FIT[@]}" "$WORK/qs_mixed" "${QS[@]}" --trainer.precision=bf16-mixed
run_step quickstart_bf16_true 100 210 "${FIT[@]}" "$WORK/qs_true" "${QS[@]}" --trainer.precision=bf16-true
# One more epoch from the bf16-mixed run's last.ckpt (same save_dir, so --ckpt_path last finds it).
run_step quickstart_resume 100 200 "${FIT[@]}" "$WORK/qs_mixed" "${QS[@]}" --trainer.precision=bf16-mixed \
  --trainer.max_epochs=3 --ckpt_path=last
run_step rl4vlm_numberline_tiny 120 190 "${FIT[@]}" "$WORK/rl4vlm" -m selu_lightning fit \
  -c configs/rl4vlm/numberline.yaml --model.policy.model_name_or_path=tiny:llava_next --trainer.max_epochs=2 \
  --trainer.check_val_every_n_epoch=2 --data.val_episodes=8 --trainer.enable_progress_bar=false "${RL_SIZE[@]}"

# ------------------------------------------------------------------------------------------------ benchmarks
run_step bench_rollout 240 100 "$PY" tools/bench_rollout.py --model "$BIG" --device "$DEVICE" "${ROLLOUT_ARGS[@]}"
run_step bench_update 200 0 "$PY" tools/bench_update.py --model "$BIG" --device "$DEVICE" "${UPDATE_ARGS[@]}"

# ------------------------------------------------------------------------------------------------ summary
"$PY" - "$JSONL" "$((  $(date +%s) - START ))" <<'PYEOF' | tee "$OUT/gpu_check_summary.txt"
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n===== gpu_check summary ({rows[0]['mode'] if rows else '?'}, {sys.argv[2]} s)")
print(f"{'step':<26} {'status':<8} {'s':>6}  key figures")
for r in rows:
    res = r.get("result") or {}
    status = "SKIP" if r.get("skipped") else ("PASS" if r["ok"] else ("TIMEOUT" if r["timed_out"] else "FAIL"))
    key = ""
    if r["step"] == "count_7b" and "parameters" in res:
        key = f"{res['parameters']:,} parameters ({res['bf16_gib']} GiB bf16)"
    elif r["step"] == "bench_rollout" and "speedup_vs_reference" in res:
        n = max(res["ours"], key=int)
        key = f"N={n}: {res['speedup_vs_reference'][n]:.2f}x vs reference, {res['ours'][n]['gen_tokens_per_s']:.0f} tok/s"
        if "decode_fraction_of_bandwidth_bound" in res:
            key += f", decode {res['decode_fraction_of_bandwidth_bound'][n]:.3f} of spec BW"
            if "decode_fraction_of_measured_bandwidth" in res:
                key += f" ({res['decode_fraction_of_measured_bandwidth'][n]:.3f} of measured)"
        if res.get("peak_gib") is not None:
            key += f", peak {res['peak_gib']:.1f} GiB"
    elif r["step"] == "bench_update" and "speedup_vs_batch1" in res:
        key = f"{res['speedup_vs_batch1']:.2f}x vs RL4VLM batch-1, {res['ours']['tokens_per_s']:.0f} tok/s"
        if "update_fraction_of_peak_flops" in res:
            key += f", {res['update_fraction_of_peak_flops']:.3f} of spec FLOP/s"
            if "update_fraction_of_measured_flops" in res:
                key += f" ({res['update_fraction_of_measured_flops']:.3f} of measured)"
        key += f", peak {res['ours']['peak_gib']:.1f} GiB"
    elif "ckpt_epoch" in res or "train/loss" in res:
        key = ", ".join(f"{k}={res[k]:.4g}" if isinstance(res[k], float) else f"{k}={res[k]}"
                        for k in ("train/loss", "val/success_rate", "perf/env_steps_per_s", "ckpt_epoch") if k in res)
    elif r["step"] == "pytest_gpu" and "passed" in res:
        key = f"{res['passed']} passed, {len(res['failed'])} failed, {len(res['errors'])} errors, {res['skipped']} skipped"
        bad = res["failed"] + res["errors"]
        key += (f": {', '.join(n.split('::')[-1] for n in bad)[:80]}" if bad else "")
        key += f"; {len(res['collection_errors'])} modules not importable here" if res["collection_errors"] else ""
    elif r["step"] == "imports" and res:
        key = " ".join(f"{k} {v}" for k, v in res.items() if k in ("torch", "torchvision", "transformers", "jsonargparse"))
    elif r["step"] == "env" and res:
        key = f"{res.get('gpu')} torch {res.get('torch')} cuda {res.get('cuda')}"
    if not key:
        key = r.get("skipped") or next((l for l in reversed(r.get("tail", [])) if l.strip()), "")[-110:]
    print(f"{r['step']:<26} {status:<8} {r['seconds']:>6.0f}  {key}")
passed = sum(r["ok"] for r in rows)
print(f"{passed}/{len(rows)} steps passed")
PYEOF
echo "results: $JSONL, log: $LOG"
rm -rf "$WORK"
((${#FAILED[@]} == 0))
