"""The typed schema of every stage's summary.json (and the study's model.json): what the engine writes
and the report reads.

One schema a file, so a key the report needs cannot be renamed on one side only: the stages check
their summary against it before writing (`check`), and the report reads files through it (`read`),
which turns a missing or renamed key into a one-line error naming the file and the field instead of
a silent "n/a". Schemas declare what readers use; a stage may write more keys (extra keys are kept:
the files are a contract that is only ever added to). Numbers a stage writes as NaN or null are
`float | None`. The benchmark's summary has had its own pydantic schema from the start
(`countlens.bench.results.BenchSummary`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from countlens.errors import InputError

Num = Optional[float]
Layer = Union[int, str]   # a block index or "emb"
S = TypeVar("S", bound="Summary")


M = TypeVar("M", bound=BaseModel)


def read(schema: type[M], path: str | Path) -> M | None:
    """A JSON file validated against `schema` (any pydantic model); None when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not JSON ({e.msg})", file=str(path), line=e.lineno) from None
    return parse(schema, obj, str(path))


def parse(schema: type[M], obj: Any, where: str = "summary") -> M:
    """`obj` as `schema`; a missing or mistyped key is one InputError naming `where` and the field."""
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InputError(f"{err['msg'].lower()} (a {schema.__name__} from another countlens version?)",
                         file=where, field=field) from None


class Summary(BaseModel):
    """A summary file's schema: declared keys typed, any other key kept as it is."""
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    @classmethod
    def read(cls: type[S], path: str | Path) -> S | None:
        return read(cls, path)

    @classmethod
    def check(cls, obj: dict, where: str = "summary") -> dict:
        """`obj` unchanged, once it validates: stages call this before writing their summary."""
        parse(cls, obj, where)
        return obj


class Interval(Summary):
    """A value with its 95 % interval (the key of the value varies: accuracy, mean, diff...)."""
    ci_low: Num = None
    ci_high: Num = None


# ------------------------------------------------------------------------------------ data, model

class Mean(Interval):
    mean: Num


class DataSummary(Summary):
    rows: int
    by_count: dict[str, int]


class ExampleToken(Summary):
    i: int
    text: str
    name: Optional[str] = None


class Example(Summary):
    tokens: list[ExampleToken]


