"""Evaluation arithmetic and reports: pass@k against brute force, avg@n / pass@k through
`evaluate` with a scripted generator and grader, the paper-style table, result comparison
(mean ± std per label) and the training-curve comparison on synthetic runs."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest

from egsw_rl import compare as cmp
from egsw_rl import eval as ev
from egsw_rl.data import Problem
from egsw_rl.rewards import RewardResult


# ---------------------------------------------------------------- pass@k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert ev.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_special_values():
    assert ev.pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the sample accuracy
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples
    big = ev.pass_at_k(1024, 3, 512)  # no overflow with large n
    assert 0.8 < big < 1.0
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            ev.pass_at_k(*bad)


def test_mean_std_and_percent_format():
    m, s = ev.mean_std([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and s == pytest.approx(0.1)  # sample std (ddof=1)
    assert ev.mean_std([0.4]) == (0.4, 0.0)
    assert math.isnan(ev.mean_std([])[0])
    assert ev.fmt_pct(0.4567) == "45.7"
    assert ev.fmt_pct(0.4567, 0.0123) == "45.7 ± 1.2"
    assert ev.fmt_pct(None) == "–"


# ---------------------------------------------------------------- evaluate


class ScriptedGrader:
    """Correct iff the completion text is 'right'; multiple choice iff choices were given."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, golds, choices=None, *, task="math"):
        self.calls.append((task, len(texts), choices is not None))
        return [RewardResult(1.0 if t == "right" else 0.0, "correct" if t == "right" else "wrong",
                             t, boxed=t != "unboxed") for t in texts]

    def close(self):
        pass


def test_evaluate_avg_and_pass_at_k():
    # problem i gets (i+1) right answers out of n=4
    problems = [Problem(f"q{i}", "1", id=str(i)) for i in range(4)]

    def gen(questions, n):
        return [["right"] * (int(q[1:]) + 1) + ["wrong"] * (n - int(q[1:]) - 1) for q in questions]

    grader = ScriptedGrader()
    samples = []
    res = ev.evaluate(gen, {"math500": problems}, n=4, ks=[1, 2, 4, 8], grader=grader, batch_size=3,
                      samples_out=samples)
    r = res["math500"]
    assert r.problems == 4 and r.n == 4
    assert r.per_problem_correct == [1, 2, 3, 4]
    assert r.accuracy == pytest.approx((1 + 2 + 3 + 4) / 16)
    assert set(r.pass_at_k) == {"pass@1", "pass@2", "pass@4"}  # k > n dropped
    assert r.pass_at_k["pass@1"] == pytest.approx(r.accuracy)
    assert r.pass_at_k["pass@2"] == pytest.approx(statistics.fmean(brute_pass_at_k(4, c, 2) for c in (1, 2, 3, 4)))
    assert r.pass_at_k["pass@4"] == 1.0
    assert r.status["correct"] == 10 and r.status["wrong"] == 6
    assert len(samples) == 16 and samples[0]["benchmark"] == "math500" and samples[0]["status"] == "correct"
    assert r.mean_response_tokens is None  # plain strings: no token counts
    metrics = ev.eval_metrics(res)
    assert metrics["eval/math500/accuracy"] == pytest.approx(10 / 16)
    assert metrics["eval/math500/pass@2"] == r.pass_at_k["pass@2"]
    assert metrics["eval/mean/accuracy"] == pytest.approx(10 / 16)


def test_evaluate_routes_choice_problems_and_counts_tokens():
    from types import SimpleNamespace

    problems = [Problem("m", "2"), Problem("c", "B", choices=("x", "y", "z", "w"))]

    def gen(questions, n):
        return [[SimpleNamespace(text="right", token_ids=[1, 2, 3], finish_reason="stop"),
                 SimpleNamespace(text="unboxed", token_ids=[1], finish_reason="length")] for _ in questions]

    grader = ScriptedGrader()
    r = ev.evaluate(gen, {"mixed": problems}, n=2, grader=grader)["mixed"]
    assert sorted(grader.calls) == [("choice", 2, True), ("math", 2, False)]
    assert r.accuracy == 0.5
    assert r.boxed_rate == 0.5
    assert r.mean_response_tokens == 2.0 and r.truncated_frac == 0.5
    assert r.tokens == 8


