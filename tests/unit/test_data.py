"""Loading problems and the resumable sampler."""

import json

import pytest

from egsw_rl.data import DataError, PromptSampler, arithmetic_problems, load_problems


def test_arithmetic_is_seeded_and_correct():
    a, b = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert a == b and a != arithmetic_problems(50, seed=4)
    for p in a:
        x, op, y = p.question.removeprefix("What is ").rstrip("?").split()
        assert int(p.answer) == (int(x) + int(y) if op == "+" else int(x) - int(y))


def test_arithmetic_heldout_pairs_never_appear_in_training():
    pairs = lambda ps: {p.question for p in ps}  # noqa: E731
    train, test = arithmetic_problems(4000, seed=0), arithmetic_problems(500, seed=0, split="test")
    assert pairs(train).isdisjoint(pairs(test)) and len(pairs(test)) > 20


def test_simplerl_drops_the_two_empty_answers(shared_data, monkeypatch):
    monkeypatch.setenv("EGSW_RL_DATA", str(shared_data))
    problems, skipped = load_problems("simplerl_8k")
    assert skipped == 2 and len(problems) == 8523 - 2
    assert all(p.answer for p in problems)


def test_gsm8k_gold_is_the_final_number(shared_data, monkeypatch):
    monkeypatch.setenv("EGSW_RL_DATA", str(shared_data))
    problems, _ = load_problems("gsm8k", max_samples=20)
    assert len(problems) == 20
    assert all("####" not in p.answer and p.answer.replace(",", "").lstrip("-").isdigit()
               for p in problems)


def test_local_jsonl_with_field_mapping_and_bad_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"q": "1+1?", "a": "2"}, {"q": "2+2?", "a": ""}, {"q": "3+3?", "a": "6"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems, skipped = load_problems(str(path), question_key="q", answer_key="a")
    assert [p.answer for p in problems] == ["2", "6"] and skipped == 1
    with pytest.raises(DataError, match="no field 'question'"):
        load_problems(str(path))
    path.write_text('{"q": "1", "a": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2"):
        load_problems(str(path), question_key="q", answer_key="a")


def test_sampler_resumes_without_repeating_or_skipping():
    full = PromptSampler(10, 4, seed=1)
    seen = [full.next_indices() for _ in range(6)]  # crosses two epoch boundaries
    part = PromptSampler(10, 4, seed=1)
    first = [part.next_indices() for _ in range(2)]
    state = part.state_dict()
    resumed = PromptSampler(10, 4, seed=1)
    resumed.load_state_dict(state)
    rest = [resumed.next_indices() for _ in range(4)]
    assert first + rest == seen
    # every epoch is a permutation
    flat = sum(seen, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    with pytest.raises(DataError, match="same data"):
        PromptSampler(11, 4).load_state_dict(state)


def test_named_set_without_local_copy_says_where_it_looked(tmp_path, monkeypatch):
    import egsw_rl.data as data

    def offline(name, config, split):
        raise DataError(f"could not load data set {name!r} from the hub: ConnectionError")

    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path])
    monkeypatch.setattr(data, "_hub_rows", offline)
    with pytest.raises(DataError) as e:
        load_problems("gsm8k")
    msg = str(e.value)
    assert "gsm8k_test.jsonl" in msg and str(tmp_path) in msg and "EGSW_RL_DATA" in msg and "hub" in msg
