"""Push a built dataset folder to the Hugging Face Hub: all shards and a generated card in ONE commit.

    from prefdata.hub import push_to_hub
    result = push_to_hub("out/quickstart", "me/quickstart-pairs", test_size=0.1, license="apache-2.0")

What lands in the dataset repository (`<folder>` is `data` for the `default` config, else the
config name, as `datasets.Dataset.push_to_hub` lays it out):

    README.md                          the card (prefdata.card): metadata + counts, estimates, citations
    <folder>/train-00000.parquet ...   the pairs; with `test_size`, also <folder>/test-*.parquet
    prefdata/<config>/recipe.json      the resolved recipe
    prefdata/<config>/stats.json       the build's stats

Files of the same config left over from an earlier push (e.g. more shards then) are deleted in
the same commit; other configs' files, metadata and card sections stay. The rest of the card body
is regenerated on every push (hand edits outside the config sections are not kept).

The token comes from huggingface_hub's usual places (`HF_TOKEN`, the token file written by
`hf auth login`) unless passed. It is never printed, logged, or written: error messages are
redacted, and a card or metadata file that contains it is refused before anything is sent.

Network failures: no connection (or `HF_HUB_OFFLINE=1`) fails at the first request with one
line and no retry; 408/429/5xx answers and dropped connections are retried with exponential
backoff (`max_retries`, `backoff` seconds doubling). The local folder is only read: split files
are written to a temporary folder.

Decisions: train/test assignment is by prompt (a hash of the recipe seed and `prompt_id`), so
all pairs of one prompt land in the same split and the split never leaks a prompt; the commit
names the repository's head as its parent, so a concurrent change makes the push fail rather
than silently interleave.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.card import SplitInfo, render_card
from prefdata.recipe import PushConfig
from prefdata.schemas.errors import PrefdataError
from prefdata.schemas.writers import shard_files, write_parquet_atomic

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


class HubError(PrefdataError):
    """A push that could not be done; the message is one line and never holds the token."""


@dataclass
class PushResult:
    repo_id: str
    config_name: str
    url: str  # the dataset's page
    commit_url: str
    commit_oid: str
    splits: dict[str, int]  # split -> rows
    files: list[str] = field(default_factory=list)  # paths written in the repository


def split_of(prompt_id: str, seed: int, test_size: float) -> str:
    """`test` with probability `test_size`, decided by the prompt id alone (stable, no leakage)."""
    digest = hashlib.sha256(f"prefdata-split\0{seed}\0{prompt_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_size else "train"


def data_folder(config_name: str) -> str:
    if config_name == "data":
        raise HubError("config name 'data' is reserved (the default config's folder); choose another")
    return "data" if config_name == "default" else config_name


# -- network errors ------------------------------------------------------------------------------
def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(no-connection errors, transient errors) of whichever HTTP library huggingface_hub uses."""
    no_connection: list[type[BaseException]] = [ConnectionRefusedError]
    transient: list[type[BaseException]] = [TimeoutError, ConnectionResetError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, bucket in (("ConnectError", no_connection), ("ConnectionError", no_connection),
                             ("TimeoutException", transient), ("Timeout", transient), ("ReadError", transient),
                             ("WriteError", transient), ("RemoteProtocolError", transient)):
            cls = getattr(module, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                bucket.append(cls)
    return tuple(no_connection), tuple(transient)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _Caller:
    """Runs Hub calls with the retry policy and turns failures into one-line `HubError`s."""

    def __init__(self, endpoint: str, token: str, directory: Path, max_retries: int, backoff: float):
        self.endpoint, self.token, self.directory = endpoint, token, directory
        self.max_retries, self.backoff = max_retries, backoff
        self.retries = 0

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        no_connection, transient = _transport_errors()
        untouched = f"nothing was pushed; {self.directory} is unchanged"
        for attempt in range(self.max_retries + 1):
            retry_reason = None
            try:
                return fn()
            except OfflineModeIsEnabled:
                raise HubError(f"cannot {what}: HF_HUB_OFFLINE is set; {untouched}") from None
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in RETRY_STATUS:
                    hint = " (check the token: HF_TOKEN or `hf auth login`)" if status in (401, 403) else ""
                    raise HubError(self.redact(f"cannot {what}: the Hub answered {status}: {_first_line(exc)}{hint}; "
                                               f"{untouched}")) from None
                retry_reason = f"HTTP {status}"
            except no_connection as exc:
                raise HubError(self.redact(f"cannot reach the Hugging Face Hub at {self.endpoint} to {what} "
                                           f"({type(exc).__name__}: {_first_line(exc)}); {untouched}")) from None
            except transient as exc:
                retry_reason = type(exc).__name__
            if attempt == self.max_retries:
                raise HubError(self.redact(f"cannot {what}: still failing after {self.max_retries} retries "
                                           f"({retry_reason}); {untouched}"))
            self.retries += 1
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")


def probe(endpoint: str, token: str, directory: Path, timeout: float = 10.0) -> dict[str, Any]:
    """One whoami request with a bounded wait: fails fast (no retry) when the Hub cannot be reached,
    a host that never answers included, and early when the Hub rejects the token."""
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import build_hf_headers, get_session

    untouched = f"nothing was pushed; {directory} is unchanged"
    no_connection, transient = _transport_errors()
    try:
        response = get_session().get(f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=timeout)
    except OfflineModeIsEnabled:
        raise HubError(f"cannot push: HF_HUB_OFFLINE is set; {untouched}") from None
    except no_connection + transient as exc:
        message = f"cannot reach the Hugging Face Hub at {endpoint} ({type(exc).__name__}: {_first_line(exc)}); {untouched}"
        raise HubError(message.replace(token, "***")) from None
    if response.status_code in (401, 403):
        raise HubError(f"the Hub at {endpoint} rejected the token ({response.status_code}): check HF_TOKEN or "
                       f"`hf auth login`; {untouched}")
    try:
        return response.json() if response.status_code == 200 else {}
    except ValueError:
        return {}


# -- local side ----------------------------------------------------------------------------------
@dataclass
class _Build:
    directory: Path
    shards: list[Path]
    recipe: dict[str, Any]
    stats: dict[str, Any]
    schema: pa.Schema


def read_build(directory: str | Path) -> _Build:
    """The parts of a build folder a push needs; errors name the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HubError(f"{directory}: not a folder")
    shards = shard_files(directory)
    if not shards:
        raise HubError(f"{directory}: no Parquet shards under data/ (is it a prefdata build folder?)")
    loaded = {}
    for name in ("recipe.json", "stats.json"):
        path = directory / name
        try:
            loaded[name] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HubError(f"{path}: missing (the card is generated from it; rebuild the folder)") from None
        except json.JSONDecodeError as exc:
            raise HubError(f"{path}: not valid JSON: {exc}") from None
    schema = pq.read_schema(shards[0])
    for shard in shards[1:]:
        other = pq.read_schema(shard)
        if not other.equals(schema, check_metadata=False):
            raise HubError(f"{shard}: its columns differ from {shards[0].name}'s; the shards are not one dataset")
    return _Build(directory, shards, loaded["recipe.json"], loaded["stats.json"], schema)


def _split_files(build: _Build, folder: str, test_size: float, tmp: Path) -> tuple[list[SplitInfo], list[tuple[str, Path]]]:
    """Split infos and (path in repo, local file) for every data file to upload."""
    uploads: dict[str, list[tuple[str, Path, int, int]]] = {"train": [], "test": []}
    seed = int(build.recipe.get("seed", 0))
    for shard in build.shards:
        table = pq.read_table(shard)
        if not test_size:
            uploads["train"].append((shard.name, shard, table.num_rows, table.nbytes))
            continue
        names = [split_of(pid, seed, test_size) for pid in table.column("prompt_id").to_pylist()]
        for split in ("train", "test"):
            part = table.filter(pa.array([n == split for n in names], pa.bool_()))
            if part.num_rows or not uploads[split] and shard == build.shards[-1]:
                path = tmp / f"{split}-{len(uploads[split]):05d}.parquet"
                write_parquet_atomic(part, path)
                uploads[split].append((path.name, path, part.num_rows, part.nbytes))
    if test_size and not any(rows for *_, rows, _ in uploads["test"]):
        raise HubError(f"test_size={test_size} put none of the prompts in the test split; raise it or use 0")
    infos, files = [], []
    for split, items in uploads.items():
        if not items:
            continue
        repo_paths = [f"{folder}/{name}" for name, *_ in items]
        infos.append(SplitInfo(split, sum(i[2] for i in items), sum(i[3] for i in items),
                               sum(i[1].stat().st_size for i in items), tuple(repo_paths)))
        files += [(repo_path, item[1]) for repo_path, item in zip(repo_paths, items)]
    return infos, files


# -- the push ------------------------------------------------------------------------------------
def push_to_hub(directory: str | Path, repo_id: str, *, private: bool = False, config_name: str = "default",
                test_size: float = 0.0, license: str = "unknown", tags: Sequence[str] = (),
                task_categories: Sequence[str] = ("text-generation",), pretty_name: str | None = None,
                commit_message: str | None = None, token: str | None = None, endpoint: str | None = None,
                max_retries: int = 5, backoff: float = 1.0) -> PushResult:
    """Upload a build folder (shards, card, recipe, stats) to a dataset repository in one commit.

    `endpoint` defaults to `HF_ENDPOINT` (read now, not at import) or huggingface.co; `token` to
    huggingface_hub's stored token. Raises `HubError` (one line) on any failure.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token

    if not 0 <= test_size < 1:
        raise HubError(f"test_size must be in [0, 1), got {test_size}")
    directory = Path(directory)
    build = read_build(directory)
    folder = data_folder(config_name)
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login`; nothing was pushed")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    call = _Caller(endpoint, token, directory, max_retries, backoff)

    user = probe(endpoint, token, directory)
    if "/" not in repo_id:
        if not user.get("name"):
            raise HubError(f"cannot tell the token's user name; give the repository as user/{repo_id}")
        repo_id = f"{user['name']}/{repo_id}"
    call("create the repository", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
    info = call("read the repository", lambda: api.repo_info(repo_id, repo_type="dataset", files_metadata=False))
    existing = [s.rfilename for s in info.siblings or []]

    with tempfile.TemporaryDirectory(prefix="prefdata-push-") as tmp_name:
        tmp = Path(tmp_name)
        old_card = None
        if "README.md" in existing:
            path = call("download the current card", lambda: api.hf_hub_download(
                repo_id, "README.md", repo_type="dataset", revision=info.sha, cache_dir=tmp / "cache"))
            old_card = Path(path).read_text(encoding="utf-8")
        splits, data_files = _split_files(build, folder, test_size, tmp)
        from datasets import Features

        card = render_card(repo_id=repo_id, config_name=config_name, recipe=build.recipe, stats=build.stats,
                           features=Features.from_arrow_schema(build.schema), splits=splits, license=license,
                           tags=list(tags), task_categories=list(task_categories), pretty_name=pretty_name,
                           test_size=test_size, existing=old_card)
        small = {"README.md": card.encode(),
                 f"prefdata/{config_name}/recipe.json": json.dumps(build.recipe, indent=2).encode(),
                 f"prefdata/{config_name}/stats.json": json.dumps(build.stats, indent=2).encode()}
        for path, content in small.items():
            if token.encode() in content:
                raise HubError(f"refusing to push: {path} would contain the Hub token; remove it from the recipe/stats")
        operations: list[Any] = [CommitOperationAdd(path, content) for path, content in small.items()]
        operations += [CommitOperationAdd(repo_path, str(local)) for repo_path, local in data_files]
        new_paths = {op.path_in_repo for op in operations}
        stale = [p for p in existing if p not in new_paths and (
            (p.startswith(f"{folder}/") and "/" not in p[len(folder) + 1:] and p.endswith(".parquet"))
            or p.startswith(f"prefdata/{config_name}/"))]
        operations += [CommitOperationDelete(p) for p in stale]
        message = commit_message or f"prefdata: push {build.recipe.get('name', 'dataset')} ({config_name})"

        def commit():
            # fresh operation objects per attempt: huggingface_hub marks committed ones as used
            ops = [CommitOperationAdd(op.path_in_repo, op.path_or_fileobj) if isinstance(op, CommitOperationAdd)
                   else op for op in operations]
            return api.create_commit(repo_id, ops, commit_message=message, repo_type="dataset",
                                     parent_commit=info.sha)

        result = call("commit the files", commit)
    return PushResult(repo_id=repo_id, config_name=config_name, url=f"{endpoint}/datasets/{repo_id}",
                      commit_url=result.commit_url, commit_oid=result.oid,
                      splits={s.name: s.rows for s in splits}, files=sorted(new_paths))


def push_recipe_output(directory: str | Path, config: PushConfig, **kwargs: Any) -> PushResult:
    """Push a build folder as a recipe's `[push]` table says (`kwargs` as in `push_to_hub`)."""
    return push_to_hub(directory, config.repo_id, private=config.private, config_name=config.config_name,
                       test_size=config.test_size, license=config.license, tags=config.tags,
                       task_categories=config.task_categories, pretty_name=config.pretty_name,
                       commit_message=config.commit_message, **kwargs)
