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
from rich.markup import escape

from prefdata.types import ExecutorKind

# rich_markup_mode=None: help texts print as written ("the recipe's [push] table"), not as Rich markup.
app = typer.Typer(help="Build and curate preference data (prompt, chosen, rejected).", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)
models_app = typer.Typer(help="Embedded models that ship inside PyPI packages.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


def _fail(message: str) -> None:
    # Messages quote user text (`[source.columns]`, file names): escaped, or Rich would eat brackets.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def build(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe file (TOML or YAML)"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Override the recipe's source path"),  # noqa: UP007
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default out/<recipe name>)"),  # noqa: UP007
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, help="Use only the first N usable input rows (replaces [source] limit; caps each of [[sources]])"),  # noqa: UP007
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the engines' library logs (always written to OUT/.prefdata/build.log)"),
    no_push: bool = typer.Option(False, "--no-push", help="Skip the recipe's [push] table (build locally only)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the request cache (OUT/.prefdata/requests.sqlite)"),
    executor: Optional[ExecutorKind] = typer.Option(None, "--executor", "-e", help="Where the stages run (overrides the recipe's [executor] kind): local, or ray (a Ray cluster; local one if [executor] has no address)"),  # noqa: UP007
    set_: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a recipe value by its dotted path, e.g. --set seed=1 --set output.shard_size=50 --set stages.0.n=8 (repeatable; validated like the recipe file, recorded in recipe.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier prefdata build in the output folder (its files, checkpoints and cache); never touches a folder prefdata did not write"),
) -> None:
    """Build a preference dataset from RECIPE (and push it if the recipe has a [push] table).

    Library logs go to OUT/.prefdata/build.log (-v also shows them). Ctrl-C or SIGTERM stops the
    build (exit code 130); the same command resumes it.
    """
    from prefdata.builder import run_build
    from prefdata.console import BuildConsole
    from prefdata.schemas.errors import PrefdataError

    view = BuildConsole(console, quiet=quiet, verbose=verbose)
    try:
        with view.running():  # the progress display; Ctrl-C/SIGTERM -> one line, exit 130
            source = recipe
            if no_push:
                from prefdata.recipe import load_recipe

                source = load_recipe(recipe).model_copy(update={"push": None})
            result = run_build(source, input=input, output=output, limit=limit, on_shard=view.on_shard,
                               cache=False if no_cache else None, executor=executor, overrides=set_,
                               overwrite=overwrite, progress=view, capture=view.capture)
    except PrefdataError as exc:
        _fail(str(exc))
    view.print_summary(result.stats, result.out_dir)
    if result.pushed is not None:
        _report_push(result.pushed)


def _report_push(pushed) -> None:
    splits = ", ".join(f"{name} {rows}" for name, rows in pushed.splits.items())
    console.print(f"[green]pushed[/] {escape(pushed.repo_id)} (config {escape(pushed.config_name)}: {escape(splits)}) "
                  f"in one commit {pushed.commit_oid[:12]}: {escape(str(pushed.url))}", highlight=False, soft_wrap=True)


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
        console.print(f"[green]wrote[/] {escape(str(write_html(summary, html)))}", highlight=False)


