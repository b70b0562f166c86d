"""Result record and options of the reward functions (no math-verify import here: cheap)."""

from __future__ import annotations

from dataclasses import dataclass, fields

CORRECT = "correct"
WRONG = "wrong"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"
ERROR = "error"
STATUSES = (CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR)
# Seconds one completion may take to grade (reward.timeout_s, math_reward's timeout_s).
DEFAULT_TIMEOUT_S = 5.0

SCHEMES = ("binary", "signed", "format")
TASKS = ("math", "choice")
# boxed: only the last \boxed{} / \fbox{} counts.
# boxed_then_latex: else an anchored answer in the tail of the completion, LaTeX or a number
#   ("final answer is $x$", "answer: 42", "the answer is $\frac{1}{2}$").
# boxed_then_any: else math-verify's unanchored extraction too: the last LaTeX span or number.
EXTRACTIONS = ("boxed", "boxed_then_latex", "boxed_then_any")
ANSWER_FORMATS = ("auto", "latex", "gsm8k", "aime", "choice")


@dataclass
class RewardResult:
    """One graded completion.

    score:   the reward under the configured scheme.
    status:  correct | wrong | no_answer | timeout | error.
    parsed:  the answer text taken from the completion (None when nothing was found, or on
             timeout / error); at most 200 characters.
    boxed:   the answer came from a \\boxed{} (or \\fbox{}), not from a fallback.
    message: why, for error / timeout / refused answers; None otherwise.
    """

    score: float
    status: str
    parsed: str | None = None
    boxed: bool = False
    message: str | None = None


@dataclass(frozen=True)
class RewardOptions:
    """Every option `math_reward` / `choice_reward` / `RewardPool` accept, and the one home of
    the `reward.<name>` config keys of the same names: `config.RewardConfig` is these public
    fields (names, types, defaults) plus where grading runs, and its check builds one of these."""

    task: str = "math"  # math | choice (multiple choice graded by letter, GPQA)
    scheme: str = "binary"  # binary | signed | format
    correct_score: float = 1.0
    wrong_boxed_score: float = 0.0
    no_box_score: float = 0.0
    format_penalty: float = 0.0
    extraction: str = "boxed_then_latex"  # one of EXTRACTIONS (above)
    # last-number fallback when no \boxed{} is written (small models rarely box unprompted)
    fallback_last_number: bool = False
    answer_format: str = "auto"  # how golds are written: one of ANSWER_FORMATS
    # A boxed answer longer than this is refused (status wrong) before any parsing.
    max_answer_chars: int = 1000
    # Test hook, inert unless > 0: a completion starting with "<debug-sleep>" makes the scorer
    # sleep this long first (to exercise the pool's timeout without a real pathological input).
    _debug_sleep_s: float = 0.0

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"reward.{key}: {msg} (got {getattr(self, key)!r})")

        need(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}")
        need(self.scheme in SCHEMES, "scheme", f"must be one of {', '.join(SCHEMES)}")
        need(self.extraction in EXTRACTIONS, "extraction", f"must be one of {', '.join(EXTRACTIONS)}")
        need(
            self.answer_format in ANSWER_FORMATS,
            "answer_format",
            f"must be one of {', '.join(ANSWER_FORMATS)}",
        )
        for key in ("correct_score", "wrong_boxed_score", "no_box_score", "format_penalty", "_debug_sleep_s"):
            need(
                isinstance(getattr(self, key), (int, float)) and not isinstance(getattr(self, key), bool),
                key,
                "must be a number",
            )
        need(self.format_penalty >= 0, "format_penalty", "must be >= 0 (it is subtracted)")
        need(isinstance(self.fallback_last_number, bool), "fallback_last_number", "must be true or false")
        need(
            isinstance(self.max_answer_chars, int) and self.max_answer_chars > 0,
            "max_answer_chars",
            "must be a positive integer",
        )

    @classmethod
    def build(cls, **options) -> RewardOptions:
        """RewardOptions from keyword options; an unknown key is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            public = sorted(k for k in known if not k.startswith("_"))
            raise ValueError(
                f"unknown reward option(s) {', '.join('reward.' + k for k in unknown)}; "
                f"known: {', '.join(public)}"
            )
        return cls(**options)

    def failure_score(self) -> float:
        """Score of a timeout / error: the lowest the scheme gives a non-correct answer."""
        if self.scheme == "signed":
            return -float(self.correct_score)
        if self.scheme == "format":
            return float(min(self.wrong_boxed_score, self.no_box_score))
        return 0.0

    def score_for(self, correct: bool, boxed: bool) -> float:
        if self.scheme == "binary":
            score = self.correct_score if correct else 0.0
        elif self.scheme == "signed":
            score = self.correct_score if correct else -self.correct_score
        else:  # format
            if correct:
                score = self.correct_score
            else:
                score = self.wrong_boxed_score if boxed else self.no_box_score
        if not boxed:
            score -= self.format_penalty
        return float(score)
