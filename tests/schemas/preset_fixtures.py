"""Small files in the real schemas of the public preference datasets (types and nesting as their
dataset cards' `dataset_info.features` give them), for the preset tests and the Hub source tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGES = pa.list_(pa.struct([pa.field("content", pa.string()), pa.field("role", pa.string())]))


def chat(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"content": text, "role": roles[i % 2]} for i, text in enumerate(turns)]


# HuggingFaceH4/ultrafeedback_binarized (split train_prefs)
ULTRAFEEDBACK_BINARIZED = pa.schema([
    ("prompt", pa.string()), ("prompt_id", pa.string()), ("chosen", MESSAGES), ("rejected", MESSAGES),
    ("messages", MESSAGES), ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
])


def ultrafeedback_binarized_rows() -> list[dict]:
    return [
        {"prompt": "Name a prime number.", "prompt_id": "a1f3", "chosen": chat("Name a prime number.", "7 is prime."),
         "rejected": chat("Name a prime number.", "8."), "messages": chat("Name a prime number.", "7 is prime."),
         "score_chosen": 9.0, "score_rejected": 3.5},
        {"prompt": "Say hi.", "prompt_id": "b2c4", "chosen": chat("Say hi.", "Hi!"), "rejected": chat("Say hi.", "Hello."),
         "messages": chat("Say hi.", "Hi!"), "score_chosen": 8.0, "score_rejected": 7.0},
        # the same response on both sides: rejected with a reason
        {"prompt": "Same?", "prompt_id": "c3d5", "chosen": chat("Same?", "Yes."), "rejected": chat("Same?", "Yes."),
         "messages": chat("Same?", "Yes."), "score_chosen": 5.0, "score_rejected": 5.0},
    ]


# openbmb/UltraFeedback (raw): ratings are strings, "N/A" when not rated
_RATED = pa.struct([pa.field("Rating", pa.string()), pa.field("Rationale", pa.string())])
_RATED_TYPED = pa.struct([pa.field("Rating", pa.string()), pa.field("Rationale", pa.string()),
                          pa.field("Rationale For Rating", pa.string()), pa.field("Type", pa.list_(pa.string()))])
UF_COMPLETION = pa.struct([
    pa.field("annotations", pa.struct([pa.field("helpfulness", _RATED_TYPED), pa.field("honesty", _RATED),
                                       pa.field("instruction_following", _RATED), pa.field("truthfulness", _RATED_TYPED)])),
    pa.field("critique", pa.string()), pa.field("custom_system_prompt", pa.string()),
    pa.field("fine-grained_score", pa.float64()), pa.field("model", pa.string()), pa.field("overall_score", pa.float64()),
    pa.field("principle", pa.string()), pa.field("response", pa.string()),
])
ULTRAFEEDBACK = pa.schema([
    ("source", pa.string()), ("instruction", pa.string()), ("models", pa.list_(pa.string())),
    ("completions", pa.list_(UF_COMPLETION)), ("correct_answers", pa.list_(pa.string())),
    ("incorrect_answers", pa.list_(pa.string())),
])


def uf_completion(response: str, model: str, ratings: tuple[str, str, str, str]) -> dict:
    h, o, i, t = ratings
    typed = lambda r: {"Rating": r, "Rationale": "because", "Rationale For Rating": "since", "Type": ["1"]}  # noqa: E731
    return {"annotations": {"helpfulness": typed(h), "honesty": {"Rating": o, "Rationale": "r"},
                            "instruction_following": {"Rating": i, "Rationale": "r"}, "truthfulness": typed(t)},
            "critique": "ok", "custom_system_prompt": "Be helpful.", "fine-grained_score": 0.0, "model": model,
            "overall_score": 5.0, "principle": "helpfulness", "response": response}


def ultrafeedback_rows() -> list[dict]:
    return [
        {"source": "evol_instruct", "instruction": "Write a haiku about rain.", "models": ["a", "b", "c", "d"],
         "completions": [uf_completion("Rain taps the window.", "a", ("4", "5", "4", "5")),       # mean 4.5
                         uf_completion("It is raining.", "b", ("2", "3", "2", "N/A")),            # mean 7/3
                         uf_completion("Soft rain, grey sky, home.", "c", ("5", "5", "5", "5")),  # mean 5: best
                         uf_completion("Rain.", "d", ("1", "2", "1", "2"))],                      # mean 1.5: worst
         "correct_answers": [], "incorrect_answers": []},
        {"source": "flan", "instruction": "2+2?", "models": ["a"],
         "completions": [uf_completion("4", "a", ("5", "5", "5", "5"))], "correct_answers": ["4"], "incorrect_answers": []},
    ]


# Anthropic/hh-rlhf: JSON lines of two transcripts
def hh_rlhf_rows() -> list[dict]:
    return [
        {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
         "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I don't know."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: No."},
    ]


# stanfordnlp/SHP
SHP = pa.schema([
    ("post_id", pa.string()), ("domain", pa.string()), ("upvote_ratio", pa.float64()), ("history", pa.string()),
    ("c_root_id_A", pa.string()), ("c_root_id_B", pa.string()), ("created_at_utc_A", pa.int64()),
    ("created_at_utc_B", pa.int64()), ("score_A", pa.int64()), ("score_B", pa.int64()), ("human_ref_A", pa.string()),
    ("human_ref_B", pa.string()), ("labels", pa.int64()), ("seconds_difference", pa.float64()), ("score_ratio", pa.float64()),
])


def shp_row(post: str, a: str, b: str, label: int, score_a: int, score_b: int) -> dict:
    return {"post_id": post, "domain": "askscience_train", "upvote_ratio": 0.95, "history": f"Question of {post}?",
            "c_root_id_A": a, "c_root_id_B": b, "created_at_utc_A": 1_600_000_100, "created_at_utc_B": 1_600_000_000,
            "score_A": score_a, "score_B": score_b, "human_ref_A": f"Comment {a}.", "human_ref_B": f"Comment {b}.",
            "labels": label, "seconds_difference": 100.0, "score_ratio": max(score_a, score_b) / min(score_a, score_b)}


def shp_rows() -> list[dict]:
    return [shp_row("p1", "ca", "cb", 1, 40, 10),   # A preferred
            shp_row("p1", "cc", "cb", 0, 3, 12),    # same post, another pair: B preferred
            shp_row("p2", "cd", "ce", 2, 5, 1)]     # a label SHP never has: rejected


# berkeley-nest/Nectar
NECTAR = pa.schema([
    ("prompt", pa.string()),
    ("answers", pa.list_(pa.struct([pa.field("answer", pa.string()), pa.field("model", pa.string()),
                                    pa.field("rank", pa.float64())]))),
    ("turns", pa.int64()), ("num_responses", pa.int64()), ("source", pa.list_(pa.string())), ("good_natured", pa.bool_()),
])


def nectar_rows() -> list[dict]:
    return [
        {"prompt": "\n\nHuman: Give me a color.\n\nAssistant:", "turns": 1, "num_responses": 3, "source": ["sharegpt"],
         "good_natured": True,
         "answers": [{"answer": "Blue.", "model": "gpt-4", "rank": 2.0}, {"answer": "Teal, a calm blue-green.", "model": "claude", "rank": 1.0},
                     {"answer": "Car.", "model": "llama", "rank": 3.0}]},
        {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:", "turns": 2, "num_responses": 2,
         "source": ["lmsys-chat-1m"], "good_natured": True,
         "answers": [{"answer": "Goodbye!", "model": "gpt-4", "rank": 1.0}, {"answer": "What?", "model": "llama", "rank": 2.0}]},
    ]


# Skywork/Skywork-Reward-Preference-80K-v0.2
SKYWORK = pa.schema([("chosen", MESSAGES), ("rejected", MESSAGES), ("source", pa.string())])


def skywork_rows() -> list[dict]:
    return [{"chosen": chat("Sort [3,1,2].", "[1, 2, 3]"), "rejected": chat("Sort [3,1,2].", "[3, 2, 1]"), "source": "magpie_ultra"},
            {"chosen": chat("Hi", "Hello", "Name?", "I'm an assistant."),
             "rejected": chat("Hi", "Hello", "Name?", "Bob."), "source": "wildguard"}]


# OpenAssistant/oasst1: one message per row
OASST = pa.schema([
    ("message_id", pa.string()), ("parent_id", pa.string()), ("user_id", pa.string()), ("created_date", pa.string()),
    ("text", pa.string()), ("role", pa.string()), ("lang", pa.string()), ("review_count", pa.int32()),
    ("review_result", pa.bool_()), ("deleted", pa.bool_()), ("rank", pa.int32()), ("synthetic", pa.bool_()),
    ("model_name", pa.string()),
    ("detoxify", pa.struct([pa.field("toxicity", pa.float64()), pa.field("insult", pa.float64())])),
    ("message_tree_id", pa.string()), ("tree_state", pa.string()),
    ("emojis", pa.struct([pa.field("name", pa.list_(pa.string())), pa.field("count", pa.list_(pa.int32()))])),
    ("labels", pa.struct([pa.field("name", pa.list_(pa.string())), pa.field("value", pa.list_(pa.float64())),
                          pa.field("count", pa.list_(pa.int32()))])),
])


def oasst_message(mid: str, parent: str | None, role: str, text: str, rank: int | None, deleted: bool = False) -> dict:
    return {"message_id": mid, "parent_id": parent, "user_id": "u", "created_date": "2023-02-05T14:23:50.983374+00:00",
            "text": text, "role": role, "lang": "en", "review_count": 3, "review_result": True, "deleted": deleted,
            "rank": rank, "synthetic": False, "model_name": None, "detoxify": {"toxicity": 0.001, "insult": 0.0},
            "message_tree_id": "t1", "tree_state": "ready_for_export", "emojis": {"name": ["+1"], "count": [2]},
            "labels": {"name": ["spam"], "value": [0.0], "count": [3]}}


def oasst_rows() -> list[dict]:
    return [
        oasst_message("m1", None, "prompter", "How do plants eat?", None),
        oasst_message("m3", "m1", "assistant", "They make sugar from light.", 1),     # a reply listed before its sibling
        oasst_message("m2", "m1", "assistant", "By photosynthesis: light, water and CO2 become sugar.", 0),
        oasst_message("m4", "m1", "assistant", "Plants eat dirt.", 2),
        oasst_message("m5", "m2", "prompter", "And at night?", None),
        oasst_message("m6", "m5", "assistant", "They use stored sugar.", 0),
        oasst_message("m7", "m5", "assistant", "They sleep.", 1),
        oasst_message("m8", "m5", "assistant", "Deleted reply.", 2, deleted=True),
        oasst_message("m9", "m6", "prompter", "Thanks!", None),                     # no replies: not an example
    ]


# nvidia/HelpSteer2: a prompt's responses are consecutive rows
HELPSTEER2 = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("helpfulness", pa.int64()),
                        ("correctness", pa.int64()), ("coherence", pa.int64()), ("complexity", pa.int64()),
                        ("verbosity", pa.int64())])


def helpsteer2_rows() -> list[dict]:
    def row(prompt, response, h, c):
        return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": c, "coherence": 4,
                "complexity": 1, "verbosity": 2}

    return [row("What is DNA?", "A molecule.", 2, 3), row("What is DNA?", "Deoxyribonucleic acid, the genetic code.", 4, 4),
            row("Name a fruit.", "Apple.", 3, 4), row("Name a fruit.", "Pear.", 3, 4),   # tie: no pair
            row("Count to 3.", "1 2 3", 4, 4), row("Count to 3.", "1 2", 1, 1)]


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FIXTURES = {  # preset -> (rows, schema or None for JSON lines)
    "ultrafeedback_binarized": (ultrafeedback_binarized_rows, ULTRAFEEDBACK_BINARIZED),
    "ultrafeedback": (ultrafeedback_rows, ULTRAFEEDBACK),
    "hh_rlhf": (hh_rlhf_rows, None),
    "shp": (shp_rows, SHP),
    "nectar": (nectar_rows, NECTAR),
    "skywork_preference": (skywork_rows, SKYWORK),
    "oasst": (oasst_rows, OASST),
    "helpsteer2": (helpsteer2_rows, HELPSTEER2),
}


def write_fixture(preset: str, directory: Path) -> Path:
    rows, schema = FIXTURES[preset]
    if schema is None:
        return write_jsonl(rows(), directory / f"{preset}.jsonl")
    return write_parquet(rows(), schema, directory / f"{preset}.parquet")
