"""`prefdata inspect`: what a built dataset holds, in the terminal (rich tables) or as a static
HTML report with plots (matplotlib PNGs embedded as base64: one file, no network, no scripts).

Sections, each shown only when its columns exist (filters add them in later stages):
counts (rows, shards, rejects by reason, rows in/out per stage from stats.json); distributions
of `chosen_score`, `rejected_score`, `margin`, `strength_mean`, `strength_std`, `ches`,
`ln_ches`; per-source counts; `bucket` shares; the label-noise estimate
(`stats.json` `estimates.flip_rate`); and the top pairs by CHES (highest = most
likelihood-displacement risk) with prompt, chosen and rejected side by side.

Only the numeric and label columns are read for the whole dataset; the texts are read for the
few top-CHES rows only, so a large dataset is inspected without loading its texts.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from prefdata.schemas.writers import shard_files

NUMERIC_COLUMNS = ("chosen_score", "rejected_score", "margin", "strength_mean", "strength_std", "ches", "ln_ches")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Distribution:
    name: str
    count: int  # non-null values
    nulls: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: dict[float, float]
    values: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, name: str, column: pa.ChunkedArray) -> Distribution:
        values = column.drop_null().to_numpy().astype(float)
        values = values[np.isfinite(values)]
        nulls = len(column) - len(values)
        if len(values) == 0:
            return cls(name, 0, nulls, None, None, None, None, {}, values)
        qs = np.quantile(values, QUANTILES)
        return cls(name, len(values), nulls, float(values.mean()), float(values.std()), float(values.min()),
                   float(values.max()), dict(zip(QUANTILES, map(float, qs))), values)


@dataclass
class Summary:
    directory: Path
    rows: int
    shards: int
    columns: list[str]
    rejects_by_reason: dict[str, int]
    stats: dict[str, Any] | None
    distributions: dict[str, Distribution]
    sources: dict[str, int]
    buckets: dict[str, int] | None
    ches_column: str | None
    top_ches: list[dict[str, Any]]
    scatter: tuple[np.ndarray, np.ndarray, list[str] | None] | None = field(default=None, repr=False)

    @property
    def rejects(self) -> int:
        return sum(self.rejects_by_reason.values())


def _text(messages: Any) -> str:
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    return "\n".join(m["content"] if len(messages) == 1 else f"{m['role']}: {m['content']}" for m in messages)


def summarize(directory: str | Path, top: int = 5) -> Summary:
    """Read a build folder's numeric and label columns and compute what inspect shows."""
    directory = Path(directory)
    files = shard_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory}: no Parquet shards under data/ (is it a prefdata build folder?)")
    dataset = pds.dataset([str(f) for f in files], format="parquet")
    names = dataset.schema.names
    wanted = [c for c in ("id", "source", "bucket", *NUMERIC_COLUMNS) if c in names]
    table = dataset.to_table(columns=wanted)
    distributions = {c: Distribution.of(c, table.column(c)) for c in NUMERIC_COLUMNS if c in names}
    sources = dict(Counter(table.column("source").to_pylist()).most_common()) if "source" in names else {}
    buckets = dict(sorted(Counter(table.column("bucket").to_pylist()).items(), key=lambda kv: str(kv[0]))) \
        if "bucket" in names else None
    scatter = None
    if "strength_mean" in names and "strength_std" in names:
        scatter = (table.column("strength_mean").to_numpy(zero_copy_only=False).astype(float),
                   table.column("strength_std").to_numpy(zero_copy_only=False).astype(float),
                   table.column("bucket").to_pylist() if "bucket" in names else None)
    ches_column = "ln_ches" if "ln_ches" in names else "ches" if "ches" in names else None
    top_rows: list[dict[str, Any]] = []
    if ches_column and table.num_rows and top > 0:
        order = pc.sort_indices(table, sort_keys=[(ches_column, "descending")], null_placement="at_end")
        ids = table.column("id").take(order[:top]).to_pylist()
        text_columns = [c for c in ("id", "prompt", "chosen", "rejected", "margin", "ches", "ln_ches") if c in names]
        rows = {r["id"]: r for r in dataset.to_table(columns=text_columns, filter=pc.field("id").isin(ids)).to_pylist()}
        top_rows = [rows[i] for i in ids if i in rows and rows[i].get(ches_column) is not None]
    rejects_path = directory / "rejects.parquet"
    rejects = Counter(pds.dataset(str(rejects_path)).to_table(columns=["reason"]).column("reason").to_pylist()) \
        if rejects_path.is_file() else Counter()
    stats_path = directory / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else None
    return Summary(directory, table.num_rows, len(files), names, dict(rejects.most_common()), stats, distributions,
                   sources, buckets, ches_column, top_rows, scatter)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flip_rate(summary: Summary) -> list[dict[str, Any]]:
    flip = ((summary.stats or {}).get("estimates") or {}).get("flip_rate")
    return flip if isinstance(flip, list) else [flip] if flip else []