def _config(cls, values: dict):
    """Typed config from CLI values (options left unset keep the config's defaults)."""
    from pydantic import ValidationError

    try:
        return cls.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        _fail(f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}")


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder from `prefdata build` (or a Parquet file / datasets folder)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Policy: hub id or folder (default: embedded SmolLM2-135M-Instruct)"),  # noqa: UP007
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default out/train)"),  # noqa: UP007
    loss: Optional[str] = typer.Option(None, "--loss", help="sigmoid | cdpo | robust | ipo | hinge | margin"),  # noqa: UP007
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO temperature (default 0.1)"),  # noqa: UP007
    epsilon: Optional[str] = typer.Option(None, "--epsilon", help="Flip rate for cdpo/robust: a number, or 'auto' (the dataset's stats.json estimate)"),  # noqa: UP007
    reference: Optional[str] = typer.Option(None, "--reference", help="auto | columns | model"),  # noqa: UP007
    reference_model: Optional[str] = typer.Option(None, "--reference-model", help="Reference model (default: the policy's start)"),  # noqa: UP007
    margin_column: Optional[str] = typer.Option(None, "--margin-column", help="Column of the per-pair margin (loss margin)"),  # noqa: UP007
    margin_scale: Optional[float] = typer.Option(None, "--margin-scale", help="Multiply the margin column by this"),  # noqa: UP007
    rationale_weight: Optional[float] = typer.Option(None, "--rationale-weight", help="RDPO gamma (default 0.1 with a rationale column)"),  # noqa: UP007
    nll_weight: Optional[float] = typer.Option(None, "--nll-weight", help="Weight of the NLL on chosen (RISE)"),  # noqa: UP007
    edit_span_weight: Optional[float] = typer.Option(None, "--edit-span-weight", help="Weight of tokens in metadata.edit_spans (RISE)"),  # noqa: UP007
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-6)"),  # noqa: UP007
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Pairs per micro-batch"),  # noqa: UP007
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step"),  # noqa: UP007
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data"),  # noqa: UP007
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)"),  # noqa: UP007
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest prompt+response in tokens (longer pairs are skipped)"),  # noqa: UP007
    warmup_ratio: Optional[float] = typer.Option(None, "--warmup-ratio", help="Share of steps warming up"),  # noqa: UP007
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank (peft)"),  # noqa: UP007
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Share of pairs held out and evaluated before and after"),  # noqa: UP007
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Use only the first N pairs"),  # noqa: UP007
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | fp32 | bf16"),  # noqa: UP007
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),  # noqa: UP007
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data order"),  # noqa: UP007
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps"),  # noqa: UP007
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
) -> None:
    """Train a model with DPO (or a variant) on a prefdata dataset."""
    values = {k: v for k, v in locals().items() if k not in ("quiet", "lora_r", "output")}
    from prefdata.schemas.errors import PrefdataError
    from prefdata.train import TrainConfig
    from prefdata.train import train as run_train

    values["output_dir"] = output
    values["lora"] = {"r": lora_r} if lora_r is not None else None
    config = _config(TrainConfig, values)
    try:
        result = run_train(config, progress=not quiet)
    except PrefdataError as exc:
        _fail(str(exc))
    last = result.metrics[-1] if result.metrics else {}
    console.print(f"[green]trained[/] {result.steps} steps -> {escape(str(result.run_dir))} "
                  f"(loss {last.get('loss', float('nan')):.4f}, reward margin {last.get('rewards/margin', float('nan')):+.4f})")
    if result.eval_after is not None:
        for name, metrics in (("before", result.eval_before), ("after", result.eval_after)):
            console.print(f"  holdout {name}: ranking accuracy {metrics['ranking_accuracy']:.3f}, "
                          f"reward accuracy {metrics['reward_accuracy']:.3f}, reward margin {metrics['reward_margin']:+.4f}")


@app.command("eval")
def eval_command(
    dataset: Path = typer.Argument(..., help="Dataset folder (or a Parquet file / datasets folder)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model or run checkpoint (default: embedded SmolLM2)"),  # noqa: UP007
    reference_model: Optional[str] = typer.Option(None, "--reference-model", help="Reference for implicit rewards"),  # noqa: UP007
    reference: Optional[str] = typer.Option(None, "--reference", help="auto | columns | model"),  # noqa: UP007
    beta: Optional[float] = typer.Option(None, "--beta", help="beta of implicit rewards and the idealised RA"),  # noqa: UP007
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Share of raters preferring chosen (idealised RA)"),  # noqa: UP007
    alpha_column: Optional[str] = typer.Option(None, "--alpha-column", help="Column with that share per pair"),  # noqa: UP007
    split: Optional[str] = typer.Option(None, "--split", help="all | holdout | train"),  # noqa: UP007
    holdout: Optional[float] = typer.Option(None, "--holdout", help="The holdout share used at training"),  # noqa: UP007
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Use only the first N pairs"),  # noqa: UP007
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Pairs per forward"),  # noqa: UP007
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest prompt+response in tokens"),  # noqa: UP007
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),  # noqa: UP007
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the metrics to this JSON file"),  # noqa: UP007
) -> None:
    """Ranking accuracy (summed, length-normalised), reward accuracy and idealised RA of a model."""
    values = {k: v for k, v in locals().items() if k != "output"}
    from prefdata.schemas.errors import PrefdataError
    from prefdata.train import EvalConfig, evaluate

    config = _config(EvalConfig, values)
    try:
        metrics = evaluate(config, output=output)
    except PrefdataError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(metrics, indent=2))


@models_app.command("provision")
def models_provision() -> None:
    """Convert the embedded generator model once (GGUF -> safetensors in the prefdata cache)."""
    from prefdata.engines.embedded import MINILM, SMOLLM2, resolve_model

    for name in (SMOLLM2, MINILM):
        console.print(f"{escape(name)}: {escape(str(resolve_model(name)))}", highlight=False)


@app.command()
def version() -> None:
    """Print prefdata's version and schema version."""
    from prefdata._version import __version__
    from prefdata.schemas.pair import SCHEMA_VERSION

    typer.echo(json.dumps({"prefdata": __version__, "schema": SCHEMA_VERSION}))


def main() -> None:  # pragma: no cover - console entry point
    app()
    sys.exit(0)
