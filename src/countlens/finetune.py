"""Fine-tune a pretrained model to count with a LoRA adapter (peft), on freshly generated examples.

Why LoRA: the frozen weights need no gradients and no AdamW state, so a step costs a forward and
an input-gradient backward, and the result is a few MB that ships with the package (a full
fine-tune's 0.5 GB cannot). The examples are exactly what every stage feeds the model: the
prompt formatted by the model's own chat template (with its default system prompt), followed by
the template's completion `(N)` and the template's end of turn; the loss is on those answer
tokens only. Nothing shapes the mechanism (no interchange intervention): gradient descent
decides how the model counts.

Every batch is generated from (seed, step), so a run is deterministic for a seed and a resumed
run sees the same batches it would have seen; the held-out set comes from a separate seed and
its prompts are excluded from training. Checkpoints (adapter, optimizer, scheduler, curve) are
written atomically every `checkpoint_every` steps.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from countlens.data.generate import generate_examples
from countlens.data.templates import load_template
from countlens.errors import InputError
from countlens.models import prompts

if TYPE_CHECKING:
    import torch

HELD_OUT_SEED = 7_919_000_000  # + the run's seed; batch seeds are seed * 10**6 + step, far below it


@dataclass
class FinetuneConfig:
    """The recipe (docs/FINETUNE.md says how it was found). The shipped adapter is these defaults with
    `steps=500`; the default 300 steps count as the targets ask (96.6 % on 1,000 fresh examples) in
    48 min on 2 cores, inside the 90-minute budget on a slow day too."""

    base: str = "smollm2-135m"
    seed: int = 0
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    template: str = "seed-v1"
    lexicon: str = "clean-v1"
    min_len: int = 5
    max_len: int = 10
    max_count: int = 5
    loss_on: str = "answer"          # "answer": every answer token; "digit": the count token alone
    share_prefix: bool = True        # run the rows' common token prefix once per batch (same numbers)
    eval_every: int = 50
    eval_n: int = 240
    checkpoint_every: int = 25
    stop_at: float = 0.99            # stop early after `patience` held-out checks at or above this
    patience: int = 2
    threads: int | None = None

    def validate(self) -> None:
        if self.loss_on not in ("answer", "digit"):
            raise InputError(f"loss_on must be 'answer' or 'digit', got '{self.loss_on}'")
        for k in ("steps", "batch_size", "rank", "eval_n", "eval_every", "checkpoint_every"):
            if getattr(self, k) <= 0:
                raise InputError(f"finetune: {k} must be positive, got {getattr(self, k)}")


@dataclass
class Curve:
    """Held-out accuracy (greedy, teacher-forced exact match of the answer) and training loss."""

    steps: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    by_count: list[dict[str, float]] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)        # mean training loss since the last check
    elapsed_s: list[float] = field(default_factory=list)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"step": self.steps, "accuracy": self.accuracy, "loss": self.loss,
                             "elapsed_s": self.elapsed_s})


# ---------------------------------------------------------------- examples -> token ids


def answer_suffix(tokenizer: Any, prompt_format: str, completion: str) -> str:
    """The text after the prompt when the model answers `completion` and ends its turn.

    Chat: what the template renders for an assistant message after the generation prompt
    (SmolLM2: `(3)<|im_end|>`); raw: the completion and the EOS text."""
    if prompt_format == "chat":
        user = [{"role": "user", "content": "x"}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}],
                                             tokenize=False, add_generation_prompt=False)
        if full.startswith(head) and completion in full[len(head):]:
            tail = full[len(head):]
            return tail[:tail.index(completion) + len(completion)] + _end_of_turn(tokenizer, tail, completion)
    return completion + (tokenizer.eos_token or "")


def _end_of_turn(tokenizer: Any, tail: str, completion: str) -> str:
    """The special token that closes the assistant turn in the rendered `tail`, if any."""
    rest = tail[tail.index(completion) + len(completion):]
    for tok in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if tok and rest.lstrip().startswith(tok):
            return tok
    return tokenizer.eos_token or ""


@dataclass
class Encoded:
    ids: list[list[int]]         # prompt + answer tokens
    n_answer: int                # answer tokens at the end of every row (the same for every row)
    digit_offset: int            # index of the count token within the answer tokens
    answers: list[int]


def encode_rows(tokenizer: Any, prompt_format: str, rows: list[dict], template, system: str | None = None) -> Encoded:
    """Token ids as the model sees them at inference: the formatted prompt, then the answer tokens."""
    ids, n_answer, digit_offset = [], None, None
    for r in rows:
        p = prompts.encode(tokenizer, prompts.format_prompt(tokenizer, r["prompt"], prompt_format, system))
        completion = template.expected_completion(r["answer"])
        a = prompts.encode(tokenizer, answer_suffix(tokenizer, prompt_format, completion))
        if n_answer is None:
            n_answer = len(a)
            pre = prompts.encode(tokenizer, template.answer_prefix)
            digit_offset = len(pre) if a[:len(pre)] == pre else 0
        if len(a) != n_answer:
            raise InputError(f"answer '{completion}' is {len(a)} tokens where others are {n_answer}; "
                             "counts must tokenise to the same length")
        ids.append(p + a)
    return Encoded(ids=ids, n_answer=n_answer or 0, digit_offset=digit_offset or 0,
                   answers=[r["answer"] for r in rows])


def common_prefix(seqs: list[list[int]], keep: int) -> int:
    """Length of the token prefix every row shares, leaving at least `keep` tokens per row after it."""
    n = min(len(s) for s in seqs) - keep
    first = seqs[0]
    for i in range(max(0, n)):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(0, n)


def answer_logits(model, enc: Encoded, pad_id: int, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict the answer tokens [batch, n_answer, vocab], and the targets.

    Rows are left-padded, so the answer is the last `n_answer` tokens of every row and only the
    last `n_answer + 1` positions' logits are computed (the vocabulary projection is not cheap).
    share_prefix: the tokens every row starts with (chat header, system prompt, the template's
    opening: ~40 of SmolLM2's ~115) run once, and their KV is expanded to the batch; the rows'
    own tokens follow it, left-padded after it (pads masked, positions continuing the prefix).
    The same logits as one padded forward (a test checks it, gradients included), a third less work.
    Not used when a sliding window is shorter than the rows (the pads would sit inside it).
    """
    import torch

    from countlens.models import kvcache
    from countlens.models.handle import pad_left

    device = next(model.parameters()).device
    n = enc.n_answer
    L = common_prefix(enc.ids, n + 1) if share_prefix and len(enc.ids) > 1 else 0
    windows = [w for w in kvcache.sliding_windows(model.config) if w is not None]
    if windows and min(windows) <= max(len(s) for s in enc.ids):
        L = 0  # pads between prefix and suffix would count inside a sliding window: no sharing
    if L < 4:
        b = pad_left(enc.ids, pad_id, device)
        out = model(**b, logits_to_keep=n + 1, use_cache=False)
        return out.logits[:, :-1], b["input_ids"][:, -n:]
    B = len(enc.ids)
    pre = kvcache.forward(model, input_ids=torch.tensor([enc.ids[0][:L]], device=device), logits_to_keep=1)
    kvs = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kvcache.kv_tensors(kvcache.output_cache(pre))]
    b = pad_left([s[L:] for s in enc.ids], pad_id, device)
    mask = torch.cat([torch.ones(B, L, dtype=b["attention_mask"].dtype, device=device), b["attention_mask"]], 1)
    out = kvcache.forward(model, cache=kvcache.build_cache(kvs, model.config, L), input_ids=b["input_ids"],
                          attention_mask=mask, position_ids=b["position_ids"] + L, logits_to_keep=n + 1)
    return out.logits[:, :-1], b["input_ids"][:, -n:]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, loss_on: str, digit_offset: int) -> torch.Tensor:
    import torch

    if loss_on == "digit":
        logits, targets = logits[:, digit_offset], targets[:, digit_offset]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def evaluate(model, enc: Encoded, pad_id: int, batch_size: int = 32) -> tuple[float, dict[str, float]]:
    """Greedy accuracy without generating: the answer is greedy iff every answer token is the argmax
    given the ones before it (teacher forcing), so one forward per batch decides it exactly."""
    import torch

    was = model.training
    model.eval()
    right: list[bool] = []
    for i in range(0, len(enc.ids), batch_size):
        part = Encoded(enc.ids[i:i + batch_size], enc.n_answer, enc.digit_offset, enc.answers[i:i + batch_size])
        with torch.no_grad():
            logits, targets = answer_logits(model, part, pad_id)
        right += (logits.argmax(-1) == targets).all(-1).tolist()
    model.train(was)
    by: dict[str, list[bool]] = {}
    for a, ok in zip(enc.answers, right):
        by.setdefault(str(a), []).append(ok)
    return sum(right) / len(right), {k: sum(v) / len(v) for k, v in sorted(by.items())}


