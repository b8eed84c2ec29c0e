"""Presets: how the common public preference datasets become prefdata rows, by name.

`[source] preset = "hh_rlhf"` (with `path` or `hub`) sets the source's `kind`, its column mapping
and, where a dataset's rows are not one pair each, a row reshaping step; the card gets the
dataset's license and citation. Keys set under `[source.columns]` override the preset's.

Multi-completion rows (Nectar's ranked answers, UltraFeedback's four rated completions,
OASST's ranked sibling replies, HelpSteer2's two responses per prompt) become ONE pair per
prompt: the best-scored completion against the worst (`kind = "completions"`, the
`max_min` rule of `prefdata.schemas.pairing`: no randomness, ties and single completions
are rejected with reason `no_pair`). The pair id is the usual hash of the row id, so it is
stable across runs; rows without an id column get `<split or file stem>-<row>`.

Each preset lists what becomes prompt, chosen, rejected and the scores (`fields`); the README's
"Your data" table is this registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prefdata.schemas.errors import RowError
from prefdata.types import RejectReason, SourceKind

Row = tuple[int, Any, Any]  # (row index, record dict or RowError, raw payload), as readers.iter_records yields


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str  # the dataset's repository on the Hugging Face Hub
    kind: SourceKind
    columns: Mapping[str, Any]  # readers.ColumnMap fields
    license: str  # SPDX-style id as the dataset card gives it
    citation: str  # BibTeX
    fields: Mapping[str, str]  # prompt / chosen / rejected / scores: what each becomes (README table)
    split: str = "train"
    config: str | None = None
    reshape: Callable[[Iterator[Row]], Iterator[Row]] | None = None  # row reshaping before validation
    note: str = ""


def map_rows(fn: Callable[[dict], dict]) -> Callable[[Iterator[Row]], Iterator[Row]]:
    """A per-row reshaping step: `fn(record) -> record`; a `RowError` it raises becomes that row's reject."""

    def reshape(rows: Iterator[Row]) -> Iterator[Row]:
        for index, record, raw in rows:
            if isinstance(record, RowError):
                yield index, record, raw
                continue
            try:
                yield index, fn(record), raw
            except RowError as err:
                yield index, err, raw

    return reshape


