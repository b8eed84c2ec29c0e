"""transformers backend: the fallback engine and the reference the vLLM backend is tested against.

Generation is prefdata's own batched decode loop over `model(...)` with a KV cache rather than
`model.generate`: `generate` has one global RNG, so a request's sample would depend on what else
is in its batch. Here each request samples with its own `torch.Generator` seeded from its
`SamplingParams.seed`, and the loop records the raw log-probability of every sampled token and
the top-k alternatives as it goes (no second pass).

Batches carry explicit position ids (a padded row must see the same positions as it would
alone). Generation pads on the left; scoring and hidden states pad on `padding_side` (right by
default) and read each row's own span from its offset, so either side gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from prefdata.engines.base import (
    Completion,
    Engine,
    FinishedPrompts,
    SamplingParams,
    check_spans,
    normalise_params,
)
from prefdata.engines.config import EngineConfig
from prefdata.engines.embedded import resolve_model
from prefdata.engines.identity import config_identity, tensors_fingerprint, tokenizer_fingerprint
from prefdata.types import EngineBackend


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


class TransformersEngine(Engine):
    backend = EngineBackend.TRANSFORMERS

    def __init__(self, config: EngineConfig | None = None, *, model: Any = None, tokenizer: Any = None):
        """Load from `config`, or wrap an already-loaded `model` and `tokenizer` (e.g. a policy
        inside a training job)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config or EngineConfig(backend=EngineBackend.TRANSFORMERS)
        if model is None:  # loaded here, onto the CPU
            self.config = self.config.resolved()
        self.model_id = self.config.model or "embedded:smollm2-135m-instruct"
        self.revision = self.config.revision
        self.in_memory = model is not None
        if model is not None:
            self.model, self.tokenizer = model, tokenizer
            self.model_path = getattr(model, "name_or_path", "in-memory")
        else:
            self.model_path = resolve_model(self.config.model)
            common = {"revision": self.revision, "trust_remote_code": self.config.trust_remote_code}
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, **common)
            dtype = "auto" if self.config.dtype == "auto" else getattr(torch, self.config.dtype)
            self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype, **common)
        if self.tokenizer is None:
            raise ValueError("a tokenizer is required")
        self.model.eval()
        self.device = next(self.model.parameters()).device
        if self.config.forward_batch_size is None:  # an in-memory model, on whatever device it is
            per_pass = 1 if self.device.type == "cpu" else self.config.batch_size
            self.config = self.config.model_copy(update={"forward_batch_size": per_pass})
        self._identity = None if self.in_memory else config_identity(self.config)  # once loaded (hub id cached)
        self.max_model_len = self.config.max_model_len
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def identity(self) -> dict[str, Any] | None:
        """Loaded from a config: the config and what its model name refers to, taken at load time.
        Wrapping an in-memory model: a hash of its parameters and buffers and of its tokenizer,
        computed at each call (the caller may have trained the model since)."""
        if not self.in_memory:
            return self._identity
        return {"backend": self.backend.value,
                "model": {"in_memory": {"weights": tensors_fingerprint(self.model.state_dict().items()),
                                        "tokenizer": tokenizer_fingerprint(self.tokenizer)}},
                "config": self.config.model_dump(mode="json")}

    # --- generation ---------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        per_prompt = normalise_params(params, len(prompts))
        requests: list[tuple[int, list[int], SamplingParams]] = []
        for index, (prompt, p) in enumerate(zip(prompts, per_prompt)):
            self.check_lengths([prompt], extra=1)
            requests.extend((index, list(prompt), sample) for sample in p.per_sample())
        results: list[list[Completion]] = [[] for _ in prompts]
        outputs: list[Completion | None] = [None] * len(requests)
        # Longest first so each batch pads little; results are put back by request position.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]))
        for batch in self._reporting(_batches(order, self.config.batch_size), [index for index, _, _ in requests]):
            done = self._generate_batch([requests[i][1] for i in batch], [requests[i][2] for i in batch])
            for i, completion in zip(batch, done):
                outputs[i] = completion
        for (index, _, _), completion in zip(requests, outputs):
            results[index].append(completion)
        return results

    def _generate_batch(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Completion]:
        import torch
        from transformers import DynamicCache

        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = []
        for p in params:
            g = torch.Generator(device="cpu")
            g.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,))))
            generators.append(g)
        max_new = [min(p.max_tokens, self.max_model_len - len(prompt)) for p, prompt in zip(params, prompts)]
        tokens: list[list[int]] = [[] for _ in prompts]
        logps: list[list[float]] = [[] for _ in prompts]
        tops: list[list[dict[int, float]]] = [[] for _ in prompts]
        finish = [None] * batch
        cache, step_ids = DynamicCache(), ids
        with torch.inference_mode():
            for step in range(max(max_new)):
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
                next_ids = torch.full((batch,), self.pad_id, dtype=torch.long)
                for row, p in enumerate(params):
                    if finish[row] is not None:
                        continue
                    token = self._sample(logprobs[row], p, generators[row])
                    next_ids[row] = token
                    tokens[row].append(token)
                    logps[row].append(float(logprobs[row, token]))
                    if p.top_logprobs:
                        values, indices = torch.topk(logprobs[row], p.top_logprobs)
                        tops[row].append(dict(zip(indices.tolist(), values.tolist())))
                    finish[row] = self._finish_reason(tokens[row], p, step + 1 >= max_new[row])
                if all(f is not None for f in finish):
                    break
                step_ids = next_ids.unsqueeze(-1).to(self.device)
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=self.device)], dim=-1)
                positions = positions[:, -1:] + 1
        return [self._completion(tokens[r], logps[r], tops[r], params[r], finish[r]) for r in range(batch)]

    @staticmethod
    def _sample(logprobs: Any, p: SamplingParams, generator: Any) -> int:
        import torch

        if p.temperature == 0:
            return int(torch.argmax(logprobs))
        scores = logprobs / p.temperature
        if p.top_k:
            kth = torch.topk(scores, min(p.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, sorted_idx = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= p.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, sorted_idx, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _finish_reason(self, tokens: list[int], p: SamplingParams, out_of_budget: bool) -> str | None:
        if tokens[-1] in self.eos_ids:
            return "stop"
        if p.stop:
            tail = self.tokenizer.decode(tokens[-32:], skip_special_tokens=True)
            if any(s in tail for s in p.stop):
                return "stop"
        return "length" if out_of_budget else None

    def _completion(self, tokens: list[int], logps: list[float], tops: list[dict[int, float]],
                    p: SamplingParams, finish: str) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if p.stop:  # like vLLM: the text ends before the first stop string, which is not included
            cuts = [text.find(s) for s in p.stop if s in text]
            if cuts:
                text = text[: min(cuts)]
        return Completion(text=text, token_ids=tuple(tokens), logprobs=tuple(logps), finish_reason=finish,
                          top_logprobs=tuple(tops) if p.top_logprobs else None)

    # --- teacher forcing ------------------------------------------------------------------------

    def _pad(self, sequences: list[list[int]]) -> tuple[Any, Any, list[int]]:
        """Padded ids, attention mask and each row's offset (where its first token sits)."""
        import torch

        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        offsets = []
        for row, seq in enumerate(sequences):
            offset = width - len(seq) if self.config.padding_side == "left" else 0
            ids[row, offset : offset + len(seq)] = torch.tensor(seq)
            mask[row, offset : offset + len(seq)] = 1
            offsets.append(offset)
        return ids.to(self.device), mask.to(self.device), offsets

    def _forward_padded(self, sequences: list[list[int]], final_hidden: bool = False) -> tuple[Any, list[int]]:
        """One forward pass over a padded batch: logits, or the final-layer hidden states (after the
        final norm) without the LM head. Position ids count real tokens only, so a row sees the
        same positions whatever its padding."""
        import torch

        ids, mask, offsets = self._pad(sequences)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            if final_hidden:
                body = self.model.base_model
                if body is not self.model:  # the decoder without the LM head: no [batch, len, vocab] logits
                    return body(input_ids=ids, attention_mask=mask, position_ids=positions,
                                use_cache=False).last_hidden_state, offsets
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 output_hidden_states=True, use_cache=False)
                return out.hidden_states[-1], offsets
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            return out.logits, offsets

    def _token_batches(self, lengths: list[int]) -> Iterator[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return self._reporting(_batches(order, self.config.forward_batch_size), range(len(lengths)))

    def _reporting(self, batches: list[list[int]], owners: Sequence[int]) -> Iterator[list[int]]:
        """Yields each batch of request positions; once the caller is done with it, reports the
        prompts (`owners`) that are finished (`on_finished`)."""
        finished = FinishedPrompts(owners, self.on_finished)
        for batch in batches:
            yield batch
            finished.add(batch)

    def score(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
        import torch

        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        sequences = [list(p) + list(t) for p, t in zip(prompts, targets)]
        self.check_lengths(sequences)
        results: list[np.ndarray | None] = [None] * len(sequences)
        for batch in self._token_batches([len(s) for s in sequences]):
            logits_all, offsets = self._forward_padded([sequences[i] for i in batch])
            for row, i in enumerate(batch):
                start, n = offsets[row] + len(prompts[i]), len(targets[i])
                if n == 0:
                    results[i] = np.zeros(0)
                    continue
                # logits at position t predict token t+1: the targets are predicted from start-1 on
                logits = logits_all[row, start - 1 : start - 1 + n].float()
                target = torch.tensor(list(targets[i]), device=logits.device)
                lp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
                results[i] = lp.double().cpu().numpy()
        return results

    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        sequences = [list(s) for s in sequences]
        self.check_lengths(sequences)
        results: list[np.ndarray | None] = [None] * len(sequences)
        for batch in self._token_batches([len(s) for s in sequences]):
            last, offsets = self._forward_padded([sequences[i] for i in batch], final_hidden=True)
            for row, i in enumerate(batch):
                results[i] = last[row, offsets[row] : offsets[row] + len(sequences[i])].float().cpu().numpy()
        return results

    def hidden_state_sums(self, sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Span sums on the device: the states stay in the model's dtype (bf16 if so loaded) and
        are summed in float32 (one masked matmul per batch), so only [batch, hidden] leaves it."""
        import torch

        sequences = [list(s) for s in sequences]
        check_spans(sequences, spans)
        self.check_lengths(sequences)
        hidden_size = int(self.model.config.get_text_config().hidden_size)
        sums = np.zeros((len(sequences), hidden_size))
        for batch in self._token_batches([len(s) for s in sequences]):
            last, offsets = self._forward_padded([sequences[i] for i in batch], final_hidden=True)
            weights = torch.zeros(last.shape[:2], dtype=torch.float32, device=last.device)
            for row, i in enumerate(batch):
                start, end = spans[i]
                weights[row, offsets[row] + start : offsets[row] + end] = 1.0
            with torch.inference_mode():
                batch_sums = torch.einsum("bt,btd->bd", weights, last.float())
            sums[batch] = batch_sums.double().cpu().numpy()
        return sums

    def close(self) -> None:
        self.model = None
