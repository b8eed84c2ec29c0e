"""The output folder a build owns: prefdata writes only where it may and deletes only what it wrote.

A build may write into a folder that is new, empty, or holds an earlier prefdata build (its
`.prefdata/manifest.json` lists every file that build wrote outside `.prefdata/`). Any other
folder is refused before anything is read or loaded: a user's files are never deleted or
overwritten. The manifest is written ahead: a file is listed before it is written, so a killed
build leaves no file the next build does not know it owns. A rebuild deletes only listed files
(stale shards of a larger earlier build); `overwrite=True` also discards the earlier build's
checkpoints and request cache, and is refused for a folder prefdata does not own.

The checks here are read-only (`check_output_folder`); `OutputFolder.claim` then creates the
folder, takes its lock (one build per folder at a time) and writes the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock, Timeout

from prefdata.schemas.errors import InputError
from prefdata.schemas.writers import DATA_DIR, TEMP_MARKER, write_bytes_atomic

STATE_DIR = ".prefdata"  # build state: manifest, lock, checkpoints, request cache, build log
MANIFEST_FILE = f"{STATE_DIR}/manifest.json"
LOCK_FILE = f"{STATE_DIR}/build.lock"
MANIFEST_VERSION = 1


class OutputFolderError(InputError):
    """The output folder cannot be used (not prefdata's, not writable, holds the input, busy)."""

    def __init__(self, folder: str | Path, message: str):
        super().__init__(str(folder), message)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _read_manifest(folder: Path) -> list[str] | None:
    """The files the last build listed, or None when the folder has no readable manifest."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _temp_of(name: str) -> str | None:
    """The file a temporary name belongs to ('.x.parquet.tmp-12' -> 'x.parquet'), else None."""
    if name.startswith(".") and TEMP_MARKER in name:
        return name[1:].split(TEMP_MARKER)[0]
    return None


def _foreign_entries(folder: Path, owned: set[str]) -> list[str]:
    """Entries of `folder` that a prefdata build did not write (relative paths, sorted); the
    temporary files of a killed build's listed files count as its own."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == STATE_DIR:
            continue
        children = sorted(entry.iterdir()) if entry.name == DATA_DIR and entry.is_dir() else [entry]
        for path in children:
            rel = path.relative_to(folder).as_posix()
            temp_target = _temp_of(path.name)
            if rel in owned or (temp_target and (path.parent / temp_target).relative_to(folder).as_posix() in owned):
                continue
            foreign.append(rel)
    return foreign


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents or path in folder.parents


def check_output_folder(folder: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> bool:
    """Raise `OutputFolderError` unless a build may write into `folder`; touches nothing.

    Returns True when the folder holds an earlier prefdata build (its manifest)."""
    folder = Path(folder)
    for source in inputs:
        if source is not None and Path(source).exists() and _inside(Path(source), folder):
            raise OutputFolderError(folder, f"the input {source} lies in (or holds) the output folder; "
                                            "choose another --output (a build never writes over its input)")
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(folder, "output path exists and is not a directory")
    target = _nearest_existing(folder)
    if not target.is_dir():
        raise OutputFolderError(folder, f"cannot create it: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputFolderError(folder, f"not writable ({target} is read-only or not yours)")
    if not folder.exists() or not any(folder.iterdir()):
        return False
    owned = _read_manifest(folder)
    if owned is None:
        entries = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputFolderError(folder, f"holds files prefdata did not write ({shown}) and no {MANIFEST_FILE}; "
                                        "choose a new or empty --output folder (nothing was changed)")
    foreign = _foreign_entries(folder, set(owned))
    foreign_data = [f for f in foreign if f.startswith(f"{DATA_DIR}/")]
    if foreign_data:
        raise OutputFolderError(folder, f"its {DATA_DIR}/ holds files the earlier build did not write "
                                        f"({', '.join(foreign_data[:3])}); move them or choose another --output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputFolderError(folder, "not writable")
    return True


class OutputFolder:
    """A claimed output folder: locked for this build, with a write-ahead manifest."""

    def __init__(self, root: Path, files: list[str], lock: FileLock):
        self.root, self._files, self._lock = root, list(files), lock

    @classmethod
    def claim(cls, folder: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> OutputFolder:
        folder = Path(folder)
        had_build = check_output_folder(folder, inputs=inputs, overwrite=overwrite)
        try:
            (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(folder, f"cannot create it ({exc.strerror or exc})") from None
        lock = FileLock(str(folder / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputFolderError(folder, "another prefdata build is writing into this folder") from None
        claimed = cls(folder, _read_manifest(folder) or [], lock)
        if had_build and overwrite:
            claimed.discard_previous()
        claimed._remove_temp_files()
        claimed._save()
        return claimed

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def will_write(self, paths: Iterable[str | Path]) -> None:
        """List files before they are written (write-ahead), so a kill never orphans one."""
        new = [rel for p in paths if (rel := self._relative(p)) not in self._files]
        if new:
            self._files += new
            self._save()

    def keep_only(self, paths: Iterable[str | Path], *, under: str = DATA_DIR) -> list[Path]:
        """Delete listed files under `under` that this build did not produce (stale shards of an
        earlier, larger build); returns what was deleted. Unlisted files are never touched."""
        keep = {self._relative(p) for p in paths}
        stale = [f for f in self._files if f.startswith(f"{under}/") and f not in keep]
        removed = []
        for rel in stale:
            path = self.root / rel
            if path.is_file():
                path.unlink()
                removed.append(path)
            self._files.remove(rel)
        self._save()
        return removed

    def discard_previous(self) -> None:
        """`--overwrite`: delete the earlier build's listed files and its state (checkpoints, cache)."""
        for rel in self._files:
            path = self.root / rel
            if path.is_file():
                path.unlink()
        self._files = []
        for entry in (self.root / STATE_DIR).iterdir():
            if entry.name in {Path(LOCK_FILE).name, Path(MANIFEST_FILE).name}:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        if path.is_absolute() or path.parts[: len(self.root.parts)] == self.root.parts:
            path = path.absolute().relative_to(self.root.absolute())
        return path.as_posix()

    def _remove_temp_files(self) -> None:
        """Half-written files of a killed build (their targets are intact): only under names this
        build's writers use, next to files the manifest lists or inside `.prefdata/`."""
        places = {self.root / STATE_DIR} | {(self.root / rel).parent for rel in self._files}
        for place in places:
            if place == self.root / STATE_DIR:
                candidates = place.rglob(f".*{TEMP_MARKER}*")
            else:
                listed = {Path(rel).name for rel in self._files}
                candidates = (p for p in place.glob(f".*{TEMP_MARKER}*") if _temp_of(p.name) in listed)
            for path in candidates:
                if path.is_file():
                    path.unlink()

    def _save(self) -> None:
        data = {"manifest_version": MANIFEST_VERSION, "files": sorted(self._files)}
        write_bytes_atomic(json.dumps(data, indent=2).encode(), self.root / MANIFEST_FILE)
