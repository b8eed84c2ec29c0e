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
) -> None:
    """Build a preference dataset from RECIPE."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prefdata.build import run_build
    from prefdata.schemas.errors import PrefdataError

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    task = progress.add_task("shards", total=None)

    def on_shard(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    try:
        with progress:
            result = run_build(recipe, input=input, output=output, limit=limit, on_shard=on_shard)
    except PrefdataError as exc:
        _fail(str(exc))
    stats = result.stats
    console.print(f"[green]built[/] {stats['output']['rows']} pairs in {result.out_dir} "
                  f"({stats['output']['rejects']} rejects, {stats['seconds']['total']:.1f}s)")
    for stage in stats["stages"]:
        drops = ", ".join(f"{k}={v}" for k, v in stage["drops"].items()) or "none"
        console.print(f"  {stage['name']}: {stage['rows_in']} -> {stage['rows_out']} rows; drops: {drops}")


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
