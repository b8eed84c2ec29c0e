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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefdata.engines.config import EngineConfig, expand_vars
from prefdata.registry import StageConfig
from prefdata.schemas.errors import PrefdataError
from prefdata.schemas.presets import PRESETS, get_preset
from prefdata.schemas.readers import ColumnMap
from prefdata.schemas.sources import SourceSpec
from prefdata.types import ExecutorKind, SourceFormat, SourceKind


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
    """`[source]` (or one `[[sources]]` entry): a local file/folder or a Hub dataset, optionally read
    with a preset for a known public dataset (`prefdata.schemas.presets`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(None, description="Input file or folder (JSONL, Parquet, or a datasets folder)")
    hub: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$",
                            description="Dataset repository on the Hugging Face Hub ('org/name'), instead of path")
    config: str | None = Field(None, description="hub: the dataset's config (subset); default: the preset's, else the default one")
    split: str | None = Field(None, description="hub: the split to read (default: the preset's, else 'train')")
    revision: str | None = Field(None, description="hub: branch, tag or commit; the build records the commit it read")
    streaming: bool | None = Field(None, description="Read the input shard by shard while the build runs instead of whole "
                                                      "first (hub: over HTTP, without downloading the split); unset: on "
                                                      "for local inputs over 1 GiB and Hub repositories over 2 GiB")
    preset: str | None = Field(None, description="Known dataset layout: " + ", ".join(sorted(PRESETS))
                               + " (sets kind and columns; [source.columns] keys override)")
    format: SourceFormat = Field(SourceFormat.AUTO, description="Reader; auto picks by suffix")
    kind: SourceKind = Field(SourceKind.PROMPTS, description="prompts, pairs, hh (HH-RLHF transcripts), or completions (best vs worst of scored completions)")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig, description="Column mapping")
    limit: int | None = Field(None, ge=1, description="Use only the first N usable rows")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="[[sources]]: the source's name (the `source_name` column, the id prefix); "
                                         "default: the preset, else the file stem or repository name")
    weight: float | None = Field(None, gt=0, description="[[sources]]: share of the output (weights are normalised); "
                                                          "set on every source or none")

    @field_validator("path", "hub", "revision", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_vars(value) if isinstance(value, str) else value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None:
            get_preset(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _preset_kind(cls, data: Any) -> Any:
        """A preset sets `kind` (unless the table does; both must agree, checked below) and the column
        mapping under the keys the table's `columns` leaves out (so recipe.json holds the mapping used)."""
        if isinstance(data, dict) and isinstance(data.get("preset"), str) and data["preset"] in PRESETS:
            preset = PRESETS[data["preset"]]
            data = {"kind": preset.kind, **data}
            columns = data.get("columns")
            if columns is None or isinstance(columns, dict):
                data["columns"] = {**preset.columns, **(columns or {})}
        return data

    @model_validator(mode="after")
    def _one_place(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("a source needs exactly one of `path` (a local file or folder) and `hub` (a Hub dataset)")
        if self.preset is not None and self.kind != get_preset(self.preset).kind:
            raise ValueError(f"preset {self.preset!r} reads kind {get_preset(self.preset).kind.value!r}; "
                             f"remove `kind = {self.kind.value!r}` or the preset")
        return self

    def source_name(self) -> str:
        if self.name is not None:
            return self.name
        if self.preset is not None:
            return self.preset
        return self.hub.split("/")[-1] if self.hub is not None else Path(self.path).stem  # type: ignore[arg-type]

    def spec(self) -> SourceSpec:
        return SourceSpec(kind=self.kind, columns=self.columns.to_map(), path=self.path, format=self.format,
                          hub=self.hub, config=self.config, split=self.split, revision=self.revision,
                          streaming=self.streaming, preset=self.preset, limit=self.limit, name=self.source_name(),
                          weight=self.weight)


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


class StageResources(BaseModel):
    """Ray resources of one stage's actor pool (`[executor.stages.<stage name or position>]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(None, ge=1, description="Actors (engine replicas) for this stage")
    num_cpus: float | None = Field(None, ge=0, description="CPUs reserved per actor")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor (set it to the engine's tensor_parallel_size)")


class ExecutorConfig(BaseModel):
    """`[executor]`: where the stages run. The defaults run everything in this process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ExecutorKind = Field(ExecutorKind.LOCAL, description="local (one process) or ray (a Ray cluster)")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'); "
                                                   "unset: start a local cluster for this run")
    concurrency: int = Field(1, ge=1, description="Actors per stage (each holds one loaded engine)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (a vLLM engine with tensor_parallel_size=k needs k)")
    max_retries: int = Field(3, ge=0, description="Times a shard is retried after its worker died; then the build fails naming it")
    stages: dict[str, StageResources] = Field(default_factory=dict,
                                              description="Per-stage overrides, keyed by stage type or position ('0')")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster started for the run (default: all)")
    local_object_store_mb: int | None = Field(None, ge=80, description="Object store of the local cluster (default: Ray's)")

    def resources(self, position: int, stage_name: str) -> StageResources:
        """The stage's actor resources: its own table (by position, then by type) over the defaults."""
        own = self.stages.get(str(position)) or self.stages.get(stage_name) or StageResources()
        return StageResources(
            concurrency=own.concurrency or self.concurrency,
            num_cpus=self.num_cpus if own.num_cpus is None else own.num_cpus,
            num_gpus=self.num_gpus if own.num_gpus is None else own.num_gpus,
        )


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
    source: SourceConfig | None = Field(None, description="The input (or use [[sources]] for several)")
    sources: list[SourceConfig] | None = Field(None, min_length=1, description="Several inputs mixed into one build "
                                               "(each with a name, a limit, a weight); rows get a source_name column")
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"policy": EngineConfig()},
                                             description="Named engines the stages use")
    stages: list[StageConfig] = Field(default_factory=list, description="Stages, run in order on each shard")  # type: ignore[valid-type]
    output: OutputConfig = Field(default_factory=OutputConfig)
    push: PushConfig | None = Field(None, description="Push the output to the Hugging Face Hub after the build")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Where the stages run: local or a Ray cluster")
    overrides: list[str] = Field(default_factory=list,
                                 description="`prefdata build --set KEY=VALUE` overrides applied to the recipe file (recorded, not set by hand)")

    @model_validator(mode="after")
    def _one_source_table(self) -> Recipe:
        if (self.source is None) == (self.sources is None):
            raise ValueError("a recipe needs exactly one of [source] and [[sources]]")
        if self.sources is not None:
            names = [s.source_name() for s in self.sources]
            if len(set(names)) != len(names):
                raise ValueError(f"[[sources]] names must be unique (set `name`): {names}")
            weighted = [s.weight is not None for s in self.sources]
            if any(weighted) and not all(weighted):
                raise ValueError("[[sources]]: set `weight` on every source or on none")
        return self

    def source_list(self) -> list[SourceConfig]:
        return list(self.sources) if self.sources is not None else [self.source]  # type: ignore[list-item]

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
    if data is None:  # YAML reads an empty file (or comments only) as null
        raise RecipeError(f"{origin}: the recipe is empty; a recipe must be a table/mapping")
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
