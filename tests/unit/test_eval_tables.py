"""Result tables (egsw_rl.eval.tables): percentages, the layout of the EGSW paper's Tables 1-2
(arXiv 2503.22456), one row per model of an eval invocation."""

from __future__ import annotations

from egsw_rl.eval.tables import fmt_pct, markdown_table, results_markdown


def test_percent_format():
    assert fmt_pct(0.4567) == "45.7"
    assert fmt_pct(0.4567, 0.0123) == "45.7 ± 1.2"
    assert fmt_pct(None) == "–"


def test_markdown_table_layout():
    rows = [
        ("GRPO", {"math500": (0.70, 0.01), "aime24": (0.10, 0.02), "aime25": (0.05, None)}),
        ("EGSW", {"math500": (0.72, None), "aime24": (0.20, None)}),
    ]
    md = markdown_table(rows, ["math500", "aime24", "aime25"], first="Method")
    lines = md.splitlines()
    assert lines[0] == "| Method | MATH-500 | AIME24 | AIME25 | Avg. |"
    assert lines[1] == "|---|:---:|:---:|:---:|:---:|"
    assert lines[2] == "| GRPO | 70.0 ± 1.0 | 10.0 ± 2.0 | 5.0 | 28.3 |"
    assert lines[3] == "| EGSW | 72.0 | 20.0 | – | – |"  # no average over a partial row
    single = markdown_table([("m", {"gsm8k": (0.5, None)})], ["gsm8k"])
    assert single.splitlines()[0] == "| Model | GSM8K |"  # no Avg. column for one benchmark


def test_results_markdown_rows_are_models_columns_benchmarks(eval_record):
    recs = [
        eval_record("base", "base", {"aime24": 0.1, "math500": 0.5, "gpqa_diamond": 0.3}),
        eval_record("run@10", "egsw", {"math500": 0.6, "aime24": 0.2, "gpqa_diamond": 0.25}),
    ]
    md = results_markdown(recs)
    caption, _, table = md.partition("\n\n")
    assert caption.startswith("avg@1 (%), greedy, max 64 new tokens, prompt qwen_math")
    lines = table.splitlines()
    assert lines[0] == "| Model | MATH-500 | AIME24 | GPQA-D | Avg. |"  # paper's column order
    assert lines[2] == "| base | 50.0 | 10.0 | 30.0 | 30.0 |"
    assert lines[3] == "| run@10 | 60.0 | 20.0 | 25.0 | 35.0 |"
