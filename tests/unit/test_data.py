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


def test_simplerl_drops_the_two_empty_answers():
    problems, skipped = load_problems("simplerl_8k")
    assert skipped == 2 and len(problems) == 8523 - 2
    assert all(p.answer for p in problems)


def test_gsm8k_gold_is_the_final_number():
    problems, _ = load_problems("gsm8k", max_samples=20)
    assert len(problems) == 20
    assert all("####" not in p.answer and p.answer.replace(",", "").lstrip("-").isdigit() for p in problems)


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


# --- where named data sets come from ------------------------------------------------------------


def test_named_sets_are_found_in_the_package_with_their_documented_row_counts(monkeypatch, tmp_path):
    import egsw_rl.data as data

    monkeypatch.delenv("EGSW_RL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    counts = {"math500": 500, "aime24": 30, "aime25": 30, "gsm8k": 1319, "simplerl_8k": 8523}
    for name, rows in counts.items():
        path = data.dataset_path(name)
        assert path.parent == data.PACKAGE_DATA and path.name.endswith(".jsonl.gz")
        assert len(data.read_rows(path)) == rows
    readme = (data.PACKAGE_DATA / "README.md").read_text()
    for name, rows in counts.items():
        assert f"`{name}`" in readme and f"{rows:,}" in readme  # a note per file, rows included


def test_egsw_rl_data_overrides_the_package_copy_plain_or_gzipped(monkeypatch, tmp_path):
    import gzip

    rows = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 5?", "answer": "7"}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    monkeypatch.setenv("EGSW_RL_DATA", str(tmp_path))
    (tmp_path / "math500.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    problems, _ = load_problems("math500")
    assert [p.answer for p in problems] == ["2", "7"]
    (tmp_path / "math500.jsonl").write_text(text[: text.index("\n") + 1])  # plain wins over .gz
    problems, _ = load_problems("math500")
    assert [p.answer for p in problems] == ["2"]


def test_a_missing_shipped_set_names_every_place_it_looked(monkeypatch, tmp_path):
    import egsw_rl.data as data

    monkeypatch.setenv("EGSW_RL_DATA", str(tmp_path / "mine"))
    monkeypatch.setattr(data, "PACKAGE_DATA", tmp_path / "pkg")
    with pytest.raises(DataError) as e:
        data.dataset_path("aime25")
    msg = str(e.value)
    assert "aime25.jsonl" in msg and str(tmp_path / "mine") in msg and str(tmp_path / "pkg") in msg
    with pytest.raises(DataError, match="not a data set shipped"):
        data.dataset_path("gpqa_diamond")


def test_a_users_file_refused_in_one_line_with_reasons_an_example_and_the_key(tmp_path):
    f = tmp_path / "my.jsonl"
    f.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(5))
        + json.dumps({"prompt": "", "answer": "3"})
        + "\n"
    )
    with pytest.raises(DataError) as e:
        load_problems(str(f), question_key="prompt", answer_format="gsm8k")
    msg = str(e.value)
    assert "\n" not in msg
    assert "6 of 6 rows dropped" in msg
    assert "5 answer not readable as gsm8k (e.g. row 0: answer='1')" in msg
    assert "1 empty question (e.g. row 5: prompt='')" in msg
    assert "data.answer_format=auto" in msg
    problems, skipped = load_problems(str(f), question_key="prompt", answer_format="auto")
    assert len(problems) == 5 and skipped == 1
