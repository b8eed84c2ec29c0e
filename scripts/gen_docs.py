"""Generate docs/methods/<name>.md, one page per stage (generator, filter) and scorer, from the code:
the module and class docstrings, the typed config's fields with their descriptions and defaults,
the columns a stage reads and adds, and the method's BibTeX `CITATION`.

    python scripts/gen_docs.py           # (re)write docs/methods/
    python scripts/gen_docs.py --check   # exit 1 and name the pages that are out of date

tests/test_docs.py runs the check, so a docstring or config change without regenerated docs fails.
"""

from __future__ import annotations

import enum
import inspect
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "methods"
sys.path.insert(0, str(REPO))  # document this checkout's prefdata, not an installed one


@dataclass
class Entry:
    name: str  # the `type` a recipe writes
    kind: str  # generator | filter | scorer | stage
    config: type[BaseModel]
    impl: type | None  # the Stage or Scorer class

    @property
    def module(self) -> Any:
        return sys.modules[(self.impl or self.config).__module__]

    @property
    def page(self) -> str:
        return page_name(self.name, self.kind)


def _stage_names() -> set[str]:
    """Stages implemented outside `prefdata.scorers` (the `score` stage is itself a scorer's page)."""
    from prefdata.registry import STAGES

    return {name for name, (_config, impl) in STAGES.items() if ".scorers." not in impl.__module__}


def page_name(name: str, kind: str) -> str:
    """`<name>.md`; a scorer named like a stage (the `flr` scorer and generator) gets `<name>_scorer.md`."""
    return f"{name}_scorer.md" if kind == "scorer" and name in _stage_names() else f"{name}.md"


def _kind(module_name: str, default: str) -> str:
    for part, kind in ((".generators.", "generator"), (".filters.", "filter"), (".scorers.", "scorer")):
        if part in module_name + ".":
            return kind
    return default


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _union_members(args[0])
    if args:
        return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _type_default(config: type[BaseModel]) -> str | None:
    field = config.model_fields.get("type")
    return field.default if field is not None and isinstance(field.default, str) else None


def entries() -> list[Entry]:
    from prefdata.registry import STAGES
    from prefdata.scorers import ScorerConfig
    from prefdata.scorers.base import PairScorer, Scorer

    found = [Entry(name, _kind(impl.__module__, "stage"), config, impl) for name, (config, impl) in STAGES.items()]
    for config in _union_members(ScorerConfig):
        name = _type_default(config)
        if name is None or any(e.name == name and e.kind == "scorer" for e in found):
            continue
        module = sys.modules[config.__module__]
        impls = [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, (Scorer, PairScorer))
                 and obj not in (Scorer, PairScorer) and getattr(obj, "name", None) == name]
        found.append(Entry(name, "scorer", config, impls[0] if impls else None))
    return sorted(found, key=lambda e: (e.kind, e.name))


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, set, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f'"{m.value}"' for m in annotation)
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return f'`type = "{value.type}"`' if hasattr(value, "type") else "(table below)"
    if isinstance(value, enum.Enum):
        value = value.value
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > 90:
        text = text[:89] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _rows(config: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in config.model_fields.items():
        members = _union_members(field.annotation)
        if name == "type" and not prefix:
            continue
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        if len(members) == 1 and not typing.get_args(field.annotation):  # a nested table: its own rows
            rows.append(f"| `{prefix}{name}` | table | | {description} |")
            rows += _rows(members[0], f"{prefix}{name}.")
            continue
        type_text = _type_name(field.annotation)
        if len(members) > 1:
            links = ", ".join(f"[`{_type_default(m)}`]({page_name(_type_default(m), _kind(m.__module__, 'stage'))})"
                              for m in members if _type_default(m))
            type_text = f"table: one of {links}"
        rows.append(f"| `{prefix}{name}` | {type_text} | {_default(field)} | {description} |")
    return rows


def render(entry: Entry) -> str:
    source = Path(inspect.getfile(entry.module)).resolve().relative_to(REPO)
    module_doc = inspect.cleandoc(entry.module.__doc__ or "")
    impl_doc = inspect.cleandoc(entry.impl.__doc__) if entry.impl is not None and entry.impl.__doc__ else ""
    lines = [f"<!-- generated by scripts/gen_docs.py from {source.as_posix()}: edit the docstrings, not this file -->",
             f"# `{entry.name}` ({entry.kind})", "", module_doc]
    if impl_doc and impl_doc not in module_doc and not impl_doc.startswith("One step of a build"):
        lines += ["", impl_doc]
    from prefdata.registry import STAGES

    is_stage = entry.name in STAGES and STAGES[entry.name][0] is entry.config  # a stage, wherever its module lives
    table = "[[stages]]" if is_stage else "[stages.scorer]"
    lines += ["", "## In a recipe", "", "```toml", table, f'type = "{entry.name}"', "```", "",
              f"## Configuration (`{entry.config.__name__}`)", "",
              "| field | type | default | description |", "|---|---|---|---|", *_rows(entry.config)]
    reads, adds = getattr(entry.impl, "reads", None), getattr(entry.impl, "adds", None)
    if reads is not None or adds is not None:
        verb = "replaces the table with" if getattr(entry.impl, "replaces_columns", False) else "adds"
        lines += ["", "## Columns", "", f"- reads: {', '.join(f'`{c}`' for c in reads or ()) or 'nothing'}",
                  f"- {verb}: {', '.join(f'`{c}`' for c in adds or ()) or 'nothing'}"]
    citation = getattr(entry.impl, "citation", None) or getattr(entry.module, "CITATION", None)
    lines += ["", "## Citation", ""]
    lines += ["```bibtex", citation.strip(), "```"] if citation else ["No paper: a prefdata building block."]
    return "\n".join(lines) + "\n"


def render_index(all_entries: list[Entry]) -> str:
    lines = ["<!-- generated by scripts/gen_docs.py: edit the docstrings, not this file -->", "# Methods", "",
             "One page per generator, filter and scorer, generated from the code (`python scripts/gen_docs.py`).", "",
             "| name | kind | what it does |", "|---|---|---|"]
    for entry in all_entries:
        summary = (inspect.cleandoc(entry.module.__doc__ or "").splitlines() or [""])[0].replace("|", "\\|")
        lines.append(f"| [`{entry.name}`]({entry.page}) | {entry.kind} | {summary} |")
    return "\n".join(lines) + "\n"


def expected() -> dict[Path, str]:
    all_entries = entries()
    pages = {DOCS / entry.page: render(entry) for entry in all_entries}
    pages[DOCS / "README.md"] = render_index(all_entries)
    return pages


def main(argv: list[str]) -> int:
    pages = expected()
    if "--check" in argv:
        stale = [p for p, text in pages.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
        extra = [p for p in DOCS.glob("*.md") if p not in pages]
        for path in stale + extra:
            print(f"{path.relative_to(REPO)}: out of date; run python scripts/gen_docs.py")
        return 1 if stale or extra else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for path in DOCS.glob("*.md"):
        if path not in pages:
            path.unlink()
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(pages)} pages to {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
