"""Local Hugging Face models (and the shipped organism): batched greedy generation and score mode."""

from __future__ import annotations

import hashlib
from typing import Any

from countlens.backends.base import Backend, Completion, GenSettings, OnDone, OnScored, Scored
from countlens.backends.spec import ModelSpec


SCORED_K = 9  # generation also keeps score mode's log-probs of the answers 0..9


class HFBackend(Backend):
    """Wraps a `ModelHandle`: left-padded batches sorted by length, stop at end-of-turn."""

    supports_prefill = True
    supports_score = True

    def __init__(self, spec: ModelSpec, *, prompt_format: str = "auto", batch_size: int = 64,
                 handle: Any = None, **load_options: Any) -> None:
        from countlens.models.handle import load

        self.spec = spec
        self.batch_size = batch_size
        self.handle = handle or load(spec.name, prompt_format=prompt_format, **load_options)
        self.prompt_format = self.handle.prompt_format

    def identity(self) -> dict[str, Any]:
        from countlens.models.handle import weights_hash

        h = self.handle
        weights = weights_hash(h.path)
        if weights == "remote":  # a hub name: the resolved commit identifies the weights
            weights = getattr(h.model.config, "_commit_hash", None) or "unknown-revision"
        template = h.tokenizer.chat_template if self.prompt_format == "chat" else None
        return {"backend": "hf", "model": self.spec.name, "weights": weights,
                "dtype": str(next(h.model.parameters()).dtype).replace("torch.", ""),
                "prompt_format": self.prompt_format,
                "chat_template": hashlib.sha256(str(template).encode()).hexdigest()[:16] if template else None}

    def _texts(self, prompts: list[str], settings: GenSettings, prefill: bool) -> list[str]:
        suffix = settings.answer_prefix if prefill else ""
        return [self.handle.format(p, settings.system) + suffix for p in prompts]

    def generate(self, prompts: list[str], settings: GenSettings, on_done: OnDone) -> None:
        from countlens.models.generation import greedy_generate

        texts = self._texts(prompts, settings, settings.prefill)
        lengths = [len(self.handle.encode_text(t)) for t in texts]
        prefix = settings.answer_prefix if settings.prefill else ""

        def store(idx: list[int], outs: list[str], n_new: list[int]) -> None:
            on_done([(i, Completion(text=prefix + out, input_tokens=lengths[i], output_tokens=k,
                                    prefilled=settings.prefill, served_model=self.spec.name))
                     for i, out, k in zip(idx, outs, n_new)])

        score = None
        if not settings.prefill:  # score mode's texts are these plus the answer prefix: one prefill serves both
            answers = self.handle.answer_tokens(SCORED_K, settings.answer_prefix)
            tokens = tuple(a[0] for a in answers)
            scored_texts = [t + settings.answer_prefix for t in texts]

            def keep(idx: list[int], rows) -> None:
                for i, r in zip(idx, rows):
                    self.handle.scored[scored_texts[i]] = (tokens, r)

            score = (settings.answer_prefix, answers, keep)
        greedy_generate(self.handle, texts, settings.max_new_tokens, self.batch_size, on_batch=store, score=score)

    def score(self, prompts: list[str], k_max: int, settings: GenSettings, on_scored: OnScored) -> None:
        """The formatted prompt followed by the answer prefix; log P of each answer 0..k_max."""
        from countlens.models.generation import answer_logprobs

        texts = self._texts(prompts, settings, prefill=True)
        answers = self.handle.answer_tokens(k_max, settings.answer_prefix)
        lengths = [len(self.handle.encode_text(t)) for t in texts]

        def store(idx: list[int], rows) -> None:
            on_scored([(i, Scored(logprobs=[round(float(x), 6) for x in r], input_tokens=lengths[i]))
                       for i, r in zip(idx, rows)])

        want = tuple(a[0] for a in answers) if all(len(a) == 1 for a in answers) else None
        memo = {i: self.handle.scored.get(t) for i, t in enumerate(texts)}
        done = [i for i, m in memo.items() if want and m is not None and m[0][:len(want)] == want]
        if done:  # scored by an earlier generate run's prefill on this handle (greedy_generate's `score`)
            store(done, [memo[i][1][:len(want)] for i in done])
        finished = set(done)
        todo = [i for i in range(len(texts)) if i not in finished]
        if todo:
            answer_logprobs(self.handle, [texts[i] for i in todo], answers, self.batch_size,
                            on_batch=lambda idx, rows: store([todo[j] for j in idx], rows))
