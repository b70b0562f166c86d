"""Prompts: the one renderer training and evaluation share, and the prompt-token budget.

A template name means the same text everywhere (`rollout.prompt_template` in training, `--prompt`
in `egsw_rl.eval`, and the run's own template when a trained run is evaluated):

    qwen_math       the tokenizer's chat template; system turn "Please reason step by step, and put
                    your final answer within \\boxed{}.", the question as the user turn
                    (Qwen2.5-Math's chain-of-thought prompt, arXiv 2409.12122)
    qwen_math_user  the same instruction appended to the question in the user turn, no system
                    turn of ours (SimpleRL-Zoo's prompt, arXiv 2503.18892)
    chat            the chat template with the bare question as the user turn
    chat_boxed      the chat template; "Put your final answer within \\boxed{}." appended to the
                    question in the user turn, nothing asked about reasoning (a 135M model told to
                    "reason step by step" rambles past a short budget: README "A real small model")
    anything else   a plain template in which "{question}" is replaced (other braces stay, so
                    "\\boxed{}" needs no escaping)

The budget: a prompt may use `rollout.max_model_len - rollout.max_tokens` tokens, so that every
completion can reach `max_tokens`. `fit_to_budget` applies `rollout.overlong_prompt` to problems
before a run starts: `drop` (the default) leaves out the ones that do not fit and reports them
once, `truncate_left` keeps them and the engine cuts their prompts from the left, `error`
refuses the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ANSWER_INSTRUCTION = "Put your final answer within \\boxed{}."
CHAT_TEMPLATES = ("qwen_math", "qwen_math_user", "chat", "chat_boxed")
OVERLONG_POLICIES = ("drop", "truncate_left", "error")


class PromptError(ValueError):
    """A template the tokenizer cannot render, or data that does not fit the prompt budget."""


def _messages(question: str, template: str) -> list[dict]:
    if template == "qwen_math":
        return [{"role": "system", "content": BOXED_INSTRUCTION}, {"role": "user", "content": question}]
    if template == "qwen_math_user":
        return [{"role": "user", "content": f"{question}\n{BOXED_INSTRUCTION}"}]
    if template == "chat_boxed":
        return [{"role": "user", "content": f"{question}\n{ANSWER_INSTRUCTION}"}]
    return [{"role": "user", "content": question}]


def render_prompts(tokenizer, questions: Sequence[str], template: str) -> list[str]:
    """Prompt strings for `questions` under `template` (see the module docstring)."""
    if template in CHAT_TEMPLATES:
        if not getattr(tokenizer, "chat_template", None):
            raise PromptError(
                f"prompt template {template!r} needs a chat template and this tokenizer "
                "has none: use a plain template containing {question}"
            )
        out = []
        for q in questions:
            msgs = _messages(q, template)
            try:
                out.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            except Exception as e:  # a template without a system role, say: say which, not guess
                raise PromptError(
                    f"the tokenizer's chat template cannot render prompt template "
                    f"{template!r} ({type(e).__name__}: {e}); try qwen_math_user or chat"
                ) from None
        return out
    if "{question}" not in template:
        raise PromptError(
            f"prompt template {template!r}: use {', '.join(CHAT_TEMPLATES)} or a plain "
            "template containing {question}"
        )
    return [template.replace("{question}", q) for q in questions]


def encode_prompts(tokenizer, prompts: Sequence[str], template: str) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template writes its own special tokens, so none are
    added on top of it; a plain template gets the tokenizer's usual ones (a BOS, if it has one)."""
    special = template not in CHAT_TEMPLATES
    return [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]


def prompt_budget(max_model_len: int, max_tokens: int) -> int:
    return int(max_model_len) - int(max_tokens)


@dataclass
class Fit:
    """Which problems fit the budget: indices kept, and (index, tokens) of the ones that do not."""

    kept: list[int]
    overlong: list[tuple[int, int]]
    budget: int
    longest: int

    def report(self, where: str) -> str:
        if not self.overlong:
            return f"{where}: every prompt fits the {self.budget}-token budget (longest {self.longest})"
        worst = max(self.overlong, key=lambda x: x[1])
        return (
            f"{where}: {len(self.overlong)} of {len(self.kept) + len(self.overlong)} prompts longer "
            f"than the {self.budget}-token budget (rollout.max_model_len - rollout.max_tokens; "
            f"longest {worst[1]} tokens, problem {worst[0]})"
        )


def fit_to_budget(
    tokenizer, questions: Sequence[str], template: str, budget: int, policy: str = "drop", where: str = "data"
) -> Fit:
    """Measure every rendered prompt against `budget`; `policy` decides what an over-long one means
    (drop: left out; truncate_left: kept; error: PromptError naming the keys)."""
    if policy not in OVERLONG_POLICIES:
        raise PromptError(
            f"rollout.overlong_prompt={policy!r}: allowed values are {', '.join(OVERLONG_POLICIES)}"
        )
    if budget < 1:
        raise PromptError(f"rollout.max_model_len - rollout.max_tokens = {budget}: no room for a prompt")
    lengths = [
        len(ids)
        for ids in encode_prompts(tokenizer, render_prompts(tokenizer, questions, template), template)
    ]
    over = [(i, n) for i, n in enumerate(lengths) if n > budget]
    fit = Fit(
        kept=[i for i, n in enumerate(lengths) if n <= budget or policy == "truncate_left"],
        overlong=over,
        budget=budget,
        longest=max(lengths, default=0),
    )
    if over and policy == "error":
        raise PromptError(
            fit.report(where) + ": raise rollout.max_model_len, lower rollout.max_tokens, "
            "or set rollout.overlong_prompt=drop"
        )
    return fit


def load_tokenizer(path: str, tokenizer: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer or path, trust_remote_code=trust_remote_code)