def test_evaluate_rejects_wrong_sample_count():
    with pytest.raises(ev.EvalError):
        ev.evaluate(lambda qs, n: [["x"] for _ in qs], {"b": [Problem("q", "1")]}, n=2, grader=ScriptedGrader())


def test_generator_fn_groups_completions_by_prompt():
    from types import SimpleNamespace

    class FakeGen:
        def render(self, qs):
            return [f"<{q}>" for q in qs]

        def generate(self, prompts, n, **kw):
            assert kw["logprobs"] == 0 and kw["temperature"] == 0.0
            # deliberately out of order
            return [SimpleNamespace(prompt_index=b, sample_index=j, text=f"{p}{j}")
                    for j in reversed(range(n)) for b, p in enumerate(prompts)]

    fn = ev.generator_fn(FakeGen(), temperature=0.0)
    out = fn(["a", "b"], 2)
    assert [[c.text for c in row] for row in out] == [["<a>0", "<a>1"], ["<b>0", "<b>1"]]


def test_real_grader_math_and_choice():
    with ev.Grader(workers=1, timeout_s=10.0) as g:
        res = g(["so \\boxed{\\frac{1}{2}}", "\\boxed{3}", "no answer here"], ["0.5", "4", "1"])
        assert [r.status for r in res] == ["correct", "wrong", "no_answer"]
        res = g(["The answer is \\boxed{B}", "\\boxed{C}"], ["B", "B"], [("a", "b", "c", "d")] * 2, task="choice")
        assert [r.status for r in res] == ["correct", "wrong"]


# ---------------------------------------------------------------- prompts and benchmarks


