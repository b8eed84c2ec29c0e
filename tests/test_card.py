"""The dataset card: the label-noise section lists the primary flip-rate estimate and every
estimator; the methods it cites are the ones stats.json recorded when the build ran."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from prefdata.card import SplitInfo, config_section, method_citations, render_card
from prefdata.generators.on_policy import CITATION as ON_POLICY_CITATION
from prefdata.recipe import parse_recipe
from prefdata.registry import make_stage
from prefdata.schemas.presets import get_preset
from prefdata.scorers.judge import CITATION as JUDGE_CITATION

from .conftest import REPO
from .hub_server import LocalHub
from .schemas.preset_fixtures import NECTAR, nectar_rows


def test_card_lists_each_flip_rate_estimator():
    stats = {"estimates": {"flip_rate": {
        "epsilon": 0.21, "interval": [0.15, 0.3], "method": "mixture", "n": 400,
        "estimators": {"sign": {"epsilon": 0.33, "interval": [0.2, 0.4], "method": "sign"},
                       "mixture": {"epsilon": 0.21, "interval": [0.15, 0.3], "method": "mixture"},
                       "moments": {"epsilon": None, "interval": None, "method": "moments", "error": "accuracy 0.4"}}}}}
    body = config_section("default", {"name": "curate"}, stats, [], [])
    assert "ε = 0.21, interval [0.15, 0.3] (method: mixture)" in body
    assert "  - `sign`: ε = 0.33, interval [0.2, 0.4]" in body
    assert "  - `moments`: ε = n/a (accuracy 0.4)" in body


def _card(recipe, stats):
    splits = [SplitInfo("train", rows=1, num_bytes=10, download_bytes=10, files=("data/train-00000.parquet",))]
    return render_card(repo_id="tester/x", config_name="default", recipe=recipe, stats=stats, features=None,
                       splits=splits, license="mit", tags=[], task_categories=["text-generation"], pretty_name=None)


def test_card_cites_the_methods_recorded_at_build_time_not_the_registry():
    recipe = {"source": {"path": "x.jsonl"}, "stages": [{"type": "on_policy", "scorer": {"type": "judge"}}]}
    stages = [make_stage(config) for config in parse_recipe(recipe).stages]  # what the builder records
    stats = {"methods": [asdict(m) for m in method_citations(stages)]}
    # recipe.json names a stage today's registry does not know: the card still cites what ran
    card = _card({"name": "x", "stages": [{"type": "renamed_since"}]}, stats)
    assert ON_POLICY_CITATION in card and JUDGE_CITATION in card
    assert "- `on_policy` (stage):" in card and "- `judge` (scorer):" in card
    assert "### Methods" not in _card({"name": "x", "stages": recipe["stages"]}, {})  # nothing recorded, nothing cited


TOKEN = "hf_prefdataTEST" + "cArD5rc7Qm3X"


def test_card_of_a_hub_source_build_names_the_repository_and_the_commit_read(tmp_path, monkeypatch):
    """README: the card's "Source data" section gives the repository and commit read, the preset,
    the dataset's license and its BibTeX. The build pins the first of two commits, so the head's
    commit (or "main") in the card would be wrong."""
    from huggingface_hub import HfApi

    from prefdata.hub import push_to_hub

    hub = LocalHub(token=TOKEN)
    hub.start()
    try:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo("tester/nectar-card", repo_type="dataset")
        commits = []
        for rows in (nectar_rows()[:1], nectar_rows()):
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=NECTAR), buffer)
            commits.append(api.upload_file(path_or_fileobj=buffer.getvalue(), repo_id="tester/nectar-card",
                                           path_in_repo="data/train-00000-of-00001.parquet", repo_type="dataset").oid)
        read = commits[0]
        recipe = tmp_path / "hub.toml"
        recipe.write_text(f'name = "from-hub"\n[source]\nhub = "tester/nectar-card"\npreset = "nectar"\n'
                          f'revision = "{read}"\nstreaming = false\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=TOKEN,
                   HF_DATASETS_CACHE=str(tmp_path / "ds_cache"), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-m", "prefdata", "build", str(recipe), "-q", "-o", str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        push_to_hub(tmp_path / "out", "tester/pairs-from-hub")
        card = hub.files("tester/pairs-from-hub")["README.md"].decode()
    finally:
        hub.stop()
    preset = get_preset("nectar")
    assert "### Source data" in card
    assert f"| input | `tester/nectar-card` @ `{read}` (default/train) | nectar | {preset.license} | 1 |" in card
    assert commits[1] not in card
    assert preset.citation.strip() in card
