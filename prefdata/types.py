"""Closed vocabularies and small shared value types.

Every name a recipe, a stats file or a column can carry is defined here once, so a typo is a
validation error instead of a silently ignored string.
"""

from __future__ import annotations

from enum import Enum
from typing import TypedDict


class Role(str, Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Message(TypedDict):
    role: str
    content: str


Chat = list[Message]


class EngineBackend(str, Enum):
    VLLM = "vllm"
    TRANSFORMERS = "transformers"
    OPENAI = "openai"  # any OpenAI-compatible server (vllm serve, SGLang, a hosted API)


class PairingStrategy(str, Enum):
    """How n scored samples of one prompt become pairs (RLHFlow / Curry-DPO names)."""

    MAX_MIN = "max_min"  # best vs worst: one pair
    MAX_RANDOM = "max_random"  # best vs a random lower-scored sample: one pair
    RANDOM = "random"  # two random samples with different scores: one pair
    RANKED = "ranked"  # best vs each other: n-1 pairs, largest gap first (easy to hard)


class FLRCategory(str, Enum):
    """Follow-up categories of FLR (Zhang et al. 2025): aspects of helpfulness a user reacts to."""

    UNDERSTANDING = "understanding"
    RELEVANCE = "relevance"
    CORRECTNESS = "correctness"
    ENGAGINGNESS = "engagingness"
    INFORMATIVENESS = "informativeness"
    FOLLOWING = "following"


class SourceFormat(str, Enum):
    """Readers for input files; `auto` picks by suffix (.jsonl/.json, .parquet, a datasets folder)."""

    AUTO = "auto"
    JSONL = "jsonl"
    PARQUET = "parquet"
    DATASETS = "datasets"


class SourceKind(str, Enum):
    """What the rows of an input are."""

    PROMPTS = "prompts"  # one prompt (string or chat) per row, optional reference answer
    PAIRS = "pairs"  # prompt/chosen/rejected (strings or chats; TRL implicit-prompt allowed)
    HH = "hh"  # HH-RLHF transcripts: chosen/rejected "\n\nHuman: ...\n\nAssistant: ..."
    COMPLETIONS = "completions"  # a prompt and a list of scored completions: best vs worst becomes a pair


class RejectReason(str, Enum):
    """Why an input or intermediate row was set aside (rejects.parquet `reason`)."""

    INVALID_JSON = "invalid_json"
    NOT_UTF8 = "not_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
    DUPLICATE_ID = "duplicate_id"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    TRANSCRIPTS_DIVERGE_EARLY = "transcripts_diverge_early"
    BAD_ROLE = "bad_role"
    PROMPT_TOO_LONG = "prompt_too_long"
    NAN_SCORE = "nan_score"
    NO_PAIR = "no_pair"
    SEQUENCE_TOO_LONG = "sequence_too_long"  # trainer: prompt + response longer than max_length (never truncated)
    BAD_EDIT_SPANS = "bad_edit_spans"  # trainer: metadata.edit_spans that do not fit the response text
    NULL_SCORE = "null_score"  # score stage: the ensemble could not score the pair (member error codes in detail)
    MISSING_SCORE = "missing_score"  # a stage that needs chosen/rejected scores found a null
    TIED_SCORES = "tied_scores"  # chosen and rejected have the same score: no preference to keep
    CHOSEN_SCORED_LOWER = "chosen_scored_lower"  # the scores contradict the chosen/rejected labels
    SCORE_OUT_OF_RANGE = "score_out_of_range"  # a score outside the range a stage was told to expect
    # RISE (prefdata/generators/rise.py)
    NO_CORRECT_SOLUTION = "no_correct_solution"  # rise: no verified correct solution to pair or edit (and no fallback)
    NO_STEPS = "no_steps"  # rise: the correct solution has no "Step N:" to edit
    EDIT_TRUNCATED = "edit_truncated"  # rise: the edit hit max_tokens before closing its fenced block
    EDIT_EMPTY = "edit_empty"  # rise: the fenced block is empty
    EDIT_GIVEAWAY = "edit_giveaway"  # rise: the edit says it is wrong ("incorrect", "mistakenly", ...)
    EDIT_UNCHANGED = "edit_unchanged"  # rise: the edit is the original text
    EDIT_TOO_LARGE = "edit_too_large"  # rise: normalised edit distance above max_edit_distance
    EDIT_NO_ERROR = "edit_no_error"  # rise: the edit changes no calculation (or keeps the right final answer)
    # Rationales (prefdata/generators/rationale.py)
    RATIONALE_EMPTY = "rationale_empty"  # rationale: empty or cut off at max_tokens
    RATIONALE_WRONG_SIDE = "rationale_wrong_side"  # rationale: its conclusion favours the rejected response
    RATIONALE_NO_VERDICT = "rationale_no_verdict"  # rationale: the conclusion judge put no mass on either side
    # RLHS hindsight (prefdata/generators/hindsight.py)
    HINDSIGHT_NULL_RATING = "hindsight_null_rating"  # hindsight: a hindsight rating is null (no rating mass)
    HINDSIGHT_TIE = "hindsight_tie"  # hindsight: both responses got the same hindsight rating
    EMPTY_RESPONSE = "empty_response"  # a sampled response is empty
    INCORRECT_PREFERENCE = "incorrect_preference"  # voting: lowest-strength bucket, configured to drop
    AMBIGUOUS_PREFERENCE = "ambiguous_preference"  # voting: near-zero-strength bucket, configured to drop
    NORMAL_PREFERENCE = "normal_preference"  # voting: the `normal` bucket, configured to drop
    CHES_HIGH = "ches_high"  # ches_filter: high likelihood-displacement risk (CHES / LN-CHES)
    CHES_NULL = "ches_null"  # ches_filter: no CHES score (empty or too long) and nulls = "drop"
    EXACT_DUPLICATE = "exact_duplicate"  # dedup: same normalised prompt as a kept row (detail names it)
    NEAR_DUPLICATE = "near_duplicate"  # dedup: prompt embedding cosine >= threshold with a kept row
    CONTAMINATED = "contaminated"  # dedup: prompt shares n-grams with a benchmark item


class ScoreError(str, Enum):
    """Why a scorer returned null for a row. Counted in stats, never replaced by an invented score."""

    NO_REFERENCE = "no_reference"  # verifier: row has no reference answer
    UNPARSEABLE_REFERENCE = "unparseable_reference"
    NO_ANSWER = "no_answer"  # verifier: no final answer found in the response
    NO_SCORE_TOKENS = "no_score_tokens"  # judge: none of the rating tokens is among the top logprobs
    UNPARSEABLE_VERDICT = "unparseable_verdict"  # judge (text mode): no rating in the generated text
    EMPTY_RESPONSE = "empty_response"
    TRUNCATED = "truncated"  # input longer than the scorer's context
    POSITION_INCONSISTENT = "position_inconsistent"  # pairwise judge: the two orders disagree (consistent mode)
    TOO_FEW_TRAINING_PAIRS = "too_few_training_pairs"  # embedding RM: no head trained for this fold


class LossType(str, Enum):
    """Preference losses of the trainer (`prefdata.train.losses.LOSSES`)."""

    SIGMOID = "sigmoid"  # DPO (Rafailov et al. 2023)
    CDPO = "cdpo"  # conservative DPO: label smoothing eps
    ROBUST = "robust"  # rDPO (Chowdhury et al. 2024): unbiased under flip rate eps
    IPO = "ipo"  # IPO (Azar et al. 2023), length-averaged as in TRL
    HINGE = "hinge"  # SLiC-style hinge (Zhao et al. 2023)
    MARGIN = "margin"  # DPO with a per-pair margin (adaptive margin, Secrets of RLHF II)


class ReferenceSource(str, Enum):
    """Where the trainer's reference log-probabilities come from."""

    AUTO = "auto"  # the dataset's ref_chosen_logps/ref_rejected_logps when present, else a reference model
    COLUMNS = "columns"  # the dataset's columns (no reference model in memory)
    MODEL = "model"  # a frozen reference model, on the fly


class Precision(str, Enum):
    AUTO = "auto"  # bf16 autocast on a GPU that supports it, else fp32
    FP32 = "fp32"
    BF16 = "bf16"  # fp32 weights, bf16 autocast


class ExecutorKind(str, Enum):
    """Where a build's stages run (`[executor] kind`, `prefdata build --executor`)."""

    LOCAL = "local"  # one process, shards in order (prefdata.pipeline.local)
    RAY = "ray"  # a Ray cluster: ray.data, one actor pool per stage (prefdata.pipeline.ray_executor)
