"""The dataset card (README.md) a push writes: YAML metadata the Hub and `datasets` read, and a
body that makes the dataset reproducible from the card alone.

Metadata: `configs` (data files per split), `dataset_info` (features, split sizes), `license`,
`task_categories`, `tags`, `pretty_name`, `size_categories`. The `configs` and `dataset_info`
blocks are written by `datasets`' own helpers, so `datasets.load_dataset` reads them exactly as
it reads a card `Dataset.push_to_hub` wrote; entries of other configs already on the Hub are kept.

Body, per config (between `<!-- prefdata:config NAME -->` markers, so pushing one config keeps
the others' sections): rows in/out per stage, drops by reason, the label-noise estimate
(`stats.json` `estimates.flip_rate`: `{"epsilon", "interval", "method"}`), judge
position-consistency (any `position_consistency` entry in stats), the models used
(`stats.json` `engines`), BibTeX for every method the build ran (stage and scorer `citation`
constants, recorded in `stats.json` `methods` at build time), and the resolved recipe.

The card never holds a credential: `hub.push_to_hub` refuses to upload a card or file that
contains the token it authenticates with.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prefdata._version import __version__

MARK_START = "<!-- prefdata:config {name} -->"
MARK_END = "<!-- /prefdata:config {name} -->"
_SECTION = re.compile(r"<!-- prefdata:config (?P<name>[^ ]+) -->\n.*?<!-- /prefdata:config (?P=name) -->\n?", re.DOTALL)
DEFAULT_TAGS = ("prefdata", "dpo", "preference")


@dataclass(frozen=True)
class MethodCitation:
    name: str  # stage or scorer name as a recipe spells it
    kind: str  # "stage" or "scorer"
    summary: str  # first line of the method's docstring
    bibtex: str | None


@dataclass(frozen=True)
class SplitInfo:
    name: str
    rows: int
    num_bytes: int  # Arrow (in-memory) bytes, as datasets reports `num_bytes`
    download_bytes: int  # Parquet bytes on the Hub
    files: tuple[str, ...]  # paths in the repository


def summary_of(obj: Any) -> str:
    """First line of a class's docstring, else of its module's."""
    doc = inspect.getdoc(obj) if obj.__doc__ else None
    if not doc:
        doc = sys.modules[obj.__module__].__doc__ or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _scorers_in(obj: Any, depth: int = 0) -> Iterator[Any]:
    """Scorer instances held by a stage or scorer (ensembles hold members), depth-first."""
    from prefdata.scorers.base import PairScorer, Scorer  # lazy: the scorers package imports every scorer

    if depth > 3:
        return
    values: Iterable[Any] = vars(obj).values() if hasattr(obj, "__dict__") else ()
    for value in values:
        items = value if isinstance(value, (list, tuple)) else value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, (Scorer, PairScorer)):
                if not getattr(item, "is_adapter", False):  # an adapter (PointwisePairs) is cited as what it wraps
                    yield item
                yield from _scorers_in(item, depth + 1)


def method_citations(stages: Iterable[Any]) -> list[MethodCitation]:
    """Every method a build's stages run (each stage, the scorers it holds), each once, with its
    BibTeX. The builder records them in stats.json (`methods`) when it builds; the card reads them
    from there (`recorded_methods`), so it cites what really ran, not what today's registry makes
    of the recipe."""
    found: dict[tuple[str, str], MethodCitation] = {}

    def add(name: str, kind: str, obj: Any) -> None:
        """`obj` is a stage/scorer instance; an instance may set its own `citation`."""
        cls = type(obj)
        if (kind, name) not in found:
            bibtex = getattr(obj, "citation", None) or getattr(sys.modules[cls.__module__], "CITATION", None)
            found[(kind, name)] = MethodCitation(name, kind, summary_of(cls), bibtex)

    for stage in stages:
        add(stage.name, "stage", stage)
        for scorer in _scorers_in(stage):
            add(scorer.name, "scorer", scorer)
    return list(found.values())


def recorded_methods(stats: dict[str, Any]) -> list[MethodCitation]:
    """The methods stats.json recorded at build time (none for a build made before they were recorded)."""
    fields = ("name", "kind", "summary", "bibtex")
    return [MethodCitation(**{k: entry.get(k) for k in fields}) for entry in stats.get("methods") or []
            if isinstance(entry, dict) and entry.get("name")]


def size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if rows < limit:
            return label
    return "100M<n<1B"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _find_key(value: Any, needle: str, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            if needle in str(key):
                yield child_path, child
            else:
                yield from _find_key(child, needle, child_path)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            name = child.get("name", i) if isinstance(child, dict) else i
            yield from _find_key(child, needle, f"{path}[{name}]")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _counts_section(stats: dict[str, Any], splits: list[SplitInfo]) -> list[str]:
    out = ["### Counts", ""]
    rows: list[list[Any]] = []
    source = stats.get("source") or {}
    if source:
        dropped = sum((source.get("drops") or {}).values())
        rows.append([f"read `{source.get('kind', '?')}`", source.get("rows_read", "?"), source.get("rows_ok", "?"), dropped])
    for index, stage in enumerate(stats.get("stages") or []):
        rows.append([f"{index}: `{stage['name']}`", stage.get("rows_in"), stage.get("rows_out"),
                     sum((stage.get("drops") or {}).values())])
    out.append(_table(["step", "rows in", "rows out", "rows dropped"], rows))
    output = stats.get("output") or {}
    split_text = ", ".join(f"{s.name}: {s.rows}" for s in splits)
    out += ["", f"Output: {output.get('rows', sum(s.rows for s in splits))} pairs ({split_text}); "
                f"{output.get('rejects', 0)} rows set aside in `rejects.parquet` (not uploaded)."]
    drops = [["read", reason, n] for reason, n in (source.get("drops") or {}).items()]
    for stage in stats.get("stages") or []:
        drops += [[stage["name"], reason, n] for reason, n in (stage.get("drops") or {}).items()]
    out += ["", "### Drops by reason", ""]
    out.append(_table(["where", "reason", "rows"], drops) if drops else "No row was dropped.")
    counters = [[stage["name"], key, n] for stage in stats.get("stages") or [] for key, n in (stage.get("counters") or {}).items()]
    if counters:
        out += ["", "<details><summary>Stage counters</summary>", "", _table(["stage", "counter", "value"], counters),
                "", "</details>"]
    return out


def _source_section(stats: dict[str, Any]) -> list[str]:
    """Where the rows came from: the Hub dataset and the commit read, the preset, the source's license
    and citation (`stats.json` `source`, set by `prefdata.schemas.sources`)."""
    source = stats.get("source") or {}
    entries = source.get("sources") or [source]
    if not any(e.get("hub") or e.get("preset") for e in entries):
        return []
    rows, citations = [], []
    for e in entries:
        where = f"`{e['hub']}` @ `{e.get('revision')}` ({e.get('config') or 'default'}/{e.get('split')})" if e.get("hub") \
            else f"`{e.get('path') or '?'}`"
        rows.append([e.get("name") or "input", where, e.get("preset") or "", e.get("license") or "", e.get("selected", e.get("rows_ok", ""))])
        if e.get("citation") and e["citation"].strip() not in citations:
            citations.append(e["citation"].strip())
    out = ["", "### Source data", "", _table(["source", "read from", "preset", "license", "rows"], rows)]
    if citations:
        out += ["", "The source data's own citation:", "", "```bibtex", "\n\n".join(citations), "```"]
    return out


def _estimates_section(stats: dict[str, Any]) -> list[str]:
    out: list[str] = []
    flip = (stats.get("estimates") or {}).get("flip_rate")
    if flip:
        out += ["", "### Label noise", ""]
        for est in flip if isinstance(flip, list) else [flip]:
            interval = est.get("interval")
            span = f", interval [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else ""
            out.append(f"- Estimated flip rate ε = {_fmt(est.get('epsilon'))}{span} (method: {est.get('method', '?')}).")
            for name, other in (est.get("estimators") or {}).items():  # every estimator the noise filter ran
                bounds = other.get("interval")
                value = _fmt(other["epsilon"]) if other.get("epsilon") is not None else f"n/a ({other.get('error', '')})"
                out.append(f"  - `{name}`: ε = {value}" + (f", interval [{_fmt(bounds[0])}, {_fmt(bounds[1])}]" if bounds else ""))
        out.append("- A robust DPO loss (cDPO / rDPO) can take ε as its label-noise rate.")
    consistency = list(_find_key(stats, "position_consisten"))
    if consistency:
        out += ["", "### Judge position consistency", ""]
        out += [f"- `{path}`: {_fmt(value)}" for path, value in consistency]
    return out


def _models_section(stats: dict[str, Any]) -> list[str]:
    engines = stats.get("engines") or {}
    if not engines:
        return []
    keys = sorted({k for identity in engines.values() for k in identity})
    rows = [[name] + [_fmt(identity.get(k, "")) for k in keys] for name, identity in sorted(engines.items())]
    return ["", "### Models", "", _table(["engine", *keys], rows)]


def _citations_section(methods: list[MethodCitation]) -> list[str]:
    if not methods:
        return []
    out = ["", "### Methods", ""]
    out += [f"- `{m.name}` ({m.kind}): {m.summary}" for m in methods]
    seen: list[str] = []
    for m in methods:
        if m.bibtex and m.bibtex.strip() not in seen:
            seen.append(m.bibtex.strip())
    if seen:
        out += ["", "If you use this dataset, please cite the methods that built it:", "", "```bibtex",
                "\n\n".join(seen), "```"]
    return out


def config_section(config_name: str, recipe: dict[str, Any], stats: dict[str, Any], splits: list[SplitInfo],
                   methods: list[MethodCitation], test_size: float = 0.0) -> str:
    """The body section of one config, between its markers."""
    lines = [MARK_START.format(name=config_name), f"## Config `{config_name}`", ""]
    name = recipe.get("name", stats.get("recipe", "?"))
    description = recipe.get("description") or ""
    lines.append(f"Recipe `{name}`" + (f": {description}" if description else "") + f" (seed {recipe.get('seed', 0)}).")
    if test_size:
        lines.append(f"Split: a prompt's pairs all go to `test` with probability {test_size} "
                     "(hash of the recipe seed and the prompt id), else to `train`.")
    lines.append("")
    lines += _source_section(stats)
    lines += _counts_section(stats, splits)
    lines += _estimates_section(stats)
    lines += _models_section(stats)
    lines += _citations_section(methods)
    lines += ["", "### Recipe", "", "The resolved recipe (`prefdata build` reads it back as JSON):", "", "```json",
              json.dumps(recipe, indent=2, ensure_ascii=False), "```", "", MARK_END.format(name=config_name), ""]
    return "\n".join(lines)


def _header(repo_id: str, pretty_name: str, description: str, config_names: list[str]) -> str:
    load = [f'ds = load_dataset("{repo_id}")'] if config_names == ["default"] else \
        [f'ds = load_dataset("{repo_id}", "{name}")' for name in config_names]
    return "\n".join([
        f"# {pretty_name}", "",
        *([description, ""] if description else []),
        f"Preference pairs (prompt, chosen, rejected) built with prefdata {__version__}. `prompt`, `chosen` and "
        "`rejected` are chats (lists of `{role, content}`): TRL's conversational preference format, read by "
        "`DPOTrainer` as it is; `chosen_score`, `rejected_score` and `margin` are the scorer's values, and "
        "further columns come from curation filters.", "",
        "```python", "from datasets import load_dataset", "", *load, "```", "",
    ])


def render_body(repo_id: str, pretty_name: str, description: str, section: str, config_name: str,
                existing_body: str | None) -> str:
    """The card body: a fresh header, then every config's section (others' kept as they were)."""
    sections = {m.group("name"): m.group(0).rstrip("\n") + "\n" for m in _SECTION.finditer(existing_body or "")}
    sections[config_name] = section
    names = sorted(sections)
    return _header(repo_id, pretty_name, description, names) + "\n".join(sections[n] for n in names)


def render_card(*, repo_id: str, config_name: str, recipe: dict[str, Any], stats: dict[str, Any], features: Any,
                splits: list[SplitInfo], license: str, tags: list[str], task_categories: list[str],
                pretty_name: str | None, test_size: float = 0.0, existing: str | None = None) -> str:
    """README.md text: YAML metadata (merged into `existing` card's if given) and the body."""
    from datasets import DatasetInfo, Split, SplitDict
    from datasets import SplitInfo as HfSplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    old = DatasetCard(existing) if existing and existing.startswith("---") else None
    data = old.data if old is not None else DatasetCardData()
    pretty = pretty_name or data.get("pretty_name") or recipe.get("name") or repo_id.split("/")[-1]
    data["pretty_name"] = pretty
    data["license"] = license
    data["task_categories"] = sorted(set(data.get("task_categories") or []) | set(task_categories))
    data["tags"] = sorted(set(data.get("tags") or []) | set(DEFAULT_TAGS) | set(tags))
    total = sum(s.rows for s in splits)
    data["size_categories"] = [size_category(total)]
    MetadataConfigs({config_name: {"data_files": [{"split": s.name, "path": _pattern(s.files)} for s in splits]}}
                    ).to_dataset_card_data(data)
    split_dict = SplitDict()
    for s in splits:
        split_dict.add(HfSplitInfo(name=str(Split(s.name)), num_bytes=s.num_bytes, num_examples=s.rows))
    info = DatasetInfo(features=features, splits=split_dict, download_size=sum(s.download_bytes for s in splits),
                       dataset_size=sum(s.num_bytes for s in splits))
    DatasetInfosDict({config_name: info}).to_dataset_card_data(data)
    methods = recorded_methods(stats)
    section = config_section(config_name, recipe, stats, splits, methods, test_size)
    body = render_body(repo_id, pretty, recipe.get("description") or "", section, config_name,
                       old.text if old is not None else None)
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _pattern(files: tuple[str, ...]) -> str:
    """`data/train-*` for `data/train-00000.parquet, data/train-00001.parquet, ...`."""
    folder, _, name = files[0].rpartition("/")
    stem = name.split("-")[0]
    return f"{folder}/{stem}-*" if folder else f"{stem}-*"
