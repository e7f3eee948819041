"""Batched greedy generation and one-forward scoring on a local model handle."""

from __future__ import annotations

from collections.abc import Callable

import torch

from countlens.models import devices, kvcache
from countlens.models.handle import ModelHandle, keep_logits, pad_left


def _by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches sorted by length (longest first) to limit padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _new_token_counts(new: torch.Tensor, stop_ids: list[int]) -> list[int]:
    """Generated tokens per row, up to and including the first end-of-turn token."""
    counts = []
    for row in new.tolist():
        stop = next((k for k, t in enumerate(row) if t in stop_ids), None)
        counts.append(len(row) if stop is None else stop + 1)
    return counts


@torch.no_grad()
def greedy_generate(handle: ModelHandle, texts: list[str], max_new_tokens: int = 8, batch_size: int = 64,
                    progress: Callable[[int], None] | None = None,
                    on_batch: Callable[[list[int], list[str], list[int]], None] | None = None,
                    score: tuple[str, list[list[int]], Callable[[list[int], torch.Tensor], None]] | None = None
                    ) -> list[str]:
    """Greedy completions of already formatted texts, stopping at end-of-turn.

    `on_batch(indices, completions, new_token_counts)` runs after each batch, so a caller can
    store finished results at once instead of at the end. `score=(suffix, answers, on_scored)` also
    scores text + suffix (score mode: log P of each single-token answer) from the same prefill:
    one forward over text + suffix gives the answer log-probs at its end, and generation starts
    from its KV cache cut back to the text's last token. A batch where text + suffix does not
    tokenize as the text's tokens plus the same suffix tokens is only generated.
    """
    seqs = [handle.encode_text(t) for t in texts]
    with_suffix = [handle.encode_text(t + score[0]) for t in texts] if score else None
    out: list[str] = [""] * len(texts)
    for idx in _by_length([len(s) for s in seqs], batch_size):
        batch = pad_left([seqs[i] for i in idx], handle.pad_id, handle.device)
        cache = {}
        # (not under the nnsight engine: its generate() runs its own prefill, and a remote cache stays remote)
        if score and handle.hooks is None and _shared_prefix(seqs, with_suffix, idx) \
                and all(len(a) == 1 for a in score[1]):
            full = pad_left([with_suffix[i] for i in idx], handle.pad_id, handle.device)
            o = kvcache.forward(handle.model, last_logits=True, **full)
            lp = torch.log_softmax(o.logits[:, -1].float(), -1).cpu()
            score[2](idx, lp[:, [a[0] for a in score[1]]])
            cache = {"prefix": kvcache.kv_tensors(kvcache.output_cache(o))}
            del o
        new = generate_batch(handle, batch, max_new_tokens, **cache)
        for j, i in enumerate(idx):
            out[i] = handle.tokenizer.decode(new[j], skip_special_tokens=True)
        if on_batch:
            on_batch(idx, [out[i] for i in idx], _new_token_counts(new, handle.stop_ids))
        if progress:
            progress(len(idx))
    return out


@torch.no_grad()
def prefix_kv(handle: ModelHandle, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """KV of every position of a left-padded batch but the last: an edit at the last position only
    (steering, patching the answer position) leaves it untouched, so generations under many such
    edits can all start from it (`generate_batch(..., prefix=...)`)."""
    pos = batch.get("position_ids")
    if pos is None:
        pos = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    out = kvcache.forward(handle.model, input_ids=batch["input_ids"][:, :-1],
                          attention_mask=batch["attention_mask"][:, :-1], position_ids=pos[:, :-1], last_logits=True)
    return kvcache.kv_tensors(kvcache.output_cache(out))


@torch.no_grad()
def generate_batch(handle: ModelHandle, batch: dict[str, torch.Tensor], max_new_tokens: int,
                   prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Greedy new tokens [B, <= max_new_tokens] of a left-padded batch, stopping at end-of-turn.
    `prefix`: KV of the batch's first W-1 positions or more (`prefix_kv`, or a longer prefill's
    KV): generation then computes only the last prompt position onwards, with generate()'s own
    position ids (the mask's cumulative sum), the same answers as without it (tested)."""
    W = batch["input_ids"].shape[1]
    cache = {} if prefix is None else {kvcache.cache_kwarg(type(devices.hf_model(handle.model))): kvcache.build_cache(
        prefix, handle.model.config, W - 1)}
    out = handle.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                eos_token_id=handle.stop_ids, pad_token_id=handle.pad_id, **cache)
    return out[:, W:]


def _shared_prefix(seqs: list[list[int]], with_suffix: list[list[int]], idx: list[int]) -> bool:
    """Every text + suffix of the batch is the text's tokens followed by one same-length suffix."""
    extra = {len(with_suffix[i]) - len(seqs[i]) for i in idx}
    return len(extra) == 1 and extra.pop() > 0 and all(with_suffix[i][:len(seqs[i])] == seqs[i] for i in idx)


@torch.no_grad()
def answer_logprobs(handle: ModelHandle, texts: list[str], answers: list[list[int]], batch_size: int = 64,
                    progress: Callable[[int], None] | None = None,
                    on_batch: Callable[[list[int], torch.Tensor], None] | None = None) -> torch.Tensor:
    """log P(answer k | text) for every k, shape [len(texts), len(answers)], in float32.

    One forward per prompt for single-token answers; answers of several tokens are scored by
    the summed log-probability of their tokens, teacher-forced (one extra forward per shared prefix).
    `on_batch(indices, rows)` runs after each batch so a caller can store results at once.
    """
    seqs = [handle.encode_text(t) for t in texts]
    result = torch.empty(len(texts), len(answers))
    # Multi-token answers sharing all but their last token (10..19 after "1") share one forward.
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, a in enumerate(answers):
        if len(a) > 1:
            groups.setdefault(tuple(a[:-1]), []).append(k)
    first = torch.tensor([a[0] for a in answers])
    for idx in _by_length([len(s) for s in seqs], batch_size):
        batch = pad_left([seqs[i] for i in idx], handle.pad_id, handle.device)
        logits = handle.model(**batch, **keep_logits(handle.model, 1)).logits[:, -1].float()
        lp = torch.log_softmax(logits, -1).cpu()
        result[idx] = lp[:, first]
        for prefix, ks in groups.items():
            ext = pad_left([seqs[i] + list(prefix) for i in idx], handle.pad_id, handle.device)
            n = len(prefix) + 1
            ext_logits = handle.model(**ext, **keep_logits(handle.model, n)).logits[:, -n:]
            lps = torch.log_softmax(ext_logits.float(), -1).cpu()
            for k in ks:
                tgt = torch.tensor(answers[k])
                result[idx, k] = lps[:, torch.arange(n), tgt].sum(-1)
        if on_batch:
            on_batch(idx, result[idx])
        if progress:
            progress(len(idx))
    return result
