"""`prefdata inspect`: the summary numbers, the terminal tables, and the HTML report rendered by a
real headless Chromium (Debian's `chromium`; .ci/run installs it)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from prefdata.builder import run_build
from prefdata.cli import app
from prefdata.report import render_html, summarize, write_html
from prefdata.schemas.errors import Reject, rejects_table
from prefdata.schemas.pair import pair_schema
from prefdata.schemas.readers import INPUT_METADATA_TYPE
from prefdata.schemas.writers import shard_path, write_parquet_atomic
from prefdata.types import RejectReason

from .conftest import FIXTURES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOPICS = ["sleep", "boiling water", "prime numbers", "French verbs", "spider legs", "binary search", "tax forms",
          "sourdough", "photosynthesis", "haiku", "the CPU", "volcanoes"]
N_ROWS = 400


def write_curated_fixture(out: Path, n: int = N_ROWS) -> dict:
    """A build folder with the columns curation filters add (strength_*, bucket, ches, ln_ches), with
    plausible values: a 75/25 mixture of clean and flipped pairs, buckets at the 20%/40% quantiles of
    strength_mean (the paper's defaults), LN-CHES higher for look-alike responses. Returns facts the
    tests check against."""
    rng = np.random.default_rng(7)
    flipped = rng.random(n) < 0.25
    strength_mean = np.where(flipped, rng.normal(-0.6, 0.5, n), rng.normal(1.0, 0.7, n))
    strength_std = np.abs(rng.normal(0.5, 0.2, n)) + 0.05
    order = np.argsort(strength_mean, kind="stable")
    bucket = np.empty(n, dtype=object)
    bucket[order[: n // 5]], bucket[order[n // 5: 2 * n // 5]], bucket[order[2 * n // 5:]] = "incorrect", "ambiguous", "normal"
    chosen_score = rng.normal(7.0, 1.2, n)
    rejected_score = chosen_score - np.abs(rng.normal(1.5, 1.0, n)) - 0.01
    ln_ches = rng.normal(-25.0, 10.0, n)
    ln_ches[3] = ln_ches.max() + 5.0  # the row with markup in its prompt tops the CHES table
    lengths = rng.integers(5, 60, size=(n, 2))
    sources = rng.choice(["on_policy", "input", "rise"], size=n, p=[0.6, 0.3, 0.1])
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"Tell me something useful about {topic} (#{i})."
        if i == 3:
            prompt = "<script>alert('x')</script> Is this escaped?"
        rows.append({
            "id": f"pair-{i:04d}", "prompt_id": f"prompt-{i:04d}", "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": f"A careful answer about {topic}, point {i % 7}."}],
            "rejected": [{"role": "assistant", "content": f"Something vague about {topic}."}],
            "chosen_score": float(chosen_score[i]), "rejected_score": float(rejected_score[i]),
            "margin": float(chosen_score[i] - rejected_score[i]), "source": str(sources[i]),
            "metadata": {"source_file": "fixture.jsonl", "source_row": i},
            "strength_mean": float(strength_mean[i]), "strength_std": float(strength_std[i]), "bucket": str(bucket[i]),
            "ches": float(ln_ches[i] * lengths[i, 0] * lengths[i, 1]), "ln_ches": float(ln_ches[i]),
        })
    base = pair_schema(INPUT_METADATA_TYPE)
    schema = pa.schema(list(base) + [pa.field("strength_mean", pa.float64()), pa.field("strength_std", pa.float64()),
                                     pa.field("bucket", pa.string()), pa.field("ches", pa.float64()),
                                     pa.field("ln_ches", pa.float64())], metadata=base.metadata)
    half = n // 2
    for index, part in enumerate((rows[:half], rows[half:])):
        write_parquet_atomic(pa.Table.from_pylist(part, schema=schema), shard_path(out, index))
    write_parquet_atomic(rejects_table([Reject("voting", RejectReason.NO_PAIR, "ambiguous pair dropped", row_id=f"x-{i}")
                                        for i in range(3)]), out / "rejects.parquet")
    stats = {"recipe": "curated-fixture", "stages": [{"name": "voting", "rows_in": n + 3, "rows_out": n,
                                                     "drops": {"no_pair": 3}, "counters": {}, "seconds": 1.0}],
             "estimates": {"flip_rate": {"epsilon": 0.23, "interval": [0.19, 0.27], "method": "mixture on strength_mean"}},
             "output": {"rows": n, "shards": 2, "rejects": 3}, "engines": {}}
    (out / "stats.json").write_text(json.dumps(stats))
    (out / "recipe.json").write_text(json.dumps({"name": "curated-fixture", "source": {"path": "fixture.jsonl"}}))
    return {"ln_ches": ln_ches, "sources": dict(zip(*np.unique(sources, return_counts=True))), "margin": chosen_score - rejected_score}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    out = tmp_path_factory.mktemp("curated") / "out"
    facts = write_curated_fixture(out)
    return out, facts


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    run_build({"name": "plain", "source": {"path": str(FIXTURES / "pairs_small.jsonl"), "kind": "pairs",
                                           "columns": {"chosen_score": "chosen_score", "rejected_score": "rejected_score"}},
               "output": {"dir": str(out), "shard_size": 5}})
    return out


def test_summary_of_a_curated_dataset(curated):
    out, facts = curated
    summary = summarize(out, top=5)
    assert summary.rows == N_ROWS and summary.shards == 2 and summary.rejects_by_reason == {"no_pair": 3}
    assert set(summary.distributions) == {"chosen_score", "rejected_score", "margin", "strength_mean", "strength_std",
                                          "ches", "ln_ches"}
    margin = summary.distributions["margin"]
    assert margin.count == N_ROWS and margin.mean == pytest.approx(facts["margin"].mean())
    assert margin.quantiles[0.5] == pytest.approx(np.median(facts["margin"]))
    assert summary.buckets == {"ambiguous": 80, "incorrect": 80, "normal": 240}
    assert summary.sources == {k: int(v) for k, v in sorted(facts["sources"].items(), key=lambda kv: -kv[1])}
    assert summary.ches_column == "ln_ches"
    top = [row["ln_ches"] for row in summary.top_ches]
    assert top == sorted(facts["ln_ches"], reverse=True)[:5]
    assert summary.top_ches[0]["prompt"][0]["content"].startswith("<script>")


def test_summary_without_optional_columns(plain):
    summary = summarize(plain)
    assert set(summary.distributions) == {"chosen_score", "rejected_score", "margin"}
    assert summary.buckets is None and summary.ches_column is None and summary.top_ches == [] and summary.scatter is None
    assert summary.sources == {"input": 11} and summary.rejects_by_reason == {"empty_text": 1}


def test_cli_inspect_prints_tables(curated, plain, tmp_path):
    out, _ = curated
    result = CliRunner().invoke(app, ["inspect", str(out), "--top", "3"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("pairs", "400", "distributions", "ln_ches", "buckets", "incorrect", "20.0%", "60.0%",
                 "top 3 pairs by ln_ches", "Is this escaped?", "flip rate ε", "0.23 [0.19, 0.27]", "sources"):
        assert text in result.output, text
    result = CliRunner().invoke(app, ["inspect", str(plain)], env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "buckets" not in result.output and "margin" in result.output
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "no Parquet shards under data/" in result.output


def _images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_html_report_is_self_contained_and_escaped(curated, plain):
    out, _ = curated
    page = render_html(summarize(out))
    images = _images(page)
    assert len(images) == 7  # margin, scores, strength scatter, ln_ches, ches, per-source, per-bucket
    for image in images:
        assert image.size[0] > 300 and len(image.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank
    assert not re.search(r"""(src|href)=['"]?https?:""", page) and "<script" not in page  # no network, no scripts
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "0.23 [0.19, 0.27] (mixture on strength_mean)" in page
    assert len(_images(render_html(summarize(plain)))) == 3  # margin, scores, per-source


def _screenshot(html_path: Path, png: Path, profile: Path) -> Image.Image:
    assert Path(CHROMIUM).is_file(), "chromium is missing: apt-get install chromium (.ci/run does it)"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                           f"--screenshot={png}", "--window-size=1280,2000", html_path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    return Image.open(png).convert("RGB")


def test_html_report_renders_in_headless_chromium(curated, plain, tmp_path):
    """The browser draws the plots: the screenshot has far more colours than the same page without
    its images, and the plot area is not blank. Screenshots stay in tmp_path for a human to look at."""
    colours = {}
    for name, folder in (("curated", curated[0]), ("plain", plain)):
        summary = summarize(folder)
        report = tmp_path / f"{name}.html"
        result = CliRunner().invoke(app, ["inspect", str(folder), "--html", str(report)])
        assert result.exit_code == 0, result.output
        shot = _screenshot(report, tmp_path / f"{name}.png", tmp_path / f"profile-{name}")
        assert shot.size == (1280, 2000)
        without = tmp_path / f"{name}-noplots.html"
        without.write_text(re.sub(r"<figure>.*?</figure>", "", render_html(summary)))
        bare = _screenshot(without, tmp_path / f"{name}-noplots.png", tmp_path / f"profile-{name}-bare")
        colours[name] = (len(shot.getcolors(1 << 24)), len(bare.getcolors(1 << 24)))
        pixels = np.asarray(shot)
        non_white = (pixels < 245).any(axis=2)
        assert non_white.mean() > 0.05, f"{name}: the page is nearly blank"
    for name, (with_plots, without_plots) in colours.items():
        assert with_plots > without_plots + 200, (name, with_plots, without_plots)
    write_html(summarize(curated[0]), tmp_path / "again.html")
    assert (tmp_path / "again.html").read_text() == (tmp_path / "curated.html").read_text()  # deterministic


def test_inspect_shows_rows_in_and_out_per_stage(tmp_path):
    """README: `inspect` shows rows in/out per stage (stats.json's stages), in the terminal and the HTML."""
    src = tmp_path / "pairs.jsonl"
    rows = [{"id": f"r{i}", "prompt": prompt, "chosen": "Yes.", "rejected": "No."}
            for i, prompt in enumerate(["Is water wet?", "Is fire hot?", "Is water wet?"])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_build({"name": "dedup", "source": {"path": str(src), "kind": "pairs"},
               "stages": [{"type": "dedup", "near_threshold": None}], "output": {"dir": str(out)}})
    result = CliRunner().invoke(app, ["inspect", str(out)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "stages" in result.output
    assert re.search(r"│ dedup\s*│\s*3 │\s*2 │ exact_duplicate=1\s*│", result.output), result.output
    page = render_html(summarize(out))
    stages = page.split("<h2>Stages</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<th>stage</th><th>rows in</th><th>rows out</th><th>drops</th>" in stages
    assert "<tr><td>dedup</td><td>3</td><td>2</td><td>exact_duplicate=1</td></tr>" in stages