def _number(value: Any, where: str) -> float | None:
    """A rating as the datasets store them: a number, a numeric string ("4"), or "N/A"/None (no rating)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None  # "N/A" and the like: not rated
        return number if math.isfinite(number) else None
    raise RowError(RejectReason.WRONG_TYPE, where, f"expected a rating, got {type(value).__name__}")


# --- UltraFeedback (raw): four rated completions per instruction --------------------------------

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _ultrafeedback_row(record: dict) -> dict:
    """Each completion gets `aspects` ({aspect: rating or None}) and `score` (their mean over the rated
    aspects, None when none is rated); the rest of the row is kept as it was."""
    completions = record.get("completions")
    if not isinstance(completions, list):
        return record  # the completions reader reports the missing/wrong column
    out = []
    for j, completion in enumerate(completions):
        if not isinstance(completion, Mapping):
            out.append(completion)
            continue
        annotations = completion.get("annotations") or {}
        aspects = {}
        for aspect in ULTRAFEEDBACK_ASPECTS:
            entry = annotations.get(aspect) if isinstance(annotations, Mapping) else None
            rating = entry.get("Rating") if isinstance(entry, Mapping) else None
            aspects[aspect] = _number(rating, f"completions[{j}].annotations.{aspect}.Rating")
        rated = [v for v in aspects.values() if v is not None]
        out.append({**completion, "aspects": aspects, "score": sum(rated) / len(rated) if rated else None})
    return {**record, "completions": out}


# --- SHP: one row = a post and two comments, `labels` says which one the readers preferred -------

def _shp_row(record: dict) -> dict:
    label = record.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise RowError(RejectReason.WRONG_TYPE, "labels", f"expected 1 (A preferred) or 0 (B preferred), got {label!r}")
    first, second = ("A", "B") if label == 1 else ("B", "A")
    post, a, b = record.get("post_id"), record.get("c_root_id_A"), record.get("c_root_id_B")
    row_id = f"{post}/{a}/{b}" if all(isinstance(x, str) and x for x in (post, a, b)) else None
    return {**record, "id": row_id, "prompt": record.get("history"),
            "chosen": record.get(f"human_ref_{first}"), "rejected": record.get(f"human_ref_{second}"),
            "chosen_score": record.get(f"score_{first}"), "rejected_score": record.get(f"score_{second}")}


# --- HelpSteer2: rows come in runs of responses to the same prompt ------------------------------

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _helpsteer2_groups(rows: Iterator[Row]) -> Iterator[Row]:
    """Consecutive rows with the same prompt (HelpSteer2 stores a prompt's responses next to each
    other and has no prompt id) -> one row {prompt, completions: [{text, score = helpfulness, ...}]}.
    The group's row index is its first row's."""
    group: list[tuple[int, dict]] = []

    def flush() -> Iterator[Row]:
        if group:
            first = group[0][0]
            completions = [{"text": rec.get("response"), "score": rec.get("helpfulness"),
                            **{a: rec.get(a) for a in HELPSTEER2_ATTRIBUTES}} for _, rec in group]
            raw = [rec for _, rec in group]
            yield first, {"prompt": group[0][1].get("prompt"), "completions": completions}, raw
            group.clear()

    for index, record, raw in rows:
        if isinstance(record, RowError):
            yield from flush()
            yield index, record, raw
            continue
        if group and record.get("prompt") != group[0][1].get("prompt"):
            yield from flush()
        group.append((index, record))
    yield from flush()


# --- OASST: message trees, one message per row ---------------------------------------------------

def _oasst_groups(rows: Iterator[Row]) -> Iterator[Row]:
    """oasst1/oasst2 rows are messages of conversation trees (message_id, parent_id, role, text,
    rank). Every prompter message with ranked assistant replies becomes one row: the conversation
    from the root to it is the prompt, the replies (rank 0 = best) the completions. Needs the whole
    split (a reply may come before its parent); the row index is the prompter message's."""
    messages: dict[str, tuple[int, dict]] = {}
    children: dict[str, list[dict]] = {}
    for index, record, raw in rows:
        if isinstance(record, RowError):
            yield index, record, raw
            continue
        message_id = record.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            yield index, RowError(RejectReason.MISSING_FIELD, "message_id", "missing"), raw
            continue
        messages[message_id] = (index, record)
        parent = record.get("parent_id")
        if isinstance(parent, str) and record.get("role") == "assistant" and not record.get("deleted"):
            children.setdefault(parent, []).append(record)
    roles = {"prompter": "user", "assistant": "assistant"}
    for parent_id in sorted(children, key=lambda m: messages[m][0] if m in messages else -1):
        if parent_id not in messages:
            continue
        index, parent = messages[parent_id]
        if parent.get("role") != "prompter":
            continue
        replies = [r for r in children[parent_id] if r.get("rank") is not None]
        if len(replies) < 2:
            continue  # not a ranked comparison: not an example, nothing to reject
        chain, cursor, seen = [], parent, set()
        while cursor is not None and cursor.get("message_id") not in seen:
            seen.add(cursor.get("message_id"))
            chain.append({"role": roles.get(cursor.get("role"), str(cursor.get("role"))), "content": cursor.get("text")})
            up = cursor.get("parent_id")
            cursor = messages[up][1] if isinstance(up, str) and up in messages else None
        chain.reverse()
        completions = [{"text": r.get("text"), "rank": r.get("rank"), "message_id": r.get("message_id")}
                       for r in sorted(replies, key=lambda r: str(r.get("message_id")))]
        yield index, {"id": parent_id, "prompt": chain, "completions": completions, "lang": parent.get("lang")}, parent


# --- the registry --------------------------------------------------------------------------------

