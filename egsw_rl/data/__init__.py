"""Problems (question + gold answer) from the data sets shipped in the package, local files, hub
data sets or a seeded generator, and a resumable sampler over them. A row without a usable answer
is skipped and counted, never given a silent wrong reward."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # gold, as the reward function expects it
    id: str = ""
    choices: tuple[str, ...] | None = None  # multiple choice (GPQA): graded by letter


@dataclass(frozen=True)
class Source:
    """Where a named data set lives: a file name looked up in local data folders, else the hub."""

    file: str | None
    hub: tuple[str, str | None, str] | None  # (name, config, split)
    question_key: str
    answer_key: str
    answer_format: str


# Named data sets. Files are looked up in $EGSW_RL_DATA, ./data and the copies shipped in the
# package (egsw_rl/data/sets, see its README for sources and licences), plain or gzipped.
PACKAGE_DATA = Path(__file__).resolve().parent / "sets"
SOURCES = {
    "math500": Source(
        "math500.jsonl", ("HuggingFaceH4/MATH-500", None, "test"), "problem", "answer", "latex"
    ),
    "aime24": Source("aime24.jsonl", ("math-ai/aime24", None, "test"), "problem", "answer", "aime"),
    "aime25": Source("aime25.jsonl", ("math-ai/aime25", None, "test"), "problem", "answer", "aime"),
    "gsm8k": Source("gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), "question", "answer", "gsm8k"),
    "simplerl_8k": Source("simplerl_math_level3to5_8k.jsonl", None, "question", "answer", "latex"),
    # Gated on the hub and never shipped in plain text (its authors ask so): a path or the hub.
    "gpqa_diamond": Source(
        None, ("Idavidrein/gpqa", "gpqa_diamond", "train"), "Question", "Correct Answer", "choice"
    ),
}


class DataError(ValueError):
    pass


def data_dirs() -> list[Path]:
    """Where named data sets are looked up, first match wins: $EGSW_RL_DATA, ./data, the package."""
    dirs = []
    if os.environ.get("EGSW_RL_DATA"):
        dirs.append(Path(os.environ["EGSW_RL_DATA"]))
    return dirs + [Path.cwd() / "data", PACKAGE_DATA]


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_rows(path: Path) -> list[dict]:
    """The rows of a .jsonl / .json / .parquet file, each optionally gzipped (.jsonl.gz)."""
    path = Path(path)
    suffix = Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        return rows
    if suffix == ".json":
        with _open_text(path) as f:
            data = json.load(f)
        if isinstance(data, dict):  # {"data": [...]} or column-oriented
            data = data.get("data", data.get("rows", data))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(
        f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet, optionally gzipped)"
    )


def _hub_rows(name: str, config: str | None, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, gated, misspelled: say which and how to fix it
        raise DataError(
            f"could not load data set {name!r} (config={config}, split={split}) from "
            f"the hub: {type(e).__name__}: {e}. Give a local path instead."
        ) from None
    return list(ds)


_FORMAT_HINT = {
    "gsm8k": "GSM8K worked answers ending '#### N'",
    "aime": "integers",
    "latex": "LaTeX math-verify can parse",
    "choice": "choice letters",
}


def _gold(raw, fmt: str) -> tuple[str, str]:
    """(canonical gold, "") or ("", why the row has none the grader can read)."""
    from egsw_rl.rewards import parse_gold

    if raw is None or not str(raw).strip():
        return "", "empty answer"
    try:
        return parse_gold(raw, fmt), ""
    except ValueError:
        return "", f"answer not readable as {fmt}"


def _drop_report(where: str, dropped: dict[str, list], total: int, answer_format: str) -> str:
    """One line: how many rows were dropped for which reason, an example of each, the key that
    changes it."""
    parts = []
    for why, rows in dropped.items():
        i, key, value, count = rows
        part = f"{count} {why} (e.g. row {i}: {key}={str(value)[:60]!r})"
        if why.startswith("answer not readable") and answer_format != "auto":
            part += (
                f"; data.answer_format={answer_format} expects "
                f"{_FORMAT_HINT.get(answer_format, answer_format)}, "
                "data.answer_format=auto reads GSM8K, integers and LaTeX"
            )
        parts.append(part)
    n = sum(r[3] for r in dropped.values())
    return f"{where}: {n} of {total} rows dropped: " + "; ".join(parts)


def locate(file: str) -> Path | None:
    """The first of data_dirs() holding `file` or `file.gz`."""
    for d in data_dirs():
        for candidate in (d / file, d / f"{file}.gz"):
            if candidate.is_file():
                return candidate
    return None


def dataset_path(name: str) -> Path:
    """The local file of a named data set (SOURCES), or DataError naming where it looked."""
    if name not in SOURCES or SOURCES[name].file is None:
        raise DataError(
            f"{name!r} is not a data set shipped with egsw_rl "
            f"(shipped: {', '.join(n for n, s in SOURCES.items() if s.file)})"
        )
    path = locate(SOURCES[name].file)
    if path is None:
        raise DataError(
            f"data set {name!r}: no {SOURCES[name].file}[.gz] in {', '.join(map(str, data_dirs()))}"
        )
    return path


def load_problems(
    spec: str,
    *,
    split: str = "train",
    question_key: str = "question",
    answer_key: str = "answer",
    answer_format: str = "auto",
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[list[Problem], int]:
    """Load problems; returns (problems, number of rows skipped for a missing answer).

    `spec` is a named set (SOURCES), a generated one (GENERATED: its training split, or the
    held-out one as NAME_heldout), a local .jsonl/.json/.parquet path, or a hub data set name.
    Field names come from the named set or from question_key / answer_key."""
    base = spec.removesuffix("_heldout")
    if base in GENERATED:
        split = "test" if spec.endswith("_heldout") else "train"
        return GENERATED[base](max_samples or 4096, seed=seed, split=split), 0

    rows: list[dict]
    where = spec
    if spec in SOURCES:
        src = SOURCES[spec]
        question_key, answer_key = src.question_key, src.answer_key
        answer_format = src.answer_format if answer_format == "auto" else answer_format
        local = locate(src.file) if src.file else None
        if local is not None:
            rows, where = read_rows(local), str(local)
        elif src.file is None:  # hub only
            rows = _hub_rows(*src.hub)
        else:
            missing = f"data set {spec!r}: no local copy of {src.file} in {', '.join(map(str, data_dirs()))}"
            if src.hub is None:
                raise DataError(f"{missing}; set EGSW_RL_DATA or give a path")
            try:
                rows = _hub_rows(*src.hub)
            except DataError as e:
                raise DataError(f"{missing} (set EGSW_RL_DATA), and {e}") from None
    elif Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        rows = read_rows(path)
    else:
        rows = _hub_rows(spec, None, split)

    problems = []
    dropped: dict[str, list] = {}  # reason -> [first row, its field, the value, count]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or question_key not in row:
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"{where}: row {i} has no field {question_key!r} (set "
                f"data.question_key); its fields are {fields}"
            )
        if answer_format == "choice":
            problems.append(_choice_problem(row, i, seed))
            continue
        question = str(row[question_key] or "").strip()
        gold, why = _gold(row.get(answer_key), answer_format)
        key = answer_key
        if not question:
            why, key = "empty question", question_key
        if why:
            dropped.setdefault(why, [i, key, row.get(key), 0])[3] += 1
            continue
        problems.append(Problem(question, gold, id=str(row.get("unique_id", row.get("id", i)))))
        if max_samples and len(problems) >= max_samples:
            break
    skipped = sum(r[3] for r in dropped.values())
    if not problems:
        report = _drop_report(where, dropped, len(rows), answer_format) if dropped else f"{where}: no rows"
        raise DataError(f"no usable problems in {report}")
    if skipped:
        log.warning("%s", _drop_report(where, dropped, len(rows), answer_format))
    return problems, skipped


def _choice_problem(row: dict, i: int, seed: int) -> Problem:
    """GPQA-style rows: one correct and three incorrect answers, shuffled per row by seed."""
    correct = row["Correct Answer"].strip()
    options = [correct] + [row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)]
    random.Random(f"{seed}-{i}").shuffle(options)
    letter = "ABCD"[options.index(correct)]
    body = "\n".join(f"({c}) {o}" for c, o in zip("ABCD", options))
    return Problem(f"{row['Question'].strip()}\n\n{body}", letter, id=str(i), choices=tuple(options))


def _heldout_pair(a: int, b: int) -> bool:
    return (7 * a + 3 * b) % 5 == 0  # about a fifth of the operand pairs, never trained on


def arithmetic_problems(
    n: int, *, seed: int = 0, max_operand: int = 15, split: str = "train"
) -> list[Problem]:
    """Two-operand addition / subtraction word problems with integer answers. The "test" split
    uses only operand pairs the "train" split never contains, so its accuracy is held out;
    "all" draws from every pair."""
    rng = random.Random(f"{seed}-{split}")
    out = []
    while len(out) < n:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        plus = rng.random() < 0.5
        if not plus:
            a, b = max(a, b), min(a, b)
        if split != "all" and _heldout_pair(a, b) != (split == "test"):
            continue
        i = len(out)
        if plus:
            out.append(Problem(f"What is {a} + {b}?", str(a + b), id=f"arith-{split}-{i}"))
        else:
            out.append(Problem(f"What is {a} - {b}?", str(a - b), id=f"arith-{split}-{i}"))
    return out


def _heldout_chain(operands: tuple[int, ...], ops: tuple[str, ...]) -> bool:
    code = sum((2 * k + 3) * x for k, x in enumerate(operands)) + sum(
        k + 1 for k, o in enumerate(ops) if o == "-"
    )
    return code % 5 == 0  # about a fifth of the expressions, never trained on


def arithmetic_chain_problems(
    n: int, *, seed: int = 0, max_operand: int = 9, terms: int = 3, split: str = "train"
) -> list[Problem]:
    """Multi-step expressions evaluated left to right ("What is 3 + 9 - 4?"), `terms` operands in
    0..max_operand, each operator + or - at random; answers may be negative. The "test" split uses
    only expressions (operands and operators) the "train" split never contains; "all" draws from
    every one. `conf=tiny_methods` trains and evaluates on them (README "Methods side by side")."""
    rng = random.Random(f"chain-{seed}-{split}")
    out = []
    while len(out) < n:
        operands = tuple(rng.randint(0, max_operand) for _ in range(terms))
        ops = tuple(rng.choice("+-") for _ in range(terms - 1))
        if split != "all" and _heldout_chain(operands, ops) != (split == "test"):
            continue
        value, text = operands[0], str(operands[0])
        for o, x in zip(ops, operands[1:]):
            value = value + x if o == "+" else value - x
            text += f" {o} {x}"
        out.append(Problem(f"What is {text}?", str(value), id=f"chain-{split}-{len(out)}"))
    return out


# Short word problems for a small real model (conf=smollm2_cpu): one or two operations on small
# whole numbers in templated English. Each kind: its sentence, how many operands, and the answer.
_WORD_NAMES = (
    ("Tom", "He"),
    ("Anna", "She"),
    ("Sam", "He"),
    ("Mia", "She"),
    ("Ben", "He"),
    ("Lily", "She"),
    ("Max", "He"),
    ("Emma", "She"),
    ("Leo", "He"),
    ("Zoe", "She"),
)
_WORD_ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "cards", "balloons")
WORD_KINDS = {
    "add": (
        "{name} has {a} {items}. {he} gets {b} more {items}. How many {items} does {name} have now?",
        lambda a, b: a + b,
    ),
    "sub": (
        "{name} has {a} {items}. {he} gives {b} {items} to {friend}. How many {items} does {name} have left?",
        lambda a, b: a - b,
    ),
    "mul": (
        "{name} has {a} boxes. Each box holds {b} {items}. How many {items} does {name} have in all?",
        lambda a, b: a * b,
    ),
    "add_sub": (
        "{name} has {a} {items}. {he} gets {b} more {items} and then gives {c} {items} to {friend}. "
        "How many {items} does {name} have now?",
        lambda a, b, c: a + b - c,
    ),
}


def _word_operands(rng: random.Random, kind: str, max_operand: int) -> tuple[int, ...]:
    """Operands of one problem, every one >= 2 (so every noun stays plural) and every answer >= 1."""
    hi = max(max_operand, 3)
    if kind == "sub":
        a = rng.randint(3, hi)
        return a, rng.randint(2, a - 1)
    if kind == "mul":  # a few boxes of up to max_operand items
        return rng.randint(2, 5), rng.randint(2, hi)
    if kind == "add_sub":
        a, b = rng.randint(2, hi), rng.randint(2, hi)
        return a, b, rng.randint(2, a + b - 1)
    return rng.randint(2, hi), rng.randint(2, hi)


def _heldout_word(kind: str, operands: tuple[int, ...]) -> bool:
    code = sum((2 * k + 3) * x for k, x in enumerate(operands)) + 7 * list(WORD_KINDS).index(kind)
    return code % 5 == 0  # about a fifth of each kind's numbers, never trained on


def word_problems(
    n: int,
    *,
    seed: int = 0,
    max_operand: int = 10,
    kinds: tuple[str, ...] = ("add", "sub", "add_sub"),
    split: str = "train",
) -> list[Problem]:
    """Short arithmetic word problems ("Tom has 3 apples. He gets 4 more apples. How many apples
    does Tom have now?"): a kind of WORD_KINDS drawn uniformly from `kinds`, operands 2..max_operand
    (multiplication: 2..5 boxes; add_sub gives away 2..a+b-1), a name, a friend and an item drawn
    at random; answers are whole numbers >= 1. Deterministic from (seed, split). The "test" split
    uses only (kind, operands) combinations the "train" split never contains, whatever the wording;
    "all" draws from every one. `conf=smollm2_cpu` trains on them (README "A real small model")."""
    unknown = [k for k in kinds if k not in WORD_KINDS]
    if unknown or not kinds:
        raise DataError(f"word problem kinds {list(kinds)}: choose from {', '.join(WORD_KINDS)}")
    rng = random.Random(f"word-{seed}-{split}")
    out = []
    while len(out) < n:
        kind = rng.choice(kinds)
        operands = _word_operands(rng, kind, max_operand)
        (name, he), (friend, _) = rng.sample(_WORD_NAMES, 2)
        items = rng.choice(_WORD_ITEMS)
        if split != "all" and _heldout_word(kind, operands) != (split == "test"):
            continue
        template, answer = WORD_KINDS[kind]
        values = dict(zip("abc", operands))
        question = template.format(name=name, he=he, friend=friend, items=items, **values)
        out.append(Problem(question, str(answer(*operands)), id=f"word-{split}-{len(out)}"))
    return out


# Generated problem sets by data name (NAME: training split, NAME_heldout: held-out split).
GENERATED = {
    "arithmetic": arithmetic_problems,
    "arith_chain": arithmetic_chain_problems,
    "word_problems": word_problems,
}


@dataclass
class PromptSampler:
    """Epoch-wise shuffled batches; its state (epoch, position) is checkpointed so a resumed run
    neither repeats nor skips a prompt."""

    size: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _make_order(self) -> None:
        self._order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def next_indices(self, count: int | None = None) -> list[int]:
        count = count or self.batch_size
        out = []
        while len(out) < count:
            if not self._order:
                self._make_order()
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._make_order()
            take = min(count - len(out), self.size - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise DataError(
                f"checkpoint was taken on a data set of {state['size']} problems, "
                f"this run has {self.size}: resume with the same data"
            )
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._make_order()


@dataclass
class RunData:
    """A run's problems after the prompt budget (`egsw_rl.prompts.fit_to_budget`) was applied:
    training rows that do not fit are left out here, once, so a run never meets one mid-way; eval
    problems that do not fit stay, named in `eval_overlong`, and are scored `overlong_prompt`."""

    train: list[Problem]
    skipped: int  # rows without a usable question or answer
    dropped_overlong: int
    eval_sets: dict[str, list[Problem]]
    eval_overlong: dict[str, set[str]]  # benchmark -> questions whose prompt does not fit
    reports: list[str]  # one line per set that has prompts over the budget


def load_run_data(cfg, tokenizer) -> RunData:
    """Training and eval problems of a run config (`cfg.data`, `cfg.rollout` budget and template)."""
    from egsw_rl.prompts import fit_to_budget, prompt_budget

    d, r = cfg.data, cfg.rollout
    train, skipped = load_problems(
        d.train,
        split=d.split,
        question_key=d.question_key,
        answer_key=d.answer_key,
        answer_format=d.answer_format,
        max_samples=d.max_samples,
        seed=cfg.trainer.seed,
    )
    budget = prompt_budget(r.max_model_len, r.max_tokens)
    fit = fit_to_budget(
        tokenizer,
        [p.question for p in train],
        r.prompt_template,
        budget,
        r.overlong_prompt,
        where=f"data.train={d.train}",
    )
    reports = (
        [
            fit.report(f"data.train={d.train}") + f": {len(fit.overlong)} rows left out"
            if r.overlong_prompt == "drop"
            else fit.report(f"data.train={d.train}")
        ]
        if fit.overlong
        else []
    )
    dropped = len(train) - len(fit.kept)
    train = [train[i] for i in fit.kept]
    if not train:
        raise DataError(f"data.train={d.train}: no problem fits the prompt budget ({reports[0]})")
    eval_sets, eval_overlong = {}, {}
    for spec in d.eval:
        # a named set keeps its name in the metrics (eval/math500/...), a file its stem
        name = (
            spec if spec in SOURCES or not Path(spec).expanduser().exists() else Path(spec).name.split(".")[0]
        )
        problems = load_problems(spec, max_samples=d.eval_samples, seed=cfg.trainer.seed)[0][: d.eval_samples]
        efit = fit_to_budget(
            tokenizer,
            [p.question for p in problems],
            r.prompt_template,
            budget,
            "drop" if r.overlong_prompt == "error" else r.overlong_prompt,
            where=name,
        )
        eval_sets[name] = problems
        eval_overlong[name] = (
            {problems[i].question for i, _ in efit.overlong}
            if r.overlong_prompt != "truncate_left"
            else set()
        )
        if efit.overlong:
            reports.append(
                efit.report(f"data.eval {name}")
                + (
                    ": scored overlong_prompt"
                    if r.overlong_prompt != "truncate_left"
                    else ": cut from the left"
                )
            )
    for line in reports:
        log.warning("%s", line)
    return RunData(train, skipped, dropped, eval_sets, eval_overlong, reports)
