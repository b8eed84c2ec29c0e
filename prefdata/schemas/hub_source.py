"""Rows of a dataset on the Hugging Face Hub (`[source] hub = "org/name"`), read with `datasets`.

The revision is resolved to a commit first (`HfApi.dataset_info`): that commit is what is read
and what recipe.json and the card record, so a build can be redone from its card even after the
repository moved on. The token comes from huggingface_hub's usual places (`HF_TOKEN`, the file
`hf auth login` writes); it is never printed (error messages are redacted). A missing repository,
revision, config or split, or no connection, fails here, in one line, before any engine loads.

`streaming = true` reads the split shard by shard over HTTP (nothing cached, memory bounded);
`false` downloads it into the `datasets` cache first (a rerun reads the cache). Unset: stream
when the repository's files add up to more than `STREAM_ABOVE_BYTES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prefdata.schemas.errors import InputError, RowError

STREAM_ABOVE_BYTES = 2 * 1024**3


@dataclass
class HubRows:
    label: str  # names the source in rejects and errors: "org/name@<commit[:12]>/<config>/<split>"
    stem: str  # prefix of generated row ids: the split
    rows: Iterator[tuple[int, dict | RowError, Any]]
    info: dict[str, Any] = field(default_factory=dict)  # hub, config, split, revision (commit), streaming


def _redact(text: str) -> str:
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # noqa: BLE001 - no token is fine
        token = None
    return text.replace(token, "***") if token else text


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return _redact(text.splitlines()[0])[:300]


def open_hub(repo: str, *, config: str | None, split: str, revision: str | None,
             streaming: bool | None) -> HubRows:
    """Resolve the revision and open the split's rows (index, record, record)."""
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    where = f"hub:{repo}"
    try:
        info = HfApi().dataset_info(repo, revision=revision, files_metadata=streaming is None)
    except RevisionNotFoundError:
        raise InputError(where, f"revision {revision!r} not found in the dataset repository") from None
    except RepositoryNotFoundError:
        raise InputError(where, "dataset repository not found on the Hub (a private one needs a token: "
                                "`hf auth login` or HF_TOKEN)") from None
    except OfflineModeIsEnabled:
        raise InputError(where, "HF_HUB_OFFLINE is set: cannot resolve the dataset's revision") from None
    except Exception as exc:  # noqa: BLE001 - connection errors come from whichever HTTP library huggingface_hub uses
        raise InputError(where, f"cannot reach the Hub: {_one_line(exc)}") from None
    commit = info.sha
    if streaming is None:
        streaming = sum(s.size or 0 for s in info.siblings or []) > STREAM_ABOVE_BYTES
    from datasets import utils as ds_tqdm

    bars_were_off = ds_tqdm.are_progress_bars_disabled()
    ds_tqdm.disable_progress_bars()  # the console is the user's: prefdata shows its own progress
    try:
        loaded = datasets.load_dataset(repo, name=config, split=split, revision=commit, streaming=streaming)
    except Exception as exc:  # noqa: BLE001 - unknown config/split, bad files: one line naming the repo
        raise InputError(where, f"cannot load config {config or 'default'!r}, split {split!r} at {commit[:12]}: "
                                f"{_one_line(exc)}") from None
    finally:
        if not bars_were_off:
            ds_tqdm.enable_progress_bars()
    label = f"{repo}@{commit[:12]}/{config or 'default'}/{split}"

    def rows() -> Iterator[tuple[int, dict | RowError, Any]]:
        index = 0
        if streaming:
            for record in loaded:
                yield index, record, record
                index += 1
            return
        for batch in loaded.with_format("arrow").iter(batch_size=2048):
            for record in batch.to_pylist():
                yield index, record, record
                index += 1

    return HubRows(label=label, stem=split, rows=rows(),
                   info={"hub": repo, "config": config, "split": split, "revision": commit, "streaming": streaming})
