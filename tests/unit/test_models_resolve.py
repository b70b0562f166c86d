"""`model.path` resolution (egsw_rl.models.resolve) and the offline Hugging Face cache helper
(egsw_rl.testing.populate_hf_cache): local folders, run and checkpoint directories, hub repo ids
from an offline cache, and the error that names what was tried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egsw_rl.checkpoint import mark_complete, step_dir
from egsw_rl.models import ModelNotFoundError, locate_model, portable_model_path, resolve_model, vocab_size
from egsw_rl.testing import populate_hf_cache

REPO = "egsw-rl-test/tiny-qwen2"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, tiny_model_dir):
    """An HF_HOME holding the tiny model under REPO, with the hub switched off."""
    home = tmp_path / "hf_home"
    snap = populate_hf_cache(tiny_model_dir, REPO, home)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # a relative "org/name" folder must not exist by accident
    return home, snap


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_folder(tmp_path):
    folder = _folder(tmp_path / "m")
    m = locate_model(str(folder))
    assert (m.path, m.kind) == (folder, "folder")
    assert resolve_model(str(folder)) == folder
    assert portable_model_path(str(folder)) == str(folder)


def test_relative_folder_becomes_absolute(tmp_path, monkeypatch):
    _folder(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    # exists locally, so it is a folder even though it looks like a hub id
    assert resolve_model("org/name") == tmp_path / "org" / "name"
    assert portable_model_path("org/name") == str(tmp_path / "org" / "name")


def test_run_dir_and_checkpoint_dir(tmp_path):
    run = tmp_path / "run"
    for step, complete in [(5, True), (10, True), (15, False)]:
        _folder(step_dir(run, step) / "hf")
        if complete:
            mark_complete(step_dir(run, step))
    m = locate_model(str(run))
    assert (m.path, m.kind, m.step, m.run_dir) == (step_dir(run, 10) / "hf", "run", 10, run)
    c = locate_model(str(step_dir(run, 5)))
    assert (c.path, c.kind, c.step, c.run_dir) == (step_dir(run, 5) / "hf", "checkpoint", 5, run)
    assert portable_model_path(str(run)) == str(step_dir(run, 10) / "hf")
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"model.path=.*no complete checkpoint"):
        resolve_model(str(empty))


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        resolve_model(str(tmp_path / "stuff"))


def test_hub_id_from_offline_cache(offline_cache):
    home, snap = offline_cache
    m = locate_model(REPO)
    assert (m.path, m.kind) == (snap, "hub")
    assert m.path.is_relative_to(home / "hub" / "models--egsw-rl-test--tiny-qwen2" / "snapshots")
    assert (m.path / "model.safetensors").is_file() and (m.path / "tokenizer.json").is_file()
    # the driver hands the id itself to the actors: each resolves it on its own node
    assert portable_model_path(REPO) == REPO
    assert vocab_size(REPO) == json.loads((snap / "config.json").read_text())["vocab_size"]


def test_learner_checkpoint_index_takes_a_hub_id(offline_cache):
    """The learner's loader read only local folders: a hub id raised FileNotFoundError on rank 0."""
    from egsw_rl.actors.learner_model import _checkpoint_index

    _, snap = offline_cache
    index = _checkpoint_index(REPO)
    assert "model.embed_tokens.weight" in index
    assert set(index.values()) == {str(snap / "model.safetensors")}


def test_eval_model_spec_takes_a_hub_id(offline_cache):
    from egsw_rl import eval as ev

    _, snap = offline_cache
    spec = ev.resolve_model(REPO)
    assert (spec.path, spec.name, spec.spec) == (str(snap), REPO, REPO)
    with pytest.raises(ev.EvalError, match=r"--model='egsw-rl-test/absent'"):
        ev.resolve_model("egsw-rl-test/absent")


