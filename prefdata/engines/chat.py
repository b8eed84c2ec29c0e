"""Chat messages -> token ids, the same way for every engine and the way TRL does it.

* `prompt_ids(messages)`: the chat template with the generation prompt; an `assistant_prefix`
  is appended as text after it (pre-filling the start of the answer, e.g. RISE's "Step 1:" or a
  judge's "Rating: ").
* `split_response(messages, response)`: prompt and response token ids of prompt+response,
  where the response starts at the first token at which the tokenised prompt and the
  tokenised conversation diverge (TRL's `DPOTrainer` rule: usually right after the prompt;
  earlier when tokens merge across the boundary). The response keeps the template's
  end-of-turn tokens, so its log-probability includes "stop here".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefdata.types import Message


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True) by default.
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)


class ChatFormatter:
    def __init__(self, tokenizer: Any):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template")
        self.tokenizer = tokenizer

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, messages: Sequence[Message], assistant_prefix: str = "") -> list[int]:
        if not assistant_prefix:
            return _ids(self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True))
        text = self.render(messages) + assistant_prefix
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation_ids(self, messages: Sequence[Message]) -> list[int]:
        return _ids(self.tokenizer.apply_chat_template(list(messages), tokenize=True))

    def split_response(self, messages: Sequence[Message], response: Sequence[Message]) -> tuple[list[int], list[int]]:
        prompt = self.prompt_ids(messages)
        full = self.conversation_ids([*messages, *response])
        cut = common_prefix_length(prompt, full)
        return prompt[:cut], full[cut:]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