# ---------------------------------------------------------------- the run


def _lr_lambda(cfg: FinetuneConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _save_checkpoint(out: Path, model, opt, sched, step: int, curve: Curve, cfg: FinetuneConfig,
                     good_checks: int) -> None:
    """Adapter + optimizer state + curve in `out/checkpoint`, replaced atomically."""
    import torch

    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=out))
    try:
        model.save_pretrained(tmp / "adapter")
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "good_checks": good_checks, "rng": torch.get_rng_state()}, tmp / "state.pt")
        (tmp / "curve.json").write_text(json.dumps(asdict(curve)))
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        old = out / "checkpoint"
        if old.exists():
            old.rename(out / ".checkpoint.old")
        tmp.rename(old)
        shutil.rmtree(out / ".checkpoint.old", ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resumable(out: Path, cfg: FinetuneConfig) -> bool:
    ck = out / "checkpoint" / "config.json"
    if not ck.exists():
        return False
    saved = json.loads(ck.read_text())
    free = ("threads", "eval_every", "checkpoint_every")  # change when checks happen, not what is trained
    differ = [k for k, v in asdict(cfg).items() if k not in free and saved.get(k) != v
              and not (isinstance(v, tuple) and list(v) == saved.get(k))]
    if differ:
        raise InputError(f"{out}/checkpoint was made with a different recipe ({', '.join(differ)}); "
                         "use another --out or the same settings")
    return True


def load_base(base: str, log=None):
    """The base model (float32, CPU or the best device) and its tokenizer, through the registry."""
    from countlens.models.handle import load

    return load(base, log=log)


def finetune(cfg: FinetuneConfig, out: str | Path, *, log=print, progress: bool = True) -> dict:
    """Train (or resume) a LoRA adapter; writes `out/adapter`, `out/learning_curve.{json,png}`,
    `out/finetune.json`. Returns the summary written to `finetune.json`."""
    import torch

    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    handle = load_base(cfg.base, log=log)
    tok, fmt = handle.tokenizer, handle.prompt_format
    template = load_template(cfg.template)
    pad_id = handle.pad_id
    torch.manual_seed(cfg.seed)
    base_model = handle.model
    resume = _resumable(out, cfg)
    if resume:
        model = PeftModel.from_pretrained(base_model, str(out / "checkpoint" / "adapter"), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(base_model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    curve, step, good = Curve(), 0, 0
    if resume:
        st = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, good = st["step"], st["good_checks"]
        torch.set_rng_state(st["rng"])
        curve = Curve(**json.loads((out / "checkpoint" / "curve.json").read_text()))
        log(f"resuming {out} at step {step}")

    held_rows = generate_examples(cfg.eval_n, seed=HELD_OUT_SEED + cfg.seed, template=template, lexicon=cfg.lexicon,
                                  min_len=cfg.min_len, max_len=cfg.max_len, max_count=cfg.max_count)
    held_prompts = {r["prompt"] for r in held_rows}
    held = encode_rows(tok, fmt, held_rows, template)
    t0 = time.perf_counter() - (curve.elapsed_s[-1] if curve.elapsed_s else 0.0)
    losses: list[float] = []

    def check(at: int) -> float:
        acc, by = evaluate(model, held, pad_id)
        curve.steps.append(at)
        curve.accuracy.append(acc)
        curve.by_count.append(by)
        curve.loss.append(sum(losses) / len(losses) if losses else float("nan"))
        curve.elapsed_s.append(time.perf_counter() - t0)
        losses.clear()
        return acc

    if not curve.steps:
        check(0)
    bar = tqdm(total=cfg.steps, initial=step, desc="finetune", unit="step", disable=not progress)
    bar.set_postfix(held_out=f"{curve.accuracy[-1]:.1%}")
    stopped_early = good >= cfg.patience
    while step < cfg.steps and not stopped_early:
        rows = [r for r in generate_examples(cfg.batch_size, seed=cfg.seed * 1_000_000 + step, template=template,
                                             lexicon=cfg.lexicon, min_len=cfg.min_len, max_len=cfg.max_len,
                                             max_count=cfg.max_count) if r["prompt"] not in held_prompts]
        enc = encode_rows(tok, fmt, rows, template)
        logits, targets = answer_logits(model, enc, pad_id, cfg.share_prefix)
        loss = loss_fn(logits, targets, cfg.loss_on, enc.digit_offset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = check(step)
            good = good + 1 if acc >= cfg.stop_at else 0
            stopped_early = good >= cfg.patience
            bar.set_postfix(held_out=f"{acc:.1%}", loss=f"{curve.loss[-1]:.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped_early:
            _save_checkpoint(out, model, opt, sched, step, curve, cfg, good)
    bar.close()
    if curve.steps[-1] != step:
        check(step)
    summary = {"base": cfg.base, "config": asdict(cfg), "steps": step, "stopped_early": stopped_early,
               "held_out_accuracy": curve.accuracy[-1], "held_out_by_count": curve.by_count[-1],
               "held_out_n": cfg.eval_n, "train_seconds": round(curve.elapsed_s[-1], 1),
               "trainable_parameters": sum(p.numel() for p in params),
               "prompt_format": fmt, "system_prompt": prompts.default_system_prompt(tok) if fmt == "chat" else None,
               "template": template.to_dict(), "examples_seen": step * cfg.batch_size}
    from countlens.io import write_json

    adapter, tmp = out / "adapter", out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for c in model.peft_config.values():  # the base's name, not this machine's cache path
        c.base_model_name_or_path = cfg.base
    model.save_pretrained(tmp)
    # What the merged model's handle reads: its native template and how it was made.
    write_json(tmp / "countlens.json", {"template": template.to_dict(), "accuracy": curve.accuracy[-1],
                                        "eval": f"greedy, {cfg.eval_n} held-out examples (teacher-forced exact match)",
                                        "steps": step, "train_minutes": round(curve.elapsed_s[-1] / 60, 1),
                                        "finetune": summary})
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)
    write_json(out / "learning_curve.json", asdict(curve))
    write_json(out / "finetune.json", summary)
    plot_curve(curve, out / "learning_curve.png", title=f"LoRA fine-tune of {cfg.base}")
    return summary


def merge_into(out: str | Path, *, log=None) -> Path:
    """`out/merged`: the run's adapter merged into its base, a plain Hugging Face folder."""
    from countlens.models.adapters import build_merged
    from countlens.models.registry import resolve

    out = Path(out)
    base = json.loads((out / "finetune.json").read_text())["base"]
    return build_merged(Path(resolve(base, log=log)), out / "adapter", out / "merged", log=log)


def plot_curve(curve: Curve, path: Path, title: str = "") -> None:
    from countlens.report._plt import plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve.steps, [100 * a for a in curve.accuracy], marker="o", label="held-out accuracy (greedy)")
    ax.axhline(100 / 6, color="grey", ls=":", label="chance (1/6)")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 101)
    ax2 = ax.twinx()
    ax2.plot(curve.steps[1:], curve.loss[1:], color="tab:red", alpha=0.6, label="training loss")
    ax2.set_ylabel("loss")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