def test_missing_everywhere_says_what_was_tried(offline_cache):
    home, _ = offline_cache
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("egsw-rl-test/absent")
    text = str(err.value)
    assert "model.path='egsw-rl-test/absent'" in text
    assert f"local path {Path.cwd() / 'egsw-rl-test' / 'absent'}: does not exist" in text
    assert f"Hugging Face cache {home / 'hub'}: no snapshot" in text
    assert "HF_HUB_OFFLINE=1" in text and "hf download egsw-rl-test/absent" in text
    with pytest.raises(
        ModelNotFoundError, match=r"model.path='\./gone/model'.*does not exist.*not a hub repo id"
    ):
        resolve_model("./gone/model")
    with pytest.raises(ModelNotFoundError, match=r"rollout\.x="):
        resolve_model("/no/such/dir", key="rollout.x")


def test_incomplete_cached_snapshot_is_refused_offline(tmp_path, monkeypatch, tiny_model_dir):
    """A cache that once served only config and tokenizer (e.g. AutoConfig on the driver) has no
    weights: fine for the vocab size, refused for loading the model."""
    src = tmp_path / "partial"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((tiny_model_dir / f).read_bytes())
    (src / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        )
    )
    home = tmp_path / "hf_home"
    snap = populate_hf_cache(src, "org/partial", home)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/partial", weights=False) == snap
    with pytest.raises(ModelNotFoundError, match=r"incomplete: weights missing: \['model-00001-of-00002"):
        resolve_model("org/partial")


def test_builtin_names_win(tmp_path, monkeypatch, tiny_model_dir):
    _folder(tmp_path / "tiny")  # a folder named like a built-in does not shadow it
    monkeypatch.chdir(tmp_path)
    assert locate_model("tiny").kind == "builtin" and resolve_model("tiny") == tiny_model_dir


def test_populate_hf_cache_layout(tmp_path, tiny_model_dir):
    home = tmp_path / "h"
    snap = populate_hf_cache(tiny_model_dir, REPO, home)
    repo = home / "hub" / "models--egsw-rl-test--tiny-qwen2"
    commit = (repo / "refs" / "main").read_text()
    assert snap == repo / "snapshots" / commit and len(commit) == 40 and "\n" not in commit
    files = sorted(p.name for p in tiny_model_dir.iterdir() if p.is_file())
    assert sorted(p.name for p in snap.iterdir()) == files
    for p in snap.iterdir():
        assert p.is_symlink() and not os.path.isabs(os.readlink(p))
        assert p.resolve().parent == repo / "blobs"
        assert p.read_bytes() == (tiny_model_dir / p.name).read_bytes()
    # weights are LFS objects on the hub: named by their sha256
    assert len((snap / "model.safetensors").resolve().name) == 64
    assert populate_hf_cache(tiny_model_dir, REPO, home) == snap  # again: same commit, nothing new
    assert len(list((repo / "snapshots").iterdir())) == 1
    with pytest.raises(ValueError, match="repo id"):
        populate_hf_cache(tiny_model_dir, "a/b/c", home)


def test_populate_hf_cache_loads_by_repo_id_in_transformers(tmp_path, tiny_model_dir):
    """A fresh interpreter (huggingface_hub reads HF_HOME / HF_HUB_OFFLINE at import), like an
    actor on another node: transformers loads config, tokenizer and weights by repo id."""
    home = tmp_path / "h"
    populate_hf_cache(tiny_model_dir, REPO, home)
    code = (
        "from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer\n"
        f"r = {REPO!r}\n"
        "tok = AutoTokenizer.from_pretrained(r)\n"
        "m = AutoModelForCausalLM.from_pretrained(r)\n"
        "print(AutoConfig.from_pretrained(r).vocab_size, len(tok), type(m).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from transformers import AutoTokenizer

    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    n_tok = len(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    assert out.stdout.split()[-3:] == [str(vocab), str(n_tok), "Qwen2ForCausalLM"]


def test_online_download_failure_is_reported(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE a missing id is downloaded; an unreachable hub (a closed local port
    here) ends in the same error, naming the failed download."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"no snapshot for revision main; download into .*hub: "):
        resolve_model("egsw-rl-test/absent")
