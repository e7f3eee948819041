"""Train the counting organism: a 4-layer Llama that reads the prompt through its chat template.

Recipe (see docs/ORGANISM.md for how it was found): phase A learns to count on the short
`Type/List/Answer` template with a curriculum over list length and 30 % auxiliary membership
examples ("Type: fruit / Word: apple / Answer: (yes)"); phase B continues on a mix in which
the target template (`seed-v1`) dominates. The loss is on the completion `(N)` + end-of-turn
only; the count is never an input and never supervised except as the answer.

Phase C (interchange intervention training, Geiger et al. 2022) gives the organism a known
causal variable: the residual stream entering the last block at the answer position is swapped
between two prompts and the model is trained to answer the *source* prompt's count. Without it
the 4-layer model re-reads the list in its last block (swapping that residual moves almost no
answer), so there is no count before the last block for patching or steering to find.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from countlens.data.generate import generate_examples, make_example
from countlens.data.lexicon import load_lexicon
from countlens.data.templates import load_template
from countlens.io import atomic_path, write_json
from countlens.models.organism.recipe import FINAL_EVAL_N, Recipe
from countlens.models.organism.tokenizer import build_tokenizer
from countlens.models.prompts import encode, format_prompt

EVAL_SEED = 918_273  # held-out examples; never used to draw training data
AUX_PROMPT = "Type: {category}\nWord: {word}\nAnswer: "
NAMING_PROMPT = "Word: {word}\nType: "


def sample_batch(rng: random.Random, recipe: Recipe, step: int, tokenizer, lex) -> tuple[list[list[int]], list[int]]:
    """Token ids and completion start of one training batch (a single task per batch)."""
    cats = list(lex.categories)
    aux = rng.random() < recipe.aux_frac
    naming = aux and rng.random() < recipe.naming_frac
    if naming:
        # "Word: apple / Type: (fruit)": the lexicon itself, as pretraining teaches an LLM what a fruit is
        items = []
        for _ in range(recipe.batch):
            w = rng.choice(lex.words)
            places = lex.places(w)
            items.append((NAMING_PROMPT.replace("{word}", w), f"({places[0] if places[0] != 'noise' else 'none'})"))
    elif aux:
        items = []
        for _ in range(recipe.batch):
            cat = rng.choice(cats)
            yes = rng.random() < 0.5
            pool = lex.categories[cat] if yes else [w for w in lex.words if w not in lex.categories[cat]]
            items.append((AUX_PROMPT.replace("{category}", cat).replace("{word}", rng.choice(pool)),
                          "(yes)" if yes else "(no)"))
    else:
        if step < recipe.phase_a_steps:
            tpl = load_template("short")
            frac = min(1.0, step / max(1, recipe.curriculum_steps))
            max_len = round(2 + (recipe.max_len - 2) * frac)
        else:
            tpl = load_template(recipe.target_template if rng.random() < recipe.target_frac else "short")
            max_len = recipe.max_len
        items = []
        for _ in range(recipe.batch):
            length = rng.randint(1, max_len)
            count = rng.randint(0, min(recipe.max_count, length))
            ex = make_example(rng, lex, tpl, rng.choice(cats), count, length, "train")
            items.append((ex["prompt"], ex["expected_completion"]))
    seqs, starts = [], []
    for prompt, completion in items:
        p = encode(tokenizer, format_prompt(tokenizer, prompt, "chat"))
        c = encode(tokenizer, completion) + [tokenizer.eos_token_id]
        seqs.append(p + c)
        starts.append(len(p))
    return seqs, starts


def to_tensors(seqs: list[list[int]], starts: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels only on the completion (positions start at 0 for each row)."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, st:len(s)] = torch.tensor(s[st:])
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def quick_accuracy(model, tokenizer, template: str, n: int, max_count: int) -> float:
    """Argmax at the digit position on `n` held-out examples (lists 5-10): a fast greedy proxy."""
    from countlens.models.handle import pad_left

    rows = generate_examples(n, EVAL_SEED, template=template, max_count=max_count)
    seqs = [encode(tokenizer, format_prompt(tokenizer, r["prompt"], "chat") + "(") for r in rows]
    model.eval()
    batch = pad_left(seqs, tokenizer.pad_token_id)
    pred = model(**batch).logits[:, -1].argmax(-1)
    digits = torch.tensor([tokenizer.convert_tokens_to_ids(str(r["answer"])) for r in rows])
    model.train()
    return (pred == digits).float().mean().item()


def lr_at(step: int, recipe: Recipe) -> float:
    """Warmup, constant, then a cosine to 10 % over the last 20 % of the steps."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    tail = int(recipe.steps * 0.8)
    if step < tail:
        return recipe.lr
    return cosine_to_tenth(recipe.lr, (step - tail) / max(1, recipe.steps - tail))


def cosine_to_tenth(peak: float, t: float) -> float:
    """A cosine from `peak` at t = 0 to 10 % of it at t = 1 (phase B's tail, all of phase C)."""
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def iit_layer(recipe: Recipe) -> int:
    """The block whose output (= the last block's input) carries the count after phase C."""
    return max(0, recipe.n_layers - 2)


