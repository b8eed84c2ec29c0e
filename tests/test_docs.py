"""docs/methods/ is generated from the code (scripts/gen_docs.py) and must be up to date."""

from __future__ import annotations

import runpy

from prefdata.generators.on_policy import OnPolicyConfig
from prefdata.registry import STAGES

from .conftest import REPO

GEN = runpy.run_path(str(REPO / "scripts" / "gen_docs.py"))


def test_committed_method_docs_are_up_to_date(capsys):
    assert GEN["main"](["--check"]) == 0, capsys.readouterr().out


def test_every_stage_and_scorer_has_a_page_with_config_and_citation():
    pages = {path.name: text for path, text in GEN["expected"]().items()}
    for name in STAGES:
        assert f"{name}.md" in pages
    for name in ("judge", "verifier"):
        assert f"{name}.md" in pages and "```bibtex" in pages[f"{name}.md"]
    page = pages["on_policy.md"]
    assert "| `sampling.temperature` | number | `0.8` | Softmax temperature (0 = greedy) |" in page
    assert "arXiv 2404.14367" in page and "@article{tajwar2024preference" in page


def test_check_fails_when_the_code_changes(monkeypatch, capsys):
    monkeypatch.setattr(OnPolicyConfig.model_fields["n"], "description", "Responses per prompt (changed)")
    assert GEN["main"](["--check"]) == 1
    assert "docs/methods/on_policy.md: out of date" in capsys.readouterr().out
