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
        if tuple(words[i:i + 3]) == LAUNCH:
            return words[i + 3:]
        if Path(words[i]).name in ("submit.sh", "slurm.sbatch"):  # both pass "$@" to launch
            return words[i + 1:]
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
    lines = [line.lstrip("# ") for line in text.splitlines()
             if line.startswith("#") and "launch/submit.sh " in line and "conf=" in line]
    assert lines, "launch/submit.sh has no usage line"
    return [("launch/submit.sh", line, hardware(line)) for line in lines]


def readme_recipes() -> list[tuple[str, str, int]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()
             if line.startswith("    ") and ("egsw_rl.launch" in line or "submit.sh" in line
                                              or "slurm.sbatch " in line)]
    assert lines, "README's 'Running on a cluster' shows no command"
    return [("README.md", line, hardware(line)) for line in lines]


RECIPES = {"launch/slurm.sbatch": slurm_recipes, "launch/kuberay-rayjob.yaml": kuberay_recipes,
           "launch/submit.sh": submit_recipes, "README.md": readme_recipes}


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

    cfg = compose_like_launch(launch_args(
        "sbatch launch/slurm.sbatch conf=qwen_math_7b learner.num_nodes=2 learner.num_ranks=16"))
    with pytest.raises(ConfigError, match="learner.num_ranks"):
        validate(cfg, available_gpus=8)
    assert hardware("# one 8-GPU node") == 8 and hardware("2 x 8-GPU nodes") == 16
    assert runs_of(["-m", "a=1,2", "b=3"]) == [["a=1", "b=3"], ["a=2", "b=3"]]