# -- terminal ------------------------------------------------------------------------------------
def print_summary(summary: Summary, console: Any = None, width: int = 60) -> None:
    """Rich tables on `console` (default: stdout)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    overview = Table(title=f"prefdata inspect: {summary.directory}", show_header=False)
    overview.add_row("pairs", str(summary.rows))
    overview.add_row("shards", str(summary.shards))
    overview.add_row("rejects", ", ".join(f"{k}={v}" for k, v in summary.rejects_by_reason.items()) or "0")
    overview.add_row("columns", ", ".join(summary.columns))
    for est in _flip_rate(summary):
        interval = est.get("interval") or [None, None]
        overview.add_row("flip rate ε", f"{_num(est.get('epsilon'))} [{_num(interval[0])}, {_num(interval[1])}] "
                                       f"({est.get('method', '?')})")
    console.print(overview)
    stages = (summary.stats or {}).get("stages") or []
    if stages:
        table = Table(title="stages")
        for name in ("stage", "rows in", "rows out", "drops"):
            table.add_column(name, justify="left" if name in ("stage", "drops") else "right")
        for stage in stages:
            table.add_row(stage["name"], str(stage["rows_in"]), str(stage["rows_out"]),
                          ", ".join(f"{k}={v}" for k, v in stage.get("drops", {}).items()) or "-")
        console.print(table)
    if summary.distributions:
        table = Table(title="distributions", box=box.SIMPLE_HEAD)
        for name in ("column", "n", "null", "mean", "std", "min", "median", "max"):  # quantiles: --html
            table.add_column(name, justify="left" if name == "column" else "right", no_wrap=True)
        for d in summary.distributions.values():
            table.add_row(d.name, str(d.count), str(d.nulls),
                          *(_num(v, 3) for v in (d.mean, d.std, d.min, d.quantiles.get(0.5), d.max)))
        console.print(table)
    for title, counts in (("sources", summary.sources), ("buckets", summary.buckets)):
        if counts:
            table = Table(title=title)
            table.add_column(title[:-1])
            table.add_column("pairs", justify="right")
            table.add_column("share", justify="right")
            total = sum(counts.values())
            for key, n in counts.items():
                table.add_row(str(key), str(n), f"{n / total:.1%}")
            console.print(table)
    if summary.top_ches:
        table = Table(title=f"top {len(summary.top_ches)} pairs by {summary.ches_column} (most displacement risk)",
                      show_lines=True)
        table.add_column(summary.ches_column, justify="right")
        for name in ("prompt", "chosen", "rejected"):
            table.add_column(name, ratio=1, overflow="fold")
        for row in summary.top_ches:
            table.add_row(_num(row[summary.ches_column]), *(_shorten(_text(row[c]), width)
                                                             for c in ("prompt", "chosen", "rejected")))
        console.print(table)


# -- HTML ----------------------------------------------------------------------------------------
COLORS = {"incorrect": "#d62728", "ambiguous": "#ff7f0e", "normal": "#2ca02c"}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(summary: Summary) -> list[tuple[str, str]]:
    """(title, base64 PNG) for every plot the dataset's columns allow."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    out: list[tuple[str, str]] = []

    def figure():
        fig = Figure(figsize=(6.2, 3.8))
        return fig, fig.subplots()

    def histogram(names: list[str], title: str, xlabel: str) -> None:
        present = [summary.distributions[n] for n in names if n in summary.distributions and summary.distributions[n].count]
        if not present:
            return
        fig, ax = figure()
        for d in present:
            ax.hist(d.values, bins=min(40, max(5, d.count // 5)), alpha=0.6, label=f"{d.name} (n={d.count})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        out.append((title, _png(fig)))

    histogram(["margin"], "Margin (chosen_score - rejected_score)", "margin")
    histogram(["chosen_score", "rejected_score"], "Scores", "score")
    if summary.scatter is not None:
        mean, std, buckets = summary.scatter
        fig, ax = figure()
        if buckets is None:
            ax.scatter(mean, std, s=10, alpha=0.6)
        else:
            for bucket in sorted({str(b) for b in buckets}):
                mask = np.array([str(b) == bucket for b in buckets])
                ax.scatter(mean[mask], std[mask], s=10, alpha=0.7, label=bucket, color=COLORS.get(bucket))
            ax.legend(title="bucket")
        ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xlabel("strength_mean (mean reward gap over the ensemble)")
        ax.set_ylabel("strength_std")
        ax.set_title("Preference strength: mean vs std")
        ax.grid(alpha=0.3)
        out.append(("Preference strength", _png(fig)))
    for name in ("ln_ches", "ches"):
        histogram([name], f"{name} (higher = more likelihood-displacement risk)", name)
    for title, counts in (("Pairs per source", summary.sources), ("Pairs per bucket", summary.buckets)):
        if counts:
            fig, ax = figure()
            keys = [str(k) for k in counts]
            ax.bar(keys, list(counts.values()), color=[COLORS.get(k, "#1f77b4") for k in keys])
            ax.set_ylabel("pairs")
            ax.set_title(title)
            ax.grid(alpha=0.3, axis="y")
            out.append((title, _png(fig)))
    return out


def _html_table(header: list[str] | None, rows: list[list[Any]]) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0}
.plots img{width:580px;border:1px solid #eee}.pair td{max-width:360px;white-space:pre-wrap}"""


def render_html(summary: Summary, top_width: int = 600) -> str:
    """A self-contained HTML page (inline CSS, PNGs as data URIs; every dataset string escaped)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>prefdata inspect: {esc(str(summary.directory))}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>prefdata inspect: {esc(str(summary.directory))}</h1>"]
    overview = [["pairs", summary.rows], ["shards", summary.shards],
                ["rejects", ", ".join(f"{k}={v}" for k, v in summary.rejects_by_reason.items()) or "0"],
                ["columns", ", ".join(summary.columns)]]
    for est in _flip_rate(summary):
        interval = est.get("interval") or [None, None]
        overview.append(["flip rate ε", f"{_num(est.get('epsilon'))} [{_num(interval[0])}, {_num(interval[1])}] "
                                        f"({est.get('method', '?')})"])
    parts += ["<h2>Overview</h2>", _html_table(None, overview)]
    stages = (summary.stats or {}).get("stages") or []
    if stages:
        parts += ["<h2>Stages</h2>", _html_table(["stage", "rows in", "rows out", "drops"], [
            [s["name"], s["rows_in"], s["rows_out"], ", ".join(f"{k}={v}" for k, v in s.get("drops", {}).items()) or "-"]
            for s in stages])]
    images = plots(summary)
    if images:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{data}'></figure>" for title, data in images]
        parts.append("</div>")
    if summary.distributions:
        parts += ["<h2>Distributions</h2>", _html_table(
            ["column", "n", "null", "mean", "std", "min", *[f"p{int(q * 100)}" for q in QUANTILES], "max"],
            [[d.name, d.count, d.nulls, _num(d.mean), _num(d.std), _num(d.min), *[_num(d.quantiles.get(q)) for q in QUANTILES],
              _num(d.max)] for d in summary.distributions.values()])]
    for title, counts in (("Sources", summary.sources), ("Buckets", summary.buckets)):
        if counts:
            total = sum(counts.values())
            parts += [f"<h2>{title}</h2>", _html_table([title[:-1].lower(), "pairs", "share"],
                                                       [[k, n, f"{n / total:.1%}"] for k, n in counts.items()])]
    if summary.top_ches:
        parts.append(f"<h2>Top {len(summary.top_ches)} pairs by {esc(summary.ches_column)}</h2><table class='pair'>"
                     f"<thead><tr><th>{esc(summary.ches_column)}</th><th>prompt</th><th>chosen</th><th>rejected</th></tr>"
                     "</thead><tbody>")
        for row in summary.top_ches:
            cells = [_num(row[summary.ches_column])] + [_shorten(_text(row[c]), top_width) for c in ("prompt", "chosen", "rejected")]
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(summary: Summary, path: str | Path) -> Path:
    from prefdata.schemas.writers import write_bytes_atomic

    path = Path(path)
    write_bytes_atomic(render_html(summary).encode("utf-8"), path)
    return path