def test_one_renderer_for_training_and_evaluation(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from egsw_rl.actors import generator
    from egsw_rl.prompts import render_prompts

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for name in ("qwen_math", "qwen_math_user", "chat", "Question: {question}\\boxed{}"):
        assert (ev.render_prompts(tok, ["What is 1+1?"], name) == render_prompts(tok, ["What is 1+1?"], name)
                == generator.render_prompts(tok, ["What is 1+1?"], name)), name
    [s] = ev.render_prompts(tok, ["Q"], "qwen_math")  # Qwen2.5-Math's: the instruction is the system turn
    assert s.index("<|im_start|>system\nPlease reason") < s.index("<|im_start|>user\nQ<|im_end|>")
    [u] = ev.render_prompts(tok, ["What is 1+1?"], "qwen_math_user")  # SimpleRL-Zoo's: in the user turn
    assert ("<|im_start|>user\nWhat is 1+1?\nPlease reason step by step, and put your final answer "
            "within \\boxed{}.<|im_end|>") in u and u.endswith("<|im_start|>assistant\n")
    assert ev.render_prompts(tok, ["Q"], "Question: {question}\\boxed{}") == ["Question: Q\\boxed{}"]
    with pytest.raises(ev.EvalError):
        ev.render_prompts(tok, ["Q"], "no placeholder")
    # a trained run is evaluated with the template it was trained with, unless told otherwise
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rollout:\n  prompt_template: qwen_math_user\n")
    spec = ev.ModelSpec("x", str(tiny_model_dir), "x", "x", run_dir=str(run))
    assert ev._prompt_for(spec, None) == "qwen_math_user"
    assert ev._prompt_for(spec, "chat") == "chat"
    assert ev._prompt_for(ev.ModelSpec("m", "m", "m", "m"), None) == "qwen_math"


def test_a_prompt_that_does_not_fit_is_scored_overlong_not_generated():
    from egsw_rl.data import Problem

    asked = []

    def gen(questions, n):
        asked.extend(questions)
        return [[r"\boxed{2}"] * n for _ in questions]

    probs = [Problem("What is 1+1?", "2", id="a"), Problem("long " * 50, "2", id="b")]
    res = ev.evaluate(gen, {"b": probs}, n=2, too_long=lambda qs: [len(q) > 100 for q in qs])["b"]
    assert asked == ["What is 1+1?"]
    assert res.status["overlong_prompt"] == 2 and res.status["correct"] == 2
    assert res.accuracy == 0.5 and res.per_problem_correct == [2, 0]
    assert ev.eval_metrics({"b": res})["eval/b/overlong_prompt"] == 1


def test_parse_benchmarks():
    assert ev._parse_benchmarks("math500, aime24", None) == [("math500", None), ("aime24", None)]
    assert ev._parse_benchmarks("gsm8k,mine=/x/y.jsonl", "/g.csv") == [
        ("gsm8k", None), ("mine", "/x/y.jsonl"), ("gpqa_diamond", "/g.csv")]
    with pytest.raises(ev.EvalError):
        ev._parse_benchmarks("math500,math500", None)


def test_load_benchmarks_local_and_gpqa_csv(tmp_path):
    import csv

    math500 = ev.load_benchmark("math500", limit=5)
    assert len(math500) == 5 and all(p.answer for p in math500)
    aime = ev.load_benchmark("aime24")
    assert len(aime) == 30
    gsm = ev.load_benchmark("gsm8k", limit=3)
    assert all(p.answer.replace("-", "").isdigit() for p in gsm)
    with pytest.raises(ev.EvalError):
        ev.load_benchmark("mystery_set")
    path = tmp_path / "gpqa_diamond.csv"
    cols = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for i in range(4):
            w.writerow({"Question": f"Which is right {i}?", "Correct Answer": f"good{i}",
                        "Incorrect Answer 1": "bad1", "Incorrect Answer 2": "bad2", "Incorrect Answer 3": "bad3"})
    gpqa = ev.load_benchmark("gpqa_diamond", str(path))
    assert len(gpqa) == 4
    for i, p in enumerate(gpqa):
        assert p.choices is not None and p.choices["ABCD".index(p.answer)] == f"good{i}"
        assert f"({p.answer}) good{i}" in p.question


# ---------------------------------------------------------------- tables


def _record(name, label, accs, n=1, pass_k=None):
    return {"name": name, "label": label, "settings": {"n": n, "ks": [1], "temperature": 0.0, "top_p": 1.0,
                                                      "max_tokens": 64, "prompt": "qwen_math", "limit": 5},
            "benchmarks": {b: {"accuracy": a, "pass_at_k": dict(pass_k or {})} for b, a in accs.items()}}


def test_markdown_table_layout():
    rows = [("GRPO", {"math500": (0.70, 0.01), "aime24": (0.10, 0.02), "aime25": (0.05, None)}),
            ("EGSW", {"math500": (0.72, None), "aime24": (0.20, None)})]
    md = ev.markdown_table(rows, ["math500", "aime24", "aime25"], first="Method")
    lines = md.splitlines()
    assert lines[0] == "| Method | MATH-500 | AIME24 | AIME25 | Avg. |"
    assert lines[1] == "|---|:---:|:---:|:---:|:---:|"
    assert lines[2] == "| GRPO | 70.0 ± 1.0 | 10.0 ± 2.0 | 5.0 | 28.3 |"
    assert lines[3] == "| EGSW | 72.0 | 20.0 | – | – |"  # no average over a partial row
    single = ev.markdown_table([("m", {"gsm8k": (0.5, None)})], ["gsm8k"])
    assert single.splitlines()[0] == "| Model | GSM8K |"  # no Avg. column for one benchmark


def test_results_markdown_rows_are_models_columns_benchmarks():
    recs = [_record("base", "base", {"aime24": 0.1, "math500": 0.5, "gpqa_diamond": 0.3}),
            _record("run@10", "egsw", {"math500": 0.6, "aime24": 0.2, "gpqa_diamond": 0.25})]
    md = ev.results_markdown(recs)
    caption, _, table = md.partition("\n\n")
    assert caption.startswith("avg@1 (%), greedy, max 64 new tokens, prompt qwen_math")
    lines = table.splitlines()
    assert lines[0] == "| Model | MATH-500 | AIME24 | GPQA-D | Avg. |"  # paper's column order
    assert lines[2] == "| base | 50.0 | 10.0 | 30.0 | 30.0 |"
    assert lines[3] == "| run@10 | 60.0 | 20.0 | 25.0 | 35.0 |"


# ---------------------------------------------------------------- eval --compare


def _write_results(d: Path, records):
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps({"egsw_rl_eval": 1, "results": records}))
    return d


