"""Every command a cluster recipe gives passes the config check on the hardware that recipe asks for.

The command lines are read out of the recipe files themselves (the Slurm header, the KubeRay
entrypoint, the usage line of launch/submit.sh, the README's "Running on a cluster" section), the
config is composed by Hydra from the package's config module with those overrides, as
`python -m egsw_rl.launch` composes it, and `validate` gets the GPUs the recipe requests.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

import egsw_rl.launch  # noqa: F401  registers the schema
from egsw_rl.config import validate

REPO = Path(__file__).resolve().parents[2]
LAUNCH = ("python", "-m", "egsw_rl.launch")


def compose_like_launch(overrides: list[str]):
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def launch_args(command: str) -> list[str]:
    """The arguments `python -m egsw_rl.launch` receives from one recipe command line."""
    words = shlex.split(command, comments=True)
    for i in range(len(words)):
        if tuple(words[i : i + 3]) == LAUNCH:
            return words[i + 3 :]
        if Path(words[i]).name in ("submit.sh", "slurm.sbatch"):  # both pass "$@" to launch
            return words[i + 1 :]
    raise AssertionError(f"no egsw_rl launch in {command!r}")


def runs_of(args: list[str]) -> list[list[str]]:
    """The runs of one command: itself, or each combination of a -m sweep's comma lists."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    args = [a for a in args if a not in ("-m", "--multirun")]
    choices = []
    for a in args:
        key, _, value = a.partition("=")
        simple = value and not value.startswith(("[", "{", "'", '"'))
        choices.append([f"{key}={v}" for v in value.split(",")] if simple and "," in value else [a])
    return [list(c) for c in itertools.product(*choices)]


def hardware(text: str) -> int:
    """GPUs a README / usage comment says the command is for: 'one 8-GPU node', '2 x 8-GPU nodes'."""
    m = re.search(r"(one|\d+) x? ?(\d+)-GPU nodes?", text)
    assert m, f"no 'N-GPU node(s)' hardware note in {text!r}"
    nodes = 1 if m.group(1) == "one" else int(m.group(1))
    return nodes * int(m.group(2))


# ----------------------------------------------------------------------------- the recipes


def slurm_recipes() -> list[tuple[str, str, int]]:
    text = (REPO / "launch" / "slurm.sbatch").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    gpus = int(sbatch["nodes"]) * int(sbatch["gpus-per-node"].rsplit(":", 1)[-1])
    commands = re.findall(r"^#\s+(sbatch launch/slurm\.sbatch .*)$", text, re.M)
    assert commands, "launch/slurm.sbatch shows no `sbatch launch/slurm.sbatch ...` command"
    return [("launch/slurm.sbatch", c, gpus) for c in commands]


def kuberay_recipes() -> list[tuple[str, str, int]]:
    docs = list(yaml.safe_load_all((REPO / "launch" / "kuberay-rayjob.yaml").read_text()))
    jobs = [d for d in docs if d and d.get("kind") == "RayJob"]
    assert jobs
    out = []
    for job in jobs:
        cluster = job["spec"]["rayClusterSpec"]
        head = cluster["headGroupSpec"]
        gpus = int(head.get("rayStartParams", {}).get("num-gpus", 0))
        for group in cluster["workerGroupSpecs"]:
            (container,) = [c for c in group["template"]["spec"]["containers"]]
            gpus += int(group["replicas"]) * int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        out.append(("launch/kuberay-rayjob.yaml", job["spec"]["entrypoint"], gpus))
    return out


def submit_recipes() -> list[tuple[str, str, int]]:
    text = (REPO / "launch" / "submit.sh").read_text()
    lines = [
        line.lstrip("# ")
        for line in text.splitlines()
        if line.startswith("#") and "launch/submit.sh " in line and "conf=" in line
    ]
    assert lines, "launch/submit.sh has no usage line"
    return [("launch/submit.sh", line, hardware(line)) for line in lines]