class ModelSummary(Summary):
    """model.json: what the study ran on and one prompt as its tokens."""
    name: str
    path: Optional[str] = None
    architecture: str
    n_layers: int
    d_model: Optional[int] = None
    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    parameters: int
    dtype: str
    device: str
    prompt_format: str
    bos_rule: str
    bos_token: Optional[str] = None
    default_system_prompt: Optional[str] = None
    template: str
    gguf: Optional[dict[str, Any]] = None
    finetune: Optional[dict[str, Any]] = None
    example: Optional[Example] = None

    @field_validator("name", "path", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return None if v is None else str(v)   # a Path is written as its text


# ------------------------------------------------------------------------------------------ patch

class PatchLayer(Interval):
    layer: Layer
    mean: Num
    n_pairs: int = 0
    delta_ld: Num = None
    delta_ld_ci_low: Num = None
    delta_ld_ci_high: Num = None
    logit_diff: Num = None
    p_target: Num = None
    exact_match: Num = None
    exact_match_ci_low: Num = None
    exact_match_ci_high: Num = None
    ratio_of_means: Num = None


class PatchGenerate(Summary):
    layer: Layer
    gen_changed: Num
    gen_exact_match: Num
    gen_abs_shift: Num
    gen_exact_match_ci_low: Num = None
    gen_exact_match_ci_high: Num = None


class PatchDirection(Summary):
    """One direction's curves (the top level of the summary repeats the one shown)."""
    per_layer: list[PatchLayer]
    by_n: dict[str, list[dict[str, Any]]] = {}
    generate: list[PatchGenerate] = []
    informative_pairs: int
    ld_gap_threshold: float
    mean_ld_gap: Num = None


class Cell(Interval):
    layer: Layer
    head: Optional[int] = None
    mean: Num
    p_adj: Num = None


class CellsSummary(Summary):
    n_cells: int
    significant: int
    alpha: float = 0.05
    top_at_answer: dict[str, list[Cell]] = {}


class PatchSummary(PatchDirection):
    direction: str
    by_direction: dict[str, PatchDirection] = {}
    method: str
    sites: list[str]
    positions: str
    directions: list[str]
    total_pairs: int
    dropped_misaligned: int
    kept_pairs: int
    filter: str
    filter_fallback: Optional[str] = None
    example: Optional[dict[str, Any]] = None
    cells: Optional[CellsSummary] = None


# ----------------------------------------------------------------------------------------- probes

class ProbeLayer(Interval):
    layer: Layer
    accuracy: Num
    control_accuracy: Num = None
    selectivity: Num = None
    selectivity_ci_low: Num = None
    selectivity_ci_high: Num = None
    r2: Num = None


class Baseline(Interval):
    accuracy: Num
    control_accuracy: Num = None


class RunningCount(Summary):
    site: str
    layers: list[Layer]
    items: list[int]
    n: list[int]
    accuracy: list[list[Num]]
    control_accuracy: list[list[Num]] = []
    majority: list[Num] = []


class ProbeSummary(Summary):
    site: Optional[str] = None
    n_examples: Optional[int] = None
    folds: Optional[int] = None
    per_layer: list[ProbeLayer]
    best_layer: Optional[ProbeLayer] = None
    input_baseline: Optional[Baseline] = None
    majority: Optional[Baseline] = None
    running_count: Optional[RunningCount] = None


# ------------------------------------------------------------------------------------------ steer

class SteerBest(Interval):
    layer: Layer
    scale: float
    success_rate: Num
    n: int = 0
    control_success_rate: Num = None
    control_ci_low: Num = None
    control_ci_high: Num = None
    mean_shift: Num = None
    wrong_way: Num = None
    by_n: dict[str, Num] = {}


class SteerVector(Summary):
    best: Optional[SteerBest] = None
    last_block: Optional[SteerBest] = None
    per_layer: list[dict[str, Any]] = []


class SteerGenerate(Summary):
    vector: str
    layer: Optional[Layer] = None
    scale: float
    parse_rate: Num
    success_rate: Num
    correct_rate: Num


STEERED = ("mean-diff", "one-more", "probe")   # the steered vectors (options.VECTORS less the random control)


class SteerSummary(Summary):
    mean_diff: Optional[SteerVector] = Field(None, alias="mean-diff")
    one_more: Optional[SteerVector] = Field(None, alias="one-more")
    probe: Optional[SteerVector] = None
    best: Optional[SteerBest] = None        # mean-diff's best setting (the headline)
    generate: list[SteerGenerate] = []
    n_train: int
    n_eval: int
    unsteered_accuracy: Num
    options: dict[str, Any] = {}

    def vectors(self) -> dict[str, SteerVector]:
        """{summary key: that vector's results} for the vectors that ran, in STEERED order."""
        got = dict(zip(STEERED, (self.mean_diff, self.one_more, self.probe)))
        return {k: v for k, v in got.items() if v is not None}

    @field_validator("best", mode="before")
    @classmethod
    def _no_best(cls, v: Any) -> Any:
        return v or None   # no best setting is written as {}


# --------------------------------------------------------------------------------------- analyses

class LensLayer(Interval):
    layer: Layer
    accuracy: Num
    p_correct: Num = None
    rank: Num = None


class AlignmentLayer(Summary):
    layer: Layer
    one_more_vs_step: Num = None
    mean_diff_vs_step: Num = None
    mean_diff_vs_target: Num = None


class Alignment(Summary):
    per_layer: list[AlignmentLayer]
    random_abs_cosine: Num


class Own(Interval):
    accuracy: Num
    p_correct: Num = None
    n: int


class Chance(Summary):
    uniform: Num
    majority: Num


class LensSummary(Summary):
    n_rows: int
    k_max: int
    per_layer: list[LensLayer]
    own: Own
    first_layer_90: Optional[Layer] = None
    chance: Chance
    last_layer_max_abs_diff: Num = None
    note: str = ""
    alignment: Optional[Alignment] = None


class Component(Mean):
    component: str


class DLASummary(Summary):
    n_rows: int
    metric: str
    total: Mean
    max_abs_sum_error: Num = None
    remainder_share: Num = None
    top_heads: list[Component]
    top_mlps: list[Component]
    per_layer: list[dict[str, Any]] = []
    note: str = ""


class AttentionHead(Interval):
    layer: int
    head: int
    diff: Num
    match_mean: Num = None
    nonmatch_mean: Num = None
    n: int = 0


class AttentionSummary(Summary):
    n_examples: int
    interval: str
    top_heads: list[AttentionHead]
    top_heads_value: list[AttentionHead] = []


class Agreement(Summary):
    site: str
    n_cells: Optional[int] = None
    spearman_cells: Num = None
    spearman: Num = None
    pearson: Num = None
    recall_at_top: Num = None


class AtPSummary(Summary):
    method: str
    kept_pairs: int
    forwards: int
    backwards: int
    seconds: Num = None
    per_layer: list[dict[str, Any]] = []
    agreement: list[Agreement] = []
