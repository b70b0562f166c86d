#!/usr/bin/env bash
# Submit a run to a running Ray cluster (managed, KubeRay, or the one launch/slurm.sbatch starts):
#   RAY_ADDRESS=http://head:8265 launch/submit.sh conf=qwen_math_7b algo.alpha=0.3
# Every argument goes to `python -m egsw_rl.launch`, so Hydra overrides and -m multirun work.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard address, e.g. http://head:8265}"
cd "$(dirname "$0")/.."
extra=()
if [ -n "${WANDB_API_KEY:-}" ]; then
    extra=(--runtime-env-json "{\"env_vars\": {\"WANDB_API_KEY\": \"${WANDB_API_KEY}\"}}")
fi
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
    --runtime-env launch/runtime_env.yaml "${extra[@]}" \
    -- python -m egsw_rl.launch "$@"
