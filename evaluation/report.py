"""The evaluation report: one JSON document, a terminal table, and a self-contained HTML chart."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from evaluation.metrics import summarize
from ragtune.qa import QASet
from evaluation.runner import Run

# (key in the summary, label, higher is better, shown as a percentage)
METRICS = [
    ("exact_match", "Exact match", True, True),
    ("f1", "Token F1", True, True),
    ("exact_match_answerable", "Exact match, answerable only", True, True),
    ("f1_answerable", "Token F1, answerable only", True, True),
    ("contains", "Answer contains gold", True, True),
    ("decline_rate", "Declines when unanswerable", True, True),
    ("false_decline_rate", "Declines when answerable", False, True),
    ("answerable_auc", "Answerability check AUC", True, False),
    ("recall_at_k", "Retrieval recall@k", True, True),
    ("mrr", "Retrieval MRR", True, False),
    ("cites", "Answer cites a passage", True, True),
    ("citation_accuracy", "Cited passage holds the answer", True, True),
    ("faithfulness", "Answer words found in its passages", True, True),
    ("prompt_tokens", "Prompt tokens (mean)", False, False),
    ("completion_tokens", "Completion tokens (mean)", False, False),
    ("latency_p50_ms", "Latency p50 (ms)", False, False),
    ("latency_p95_ms", "Latency p95 (ms)", False, False),
]
COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]


def build(run: Run, qa: QASet, selection: dict, setup: dict, k: int) -> dict:
    answerable = sum(q.answerable for q in run.items)
    return {
        "dataset": {"path": str(qa.path), "format": qa.format, "questions": len(run.items), "answerable": answerable,
                    "unanswerable": len(run.items) - answerable, "bad_lines": len(qa.bad), "selection": selection},
        "setup": {**setup, "recall_k": k, "index_versions": sorted(run.index_versions),
                  "gold_documents_known": sum(bool(r["gold_doc_ids"]) for r in run.rows),
                  "answers_reused": run.reused},
        "strategies": {name: asdict(summarize(outcomes, k)) for name, outcomes in run.outcomes.items()},
        "questions": run.rows,
    }


def write(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json (everything, each answer included), report.html (the chart), report.md (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / "report.json", "chart": out_dir / "report.html", "table": out_dir / "report.md"}
    paths["report"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_html(report, paths["chart"])
    paths["table"].write_text(markdown(report))
    return paths


def _cell(value, percent: bool) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{value * 100:.1f}%"
    if value <= 1:  # a ratio (MRR)
        return f"{value:.3f}"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"  # means of tokens, milliseconds


def table(report: dict) -> Table:
    data = report["dataset"]
    title = (f"{data['path']}: {data['questions']} questions ({data['answerable']} answerable, "
             f"{data['unanswerable']} unanswerable), recall@{report['setup']['recall_k']}")
    out = Table(title=title, title_justify="left")
    out.add_column("metric")
    for name in report["strategies"]:
        out.add_column(name, justify="right")
    for key, label, _, percent in METRICS:
        label = label.replace("@k", f"@{report['setup']['recall_k']}")
        out.add_row(label, *(_cell(s[key], percent) for s in report["strategies"].values()))
    return out


def markdown(report: dict) -> str:
    """The summary as a Markdown table (for a README or a pull request)."""
    names = list(report["strategies"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, _, percent in METRICS:
        label = label.replace("@k", f"@{report['setup']['recall_k']}")
        lines.append(f"| {label} | " + " | ".join(_cell(s[key], percent) for s in report["strategies"].values()) + " |")
    return "\n".join(lines) + "\n"


def _panel(key: str, label: str, higher: bool, percent: bool, strategies: dict, width: int = 440) -> str:
    """One metric as horizontal bars, one per strategy, as inline SVG."""
    values = [(name, s[key]) for name, s in strategies.items()]
    top = 1.0 if percent else max([v for _, v in values if v is not None] + [1e-9])
    bar_h, gap, left, right = 22, 8, 175, 70
    height = 34 + len(values) * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(label)}">',
             f'<text x="0" y="16" font-weight="600">{html.escape(label)}</text>',
             f'<text x="{width}" y="16" text-anchor="end" fill="#666" font-size="12">'
             f'{"higher" if higher else "lower"} is better</text>']
    for i, (name, value) in enumerate(values):
        y = 28 + i * (bar_h + gap)
        length = 0 if value is None else (width - left - right) * value / top
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="13">{html.escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{COLORS[i % len(COLORS)]}"/>')
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + 15}" font-size="13">{_cell(value, percent)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_html(report: dict, path: Path) -> None:
    """A page that makes no outside requests: the chart is inline SVG, the style inline CSS."""
    data, setup = report["dataset"], report["setup"]
    k = setup["recall_k"]
    panels = "".join(
        f'<div class="panel">{_panel(key, label.replace("@k", f"@{k}"), higher, percent, report["strategies"])}</div>'
        for key, label, higher, percent in METRICS
    )
    rows = "".join(
        f"<tr><th>{html.escape(label.replace('@k', f'@{k}'))}</th>"
        + "".join(f"<td>{_cell(s[key], percent)}</td>" for s in report["strategies"].values()) + "</tr>"
        for key, label, _, percent in METRICS
    )
    heads = "".join(f"<th>{html.escape(n)}</th>" for n in report["strategies"])
    facts = "".join(f"<li><b>{html.escape(str(key))}</b>: {html.escape(str(value))}</li>" for key, value in setup.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragtune eval: {html.escape(data['path'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1.5rem 3rem; }}
table {{ border-collapse: collapse; margin: 1.5rem 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .3rem .8rem; text-align: right; }}
th:first-child {{ text-align: left; }}
svg text {{ font-family: system-ui, sans-serif; }}
</style></head><body>
<h1>ragtune eval</h1>
<p>{html.escape(data['path'])}: {data['questions']} questions ({data['answerable']} answerable,
{data['unanswerable']} unanswerable).</p>
<div class="grid">{panels}</div>
<table><tr><th>metric</th>{heads}</tr>{rows}</table>
<ul>{facts}</ul>
</body></html>
"""
    path.write_text(page)
