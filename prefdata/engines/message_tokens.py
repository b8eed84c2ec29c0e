"""Chat messages as opaque token ids, for served models that take chat messages, not token ids.

Stages render prompts with `ChatFormatter(engine.tokenizer)` and hand the engine token ids. A
hosted chat API takes messages instead, so a chat-only engine's `tokenizer` is a
`MessageTokenizer`: rendering a chat gives ONE id standing for exactly those messages, other text
(a response, an assistant prefix) one id per piece; the engine maps ids back to the messages.
Ids are 63-bit hashes of the content (`derive_seed`), so the same chat gets the same id in every
process, and request-cache keys stay meaningful across runs. There is no vocabulary: these ids
mean nothing to any model, and token counts are not lengths (the server enforces its context).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from prefdata.engines.base import derive_seed

_MARK = "\x00prefdata-chat:{}\x00"
_MARKS = re.compile("\x00prefdata-chat:(\\d+)\x00")


class MessageTokenizer:
    chat_template = "prefdata: chat messages as opaque ids (chat-only served model)"
    name_or_path = "prefdata-messages"
    pad_token_id = eos_token_id = bos_token_id = None

    def __init__(self) -> None:
        self._chats: dict[int, tuple[list[dict[str, str]], bool]] = {}
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()

    def apply_chat_template(self, messages: Sequence[Any], tokenize: bool = True, add_generation_prompt: bool = False,
                            **_: Any) -> Any:
        chat = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        key = derive_seed("chat", json.dumps(chat, sort_keys=True), bool(add_generation_prompt))
        with self._lock:
            self._chats[key] = (chat, bool(add_generation_prompt))
        return [key] if tokenize else _MARK.format(key)

    def _text_id(self, text: str) -> int:
        key = derive_seed("text", text)
        with self._lock:
            self._texts[key] = text
        return key

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def encode(self, text: str, add_special_tokens: bool = False, **_: Any) -> list[int]:
        ids, start = [], 0
        for match in _MARKS.finditer(text):
            if match.start() > start:
                ids.append(self._text_id(text[start:match.start()]))
            ids.append(int(match.group(1)))
            start = match.end()
        if start < len(text):
            ids.append(self._text_id(text[start:]))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True, **_: Any) -> str:
        parts = []
        for i in ids:
            if int(i) in self._texts:
                parts.append(self._texts[int(i)])
            elif int(i) in self._chats:
                parts.append("\n".join(f"{m['role']}: {m['content']}" for m in self._chats[int(i)][0]))
            else:
                raise KeyError(f"token id {i} was not made by this MessageTokenizer")
        return "".join(parts)

    def messages(self, ids: Sequence[int]) -> tuple[list[dict[str, str]], str]:
        """(the chat, text after it) of a prompt made by `ChatFormatter.prompt_ids`."""
        ids = [int(i) for i in ids]
        if not ids or ids[0] not in self._chats:
            raise ValueError("a chat-only engine takes prompts rendered by ChatFormatter(engine.tokenizer)")
        rest = ids[1:]
        if any(i not in self._texts for i in rest):
            raise ValueError("a chat-only engine takes one chat per prompt")
        return list(self._chats[ids[0]][0]), "".join(self._texts[i] for i in rest)

    def __len__(self) -> int:
        return 2**63
