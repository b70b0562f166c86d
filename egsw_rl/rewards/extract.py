"""Answer extraction from model text: pure string work, linear time, no parsing of math.

Everything here treats the completion as untrusted text: nothing is evaluated.
"""

from __future__ import annotations

import re

# \boxed{ / \fbox{ (a space is allowed before the brace: "\boxed {x}").
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "\boxed 42" (no braces): one token up to whitespace or a dollar sign.
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")
# Group braces; an escaped backslash is consumed first so "\\{" still opens a group, while
# "\{" / "\}" are literal set braces and do not count.
_BRACE = re.compile(r"\\\\|\\[{}]|[{}]")

# The window, from the end, where unboxed fallbacks look for an answer.
TAIL_CHARS = 4000


def sanitize(text: object) -> str:
    """A str without NUL bytes and without lone surrogates (which cannot be UTF-8 encoded)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last closed \\boxed{...} (or \\fbox{...}), braces balanced; None if none.

    "Last" is the box that opens last, so nested boxes give the inner one. An unclosed box (a
    truncated generation) is skipped in favour of an earlier closed one. One pass over the text
    from the first box: linear even for 10^4 nested braces.
    """
    opens = [m.end() - 1 for m in _BOX_OPEN.finditer(text)]
    bare = None
    for m in _BOX_BARE.finditer(text):
        bare = m
    if not opens:
        return bare.group(1) if bare else None
    close: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, opens[0]):
        tok = m.group()
        if tok == "{":
            stack.append(m.start())
        elif tok == "}" and stack:
            close[stack.pop()] = m.start()
    for start in reversed(opens):
        end = close.get(start)
        if end is not None:
            if bare is not None and bare.start() > end:
                return bare.group(1)
            return text[start + 1 : end]
    return bare.group(1) if bare else None


def has_box(text: str) -> bool:
    return _BOX_OPEN.search(text) is not None or _BOX_BARE.search(text) is not None


# Thousands separators as written in LaTeX or prose: 1,234  10,\!080  11,\! 111  1{,}000
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:,|\{,\})(?:\\!)?\s?\d{3})+(?:\.\d+)?$")


def strip_thousands(content: str) -> str | None:
    """'10,\\!080' -> '10080' when the whole answer is one number with thousands separators."""
    s = content.strip().replace("\\!", "").replace("{,}", ",")
    if _THOUSANDS.match(s):
        return re.sub(r"[,\s]", "", s)
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last plain number in the tail of the text (commas as thousands separators dropped)."""
    tail = text[-TAIL_CHARS:]
    found = None
    for m in _NUMBER.finditer(tail):
        found = m.group()
    if found is None:
        return None
    found = found.rstrip(",")
    if "," in found:
        if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", found):
            found = found.replace(",", "")
        else:  # "3,4" is a list, not a number: keep the last piece
            found = found.split(",")[-1] or found
    return found


_HASH_ANSWER = re.compile(r"####\s*\$?\s*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")


def hash_answer(text: str) -> str | None:
    """The number after the last GSM8K-style '#### ' marker in the tail, commas dropped."""
    found = None
    for m in _HASH_ANSWER.finditer(text[-TAIL_CHARS:]):
        found = m.group(1)
    return found.replace(",", "").rstrip(".") if found else None


# --- multiple choice --------------------------------------------------------------------------

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s*\{([^{}]*)\}")


def choice_letter(content: str, letters: str) -> str | None:
    """'B', '(B)', '\\text{(B)}', 'B)', '(B) 42', 'B. 42', '$B$' -> 'B' if B is among `letters`."""
    s = content.strip()
    for _ in range(3):
        s = _WRAPPERS.sub(r"\1", s)
    s = s.replace("$", "").strip().strip("{}").strip()
    m = (
        re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\.?", s)
        or re.match(r"\(\s*([A-Za-z])\s*\)\s*\S", s)
        or re.match(r"([A-Z])[.:)]\s*\S", s)
    )
    if m:
        letter = m.group(1).upper()
        if letter in letters:
            return letter
    return None


def anchored_choice(text: str, letters: str) -> str | None:
    """The letter after the last 'answer is (X)' / 'Answer: X' in the tail of the text."""
    tail = text[-TAIL_CHARS:]
    pattern = re.compile(
        r"(?i:answer)\s*(?i:is)?\s*[:：]?\s*(?:\*\*)?\s*(?:\\text\{)?\s*\(?\s*([A-Z])\s*\)?(?![A-Za-z])"
    )
    found = None
    for m in pattern.finditer(tail):
        if m.group(1) in letters:
            found = m.group(1)
    return found


def normalize_choice_text(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        s = _WRAPPERS.sub(r"\1", s)
    return re.sub(r"[\s$]", "", s).rstrip(".").lower()