def test_compare_results_groups_by_label(tmp_path):
    items = []
    for algo, accs in {"grpo": [0.50, 0.52, 0.54], "egsw": [0.60, 0.61, 0.65]}.items():
        for seed, a in enumerate(accs):
            d = _write_results(tmp_path / f"{algo}_{seed}",
                               [_record(f"{algo}_{seed}", algo, {"math500": a, "aime24": a / 10},
                                        n=4, pass_k={"pass@4": a + 0.1})])
            items.append(str(d))
    md, summary = ev.compare(items)
    g = summary["groups"]
    assert set(g) == {"grpo", "egsw"}
    assert g["grpo"]["benchmarks"]["math500"]["mean"] == pytest.approx(0.52)
    assert g["grpo"]["benchmarks"]["math500"]["std"] == pytest.approx(0.02)
    assert g["egsw"]["benchmarks"]["aime24"]["count"] == 3
    lines = md.splitlines()
    assert "| Method | MATH-500 | AIME24 | Avg. | Runs |" in lines
    assert "| grpo | 52.0 ± 2.0 | 5.2 ± 0.2 | 28.6 | 3 |" in lines
    # pass@k, and labels given on the command line
    _, s2 = ev.compare(items, metric="pass@4", labels=["a", "a", "a", "b", "b", "b"])
    assert s2["groups"]["a"]["benchmarks"]["math500"]["mean"] == pytest.approx(0.62)
    with pytest.raises(ev.EvalError):
        ev.compare(items, labels=["a"])
    with pytest.raises(ev.EvalError):
        ev.compare([str(tmp_path / "nothing")])


