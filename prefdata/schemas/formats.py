"""Text formats a build and the trainer share: the columns they agree on, the rationale prompt, and
how a pair becomes token ids. Below the engines, so stages (the `reference_logps` stage, CHES, the
rationale generator) and the trainer use the same rules without importing each other.

**Columns**: `ref_chosen_logps`, `ref_rejected_logps` (summed reference log-probs, written by the
`reference_logps` stage), `ref_logps_model` (the model they came from), `rationale` and
`rationale_order` (RDPO, written by the `rationale` generator), `metadata.edit_spans` (RISE).

**Pair tokens** (`tokenize_pair`): TRL's rule; each side's cut from `split_response`, then the
shorter cut for both, so chosen and rejected share one prompt (see `prefdata.train.data`).

**Rationale prompt** (RDPO, arXiv 2407.14477; the authors' conditioning prompt, paraphrased in
METHODS.md): one user turn, `Given the prompt:\\n{x}\\nWhich of the following assistant's responses
is more preferable and strictly follows the prompt question?\\nResponse above: "{A}"\\nor\\n
Response below: "{B}"?`, with the rationale as the assistant turn. x is the prompt's text (turns
joined as "Role: text" when there is more than one); A/B are chosen/rejected in `rationale_order`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from prefdata.schemas.errors import RowError
from prefdata.types import RejectReason

REF_CHOSEN, REF_REJECTED, REF_MODEL = "ref_chosen_logps", "ref_rejected_logps", "ref_logps_model"
RATIONALE, RATIONALE_ORDER, EDIT_SPANS = "rationale", "rationale_order", "edit_spans"
CHOSEN_FIRST, REJECTED_FIRST = "chosen_first", "rejected_first"


class ResponseSplitter(Protocol):
    """What `tokenize_pair` needs of a chat formatter (`prefdata.engines.chat.ChatFormatter`)."""

    def split_response(self, messages: Sequence[Mapping[str, str]],
                       response: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]: ...


def messages_as_text(messages: Sequence[Mapping[str, str]]) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def rationale_prompt(prompt: Sequence[Mapping[str, str]], chosen: str, rejected: str,
                     order: str | None = CHOSEN_FIRST) -> list[dict[str, str]]:
    """RDPO's conditioning prompt (see the module docstring) as a one-turn chat."""
    order = order or CHOSEN_FIRST
    if order not in (CHOSEN_FIRST, REJECTED_FIRST):
        raise RowError(RejectReason.WRONG_TYPE, RATIONALE_ORDER, f"expected {CHOSEN_FIRST!r} or {REJECTED_FIRST!r}, got {order!r}")
    above, below = (chosen, rejected) if order == CHOSEN_FIRST else (rejected, chosen)
    text = (f"Given the prompt:\n{messages_as_text(prompt)}\n"
            "Which of the following assistant's responses is more preferable and strictly follows the prompt question?\n"
            f'Response above: "{above}"\nor\nResponse below: "{below}"?')
    return [{"role": "user", "content": text}]


def tokenize_pair(formatter: ResponseSplitter, prompt: Sequence[Mapping[str, str]], chosen: Sequence[Mapping[str, str]],
                  rejected: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) by TRL's rule: each side's cut from `split_response`,
    then the shorter cut for both, so the two sequences share one prompt."""
    prompt_c, chosen_ids = formatter.split_response(prompt, chosen)
    prompt_r, rejected_ids = formatter.split_response(prompt, rejected)
    cut = min(len(prompt_c), len(prompt_r))
    return prompt_c[:cut], prompt_c[cut:] + chosen_ids, prompt_r[cut:] + rejected_ids
