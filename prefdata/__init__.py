"""prefdata: build and curate preference data (prompt, chosen, rejected) for aligning language models.

The Python API (imports are lazy, so `import prefdata` stays cheap):

- `prefdata.build(recipe)`: run a recipe (TOML/YAML path, dict or `Recipe`) -> `datasets.Dataset`
- `prefdata.load(folder_or_repo)`: a build folder or a Hub dataset id -> `datasets.Dataset`
  (`streaming=True` -> `IterableDataset`)
- `prefdata.iter_batches(folder, batch_size)`: fixed-size Arrow record batches over the shards
- `prefdata.apply(dataset, stage, engines={"policy": engine})`: one stage on an in-memory dataset
- `prefdata.push_to_hub(folder, repo_id)`: shards + generated dataset card in one Hub commit
"""

from __future__ import annotations

from typing import Any

from prefdata._version import __version__


def build(recipe: Any, **kwargs: Any):
    """Run a recipe (path, dict or `Recipe`) and return the pairs as a `datasets.Dataset`."""
    from prefdata.builder import build as _build

    return _build(recipe, **kwargs)


def load(source: Any, **kwargs: Any):
    """A build folder or Hub dataset id as a `datasets.Dataset` (see `prefdata.api.load`)."""
    from prefdata.api import load as _load

    return _load(source, **kwargs)


def iter_batches(source: Any, batch_size: int = 1024, **kwargs: Any):
    """Fixed-size `pyarrow.RecordBatch`es over a build folder's shards (see `prefdata.api.iter_batches`)."""
    from prefdata.api import iter_batches as _iter_batches

    return _iter_batches(source, batch_size, **kwargs)


def apply(dataset: Any, stage: Any, engines: Any = None, **kwargs: Any):
    """Run one stage on an in-memory dataset with loaded engines (see `prefdata.api.apply`)."""
    from prefdata.api import apply as _apply

    return _apply(dataset, stage, engines, **kwargs)


def push_to_hub(directory: Any, repo_id: str, **kwargs: Any):
    """Push a build folder and its generated card to the Hub in one commit (see `prefdata.hub`)."""
    from prefdata.hub import push_to_hub as _push

    return _push(directory, repo_id, **kwargs)


__all__ = ["__version__", "apply", "build", "iter_batches", "load", "push_to_hub"]
