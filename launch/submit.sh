#!/usr/bin/env bash
# Submit a run to a running Ray cluster (`ray start --head`, KubeRay, or launch/slurm.sbatch's):
#   launch/submit.sh conf=qwen_math_7b hydra.run.dir=/shared/runs/qwen7b   # one 8-GPU node
# Every argument goes to `python -m egsw_rl.launch`, so Hydra overrides and -m multirun work.
# Name the run directory (hydra.run.dir) on storage every node can write: without it the run
# would write inside Ray's temporary copy of this directory.
#
# What it does, and prints, so nothing is left to guess:
# - Address: RAY_ADDRESS (the dashboard, http://HEAD:8265, or HEAD:6379); unset, `ray job submit`
#   finds the cluster `ray start --head` started on this machine.
# - Token auth: Ray 2.60's `ray start --head` turns token auth on when it finds a token
#   (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but the job client sends its token
#   only when RAY_AUTH_MODE=token is set in its own shell. With a token and no RAY_AUTH_MODE this
#   script sets it. A remote cluster's token: `ray get-auth-token` on its head, then
#   `export RAY_AUTH_TOKEN=...` here.
# - One runtime env: launch/runtime_env.yaml plus the variables below that are set in your shell
#   (Ray's job CLI takes either --runtime-env or --runtime-env-json, never both). It goes to Ray
#   through a pipe, so no key is written to disk or shows in `ps` (the job's runtime env holds
#   it: `ray job list` shows it to whoever can reach the cluster).
set -euo pipefail

# All in one function, read whole before it runs: `ray job submit` tails the job for as long as it
# runs, and bash would otherwise read an edited (git pull) script mid-run.
main() {
    cd "$(dirname "$0")/.."
    PASS_THROUGH="WANDB_API_KEY WANDB_MODE WANDB_ENTITY WANDB_PROJECT WANDB_BASE_URL HF_TOKEN HF_ENDPOINT HF_HUB_OFFLINE"
    say() { echo "submit.sh: $*" >&2; }

    ray_bin=$(command -v ray) || { say "no 'ray' on PATH: activate the environment egsw_rl is installed in"; exit 2; }
    py="$(dirname "$ray_bin")/python"
    [ -x "$py" ] || py=python3

    if [ -n "${RAY_ADDRESS:-}" ]; then
        say "cluster: RAY_ADDRESS=$RAY_ADDRESS"
    else
        say "cluster: RAY_ADDRESS is unset; Ray looks for one started on this machine (ray start --head)"
    fi

    if [ -n "${RAY_AUTH_MODE:-}" ]; then
        say "auth: RAY_AUTH_MODE=$RAY_AUTH_MODE (from your shell)"
    else
        token_from=""
        if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
            token_from="RAY_AUTH_TOKEN"
        elif [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
            token_from="RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
        elif [ -s "$HOME/.ray/auth_token" ]; then
            token_from="$HOME/.ray/auth_token"
        fi
        if [ -n "$token_from" ]; then
            export RAY_AUTH_MODE=token
            say "auth: token from $token_from; set RAY_AUTH_MODE=token so ray job submit sends it"
        else
            say "auth: no Ray token here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); submitting" \
                "without one. If the cluster answers 'Missing authentication token', run" \
                "'ray get-auth-token' on its head and export RAY_AUTH_TOKEN=<that token>"
        fi
    fi

    runtime_env=$(PASS_THROUGH="$PASS_THROUGH" "$py" - launch/runtime_env.yaml <<'EOF'
import json, os, sys

import yaml

with open(sys.argv[1]) as f:
    env = yaml.safe_load(f) or {}
names = [k for k in os.environ["PASS_THROUGH"].split() if os.environ.get(k)]
env.setdefault("env_vars", {}).update({k: os.environ[k] for k in names})
print("submit.sh: runtime env: %s + %s" % (sys.argv[1], ", ".join(names) or "no variables from your shell"),
      file=sys.stderr)
print(json.dumps(env))
EOF
    )

    # JSON is YAML: Ray's --runtime-env reads it from the pipe.
    "$ray_bin" job submit --runtime-env <(printf '%s\n' "$runtime_env") -- python -m egsw_rl.launch "$@"
}

main "$@"
exit
