"""The organism's training recipe: every default in one dataclass, read by `countlens organism train`
(its flags' defaults) and by the trainer (models/organism/train.py). No torch here, so the CLI can
show the defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass

FINAL_EVAL_N = 2000   # fresh examples for the accuracy a trained organism reports


@dataclass
class Recipe:
    seed: int = 0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    d_mlp: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch: int = 64
    warmup: int = 200
    aux_frac: float = 0.3
    naming_frac: float = 0.5       # share of auxiliary batches that name a word's category instead
    curriculum_steps: int = 3600   # phase A: max list length grows from 2 to 10
    phase_a_steps: int = 5000      # phase A on the short template
    steps: int = 11000             # total (phase B = steps - phase_a_steps)
    target_template: str = "seed-v1"
    target_frac: float = 0.8       # phase B: share of counting batches on the target template
    max_count: int = 5
    max_len: int = 10
    eval_every: int = 250
    eval_n: int = 256
    stop_acc: float = 0.996        # stop early after 3 checks in a row at or above this
    min_steps_b: int = 1000        # phase B runs at least this long before stopping early
    iit_steps: int = 2400          # phase C: interchange intervention training after A+B stop
    iit_lr: float = 3e-4           # phase C peak rate (cosine to 10 %)
    iit_weight: float = 1.0        # interchange loss weight next to the ordinary batch loss
