"""The `prefdata` command line: thin commands that parse, call the Python API, and report.

Errors prefdata raises on purpose (bad recipe, bad input) print as one line and exit with
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Build and curate preference data (prompt, chosen, rejected).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Embedded models that ship inside PyPI packages.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="Recipe file (TOML or YAML)"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Override the recipe's source path"),  # noqa: UP007
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default out/<recipe name>)"),  # noqa: UP007
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, help="Use only the first N usable input rows"),  # noqa: UP007
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
    no_push: bool = typer.Option(False, "--no-push", help="Skip the recipe's [push] table (build locally only)"),
) -> None:
    """Build a preference dataset from RECIPE (and push it if the recipe has a [push] table)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prefdata.build import run_build
    from prefdata.schemas.errors import PrefdataError

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    task = progress.add_task("shards", total=None)

    def on_shard(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    try:
        source = recipe
        if no_push:
            from prefdata.recipe import load_recipe

            source = load_recipe(recipe).model_copy(update={"push": None})
        with progress:
            result = run_build(source, input=input, output=output, limit=limit, on_shard=on_shard)
    except PrefdataError as exc:
        _fail(str(exc))
    stats = result.stats
    console.print(f"[green]built[/] {stats['output']['rows']} pairs in {result.out_dir} "
                  f"({stats['output']['rejects']} rejects, {stats['seconds']['total']:.1f}s)")
    for stage in stats["stages"]:
        drops = ", ".join(f"{k}={v}" for k, v in stage["drops"].items()) or "none"
        console.print(f"  {stage['name']}: {stage['rows_in']} -> {stage['rows_out']} rows; drops: {drops}")
    if result.pushed is not None:
        _report_push(result.pushed)


def _report_push(pushed) -> None:
    splits = ", ".join(f"{name} {rows}" for name, rows in pushed.splits.items())
    console.print(f"[green]pushed[/] {pushed.repo_id} (config {pushed.config_name}: {splits}) in one commit "
                  f"{pushed.commit_oid[:12]}: {pushed.url}", highlight=False, soft_wrap=True)


@app.command()
def push(
    directory: Path = typer.Argument(..., help="A build folder (data/, recipe.json, stats.json)"),
    repo_id: str = typer.Argument(..., help="Dataset repository, user/name"),
    private: bool = typer.Option(False, "--private", help="Create the repository as private"),
    config_name: str = typer.Option("default", "--config-name", help="Config (subset) name; other configs are kept"),
    test_size: float = typer.Option(0.0, "--test-size", min=0.0, max=0.99, help="Share of prompts in a test split"),
    license: str = typer.Option("unknown", "--license", help="License id for the card (e.g. apache-2.0)"),
    tag: list[str] = typer.Option([], "--tag", help="Extra card tag (repeatable)"),
    pretty_name: Optional[str] = typer.Option(None, "--pretty-name", help="Card title"),  # noqa: UP007
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message"),  # noqa: UP007
) -> None:
    """Push a built dataset to the Hugging Face Hub: shards + generated card in one commit.

    The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub.
    """
    from prefdata.hub import push_to_hub
    from prefdata.schemas.errors import PrefdataError

    try:
        pushed = push_to_hub(directory, repo_id, private=private, config_name=config_name, test_size=test_size,
                             license=license, tags=tag, pretty_name=pretty_name, commit_message=message)
    except PrefdataError as exc:
        _fail(str(exc))
    _report_push(pushed)


@app.command()
def inspect(
    directory: Path = typer.Argument(..., help="A build folder (data/, stats.json, rejects.parquet)"),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a static HTML report with plots"),  # noqa: UP007
    top: int = typer.Option(5, "--top", min=0, help="Pairs to show side by side, highest CHES first"),
) -> None:
    """Summarise a built dataset: counts, score/margin distributions, sources, buckets, top CHES pairs."""
    from rich.console import Console as StdoutConsole

    from prefdata.report import print_summary, summarize, write_html

    try:
        summary = summarize(directory, top=top)
    except FileNotFoundError as exc:
        _fail(str(exc))
    print_summary(summary, StdoutConsole())
    if html is not None:
        console.print(f"[green]wrote[/] {write_html(summary, html)}", highlight=False)


@models_app.command("provision")
def models_provision() -> None:
    """Convert the embedded generator model once (GGUF -> safetensors in the prefdata cache)."""
    from prefdata.engines.embedded import MINILM, SMOLLM2, resolve_model

    for name in (SMOLLM2, MINILM):
        console.print(f"{name}: {resolve_model(name)}")


@app.command()
def version() -> None:
    """Print prefdata's version and schema version."""
    from prefdata import __version__
    from prefdata.schemas.pair import SCHEMA_VERSION

    typer.echo(json.dumps({"prefdata": __version__, "schema": SCHEMA_VERSION}))


def main() -> None:  # pragma: no cover - console entry point
    app()
    sys.exit(0)
