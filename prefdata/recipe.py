"""Recipes: typed build configs loaded from TOML or YAML.

Every table is a pydantic model with `extra="forbid"`, so an unknown or misspelt key is an
error that names the key, not a setting silently ignored. Paths may use `${VAR}` or
`${VAR:-default}` (e.g. `${PREFDATA_DATA:-../shared/data}/gsm8k_test_300.jsonl`); relative
paths are relative to the working directory.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefdata.engines.config import EngineConfig, expand_vars
from prefdata.pipeline.executor import ExecutorConfig
from prefdata.registry import StageConfig
from prefdata.schemas.errors import PrefdataError
from prefdata.schemas.readers import ColumnMap
from prefdata.types import SourceFormat, SourceKind


class RecipeError(PrefdataError):
    pass


class ColumnsConfig(BaseModel):
    """Which source column feeds each field (dotted names reach into nested objects)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field("id", description="Row id column (rows without one get '<file stem>-<row>')")
    prompt: str | None = Field("prompt", description="Prompt: a string, a chat, or an HH transcript")
    chosen: str = Field("chosen", description="Chosen response (pairs) or chosen transcript (hh)")
    rejected: str = Field("rejected", description="Rejected response (pairs) or rejected transcript (hh)")
    reference: str | None = Field(None, description="Reference answer (e.g. GSM8K 'answer'), for verifiers")
    chosen_score: str | None = Field(None, description="Existing score of the chosen response")
    rejected_score: str | None = Field(None, description="Existing score of the rejected response")
    completions: str = Field("completions", description="kind = completions: the list of scored completions")
    completion_text: str = Field("text", description="kind = completions: text field of each completion")
    completion_score: str = Field("score", description="kind = completions: score field of each completion")
    lower_score_is_better: bool = Field(False, description="kind = completions: the score is a rank (0 = best), negated when read")

    def to_map(self) -> ColumnMap:
        return ColumnMap(**self.model_dump())


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="Input file or folder (JSONL, Parquet, or a datasets folder)")
    format: SourceFormat = Field(SourceFormat.AUTO, description="Reader; auto picks by suffix")
    kind: SourceKind = Field(SourceKind.PROMPTS, description="prompts, pairs, hh (HH-RLHF transcripts), or completions (best vs worst of scored completions)")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig, description="Column mapping")
    limit: int | None = Field(None, ge=1, description="Use only the first N usable rows")

    @field_validator("path", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_vars(value) if isinstance(value, str) else value


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path | None = Field(None, description="Output folder (default out/<recipe name>)")
    shard_size: int = Field(256, ge=1, description="Input rows per shard (the unit of work and of output files)")
    checkpoints: bool = Field(True, description="Keep each stage's output per shard, so a rerun resumes where a build stopped")
    cache: bool = Field(True, description="Cache engine requests in OUT/.prefdata/requests.sqlite (the CLI's --no-cache turns it off)")
    cache_max_gib: float = Field(2.0, gt=0, description="Size cap of the request cache; the oldest entries go first")

    @field_validator("dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_vars(value) if isinstance(value, str) else value


class PushConfig(BaseModel):
    """`[push]`: publish the dataset to the Hugging Face Hub after a successful build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$",
                         description="Dataset repository, 'user/name' (a bare name goes under the token's user)")
    private: bool = Field(False, description="Create the repository as private (an existing one keeps its visibility)")
    config_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$",
                             description="Config (subset) name on the Hub; other configs in the repository are kept")
    test_size: float = Field(0.0, ge=0, lt=1, description="Share of prompts whose pairs go to a `test` split (0 = train only)")
    license: str = Field("unknown", description="License id for the card metadata (e.g. apache-2.0, cc-by-nc-4.0)")
    tags: list[str] = Field(default_factory=list, description="Extra card tags (prefdata, dpo, preference are always set)")
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"], description="Card task categories")
    pretty_name: str | None = Field(None, description="Card title (default: the recipe name)")
    commit_message: str | None = Field(None, description="Commit message (default: 'prefdata: push <recipe> (<config>)')")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("prefdata", pattern=r"^[A-Za-z0-9_.-]+$", description="Recipe name (default output folder)")
    description: str = Field("", description="What this recipe builds")
    seed: int = Field(0, description="Seed for every random choice; rows get seeds derived from it and their id")
    source: SourceConfig
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"policy": EngineConfig()},
                                             description="Named engines the stages use")
    stages: list[StageConfig] = Field(default_factory=list, description="Stages, run in order on each shard")  # type: ignore[valid-type]
    output: OutputConfig = Field(default_factory=OutputConfig)
    push: PushConfig | None = Field(None, description="Push the output to the Hugging Face Hub after the build")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where the stages run: local or a Ray cluster")
    overrides: list[str] = Field(default_factory=list,
                                 description="`prefdata build --set KEY=VALUE` overrides applied to the recipe file (recorded, not set by hand)")

    def output_dir(self) -> Path:
        return self.output.dir or Path("out") / self.name

    def resolved(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def parse_override_value(text: str) -> Any:
    """A `--set` value as TOML reads it (`1`, `0.5`, `true`, `"a"`, `[1, 2]`, `{a = 1}`); anything TOML
    cannot read is taken as a plain string (`out/run1`, `policy`)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `KEY=VALUE` overrides (dotted paths; a number indexes a list: `stages.0.n=8`) to a
    resolved recipe dict; returns a new dict that records them in `overrides`. A path through a
    missing table creates it (unknown keys are then rejected by the recipe's validation)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set seed=1 or --set stages.0.n=8")
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {key}: {where} is not an index of a list of {len(node)} items")
                index = int(part)
                if last:
                    node[index] = parse_override_value(raw)
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = parse_override_value(raw)
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise RecipeError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a table or list")
        data.setdefault("overrides", []).append(f"{key}={raw}")
    return data


def _format_validation(origin: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{origin}: {loc or '<root>'}: {err['msg']}")
    return "\n".join(lines)


def parse_recipe(data: dict[str, Any], origin: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a table/mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation(origin, exc)) from None
    except ValueError as exc:
        raise RecipeError(f"{origin}: {exc}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    return parse_recipe(data, str(path))