def test_compare_reads_periodic_eval_from_run_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo:\n  name: clipb\n")
    rows = [{"step": 1, "reward/mean": 0.1},
            {"step": 2, "eval/math500/accuracy": 0.3, "eval/aime24/accuracy": 0.0, "eval/mean/accuracy": 0.15},
            {"step": 4, "eval/math500/accuracy": 0.4, "eval/aime24/accuracy": 0.1, "eval/math500/pass@4": 0.6}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [rec] = ev.load_records(str(run))
    assert rec["label"] == "clipb" and rec["step"] == 4
    assert rec["benchmarks"]["math500"] == {"accuracy": 0.4, "pass_at_k": {"pass@4": 0.6}}
    assert "mean" not in rec["benchmarks"]
    only = tmp_path / "only_eval_jsonl"
    only.mkdir()
    (only / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/gsm8k/accuracy": 0.25}) + "\n")
    [rec] = ev.load_records(str(only))
    assert rec["benchmarks"]["gsm8k"]["accuracy"] == 0.25 and rec["step"] == 0


def test_resolve_model_run_and_checkpoint(tmp_path):
    from egsw_rl.checkpoint import mark_complete, step_dir

    run = tmp_path / "run"
    for step, complete in [(5, True), (10, True), (15, False)]:
        hf = step_dir(run, step) / "hf"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text("{}")
        if complete:
            mark_complete(step_dir(run, step))
    (run / "config.yaml").write_text("algo:\n  name: egsw\ntrainer:\n  seed: 2\n")
    m = ev.resolve_model(str(run))
    assert m.path == str(step_dir(run, 10) / "hf") and m.step == 10
    assert m.label == "egsw" and m.name == "run@10" and m.run_dir == str(run)
    c = ev.resolve_model(str(step_dir(run, 5)), label="mine")
    assert c.path == str(step_dir(run, 5) / "hf") and c.step == 5 and c.label == "mine"
    assert ev.run_label(run, "trainer.seed") == "2"
    plain = tmp_path / "hfmodel"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert ev.resolve_model(str(plain)).path == str(plain)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(ev.EvalError, match="no complete checkpoint"):
        ev.resolve_model(str(empty))


# ---------------------------------------------------------------- training-curve comparison


def _fake_run(root: Path, name: str, algo: str, rewards, *, extra=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"algo:\n  name: {algo}\ntrainer:\n  seed: 0\n")
    with (d / "metrics.jsonl").open("w") as f:
        for step, r in enumerate(rewards, 1):
            row = {"step": step, "reward/mean": r, "reward/accuracy": r / 2,
                   "response_length/mean": 100.0 + step, "entropy/mean": 1.0 / step}
            row.update((extra or {}).get(step, {}))
            f.write(json.dumps(row) + "\n")
    return d


def test_compare_runs_aggregates_by_algo(tmp_path):
    _fake_run(tmp_path, "grpo_s0", "grpo", [0.1, 0.3, 0.2])
    _fake_run(tmp_path, "grpo_s1", "grpo", [0.2, 0.5, 0.4])
    e = _fake_run(tmp_path, "egsw_s0", "egsw", [0.2, 0.4, 0.6], extra={3: {"eval/math500/accuracy": 0.3}})
    # the trainer's eval.jsonl: a before-training row at step 0 and a copy of the step-3 one
    (e / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/math500/accuracy": 0.1}) + "\n"
                                  + json.dumps({"step": 3, "eval/math500/accuracy": 0.3}) + "\n")
    out = tmp_path / "cmp"
    md, summary, pngs = cmp.compare_runs([str(tmp_path)], out)
    assert summary["runs"]["egsw_s0"]["eval/math500/accuracy"]["points"] == 2
    assert summary["runs"]["egsw_s0"]["steps"] == 3
    runs = summary["runs"]
    assert set(runs) == {"grpo_s0", "grpo_s1", "egsw_s0"}
    assert runs["grpo_s0"]["reward/mean"]["final"] == pytest.approx(0.2)
    assert runs["grpo_s0"]["reward/mean"]["best"] == pytest.approx(0.3)
    assert runs["grpo_s0"]["reward/mean"]["best_step"] == 2
    assert "best" not in runs["grpo_s0"]["entropy/mean"]  # no direction for entropy
    g = summary["labels"]["grpo"]
    assert g["runs"] == ["grpo_s0", "grpo_s1"]
    assert g["reward/mean"]["final"]["mean"] == pytest.approx(0.3)
    assert g["reward/mean"]["final"]["std"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert g["reward/mean"]["best"]["mean"] == pytest.approx(0.4)
    assert summary["labels"]["egsw"]["eval/math500/accuracy"]["final"]["mean"] == pytest.approx(0.3)
    names = {p.name for p in pngs}
    assert {"reward_mean.png", "reward_accuracy.png", "response_length_mean.png", "entropy_mean.png",
            "eval_math500_accuracy.png"} == names
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert (out / "compare.md").read_text().strip() == md
    assert json.loads((out / "compare.json").read_text())["labels"]["egsw"]["runs"] == ["egsw_s0"]
    lines = md.splitlines()
    assert any(line.startswith("| grpo | 2 | 0.300 ± 0.141 | 0.400 ± 0.141 |") for line in lines), md
    assert any(line.startswith("| egsw_s0 | egsw | 3 | 0.600 | 0.600 |") for line in lines), md


def test_compare_runs_labels_window_and_resume_duplicates(tmp_path):
    a = _fake_run(tmp_path, "a", "grpo", [0.1, 0.2, 0.3, 0.4])
    b = _fake_run(tmp_path, "b", "grpo", [0.5, 0.5])
    with (b / "metrics.jsonl").open("a") as f:  # a resumed run re-logs step 2, then goes on
        f.write(json.dumps({"step": 2, "reward/mean": 0.7}) + "\n")
        f.write(json.dumps({"step": 3, "reward/mean": 0.9}) + "\n")
        f.write('{"step": 4, "rew')  # torn last line
    with (a / "metrics.jsonl").open("a") as f:  # a periodic-eval row apart from the step's training row
        f.write(json.dumps({"step": 4, "eval/math500/accuracy": 0.5}) + "\n")
    md, summary, pngs = cmp.compare_runs([str(a), str(b)], None, labels=["x", "y"], final_window=2,
                                         metrics=["reward/mean", "eval/math500/accuracy"])
    assert pngs == []
    assert summary["runs"]["a"]["reward/mean"]["final"] == pytest.approx(0.35)
    assert summary["runs"]["a"]["eval/math500/accuracy"]["final"] == pytest.approx(0.5)
    assert summary["runs"]["b"]["reward/mean"]["final"] == pytest.approx(0.8)  # steps 2 (0.7), 3 (0.9)
    assert summary["runs"]["b"]["steps"] == 3
    assert set(summary["labels"]) == {"x", "y"}
    assert "mean of the last 2 values" in md
    with pytest.raises(cmp.CompareError):
        cmp.compare_runs([str(a)], None, labels=["x", "y"])
    with pytest.raises(cmp.CompareError):
        cmp.compare_runs([str(tmp_path / "missing")], None)


def test_compare_cli(tmp_path, capsys):
    _fake_run(tmp_path / "sweep", "0", "grpo", [0.1, 0.2])
    _fake_run(tmp_path / "sweep", "1", "egsw", [0.3, 0.4])
    assert cmp.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| grpo | 1 |" in out and "| egsw | 1 |" in out
    assert (tmp_path / "o" / "reward_mean.png").exists()
    assert cmp.main([str(tmp_path / "nowhere")]) == 2
