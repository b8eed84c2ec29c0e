"""What a stage may use while it runs: named engines (each loaded once), the seed, progress."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefdata.engines.base import Engine, derive_seed
from prefdata.engines.config import EngineConfig


class EnginePool:
    """Loads the recipe's engines lazily by name and keeps one instance of each.

    Two names with an identical config share one loaded engine (a policy that also judges does
    not load twice). `wrap(engine, config)`, when given, is put in front of every engine handed
    out (the builder's request cache, `prefdata.engines.cache.CachedEngine`).
    """

    def __init__(self, configs: Mapping[str, EngineConfig], loader: Callable[[EngineConfig], Engine] | None = None,
                 wrap: Callable[[Engine, EngineConfig], Engine] | None = None):
        self.configs = dict(configs)
        self._loader = loader
        self._wrap = wrap
        self._by_config: dict[EngineConfig, Engine] = {}
        self._wrapped: dict[EngineConfig, Engine] = {}
        self._borrowed: set[int] = set()  # engines handed in by the caller: the caller closes them

    def get(self, name: str) -> Engine:
        if name not in self.configs:
            raise KeyError(f"engine {name!r} is not defined; defined: {sorted(self.configs)}")
        config = self.configs[name]
        if config not in self._by_config:
            if self._loader is None:
                from prefdata.engines import load_engine

                self._loader = load_engine
            self._by_config[config] = self._loader(config)
        if self._wrap is None:
            return self._by_config[config]
        if config not in self._wrapped:
            self._wrapped[config] = self._wrap(self._by_config[config], config)
        return self._wrapped[config]

    def put(self, name: str, engine: Engine) -> None:
        """Use an already-loaded engine under `name` (Python API inside training jobs, tests)."""
        config = self.configs.setdefault(name, EngineConfig(model=f"in-memory:{name}"))
        self._by_config[config] = engine
        self._wrapped.pop(config, None)
        self._borrowed.add(id(engine))

    def loaded(self) -> dict[str, dict[str, Any]]:
        return {name: eng.identity() for name, cfg in self.configs.items() if (eng := self._by_config.get(cfg))}

    def close(self) -> None:
        """Shut down the engines this pool loaded (not the borrowed ones)."""
        for engine in self._by_config.values():
            if id(engine) not in self._borrowed:
                engine.close()
        self._by_config.clear()
        self._wrapped.clear()


@dataclass
class BuildContext:
    engines: EnginePool
    seed: int = 0
    progress: Callable[[str, int], None] | None = None  # (description, rows done) for long stages
    info: dict[str, Any] = field(default_factory=dict)

    def engine(self, name: str) -> Engine:
        return self.engines.get(name)

    def seed_for(self, *parts: Any) -> int:
        """A per-row seed: the same row gets the same seed whatever shard or batch it lands in."""
        return derive_seed(self.seed, *parts)

    @classmethod
    def for_input(cls, engines: EnginePool, seed: int, input_rows: int, shard_size: int) -> BuildContext:
        """A context that knows the input's size and shard size (`info`), for stages that report them."""
        return cls(engines=engines, seed=seed, info={"input_rows": input_rows, "shard_size": shard_size})
