"""Pure reward functions: gold parsing, math grading with math-verify, multiple-choice grading.

math-verify's own `signal.alarm` timeouts are switched off (`parsing_timeout=None`,
`timeout_seconds=None`) because they fail off the main thread and then score everything 0. The
wall-clock limit comes from outside instead: `math_reward` / `choice_reward` grade in a worker
process of a small `RewardPool` and get status `timeout` when it overruns (SymPy can sit in one C
call for hours on a power tower, which no thread can interrupt); `grade` is the bare function
those workers run, with no limit of its own.

Model output is never executed: answers go through math-verify's LaTeX parser (ANTLR grammar to
SymPy objects) and, in `boxed_then_any` mode, through its plain-expression path, whose regex only
admits digits and arithmetic operators before SymPy's `parse_expr`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache

from egsw_rl.rewards.extract import (
    TAIL_CHARS,
    anchored_choice,
    choice_letter,
    has_box,
    hash_answer,
    last_boxed,
    last_number,
    normalize_choice_text,
    sanitize,
    strip_thousands,
)
from egsw_rl.rewards.types import (
    CORRECT,
    DEFAULT_TIMEOUT_S,
    ERROR,
    NO_ANSWER,
    WRONG,
    RewardOptions,
    RewardResult,
)

log = logging.getLogger(__name__)

_PARSED_MAX = 200
_LETTERS = "ABCDEFGHIJ"


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; that is deliberate here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in str(record.msg)


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _mv():
    import math_verify

    return math_verify


# --- gold answers -----------------------------------------------------------------------------


def _where(name: str | None) -> str:
    return f" of {name}" if name else ""


def gsm8k_gold(answer_field: str, *, name: str | None = None) -> str:
    """The number after the last '####' of a GSM8K worked answer: '... #### 1,234' -> '1234'."""
    if not isinstance(answer_field, str) or "####" not in answer_field:
        raise ValueError(f"gold answer{_where(name)} has no '#### <number>' line: {str(answer_field)[:80]!r}")
    tail = answer_field.rsplit("####", 1)[1].strip()
    number = tail.replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", number):
        raise ValueError(f"gold answer{_where(name)} after '####' is not a number: {tail[:80]!r}")
    return number


def parse_gold(gold: object, answer_format: str = "auto", *, name: str | None = None) -> str:
    """Validate a gold answer and return its canonical text (what the graders compare with).

    answer_format:
      latex   MATH-style LaTeX: '\\frac{\\pi}{2}', '(3, \\frac{\\pi}{2})', '\\text{(B)}', '$5$',
              '\\boxed{5}'; must parse with math-verify.
      gsm8k   a worked answer ending '#### 1,234' -> '1234'.
      aime    an integer string, zero padding dropped: '025' -> '25'.
      choice  a letter: 'B', '(B)', '\\text{(B)}' -> 'B'.
      auto    gsm8k if it contains '####', aime if it is all digits, else latex.

    Raises ValueError naming `name` (e.g. the data set row) for an empty or unparseable gold.
    The result is a fixed point: parse_gold(parse_gold(g)) == parse_gold(g).
    """
    where = _where(name)
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise ValueError(f"gold answer{where} must be a string, got {type(gold).__name__}")
    text = str(gold).replace("\x00", "").strip()
    if not text:
        raise ValueError(f"gold answer{where} is empty")
    fmt = answer_format
    if fmt == "auto":
        if "####" in text:
            fmt = "gsm8k"
        elif text.isdigit():
            fmt = "aime"
        else:
            fmt = "latex"
    if fmt == "gsm8k":
        return gsm8k_gold(text, name=name)
    if fmt == "aime":
        if not text.isdigit():
            raise ValueError(f"gold answer{where} is not an integer: {text[:80]!r}")
        return str(int(text))
    if fmt == "choice":
        letter = choice_letter(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        if letter is None:
            raise ValueError(f"gold answer{where} is not a choice letter: {text[:80]!r}")
        return letter
    if fmt != "latex":
        raise ValueError(f"unknown answer_format {answer_format!r} (auto, latex, gsm8k, aime, choice)")
    if "\\boxed" in text or "\\fbox" in text:
        inner = last_boxed(text)
        if inner is not None:
            text = inner.strip()
    text = clean_answer(_strip_dollars(text))
    if not text:
        raise ValueError(f"gold answer{where} is empty")
    targets = _gold_targets(text)
    if not targets or (all(isinstance(t, str) for t in targets) and _looks_malformed(text)):
        raise ValueError(f"gold answer{where} could not be parsed: {text[:80]!r}")
    return text


_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\}\\!?)\s*(?=\d{3}(?!\d))")
_TRAILING_SPACE_CMD = re.compile(r"(?:\\[,;:! ]|\\quad|\\qquad|\s)+$")


def clean_answer(text: str) -> str:
    """Normalisation applied to gold and boxed answers alike: LaTeX thousands separators
    ('29,\\!322' / '29{,}322') removed, trailing spacing commands and one trailing
    sentence punctuation mark ('5.', '\\text{(E)},') dropped."""
    s = _LATEX_THOUSANDS.sub("", text.strip())
    while True:
        s = _TRAILING_SPACE_CMD.sub("", s)
        if len(s) > 1 and s[-1] in ".,;" and s[-2] != "." and s[-2] != "\\":
            s = s[:-1]
            continue
        return s


def _looks_malformed(text: str) -> bool:
    """Unbalanced braces or \\left/\\right, or not a single letter or digit."""
    depth = 0
    for tok in re.findall(r"\\[{}]|[{}]", text):
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return True
    if depth != 0:
        return True
    if len(re.findall(r"\\left(?![a-zA-Z])", text)) != len(re.findall(r"\\right(?![a-zA-Z])", text)):
        return True
    return not re.search(r"[A-Za-z0-9]", text)


def _strip_dollars(text: str) -> str:
    """Unescaped '$' removed (math delimiters); '\\$' (a currency sign) kept."""
    return re.sub(r"(?<!\\)\$", "", text).replace("\n", " ")


@lru_cache(maxsize=4096)
def _gold_targets(canonical: str) -> tuple:
    return tuple(_answer_targets(canonical))


@lru_cache(maxsize=1)
def _configs() -> tuple:
    mv = _mv()
    latex = mv.LatexExtractionConfig()
    norm = latex.normalization_config
    no_units = mv.LatexExtractionConfig(
        normalization_config=mv.LatexNormalizationConfig(
            basic_latex=norm.basic_latex,
            units=False,
            malformed_operators=norm.malformed_operators,
            nits=norm.nits,
            boxed=norm.boxed,
            equations=norm.equations,
        )
    )
    return latex, no_units, mv.ExprExtractionConfig()


def _answer_targets(answer: str) -> list:
    """SymPy readings of one answer (a gold, or a boxed prediction), via math-verify.

    math-verify strips trailing unit words, and its list includes one-letter units, so
    'a + b + c' would read as 'a +' and '\\sin^2 t' as '\\sin^2'. When unit stripping changes
    the answer, the reading without it is added. Parsed readings win over raw strings: string
    equality is only the fallback when nothing parses (or parses only to an undefined value).
    """
    from latex2sympy2_extended.latex2sympy2 import normalize_latex

    mv = _mv()
    latex, no_units, expr = _configs()
    text = f"${_strip_dollars(answer)}$"
    found = list(mv.parse(text, [latex, expr], parsing_timeout=None))
    inner = _strip_dollars(answer)
    if normalize_latex(inner, latex.normalization_config) != normalize_latex(
        inner, no_units.normalization_config
    ):
        found += mv.parse(text, [no_units, expr], parsing_timeout=None)
    parsed = [t for t in found if not isinstance(t, str) and not _undefined(t)]
    strings = [t for t in found if isinstance(t, str)]
    return parsed if parsed else strings


def _undefined(value) -> bool:
    """A reading that contains zoo / nan (e.g. '05:00' read as 5/0) never equals anything in
    SymPy; such a reading is dropped so the raw-string fallback can decide."""
    import sympy

    try:
        return bool(value.has(sympy.S.ComplexInfinity, sympy.S.NaN))
    except Exception:  # noqa: BLE001
        return False


@lru_cache(maxsize=1024)
def _pred_targets(content: str) -> tuple:
    return tuple(_answer_targets(content))


# --- predictions --------------------------------------------------------------------------------


def _parse_boxed(content: str) -> list:
    return list(_pred_targets(content))


def _parse_unboxed(text: str, extraction: str, fallback_last_number: bool) -> tuple[list, str | None]:
    """math-verify's extraction over the tail of an unboxed completion; only parsed values count.

    boxed_then_latex: only an anchored answer: a GSM8K-style '#### 42' line, then 'final answer
    is $x$', 'answer: 42', 'the answer is $\\frac{1}{2}$' (a bare '$' is often a currency sign,
    so the last $...$ is not trusted).
    boxed_then_any: math-verify's unanchored extraction too (the last LaTeX span or number).
    Then, if asked, the last number in the text."""
    mv = _mv()
    tail = text[-TAIL_CHARS:]
    if extraction != "boxed":
        marked = hash_answer(text)
        if marked is not None:
            found = mv.parse(
                f"${marked}$", [mv.LatexExtractionConfig()], fallback_mode="no_fallback", parsing_timeout=None
            )
            if found:
                return found, marked
        anchored = extraction == "boxed_then_latex"
        configs = _unboxed_configs(anchored)
        found = mv.parse(tail, configs, fallback_mode="no_fallback", parsing_timeout=None)
        if found:
            return found, _short(str(found[0]))
    if fallback_last_number:
        number = last_number(text)
        if number is not None:
            found = mv.parse(
                f"${number}$", [mv.LatexExtractionConfig()], fallback_mode="no_fallback", parsing_timeout=None
            )
            if found:
                return found, number
    return [], None


@lru_cache(maxsize=2)
def _unboxed_configs(anchored: bool) -> list:
    mv = _mv()
    return [
        mv.LatexExtractionConfig(try_extract_without_anchor=not anchored),
        mv.ExprExtractionConfig(try_extract_without_anchor=not anchored),
    ]


def _verify(gold_targets: Sequence, pred: list) -> bool:
    if not pred or not gold_targets:
        return False
    return bool(_mv().verify(list(gold_targets), pred, timeout_seconds=None))


def _short(s: str) -> str:
    return s if len(s) <= _PARSED_MAX else s[: _PARSED_MAX - 3] + "..."


def _debug_sleep(text: str, opts: RewardOptions) -> None:
    if opts._debug_sleep_s > 0 and text.startswith("<debug-sleep>"):
        time.sleep(opts._debug_sleep_s)


# --- graders ------------------------------------------------------------------------------------


def grade(
    completion: object, gold: object, opts: RewardOptions, choices: Sequence[str] | None = None
) -> RewardResult:
    """Grade one completion with prepared options; never raises (an exception -> status error)."""
    try:
        if opts.task == "choice":
            return _grade_choice(completion, gold, opts, choices)
        return _grade_math(completion, gold, opts)
    except Exception as exc:  # noqa: BLE001 - a reward must not crash the run
        return RewardResult(opts.failure_score(), ERROR, None, False, _short(f"{type(exc).__name__}: {exc}"))


def _grade_math(completion: object, gold: object, opts: RewardOptions) -> RewardResult:
    text = sanitize(completion)
    _debug_sleep(text, opts)
    targets = _gold_targets(parse_gold(gold, opts.answer_format))
    content = last_boxed(text)
    if content is not None:
        content = content.strip()
        if not content:
            return RewardResult(opts.score_for(False, True), NO_ANSWER, None, True, "empty \\boxed{}")
        if len(content) > opts.max_answer_chars:
            return RewardResult(
                opts.score_for(False, True),
                WRONG,
                _short(content),
                True,
                f"boxed answer longer than max_answer_chars={opts.max_answer_chars}",
            )
        ok = _verify(targets, _parse_boxed(clean_answer(content)))
        if not ok:
            plain = strip_thousands(content)
            if plain is not None:
                ok = _verify(targets, _parse_boxed(plain))
        return RewardResult(opts.score_for(ok, True), CORRECT if ok else WRONG, _short(content), True)
    if has_box(text):
        # a box that never closes (truncated generation) and nothing else boxed
        return RewardResult(opts.score_for(False, True), NO_ANSWER, None, True, "unclosed \\boxed{")
    pred, shown = _parse_unboxed(text, opts.extraction, opts.fallback_last_number)
    if not pred:
        return RewardResult(opts.score_for(False, False), NO_ANSWER, None, False)
    ok = _verify(targets, pred)
    return RewardResult(opts.score_for(ok, False), CORRECT if ok else WRONG, shown, False)


def _grade_choice(
    completion: object, gold: object, opts: RewardOptions, choices: Sequence[str] | None
) -> RewardResult:
    text = sanitize(completion)
    _debug_sleep(text, opts)
    letters = _LETTERS if not choices else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]
    gold_letter = parse_gold(gold, "choice")
    if gold_letter not in letters:
        raise ValueError(f"gold letter {gold_letter} is not among the {len(letters)} choices")
    content = last_boxed(text)
    boxed = content is not None
    letter = None
    shown = None
    if boxed:
        content = content.strip()[: opts.max_answer_chars + 1]
        shown = _short(content) or None
        letter = choice_letter(content, letters)
        if letter is None and choices:
            wanted = normalize_choice_text(content)
            hits = [letters[i] for i, c in enumerate(choices) if normalize_choice_text(str(c)) == wanted]
            if len(hits) == 1:
                letter = hits[0]
        if letter is None and not content:
            return RewardResult(opts.score_for(False, True), NO_ANSWER, None, True, "empty \\boxed{}")
        if letter is None:
            return RewardResult(
                opts.score_for(False, True), WRONG, shown, True, "boxed answer is not a choice"
            )
    else:
        if opts.extraction != "boxed" or opts.fallback_last_number:
            letter = anchored_choice(text, letters)
        if letter is None:
            return RewardResult(opts.score_for(False, False), NO_ANSWER, None, False)
        shown = letter
    ok = letter == gold_letter
    return RewardResult(opts.score_for(ok, boxed), CORRECT if ok else WRONG, shown, boxed)


def math_reward(
    completion: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S, **options
) -> RewardResult:
    """Grade one completion against a gold answer; never raises for bad model output and returns
    within `timeout_s` seconds (status 'timeout' past it), from any thread or process.

    Options (all keyword, the config keys under `reward.`): scheme (binary | signed | format),
    correct_score, wrong_boxed_score, no_box_score, format_penalty, extraction (boxed |
    boxed_then_latex | boxed_then_any), fallback_last_number, answer_format, max_answer_chars,
    task (math | choice: a choice task is graded by `choice_reward`), choices (choice task only).
    An unknown option or a bad option value raises ValueError (a configuration error).
    An empty or unparseable gold gives status 'error', not an exception.

    Grading runs in a worker process that is killed at the deadline; the first call starts it
    (a few seconds: math-verify's imports), later calls cost a pipe round trip. To score many
    completions at once use `RewardPool`. `timeout_s=None` grades in this process with no limit.
    """
    choices = options.pop("choices", None)
    return _graded(completion, gold, _options(options), choices, timeout_s)


def choice_reward(
    completion: str,
    gold: str,
    choices: Sequence[str] | None = None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    **options,
) -> RewardResult:
    """Multiple-choice grading by letter (GPQA style): the last \\boxed{} holding a letter ('B',
    '(B)', '\\text{B}', 'B) text'), or, when `choices` (the option texts, in letter order) are
    given, holding exactly one option's text; unboxed, the last 'answer is (B)' / 'Answer: B'
    unless extraction='boxed'. The gold is a letter ('B', '(B)'). `timeout_s` as in
    `math_reward`."""
    options["task"] = "choice"
    return _graded(completion, gold, _options(options), choices, timeout_s)


def _graded(completion, gold, opts: RewardOptions, choices, timeout_s: float | None) -> RewardResult:
    if timeout_s is None:
        return grade(completion, gold, opts, choices)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0 or None (got {timeout_s!r})")
    import multiprocessing as mp

    if mp.current_process().daemon:  # may not start a worker: grade here, without a deadline
        if not _warned_daemon:
            _warn_daemon()
        return grade(completion, gold, opts, choices)
    pool = _deadline_pool(opts, float(timeout_s))
    results, _ = pool.score([completion], [gold], None if choices is None else [choices])
    return results[0]


_warned_daemon = False


def _warn_daemon() -> None:
    global _warned_daemon
    _warned_daemon = True
    log.warning(
        "math_reward called in a daemonic process, which may not start the grading "
        "worker that enforces timeout_s: grading without a deadline here"
    )


# One single-worker pool per (options, timeout) in use, a few at most; rebuilt after a fork.
_POOLS: OrderedDict[tuple, object] = OrderedDict()
_POOLS_LOCK = threading.Lock()
_POOLS_PID = os.getpid()
_MAX_POOLS = 4


def _deadline_pool(opts: RewardOptions, timeout_s: float):
    from dataclasses import asdict

    from egsw_rl.rewards.pool import RewardPool

    global _POOLS_PID
    key = (tuple(sorted(asdict(opts).items())), timeout_s)
    with _POOLS_LOCK:
        if _POOLS_PID != os.getpid():  # a forked child must not share its parent's pipes
            _POOLS.clear()
            _POOLS_PID = os.getpid()
        pool = _POOLS.get(key)
        if pool is None:
            pool = RewardPool(workers=1, timeout_s=timeout_s, **asdict(opts))
            _POOLS[key] = pool
            if len(_POOLS) > _MAX_POOLS:
                _POOLS.popitem(last=False)[1].close()
        _POOLS.move_to_end(key)
        return pool


def _options(options: dict) -> RewardOptions:
    try:
        key = tuple(sorted(options.items()))
        return _cached_options(key)
    except TypeError:  # an unhashable value: build directly (will be refused by validation)
        return RewardOptions.build(**options)


@lru_cache(maxsize=64)
def _cached_options(items: tuple) -> RewardOptions:
    return RewardOptions.build(**dict(items))
