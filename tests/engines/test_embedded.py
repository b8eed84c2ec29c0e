"""Embedded models: where prefdata's cache lives (the converted SmolLM2 folder goes there)."""

from __future__ import annotations

from pathlib import Path

from prefdata.engines import embedded


def test_prefdata_cache_dir_moves_the_converted_model(tmp_path, monkeypatch):
    """README: the GGUF is converted once to a folder in ~/.cache/prefdata/models; PREFDATA_CACHE_DIR
    moves it. The conversion itself (about 20 s) is replaced by one that writes a marker file."""
    converted: list[Path] = []

    def fake_convert(folder, gguf_file, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        converted.append(out)

    monkeypatch.setattr(embedded, "_convert_gguf", fake_convert)
    monkeypatch.setattr(embedded, "_package_dir", lambda *args, **kwargs: tmp_path / "wheel")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("PREFDATA_CACHE_DIR", raising=False)
    assert embedded.cache_dir() == tmp_path / "home" / ".cache" / "prefdata"  # the default: ~/.cache/prefdata

    monkeypatch.setenv("PREFDATA_CACHE_DIR", str(tmp_path / "moved"))
    folder = Path(embedded.resolve_model(embedded.SMOLLM2))
    assert folder == tmp_path / "moved" / "models" / "smollm2-135m-instruct-bf16"
    assert (folder / "config.json").is_file() and len(converted) == 1
    assert not (tmp_path / "home" / ".cache").exists()  # nothing written at the default place
    assert Path(embedded.resolve_model(embedded.SMOLLM2)) == folder and len(converted) == 1  # converted once
