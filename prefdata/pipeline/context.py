"""What a stage may use while it runs: named engines (each loaded once), the seed, progress."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefdata.engines.base import Engine, derive_seed
from prefdata.engines.config import EngineConfig
from prefdata.engines.identity import LOADS_WEIGHTS_NAMED_BY_CONFIG, config_identity


class EnginePool:
    """Loads the recipe's engines lazily by name and keeps one instance of each.

    Two names with an identical config share one loaded engine (a policy that also judges does
    not load twice). An engine handed in with `put` is kept under its name only: it never stands
    in for a recipe config (another name with that config still loads its own). `identity(name)`
    is the engine's real identity (`Engine.identity`; for a vLLM or transformers config not yet
    loaded, the same value computed from the config without loading it), computed once per pool.
    `wrap(engine, identity)`, when given, is put in front of every engine handed out (the
    builder's request cache, `prefdata.engines.cache.CachedEngine`).
    """

    def __init__(self, configs: Mapping[str, EngineConfig], loader: Callable[[EngineConfig], Engine] | None = None,
                 wrap: Callable[[Engine, dict[str, Any] | None], Engine] | None = None):
        self.configs = dict(configs)
        self._loader = loader
        self._wrap = wrap
        self._by_config: dict[EngineConfig, Engine] = {}
        self._given: dict[str, Engine] = {}  # engines handed in by the caller, by name: the caller closes them
        self._wrapped: dict[Any, Engine] = {}
        self._identities: dict[str, dict[str, Any] | None] = {}

    def names(self) -> list[str]:
        return sorted(set(self.configs) | set(self._given))

    def _raw(self, name: str) -> Engine:
        if name in self._given:
            return self._given[name]
        if name not in self.configs:
            raise KeyError(f"engine {name!r} is not defined; defined: {self.names()}")
        config = self.configs[name]
        if config not in self._by_config:
            if self._loader is None:
                from prefdata.engines import load_engine

                self._loader = load_engine
            self._by_config[config] = self._loader(config)
        return self._by_config[config]

    def get(self, name: str) -> Engine:
        engine = self._raw(name)
        if self._wrap is None:
            return engine
        key = ("given", name) if name in self._given else self.configs[name]
        if key not in self._wrapped:
            self._wrapped[key] = self._wrap(engine, self.identity(name))
        return self._wrapped[key]

    def identity(self, name: str) -> dict[str, Any] | None:
        """The engine's identity (None: unknown, so nothing it computes is reused)."""
        if name not in self._identities:
            config = self.configs.get(name)
            if name not in self._given and config is not None and config not in self._by_config \
                    and config.backend in LOADS_WEIGHTS_NAMED_BY_CONFIG:
                self._identities[name] = config_identity(config)  # no need to load it to know
            else:
                self._identities[name] = self._raw(name).identity()
        return self._identities[name]

    def put(self, name: str, engine: Engine) -> None:
        """Use an already-loaded engine under `name` (Python API inside training jobs, tests)."""
        self._given[name] = engine
        self._wrapped.pop(("given", name), None)
        self._identities.pop(name, None)

    def loaded(self) -> dict[str, dict[str, Any]]:
        """What stats.json and the card show for each engine in use."""
        out = {}
        for name in self.names():
            engine = self._given.get(name) or self._by_config.get(self.configs.get(name))  # type: ignore[arg-type]
            if engine is not None:
                out[name] = engine.describe(self.identity(name))
        return out

    def close(self) -> None:
        """Shut down the engines this pool loaded (not the ones handed in)."""
        for engine in self._by_config.values():
            engine.close()
        self._by_config.clear()
        self._wrapped.clear()


class BuildProgress(Protocol):
    """What the local executor reports while it runs (`prefdata.console` renders it). Calls come
    from the process running the stages, in this order per shard: `stage_started` for each stage
    that runs (checkpointed ones are skipped), `engine_chunk` as an engine call's requests are answered,
    `shard_done` once the shard's output is written (or `stage_done` per stage and shard, with a
    whole-input stage in the recipe)."""

    def begin(self, stages: list[str], shard_rows: list[int]) -> None:
        """The build's stages (names, in order) and the usable input rows of each shard."""

    def stage_started(self, position: int, shard: int, rows: int) -> None:
        """Stage `position` starts on shard `shard` with `rows` input rows."""

    def engine_chunk(self, operation: str, done: int, total: int) -> None:
        """An engine call (`generate`, `score`, ...) has `done` of its `total` requests answered."""

    def shard_done(self, shard: int, counts: list[tuple[int, int]], resumed_stages: int) -> None:
        """Shard `shard` is written: (rows in, rows out) per stage; the first `resumed_stages` came
        from checkpoints."""

    def stage_done(self, position: int, shard: int, rows_in: int, resumed: bool) -> None:
        """Stage `position` is done with shard `shard` (`rows_in` rows; `resumed`: from a checkpoint).
        A recipe with a whole-input stage runs stage by stage over all shards, so the executor reports
        each stage's shards as they finish, then only the shard count (`on_shard`), never `shard_done`."""


# `BuildContext.info` key: a judge's accuracy on held-out pairs, published by the scorer stage that
# measured it (embedding_rm on its train_path) for the noise stage's `calibrated` estimator.
CALIBRATION_KEY = "judge_calibration"


@dataclass
class BuildContext:
    engines: EnginePool
    seed: int = 0
    progress: BuildProgress | None = None  # where the executor reports progress (None: nowhere)
    info: dict[str, Any] = field(default_factory=dict)

    def engine(self, name: str) -> Engine:
        return self.engines.get(name)

    def stage_started(self, position: int, shard: int, rows: int) -> None:
        if self.progress is not None:
            self.progress.stage_started(position, shard, rows)

    def stage_done(self, position: int, shard: int, rows_in: int, resumed: bool = False) -> None:
        if self.progress is not None:
            self.progress.stage_done(position, shard, rows_in, resumed)

    def seed_for(self, *parts: Any) -> int:
        """A per-row seed: the same row gets the same seed whatever shard or batch it lands in."""
        return derive_seed(self.seed, *parts)

    @classmethod
    def for_input(cls, engines: EnginePool, seed: int, input_rows: int, shard_size: int) -> BuildContext:
        """A context that knows the input's size and shard size (`info`), for stages that report them."""
        return cls(engines=engines, seed=seed, info={"input_rows": input_rows, "shard_size": shard_size})