def readme_recipes() -> list[tuple[str, str, int]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = [
        line.strip()
        for line in section.splitlines()
        if line.startswith("    ")
        and ("egsw_rl.launch" in line or "submit.sh" in line or "slurm.sbatch " in line)
    ]
    assert lines, "README's 'Running on a cluster' shows no command"
    return [("README.md", line, hardware(line)) for line in lines]


RECIPES = {
    "launch/slurm.sbatch": slurm_recipes,
    "launch/kuberay-rayjob.yaml": kuberay_recipes,
    "launch/submit.sh": submit_recipes,
    "README.md": readme_recipes,
}


@pytest.mark.parametrize("source", list(RECIPES))
def test_recipe_commands_pass_the_config_check_on_the_hardware_they_request(source):
    recipes = RECIPES[source]()
    for _, command, gpus in recipes:
        for args in runs_of(launch_args(command)):
            cfg = compose_like_launch(args)
            try:
                validate(cfg, available_gpus=gpus)
            except Exception as e:
                raise AssertionError(f"{source}: `{command}` on {gpus} GPUs: {e}") from e


def test_the_check_sees_the_hardware_it_is_given():
    """The old Slurm line: 2 learner nodes x 4, 16 ranks, on 8 GPUs. Must fail, or the test
    above proves nothing."""
    from egsw_rl.config import ConfigError

    cfg = compose_like_launch(
        launch_args("sbatch launch/slurm.sbatch conf=qwen_math_7b learner.num_nodes=2 learner.num_ranks=16")
    )
    with pytest.raises(ConfigError, match="learner.num_ranks"):
        validate(cfg, available_gpus=8)
    assert hardware("# one 8-GPU node") == 8 and hardware("2 x 8-GPU nodes") == 16
    assert runs_of(["-m", "a=1,2", "b=3"]) == [["a=1", "b=3"], ["a=2", "b=3"]]


# ----------------------------------------------------------------------------- launch/submit.sh

FAKE_RAY = r"""#!/usr/bin/env python3
# Records what launch/submit.sh hands `ray`: its arguments, the runtime env file's content, the mode.
import json, os, sys
args = sys.argv[1:]
files = {a: open(a).read() for a, flag in zip(args[1:], args) if flag == "--runtime-env"}
json.dump({"args": args, "files": files, "auth_mode": os.environ.get("RAY_AUTH_MODE")},
          open(os.environ["FAKE_RAY_OUT"], "w"))
"""


def run_submit(tmp_path, env_extra: dict, args: list[str]):
    import json
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ray").write_text(FAKE_RAY.replace("/usr/bin/env python3", sys.executable))
    (bin_dir / "ray").chmod(0o755)
    (bin_dir / "python").unlink(missing_ok=True)
    (bin_dir / "python").symlink_to(sys.executable)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "HF_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        FAKE_RAY_OUT=str(tmp_path / "ray.json"),
        **env_extra,
    )
    p = subprocess.run(
        [str(REPO / "launch" / "submit.sh"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads((tmp_path / "ray.json").read_text()), p.stderr


def test_submit_sh_gives_ray_one_runtime_env_with_the_wandb_key(tmp_path):
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    seen, said = run_submit(
        tmp_path,
        {"WANDB_API_KEY": "dummy-key", "WANDB_MODE": "offline"},
        ["conf=qwen_math_7b", "data.eval=[math500,aime24]", "a b"],
    )
    args = seen["args"]
    assert args[:2] == ["job", "submit"]
    cut = args.index("--")
    assert args[cut + 1 :] == [
        "python",
        "-m",
        "egsw_rl.launch",
        "conf=qwen_math_7b",
        "data.eval=[math500,aime24]",
        "a b",
    ]
    flags = args[:cut]
    # Ray's job CLI reads them with this function, which refuses --runtime-env with --runtime-env-json
    runtime_env_file = flags[flags.index("--runtime-env") + 1] if "--runtime-env" in flags else None
    runtime_env_json = flags[flags.index("--runtime-env-json") + 1] if "--runtime-env-json" in flags else None
    if runtime_env_file:
        (tmp_path / "renv.yaml").write_text(seen["files"][runtime_env_file])
        runtime_env_file = str(tmp_path / "renv.yaml")
    env = parse_runtime_env_args(
        runtime_env=runtime_env_file,
        runtime_env_json=runtime_env_json,
        working_dir=flags[flags.index("--working-dir") + 1] if "--working-dir" in flags else None,
    )
    shipped = yaml.safe_load((REPO / "launch" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and env["excludes"] == shipped["excludes"]
    assert env["env_vars"] == {**shipped["env_vars"], "WANDB_API_KEY": "dummy-key", "WANDB_MODE": "offline"}
    assert not any("dummy-key" in a for a in args) and "dummy-key" not in said  # not in argv / ps
    assert "WANDB_API_KEY" in said


@pytest.mark.parametrize(
    "token_env, mode",
    [
        ({"RAY_AUTH_TOKEN": "t0k"}, "token"),
        ({"RAY_AUTH_TOKEN_PATH": "/some/token"}, "token"),
        ({"~": "t0k"}, "token"),  # ~/.ray/auth_token, as any local ray.init leaves it
        ({}, None),  # no token: nothing to send
        ({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t0k"}, "disabled"),  # the user's choice stands
    ],
)
def test_submit_sh_sets_ray_auth_mode_when_there_is_a_token(tmp_path, token_env, mode):
    token_env = dict(token_env)
    if "~" in token_env:
        (tmp_path / "home" / ".ray").mkdir(parents=True)
        (tmp_path / "home" / ".ray" / "auth_token").write_text(token_env.pop("~"))
    seen, said = run_submit(tmp_path, token_env, ["conf=tiny_cpu"])
    assert seen["auth_mode"] == mode
    assert f"RAY_AUTH_MODE={mode}" in said if mode else "no Ray token" in said
