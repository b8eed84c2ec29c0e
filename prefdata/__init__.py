"""prefdata: build and curate preference data (prompt, chosen, rejected) for aligning language models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def build(recipe: Any, **kwargs: Any):
    """Run a recipe (path, dict or `Recipe`) and return the pairs as a `datasets.Dataset`."""
    from prefdata.build import build as _build

    return _build(recipe, **kwargs)


def load(path: Any):
    """Load a built dataset folder as a `datasets.Dataset`."""
    from prefdata.schemas.writers import load_dataset_dir

    return load_dataset_dir(path)


__all__ = ["__version__", "build", "load"]
