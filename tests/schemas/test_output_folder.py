"""Output folder safety: a build writes only into a folder it owns and deletes only what it wrote."""

from __future__ import annotations

import json

import pytest

from prefdata.schemas.output_folder import MANIFEST_FILE, OutputFolder, OutputFolderError, check_output_folder


def _user_folder(tmp_path):
    """A folder as a user has it: a Hub-style shard, their own stats.json and notes."""
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"user parquet bytes")
    (folder / "stats.json").write_text('{"mine": true}')
    (folder / "notes.txt").write_text("keep")
    return folder


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_and_empty_folders_are_claimed(tmp_path):
    for folder in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        with OutputFolder.claim(folder) as claimed:
            claimed.will_write([folder / "data" / "train-00000.parquet", folder / "stats.json"])
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        assert manifest["files"] == ["data/train-00000.parquet", "stats.json"]


def test_a_users_folder_is_refused_and_untouched(tmp_path):
    folder = _user_folder(tmp_path)
    before = _snapshot(folder)
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="prefdata did not write"):
            OutputFolder.claim(folder, overwrite=overwrite)
    assert _snapshot(folder) == before
    assert not (folder / ".prefdata").exists()


def test_an_input_inside_the_output_folder_is_refused(tmp_path):
    folder = tmp_path / "out"
    with OutputFolder.claim(folder) as claimed:
        claimed.will_write([folder / "data" / "train-00000.parquet"])
    (folder / "data").mkdir()
    (folder / "data" / "train-00000.parquet").write_bytes(b"earlier build")
    with pytest.raises(OutputFolderError, match="lies in"):
        check_output_folder(folder, inputs=[folder / "data" / "train-00000.parquet"])
    with pytest.raises(OutputFolderError, match="lies in"):
        check_output_folder(folder / "data", inputs=[folder])  # an output inside the input folder
    assert (folder / "data" / "train-00000.parquet").read_bytes() == b"earlier build"


def test_rebuild_deletes_only_its_own_stale_files(tmp_path):
    folder = tmp_path / "out"
    shards = [folder / "data" / f"train-{i:05d}.parquet" for i in range(3)]
    with OutputFolder.claim(folder) as claimed:
        claimed.will_write(shards)
        for shard in shards:
            shard.parent.mkdir(exist_ok=True)
            shard.write_bytes(b"x")
    (folder / "README.md").write_text("the user's notes, added after the build")
    with OutputFolder.claim(folder) as claimed:
        removed = claimed.keep_only(shards[:1])
    assert sorted(p.name for p in removed) == ["train-00001.parquet", "train-00002.parquet"]
    assert [p.name for p in (folder / "data").iterdir()] == ["train-00000.parquet"]
    assert (folder / "README.md").read_text().startswith("the user's notes")
    assert json.loads((folder / MANIFEST_FILE).read_text())["files"] == ["data/train-00000.parquet"]


def test_a_foreign_file_in_data_is_refused(tmp_path):
    folder = tmp_path / "out"
    with OutputFolder.claim(folder) as claimed:
        claimed.will_write([folder / "data" / "train-00000.parquet"])
    (folder / "data").mkdir()
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"user")
    with pytest.raises(OutputFolderError, match="did not write"):
        OutputFolder.claim(folder)
    assert (folder / "data" / "train-00000-of-00001.parquet").read_bytes() == b"user"


def test_overwrite_discards_the_earlier_build_and_its_state(tmp_path):
    folder = tmp_path / "out"
    with OutputFolder.claim(folder) as claimed:
        claimed.will_write([folder / "stats.json"])
    (folder / "stats.json").write_text("{}")
    (folder / ".prefdata" / "checkpoints").mkdir()
    (folder / ".prefdata" / "checkpoints" / "x.json").write_text("{}")
    (folder / "notes.txt").write_text("user")
    with OutputFolder.claim(folder, overwrite=True) as claimed:
        assert claimed.files == []
    assert not (folder / "stats.json").exists() and not (folder / ".prefdata" / "checkpoints").exists()
    assert (folder / "notes.txt").read_text() == "user"


def test_one_build_at_a_time(tmp_path):
    with OutputFolder.claim(tmp_path / "out"):
        with pytest.raises(OutputFolderError, match="another prefdata build"):
            OutputFolder.claim(tmp_path / "out")
    OutputFolder.claim(tmp_path / "out").release()


def test_unwritable_places_are_refused_up_front(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputFolderError, match="not a directory"):
        check_output_folder(a_file / "out")
    with pytest.raises(OutputFolderError, match="not a directory"):
        check_output_folder(a_file)
    # sysfs: no one, root included, may create a folder there (permission bits do not stop root)
    with pytest.raises(OutputFolderError, match="cannot create it"):
        OutputFolder.claim("/sys/prefdata-out")


def test_temp_files_of_a_killed_build_go_but_look_alikes_of_the_user_stay(tmp_path):
    folder = tmp_path / "out"
    with OutputFolder.claim(folder) as claimed:
        claimed.will_write([folder / "data" / "train-00000.parquet"])
    (folder / "data").mkdir()
    ours = folder / "data" / ".train-00000.parquet.tmp-123"
    ours.write_bytes(b"half")
    OutputFolder.claim(folder).release()
    assert not ours.exists()
