"""Reward functions: gold parsing, extraction, schemes, multiple choice, hostile text, and the
deadline `math_reward` / `choice_reward` keep (batches through the pool: test_rewards_pool.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egsw_rl.rewards import (
    RewardOptions,
    RewardResult,
    choice_reward,
    gsm8k_gold,
    math_reward,
    parse_gold,
)
from egsw_rl.rewards.extract import last_boxed, last_number, strip_thousands
from egsw_rl.rewards.grading import _gold_targets, _verify

MARKER = Path("/tmp/egsw_rl_reward_pwned")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def math500(dataset) -> list[dict]:
    rows = dataset("math500")
    assert len(rows) == 500
    return rows


def _equivalent(a: str, b: str) -> bool:
    ta, tb = _gold_targets(parse_gold(a)), _gold_targets(parse_gold(b))
    return _verify(ta, list(tb)) or _verify(tb, list(ta))


# --- data sets --------------------------------------------------------------------------------


def test_math500_human_solutions_score_correct_against_their_own_answer(math500):
    misses = []
    for row in math500:
        res = math_reward(row["solution"], row["answer"])
        if res.status != "correct" or res.score != 1.0 or not res.boxed:
            misses.append((row["unique_id"], row["answer"], res))
    assert not misses, f"{500 - len(misses)}/500 correct; misses: {misses[:10]}"


def test_math500_solutions_score_wrong_against_a_different_problems_answer(math500):
    rng = random.Random(1234)
    compared = 0
    false_pos = []
    for _ in range(300):
        a, b = rng.sample(math500, 2)
        if _equivalent(a["answer"], b["answer"]):
            continue
        compared += 1
        res = math_reward(a["solution"], b["answer"])
        if res.status != "wrong" or res.score != 0.0:
            false_pos.append((a["answer"], b["answer"], res))
    assert compared >= 280
    assert not false_pos, false_pos[:10]


@pytest.mark.parametrize("name", ["aime24", "aime25"])
def test_aime_zero_padded_answers(dataset, name):
    rows = dataset(name)
    assert len(rows) == 30
    padded = 0
    for row in rows:
        gold = str(row["answer"])
        n = int(gold)
        padded += gold != str(n)
        assert parse_gold(gold) == str(n)
        assert math_reward(f"so the answer is $\\boxed{{{n}}}$", gold).status == "correct", gold
        assert math_reward(f"\\boxed{{{n:03d}}}", gold).status == "correct", gold
        assert math_reward(f"\\boxed{{{n + 1}}}", gold).status == "wrong", gold
    if name == "aime24":
        assert padded > 0  # the file really has zero-padded golds ("025")


def test_gsm8k_worked_answers(dataset):
    rows = dataset("gsm8k")[::3]  # 440 rows: enough, and fast
    assert len(rows) > 400
    failures = []
    for row in rows:
        gold = gsm8k_gold(row["answer"])
        assert parse_gold(row["answer"]) == gold  # auto-detected from '####'
        checks = [
            (f"The total is $\\boxed{{{gold}}}$.", {}, "correct"),
            (f"\\boxed{{{float(gold) + 1:g}}}", {}, "wrong"),
            # the worked answer itself: no box, its '#### N' line is the anchor
            (row["answer"], {}, "correct"),
            (row["answer"], {"extraction": "boxed"}, "no_answer"),
            (
                row["answer"].replace("####", "so"),
                {"extraction": "boxed", "fallback_last_number": True},
                "correct",
            ),
        ]
        for completion, opts, want in checks:
            res = math_reward(completion, row["answer"], **opts)
            if res.status != want:
                failures.append((gold, opts, want, res))
    assert not failures, failures[:10]


def test_gsm8k_gold_helper():
    assert gsm8k_gold("She pays 1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234") == "1234"
    assert gsm8k_gold("#### -5") == "-5"
    assert gsm8k_gold("#### $3.50") == "3.50"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no final line", name="gsm8k row 7")
    with pytest.raises(ValueError, match="gsm8k row 7.*not a number"):
        gsm8k_gold("#### many", name="gsm8k row 7")


# --- gold parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, canonical",
    [
        (r"\frac{\pi}{2}", r"\frac{\pi}{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)"),
        ("025", "25"),
        (25, "25"),
        (r"\text{(B)}", r"\text{(B)}"),
        ("Janet sells 9 eggs.\n#### 1,234", "1234"),
        (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"-\frac{5}{3}.", r"-\frac{5}{3}"),
        (r"\dfrac{1}{29,\!322,\!216}", r"\dfrac{1}{29322216}"),
    ],
)
def test_parse_gold_formats(gold, canonical):
    assert parse_gold(gold) == canonical
    assert parse_gold(canonical) == canonical  # a fixed point


def test_parse_gold_explicit_formats():
    assert parse_gold("(B)", "choice") == "B"
    assert parse_gold(r"\text{(C)}", "choice") == "C"
    assert parse_gold("007", "aime") == "7"
    assert parse_gold("#### 12", "gsm8k") == "12"
    with pytest.raises(ValueError, match="row 3.*not an integer"):
        parse_gold("7.5", "aime", name="row 3")
    with pytest.raises(ValueError, match="not a choice letter"):
        parse_gold("42", "choice")


@pytest.mark.parametrize(
    "gold", ["", "   ", "$$", r"\boxed{}", None, r"\frac{", "}{", "???", r"\left(", "[", True]
)
def test_parse_gold_refuses_empty_or_unparseable_gold_naming_the_row(gold):
    with pytest.raises(ValueError, match=r"simplerl row 5054"):
        parse_gold(gold, name="simplerl row 5054")


def test_simplerl_training_golds_parse_except_the_two_empty_rows(dataset):
    rows = dataset("simplerl_8k")
    refused = []
    for row in rows[::4] + [rows[5054], rows[5158]]:
        try:
            parse_gold(row["answer"], name=f"row {row['idx']}")
        except ValueError as exc:
            refused.append(str(exc))
    assert refused == ["gold answer of row 5054 is empty", "gold answer of row 5158 is empty"]


# --- extraction -------------------------------------------------------------------------------


def test_last_boxed_nested_braces_and_edge_cases():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{a}{\sqrt{b^{2}}}} c") == r"\frac{a}{\sqrt{b^{2}}}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are not groups
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed {7}") == "7"
    assert last_boxed(r"so \boxed 42 done") == "42"
    assert last_boxed(r"\boxed{3} and then \boxed{4") == "3"  # truncated last box
    assert last_boxed(r"\boxed{\boxed{5}}") == "5"
    assert last_boxed("no box") is None
    assert strip_thousands(r"10,\!080") == "10080"
    assert strip_thousands("1,234") == "1234"
    assert strip_thousands("3, 5, 7") is None
    assert last_number("it costs $1,234.50, or 12 a day") == "12"
    assert last_number("#### 1,234") == "1234"


def test_extraction_modes_and_fallbacks():
    unboxed = "After simplifying we get 3 apples, so the answer is $\\frac{1}{2}$."
    assert math_reward(unboxed, "0.5").status == "correct"  # anchored LaTeX
    assert math_reward(unboxed, "0.5").boxed is False
    assert math_reward(unboxed, "0.5", extraction="boxed").status == "no_answer"
    # an unanchored $...$ is not trusted by the default (a '$' is often a currency sign)
    assert math_reward("we find $x = 5$ here", "5").status == "no_answer"
    assert math_reward("we find $x = 5$ here", "5", extraction="boxed_then_any").status == "correct"
    assert math_reward("It costs 7 dollars and 5 cents", "5", fallback_last_number=True).status == "correct"
    assert math_reward("It costs 7 dollars and 5 cents", "7", fallback_last_number=True).status == "wrong"
    # a box always wins over the fallbacks, and the last box wins
    assert math_reward(r"\boxed{4}. The answer is 5", "4").status == "correct"
    assert math_reward(r"\boxed{5} no wait \boxed{4}", "4").status == "correct"
    assert math_reward(r"\boxed{4} no wait \boxed{5}", "4").status == "wrong"
    res = math_reward(r"\boxed{}", "4")
    assert (res.status, res.boxed) == ("no_answer", True)
    assert math_reward(r"so \boxed{4", "4").status == "no_answer"


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"\boxed{1,234}", "1234"),
        (r"\boxed{10,\!080}", r"10,\!080"),
        (r"\boxed{10080}", r"10,\!080"),
        (r"\boxed{\text{(B)}}", r"\text{(B)}"),
        (r"\boxed{B}", r"\text{(B)}"),
        (r"\boxed{\dfrac{\pi}{2}}", r"\frac{\pi}{2}"),
        (r"\boxed{(3,\pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{a+b+c}", "a + b + c"),  # math-verify alone reads the gold as 'a +' (units)
        (r"\boxed{\sin^2 t}", r"\sin^2 t"),
        (r"\boxed{5.4}", r"5.4 \text{ cents}"),
        (r"\boxed{0.5}", r"\frac12"),
        (r"\boxed{x \in [-2,7]}", r"x \in [-2,7]"),
        (r"\boxed{\$18.90}", r"\$18.90"),
    ],
)
def test_equivalent_forms_are_correct(completion, gold):
    assert math_reward(completion, gold).status == "correct"


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"\boxed{a + b + d}", "a + b + c"),
        (r"\boxed{(C)}", r"\text{(B)}"),
        (r"\boxed{\frac{\pi}{3}}", r"\frac{\pi}{2}"),
        (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{1235}", "1,234"),
        (r"\boxed{\frac{1}{0}}", "0"),
    ],
)
def test_different_answers_are_wrong(completion, gold):
    assert math_reward(completion, gold).status == "wrong"


# --- schemes ----------------------------------------------------------------------------------


def test_binary_signed_and_format_schemes():
    right, wrong, unboxed, nothing = r"\boxed{4}", r"\boxed{5}", "the answer is 4", "I give up"
    binary = [math_reward(c, "4").score for c in (right, wrong, unboxed, nothing)]
    assert binary == [1.0, 0.0, 1.0, 0.0]
    signed = [math_reward(c, "4", scheme="signed").score for c in (right, wrong, unboxed, nothing)]
    assert signed == [1.0, -1.0, 1.0, -1.0]
    fmt = dict(scheme="format", correct_score=1.0, wrong_boxed_score=-0.5, no_box_score=-1.0)
    assert [math_reward(c, "4", **fmt).score for c in (right, wrong, unboxed, nothing)] == [
        1.0,
        -0.5,
        1.0,
        -1.0,
    ]
    # format_penalty: subtracted from every unboxed completion, in any scheme
    pen = [math_reward(c, "4", format_penalty=0.25).score for c in (right, wrong, unboxed, nothing)]
    assert pen == [1.0, 0.0, 0.75, -0.25]
    assert math_reward(right, "4", correct_score=2.0).score == 2.0


def test_failure_scores_and_error_status():
    res = math_reward(r"\boxed{4}", "")
    assert (res.status, res.score, res.parsed) == ("error", 0.0, None)
    assert "empty" in res.message
    assert math_reward(r"\boxed{4}", "", scheme="signed").score == -1.0
    assert (
        math_reward(r"\boxed{4}", "", scheme="format", wrong_boxed_score=-0.2, no_box_score=-1).score == -1.0
    )
    assert RewardOptions(scheme="format", wrong_boxed_score=-0.2, no_box_score=-0.1).failure_score() == -0.2
    res = math_reward(None, "4")  # not a str: error status, not an exception
    assert res.status == "error" and "str" in res.message


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="reward.sheme"):
        math_reward(r"\boxed{4}", "4", sheme="binary")
    with pytest.raises(ValueError, match="reward.scheme"):
        math_reward(r"\boxed{4}", "4", scheme="ternary")
    with pytest.raises(ValueError, match="reward.format_penalty"):
        math_reward(r"\boxed{4}", "4", format_penalty=-1)
    with pytest.raises(ValueError, match="reward.extraction"):
        RewardOptions.build(extraction="last_latex")


# --- multiple choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion",
    [
        r"\boxed{B}",
        r"\boxed{(B)}",
        r"\boxed{\text{(B)}}",
        r"\boxed{B) 15}",
        r"$\boxed{\textbf{B}}$",
        "Therefore the answer is (B).",
        "**Answer: B**",
    ],
)
def test_choice_reward_letters(completion):
    res = choice_reward(completion, "B")
    assert (res.status, res.score) == ("correct", 1.0), res
    assert math_reward(completion, "(B)", task="choice").status == "correct"


def test_choice_reward_wrong_no_answer_and_choice_texts():
    choices = ["12", "15", "20", "30"]
    assert choice_reward(r"\boxed{C}", "B").status == "wrong"
    assert choice_reward(r"\boxed{15}", "B", choices=choices).status == "correct"
    assert choice_reward(r"\boxed{20}", "B", choices=choices).status == "wrong"
    assert choice_reward(r"\boxed{E}", "B", choices=choices).status == "wrong"  # only A-D exist
    assert choice_reward(r"\boxed{17}", "B").status == "wrong"
    assert choice_reward("I think it is 15", "B").status == "no_answer"
    assert choice_reward("The answer is (B).", "B", extraction="boxed").status == "no_answer"
    assert choice_reward(r"\boxed{B}", "").status == "error"


# --- hostile text (fast cases, in-process) -----------------------------------------------------


def test_hostile_text_gets_a_status_never_an_exception():
    MARKER.unlink(missing_ok=True)
    payload = f"__import__('os').system('touch {MARKER}')"
    cases = {
        "1MB, box at end": ("x" * 1_000_000 + r"\boxed{5}", {"correct"}),
        "1MB of braces": ("{" * 500_000 + "}" * 500_000, {"no_answer"}),
        "10k nested braces": (r"\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}", {"wrong"}),
        "10k unclosed braces": (r"\boxed{" + "{" * 10_000 + "5", {"no_answer"}),
        "20k-term sum": (r"\boxed{" + "+".join(["1"] * 20_000) + "}", {"wrong"}),
        "division by zero": (r"\boxed{\frac{5}{0}}", {"wrong"}),
        "NUL bytes": ("so\x00 \\boxed{5\x00}", {"correct"}),
        "lone surrogates": ("\ud800 so \\boxed{5}\udfff", {"correct"}),
        "empty": ("", {"no_answer"}),
        "python in a box": (rf"\boxed{{{payload}}}", {"wrong"}),
        "python eval in a box": (rf"\boxed{{eval(\"{payload}\")}}", {"wrong"}),
        "python as the answer": (f"The final answer is {payload}", {"no_answer", "wrong"}),
    }
    for name, (completion, want) in cases.items():
        for extraction in ("boxed_then_latex", "boxed_then_any"):
            res = math_reward(completion, "5", extraction=extraction)
            assert isinstance(res, RewardResult) and res.status in want, (name, extraction, res)
    assert not MARKER.exists(), "model output was executed"


def test_long_boxed_answer_is_refused_before_parsing():
    res = math_reward(r"\boxed{" + "1+" * 600 + "1}", "601")
    assert res.status == "wrong" and "max_answer_chars" in res.message
    assert (
        math_reward(r"\boxed{" + "1+" * 600 + "1}", "601", max_answer_chars=5000, timeout_s=None).status
        == "correct"
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(alphabet=st.sampled_from(list("\\boxed{}()[]$^_+-*/=.,0123456789xab \n\x00\ud800")), max_size=60)
)
def test_arbitrary_short_text_is_graded_without_an_internal_error(text):
    # `grade` turns any exception into status "error": a grader that raised on model text would
    # still return a result, so the check is that none of these needed that safety net
    res = math_reward(text, "5", extraction="boxed_then_any", fallback_last_number=True, timeout_s=None)
    assert res.status in {"correct", "wrong", "no_answer"}, (text, res)
    assert res.score == (1.0 if res.status == "correct" else 0.0)


@pytest.mark.parametrize("timeout_s", [None, 5.0], ids=["in-process", "deadline worker"])
def test_grading_works_off_the_main_thread(timeout_s):
    """math-verify's own timeouts use signal.alarm, which raises off the main thread and scores
    everything 0; ours are off, so a thread gets the same results, in process or through the
    deadline worker."""
    cases = [(r"\boxed{\frac{\pi}{2}}", r"\frac{\pi}{2}"), (r"\boxed{3}", "4"), ("nothing", "4")]
    main = [math_reward(c, g, timeout_s=timeout_s) for c, g in cases]
    out: list = []
    t = threading.Thread(target=lambda: out.extend(math_reward(c, g, timeout_s=timeout_s) for c, g in cases))
    t.start()
    t.join(60)
    assert [r.status for r in out] == ["correct", "wrong", "no_answer"]
    assert [r.score for r in out] == [1.0, 0.0, 0.0]
    assert out == main


HOSTILE = {
    # SymPy evaluates the tower in one C call: no thread can stop it, only a process kill
    "power tower": (r"\boxed{9^{9^{9^{9^{9}}}}}", {"timeout"}),
    "20,000-term sum": (r"\boxed{" + "+".join(["1"] * 20_000) + "}", {"timeout", "wrong"}),
    "10,000 nested braces": (r"\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}", {"timeout", "wrong"}),
}


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_plain_functions_return_within_their_timeout(where):
    timeout = 1.5
    assert math_reward(r"\boxed{1}", "1", timeout_s=timeout).score == 1.0  # start the worker
    results = {}

    def run():
        for name, (completion, _) in HOSTILE.items():
            # max_answer_chars would refuse the long ones before parsing; let them reach the grader
            t0 = time.monotonic()
            res = math_reward(completion, "1", timeout_s=timeout, max_answer_chars=10**6)
            results[name] = (res, time.monotonic() - t0)
        t0 = time.monotonic()
        res = choice_reward(
            r"\boxed{9^{9^{9^{9^{9}}}}}",
            "B",
            timeout_s=timeout,
            max_answer_chars=10**6,
            choices=["1", r"9^{9^{9^{9^{9}}}}"],
        )
        results["choice"] = (res, time.monotonic() - t0)

    if where == "main thread":
        run()
    else:
        t = threading.Thread(target=run)
        t.start()
        t.join(120)
    for name, (res, elapsed) in results.items():
        want = HOSTILE[name][1] if name in HOSTILE else {"correct", "timeout"}
        assert res.status in want and elapsed < timeout + 2.0, (name, res, elapsed)
        assert res.score == (1.0 if res.status == "correct" else 0.0)
    assert results["power tower"][0].message == "no result within 1.5 s"
    # and the worker that replaced the killed one grades normally
    assert math_reward(r"\boxed{\frac{1}{2}}", "0.5", timeout_s=timeout).status == "correct"


def test_timeout_keyword_is_checked():
    with pytest.raises(ValueError, match="timeout_s"):
        math_reward(r"\boxed{1}", "1", timeout_s=0)
    assert math_reward(r"\boxed{1}", "1", timeout_s=None).status == "correct"