def interchange_loss(handle, seqs: list[list[int]], starts: list[int], layer: int,
                     gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the source's count when block `layer`'s output at the answer position
    comes from another prompt of the batch; also the share of answers that follow the source."""
    from countlens.models import hooks
    from countlens.sites import Site

    batch = to_tensors(seqs, starts, handle.tokenizer.pad_token_id)
    rows, at = torch.arange(len(seqs)), torch.tensor(starts)  # `(` sits at the completion start
    digits = batch["input_ids"][rows, at + 1]                   # the count token after `(`
    perm = torch.randperm(len(seqs), generator=gen)
    site, kw = Site("resid", layer), {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), hooks.capture(handle, [site], positions=at, to_cpu=False) as grabbed:
        handle.model(**kw)
    source = grabbed[site][:, 0][perm]
    with hooks.replace(handle, site, source, positions=at):
        logits = handle.model(**kw).logits[rows, at]
    target = digits[perm]
    follows = (logits.argmax(-1) == target).float().mean().item()
    return torch.nn.functional.cross_entropy(logits, target), follows


def build_model(recipe: Recipe, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.d_model, intermediate_size=recipe.d_mlp,
                         num_hidden_layers=recipe.n_layers, num_attention_heads=recipe.n_heads,
                         num_key_value_heads=recipe.n_heads, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=recipe.d_model ** -0.5,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def train(out: str | Path, recipe: Recipe | None = None, *, progress: bool = True,
          final_eval_n: int = FINAL_EVAL_N, threads: int | None = None, init_from: str | Path | None = None) -> dict:
    """Train (resuming from `out/checkpoint.pt` when present) and save an HF folder in `out`.

    `init_from`: an organism folder trained by phases A+B of this recipe; only phase C runs.
    """
    from tqdm.auto import tqdm

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One thread is far more robust than two when anything else shares a 2-core machine.
    torch.set_num_threads(threads or max(1, min(os.cpu_count() or 1, 8)))
    tokenizer = build_tokenizer()
    lex = load_lexicon("clean-v1")
    model = build_model(recipe, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    rng = random.Random(recipe.seed)
    ckpt = out / "checkpoint.pt"
    state = {"step": 0, "curve": [], "streak": 0, "seconds": 0.0}
    if init_from is not None and not ckpt.exists():
        state = _phase_ab_from(Path(init_from), model, recipe)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        if saved["recipe"] != asdict(recipe):
            raise SystemExit(f"{ckpt} was made with another recipe; remove it or use another --out")
        state = saved["state"]
        model.load_state_dict(saved["model"])
        if "ab_end" in state:
            opt = _phase_c_optimizer(model, recipe)
        opt.load_state_dict(saved["opt"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
    model.train()
    bar = tqdm(total=recipe.steps, initial=state["step"], disable=not progress or "ab_end" in state,
               desc="organism", dynamic_ncols=True)
    t0 = time.time() - state["seconds"]
    losses: list[float] = []
    step = state["step"]

    def checkpoint(at: int) -> None:
        state["step"], state["seconds"] = at, time.time() - t0
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                        "torch_rng": torch.get_rng_state(), "state": state, "recipe": asdict(recipe)}, tmp)

    while "ab_end" not in state and step < recipe.steps:  # phases A and B
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        batch = to_tensors(*sample_batch(rng, recipe, step, tokenizer, lex), tokenizer.pad_token_id)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            tpl = "short" if step <= recipe.phase_a_steps else recipe.target_template
            acc = quick_accuracy(model, tokenizer, tpl, recipe.eval_n, recipe.max_count)
            point = {"step": step, "loss": sum(losses) / len(losses), "template": tpl, "accuracy": acc,
                     "minutes": (time.time() - t0) / 60}
            losses = []
            state["curve"].append(point)
            bar.set_postfix(loss=f"{point['loss']:.3f}", acc=f"{acc:.3f}", tpl=tpl)
            in_b = step >= recipe.phase_a_steps + recipe.min_steps_b
            state["streak"] = state["streak"] + 1 if (acc >= recipe.stop_acc and in_b) else 0
            checkpoint(step)
            if state["streak"] >= 3:
                break
    bar.close()
    if "ab_end" not in state:
        state["ab_end"] = step
        opt = _phase_c_optimizer(model, recipe)
    step = _phase_c(model, tokenizer, lex, recipe, opt, rng, state, step, checkpoint, progress, t0)
    minutes = (time.time() - t0) / 60
    return save(out, model, tokenizer, recipe, state["curve"], step, minutes, final_eval_n)


def _phase_ab_from(folder: Path, model, recipe: Recipe) -> dict:
    """Start phase C from a saved A+B organism; its curve, steps and minutes carry over."""
    from safetensors.torch import load_file

    from countlens.models.registry import read_meta

    meta = read_meta(folder, required=True)
    ab = {k: v for k, v in asdict(recipe).items() if not k.startswith("iit_")}
    theirs = {k: v for k, v in meta["recipe"].items() if not k.startswith("iit_")}
    if theirs != ab:
        raise SystemExit(f"{folder} was trained with another phase A/B recipe: "
                         f"{ {k: v for k, v in theirs.items() if ab.get(k) != v} }")
    if meta["recipe"].get("iit_steps", 0) > 0:
        raise SystemExit(f"{folder} has been through phase C already")
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"{folder}/model.safetensors does not fit the recipe's model: "
                         f"missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    curve = json.loads((folder / "learning_curve.json").read_text())
    return {"step": meta["steps"], "ab_end": meta["steps"], "curve": curve, "streak": 0,
            "seconds": meta["train_minutes"] * 60}


def _phase_c_optimizer(model, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=recipe.iit_lr, weight_decay=recipe.weight_decay)


def _phase_c(model, tokenizer, lex, recipe: Recipe, opt, rng: random.Random, state: dict, step: int,
             checkpoint, progress: bool, t0: float) -> int:
    """Interchange intervention training: each step one ordinary phase-B batch (keeps the task and
    the auxiliary tasks) plus `iit_weight` x the interchange loss on a batch of counting prompts."""
    from tqdm.auto import tqdm

    from countlens.models.handle import ModelHandle, find_blocks

    handle = ModelHandle(model=model, tokenizer=tokenizer, blocks=find_blocks(model), name="organism",
                         path="", prompt_format="chat")
    counting = replace(recipe, aux_frac=0.0)
    start, end = state["ab_end"], state["ab_end"] + recipe.iit_steps
    bar = tqdm(total=recipe.iit_steps, initial=step - start, disable=not progress, desc="organism phase C",
               dynamic_ncols=True)
    losses: list[float] = []
    follows: list[float] = []
    while step < end:
        for g in opt.param_groups:
            g["lr"] = cosine_to_tenth(recipe.iit_lr, (step - start) / max(1, recipe.iit_steps))
        batch = to_tensors(*sample_batch(rng, recipe, recipe.steps, tokenizer, lex), tokenizer.pad_token_id)
        loss = model(**batch).loss
        seqs, starts = sample_batch(rng, counting, recipe.steps, tokenizer, lex)
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        iit, follow = interchange_loss(handle, seqs, starts, iit_layer(recipe), gen)
        opt.zero_grad(set_to_none=True)
        (loss + recipe.iit_weight * iit).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        follows.append(follow)
        step += 1
        bar.update(1)
        if (step - start) % recipe.eval_every == 0 or step == end:
            acc = quick_accuracy(model, tokenizer, recipe.target_template, recipe.eval_n, recipe.max_count)
            point = {"step": step, "loss": sum(losses) / len(losses), "template": recipe.target_template,
                     "accuracy": acc, "minutes": (time.time() - t0) / 60, "phase": "C",
                     "interchange": sum(follows) / len(follows)}
            losses, follows = [], []
            state["curve"].append(point)
            bar.set_postfix(loss=f"{point['loss']:.3f}", acc=f"{acc:.3f}", swap=f"{point['interchange']:.3f}")
            checkpoint(step)
    bar.close()
    return step


def save(out: Path, model, tokenizer, recipe: Recipe, curve: list[dict], step: int, minutes: float,
         final_eval_n: int) -> dict:
    """Write the HF folder, evaluate it through the real loading path, record the result."""
    from countlens.models.handle import load
    from countlens.models.organism.evaluate import evaluate

    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {"template": recipe.target_template, "prompt_format": "chat", "recipe": asdict(recipe),
            "steps": step, "train_minutes": round(minutes, 1)}
    write_json(out / "countlens.json", meta)
    result = evaluate(load(str(out), device="cpu"), n=final_eval_n, seed=EVAL_SEED + 1)
    meta |= {"accuracy": result["accuracy"], "eval": result}
    write_json(out / "countlens.json", meta)
    write_json(out / "learning_curve.json", curve)
    plot_curve(curve, out / "learning_curve.png")
    return meta


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["loss"] for p in curve], color="tab:blue", label="train loss (completion)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    for tpl, color in (("short", "tab:orange"), ("seed-v1", "tab:green")):
        pts = [p for p in curve if p["template"] == tpl]
        if pts:
            ax2.plot([p["step"] for p in pts], [p["accuracy"] for p in pts], ".-", color=color,
                     label=f"held-out accuracy ({tpl})")
    swaps = [p for p in curve if p.get("phase") == "C"]
    if swaps:
        ax2.plot([p["step"] for p in swaps], [p["interchange"] for p in swaps], "x-", color="tab:red",
                 label="phase C: answers following the swapped-in count")
        before = [p["step"] for p in curve if p.get("phase") != "C"]
        ax.axvline(before[-1] if before else 0, color="grey", lw=0.8, ls=":")  # phase C starts
    ax2.set_ylabel("held-out accuracy")
    ax2.set_ylim(0, 1.02)
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