_COMPLETIONS = {"prompt": "prompt", "completions": "completions", "completion_text": "text", "completion_score": "score"}

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(
        name="ultrafeedback_binarized", dataset="HuggingFaceH4/ultrafeedback_binarized", kind=SourceKind.PAIRS,
        split="train_prefs",
        columns={"id": "prompt_id", "prompt": None, "chosen": "chosen", "rejected": "rejected",
                 "chosen_score": "score_chosen", "rejected_score": "score_rejected"},
        license="mit",
        fields={"prompt": "the user turn(s) `chosen` and `rejected` share", "chosen": "`chosen`'s final assistant turn",
                "rejected": "`rejected`'s final assistant turn", "scores": "`score_chosen`, `score_rejected`"},
        citation="""@inproceedings{cui2024ultrafeedback,
  title={{ULTRAFEEDBACK}: Boosting Language Models with Scaled {AI} Feedback},
  author={Cui, Ganqu and Yuan, Lifan and Ding, Ning and Yao, Guanming and He, Bingxiang and Zhu, Wei and Ni, Yuan and Xie, Guotong and Xie, Ruobing and Lin, Yankai and Liu, Zhiyuan and Sun, Maosong},
  booktitle={ICML}, year={2024}
}
@misc{tunstall2023zephyr,
  title={Zephyr: Direct Distillation of {LM} Alignment},
  author={Tunstall, Lewis and Beeching, Edward and Lambert, Nathan and Rajani, Nazneen and Rasul, Kashif and Belkada, Younes and Huang, Shengyi and von Werra, Leandro and Fourrier, Cl{\\'e}mentine and Habib, Nathan and Sarrazin, Nathan and Sanseviero, Omar and Rush, Alexander M. and Wolf, Thomas},
  year={2023}, eprint={2310.16944}, archivePrefix={arXiv}
}"""),
    Preset(
        name="ultrafeedback", dataset="openbmb/UltraFeedback", kind=SourceKind.COMPLETIONS,
        columns={**_COMPLETIONS, "id": None, "prompt": "instruction", "completion_text": "response"},
        reshape=map_rows(_ultrafeedback_row), license="mit",
        fields={"prompt": "`instruction`", "chosen": "the completion with the highest mean aspect rating",
                "rejected": "the completion with the lowest", "scores": "mean of the four `annotations.*.Rating` "
                "(helpfulness, honesty, instruction_following, truthfulness; `N/A` skipped)"},
        note="Each completion also gets `aspects.<aspect>`: map `completion_score = \"aspects.helpfulness\"` to rank by one aspect.",
        citation="""@inproceedings{cui2024ultrafeedback,
  title={{ULTRAFEEDBACK}: Boosting Language Models with Scaled {AI} Feedback},
  author={Cui, Ganqu and Yuan, Lifan and Ding, Ning and Yao, Guanming and He, Bingxiang and Zhu, Wei and Ni, Yuan and Xie, Guotong and Xie, Ruobing and Lin, Yankai and Liu, Zhiyuan and Sun, Maosong},
  booktitle={ICML}, year={2024}
}"""),
    Preset(
        name="hh_rlhf", dataset="Anthropic/hh-rlhf", kind=SourceKind.HH, columns={"id": None}, license="mit",
        fields={"prompt": "the transcript's turns before the final `Assistant:` turn",
                "chosen": "`chosen`'s final Assistant turn", "rejected": "`rejected`'s final Assistant turn", "scores": "none"},
        citation="""@article{bai2022training,
  title={Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback},
  author={Bai, Yuntao and Jones, Andy and Ndousse, Kamal and Askell, Amanda and Chen, Anna and DasSarma, Nova and Drain, Dawn and Fort, Stanislav and Ganguli, Deep and Henighan, Tom and others},
  journal={arXiv preprint arXiv:2204.05862}, year={2022}
}"""),
    Preset(
        name="shp", dataset="stanfordnlp/SHP", kind=SourceKind.PAIRS,
        columns={"id": "id", "prompt": "prompt", "chosen": "chosen", "rejected": "rejected",
                 "chosen_score": "chosen_score", "rejected_score": "rejected_score"},
        reshape=map_rows(_shp_row), license="unknown",
        fields={"prompt": "`history` (the post)", "chosen": "`human_ref_A` if `labels` = 1 else `human_ref_B`",
                "rejected": "the other comment", "scores": "the comments' upvotes (`score_A`/`score_B`)"},
        note="Row id: `post_id/c_root_id_A/c_root_id_B` (a post has several comment pairs). The card gives no license; "
             "the data is Reddit content, see the dataset card.",
        citation="""@inproceedings{ethayarajh2022understanding,
  title={Understanding Dataset Difficulty with $\\mathcal{V}$-Usable Information},
  author={Ethayarajh, Kawin and Choi, Yejin and Swayamdipta, Swabha},
  booktitle={ICML}, year={2022}
}"""),
    Preset(
        name="nectar", dataset="berkeley-nest/Nectar", kind=SourceKind.COMPLETIONS,
        columns={**_COMPLETIONS, "id": None, "completions": "answers", "completion_text": "answer",
                 "completion_score": "rank", "lower_score_is_better": True},
        license="apache-2.0",
        fields={"prompt": "`prompt` (an HH-style transcript ending in `Assistant:`)", "chosen": "the answer ranked 1",
                "rejected": "the answer ranked last", "scores": "minus the GPT-4 `rank` (higher is better)"},
        citation="""@misc{starling2023,
  title={Starling-7B: Improving LLM Helpfulness \\& Harmlessness with RLAIF},
  author={Zhu, Banghua and Frick, Evan and Wu, Tianhao and Zhu, Hanlin and Jiao, Jiantao},
  year={2023}, month={November}
}"""),
    Preset(
        name="skywork_preference", dataset="Skywork/Skywork-Reward-Preference-80K-v0.2", kind=SourceKind.PAIRS,
        columns={"id": None, "prompt": None, "chosen": "chosen", "rejected": "rejected"}, license="other",
        fields={"prompt": "the turns `chosen` and `rejected` share", "chosen": "`chosen`'s final assistant turn",
                "rejected": "`rejected`'s final assistant turn", "scores": "none"},
        note="License: the Skywork community license (see the dataset card).",
        citation="""@article{liu2024skywork,
  title={Skywork-Reward: Bag of Tricks for Reward Modeling in LLMs},
  author={Liu, Chris Yuhao and Zeng, Liang and Liu, Jiacai and Yan, Rui and He, Jujie and Wang, Chaojie and Yan, Shuicheng and Liu, Yang and Zhou, Yahui},
  journal={arXiv preprint arXiv:2410.18451}, year={2024}
}"""),
    Preset(
        name="oasst", dataset="OpenAssistant/oasst1", kind=SourceKind.COMPLETIONS,
        columns={**_COMPLETIONS, "id": "id", "completion_score": "rank", "lower_score_is_better": True},
        reshape=_oasst_groups, license="apache-2.0",
        fields={"prompt": "the conversation from the tree's root to a prompter message",
                "chosen": "its assistant reply ranked 0", "rejected": "its lowest-ranked reply",
                "scores": "minus the reply `rank`"},
        note="Rows are messages; a prompter message with two or more ranked replies is one example (id: its "
             "`message_id`). Reads the whole split before the first row (replies may precede parents). Works for oasst2.",
        citation="""@inproceedings{kopf2023openassistant,
  title={{OpenAssistant} Conversations -- Democratizing Large Language Model Alignment},
  author={K{\\"o}pf, Andreas and Kilcher, Yannic and von R{\\"u}tte, Dimitri and Anagnostidis, Sotiris and Tam, Zhi-Rui and Stevens, Keith and Barhoum, Abdullah and Duc, Nguyen Minh and Stanley, Oliver and Nagyfi, Rich{\\'a}rd and others},
  booktitle={NeurIPS Datasets and Benchmarks}, year={2023}
}"""),
    Preset(
        name="helpsteer2", dataset="nvidia/HelpSteer2", kind=SourceKind.COMPLETIONS,
        columns={**_COMPLETIONS, "id": None}, reshape=_helpsteer2_groups, license="cc-by-4.0",
        fields={"prompt": "`prompt`", "chosen": "the response with the higher `helpfulness`",
                "rejected": "the other response to the same prompt",
                "scores": "`helpfulness` (0-4); ties are rejected (`no_pair`)"},
        note="A prompt's responses are consecutive rows (HelpSteer2 has no prompt id); the row id is "
             "`<split>-<first row>`. Map `completion_score` to another attribute (correctness, ...) to rank by it.",
        citation="""@article{wang2024helpsteer2,
  title={{HelpSteer2}: Open-source dataset for training top-performing reward models},
  author={Wang, Zhilin and Dong, Yi and Delalleau, Olivier and Zeng, Jiaqi and Shen, Gerald and Egert, Daniel and Zhang, Jimmy J. and Sreedhar, Makesh Narsimhan and Kuchaiev, Oleksii},
  journal={arXiv preprint arXiv:2406.08673}, year={2024}
}"""),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None

