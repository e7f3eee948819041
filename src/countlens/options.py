"""Each stage's options, written once: its defaults, its validation, its CLI flags and its help.

The CLI builds its flags from these models (`cli.flags`), the study builds its config sections from
them (`study.config.section`), and the engine takes an instance. A frozen pydantic model per stage,
like a scikit-learn estimator's parameters: set in the constructor, never mutated, dumped as JSON.

Sequence fields also take a comma-separated string (`"resid,attn"`, `"emb,0,5"`), which is what a
flag or a YAML scalar gives; bad values raise one `InputError` naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from countlens.errors import InputError


def parse_bytes(text: str | int) -> int:
    """'1GB', '512MB', '300k' or a number of bytes -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise InputError(f"memory budget must look like 1GB, 512MB or a number of bytes (got '{text}')",
                         field="memory_budget")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(m.group(2) or "b"))


MEMORY_BUDGET_TEXT = "1GB"   # the working set a forward may use, unless told (patching, steering, AtP, the study)
MEMORY_BUDGET = parse_bytes(MEMORY_BUDGET_TEXT)


def _items(v: Any) -> Any:
    """'a,b' or ['a', 'b,c'] -> ('a', 'b', 'c'); anything else unchanged (pydantic then checks it)."""
    if isinstance(v, str):
        v = [v]
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(p.strip() for x in v for p in x.split(",") if p.strip())
    return v


def _layers(v: Any) -> Any:
    """Layers as written anywhere: "emb,0,5", [emb, 0, 14] (YAML numbers) or ("emb", 3) -> strings."""
    v = _items(v) if isinstance(v, str) else v
    if isinstance(v, (list, tuple)):
        return tuple(str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)
    return v


def _scales(v: Any) -> Any:
    """Scales as numbers, with 0 (the unsteered baseline) always among them."""
    if isinstance(v, str):
        try:
            v = tuple(float(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise InputError(f"scales must be numbers separated by commas (got '{v}')", field="scales") from None
    if isinstance(v, (list, tuple)) and 0 not in v:
        v = (0.0, *v)
    return v


def _directions(v: Any) -> Any:
    return ("denoise", "noise") if v == "both" else _items(v)


def _vectors(v: Any) -> Any:
    """A flag's 'both' / 'mean-diff' / 'probe' adds the one-more and random vectors; a list is taken as is."""
    if isinstance(v, str) and v in ("both", "mean-diff", "probe"):
        kinds = ("mean-diff", "probe") if v == "both" else (v,)
        return (*kinds, "one-more", "random")
    return _items(v)


Items = BeforeValidator(_items)
Layers = Annotated[Optional[tuple[str, ...]], BeforeValidator(_layers)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Site = Literal["resid", "attn", "mlp", "head"]
Position = Literal["last", "items", "prefix"]
Analysis = Literal["lens", "dla", "attention", "atp"]
CONTROLS = ("majority", "control", "shuffled", "input")
DEFAULT_SCALES = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
VECTORS = ("mean-diff", "one-more", "probe", "random")


def cli(**extra: Any) -> dict:
    """How a field appears as a flag: flag="--name", default=shown default, type=the flag's type,
    repeat=True (the flag may be given several times), hide=True (no flag)."""
    return {"cli": extra}


class Options(BaseModel):
    """Frozen, strict; a bad value is one InputError naming the field."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise input_error(e) from None


def input_error(e: ValidationError) -> InputError:
    """The first error of a validation, as one line naming the field (an InputError raised inside a
    validator comes out as it was)."""
    err = e.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, InputError):
        return inner
    msg = str(inner) if isinstance(inner, Exception) else err["msg"]
    return InputError(msg[0].lower() + msg[1:], field=".".join(str(p) for p in err["loc"]) or None)


class LoadOptions(Options):
    """How a local model is loaded and prompted (every command that runs one)."""
    prompt_format: Literal["auto", "chat", "raw"] = Field("auto", description="auto | chat | raw")
    device: Optional[str] = Field(None, description="cpu, cuda, cuda:1, mps (default: the best there is).")
    dtype: Optional[str] = Field(None, description="float32 | bfloat16 | float16 | auto (default: float32).")
    device_map: Optional[str] = Field(None, description="accelerate dispatch, e.g. auto (GPUs, then CPU, then "
                                      "disk).")
    max_memory: Optional[str] = Field(None, description="With --device-map: per-device caps, e.g. "
                                      "0=20GiB,1=20GiB,cpu=64GiB.")
    offload_folder: Optional[str] = Field(None, description="With --device-map: where layers offloaded to disk go.")
    engine: Literal["native", "nnsight"] = Field("native", description="native (PyTorch hooks, KV-cache reuse) | "
                                                 "nnsight (every forward an nnsight trace).")
    remote: bool = Field(False, description="With --engine nnsight: run on NDIF (a hub name NDIF hosts; "
                         "NDIF_API_KEY).")


class DataOptions(Options):
    """`countlens data generate`: a balanced counting dataset, deterministic for a seed."""
    seed: int = 0
    template: str = Field("seed-v1", description="Built-in name or YAML/JSON file.")
    lexicon: str = Field("clean-v1", description="Built-in name or YAML/JSON file.")
    min_len: int = 5
    max_len: int = 10
    max_count: int = 5
    categories: Annotated[Optional[tuple[str, ...]], Items] = Field(
        None, description="Repeat or comma-separate (default: every category).", json_schema_extra=cli(repeat=True))


class PairsOptions(Options):
    """`countlens data pairs`: token-aligned minimal pairs (counts N and N+1, one word changed)."""
    change_at: Literal["first", "last", "random", "all"] = Field("first", description="first|last|random|all")
    seed: int = 0
    lexicon: str = "clean-v1"
    template: Optional[str] = Field(None, description="Template of the rows (default: each row's).")


class BenchOptions(Options):
    """`countlens bench`: how each prompt is asked and answered."""
    mode: Literal["generate", "score"] = Field(
        "generate", description="generate | score (local models: P(0..K) in one forward).")
    concurrency: int = Field(8, ge=1, description="Parallel requests (API models).")
    rpm: Optional[float] = Field(None, description="Requests per minute limit (API models).")
    max_new_tokens: int = 8
    prefill: bool = Field(False, description="Start the reply with '(' where the backend allows.")
    system: Optional[str] = Field(None, description="System prompt (default: none).")
    batch_size: int = Field(64, ge=1, description="Local models.")
    timeout: float = Field(60.0, description="Per request, seconds (API models).")
    max_retries: int = Field(6, description="Retries on 429/5xx/timeouts (API models).")


class PairOptions(Options):
    """What activation patching and attribution patching share: layers, directions, which pairs are
    kept, batches and intervals (the one source of these defaults for both)."""
    layers: Layers = Field(None, description="Comma list, e.g. emb,0,5 (default: every layer).")
    directions: Annotated[tuple[Literal["denoise", "noise"], ...], BeforeValidator(_directions)] = Field(
        ("denoise",), description="denoise | noise | both",
        json_schema_extra=cli(flag="--direction", default="denoise"))
    batch_size: int = Field(16, ge=1, description="Pairs per batch (halved on CUDA OOM).")
    memory_budget: Bytes = Field(MEMORY_BUDGET, description="Working set per forward; rows are chunked.",
                                 json_schema_extra=cli(default=MEMORY_BUDGET_TEXT, type=str))
    filter: Literal["greedy", "sampled", "none"] = Field("greedy", description="greedy | sampled | none: keep "
                                                         "pairs answered right.")
    k_samples: int = Field(5, description="Samples per prompt for --filter sampled.")
    n_boot: int = Field(1000, description="Bootstrap resamples for the per-cell intervals.")
    seed: int = 0
    template: Optional[str] = Field(None, description="Default: the model's native template.")


class PatchOptions(PairOptions):
    """Activation patching: which sites, layers and positions, how pairs are kept, how rows are batched."""
    sites: Annotated[tuple[Site, ...], Items] = Field(("resid",), description="Comma list of resid,attn,mlp,head.")
    positions: str = Field("last", description="last | all (from the changed word on) | named (changed word, last "
                           "list word, answer) | offsets from the end, e.g. -1,-2.")
    component_positions: Optional[str] = Field(None, description="Positions for attn/mlp/head (default: as "
                                               "--positions).")
    generate_layers: Layers = Field(None, description="Layers of the generate protocol (default: every swept "
                                    "resid layer).")
    named_layers: Layers = Field(None, description="With positions=named: resid layers patched at the changed and "
                                 "last list word (every layer is patched at the answer; default: all).")
    method: Literal["fast", "reference"] = Field("fast", description="fast (KV-cache reuse) | reference (full "
                                                 "forwards).")
    generate: bool = Field(False, description="Also patch-generate-parse (the original protocol).")
    max_new_tokens: int = 8


class AtPOptions(PairOptions):
    """Attribution patching (gradients instead of one forward per cell); the rest as `PatchOptions`."""
    sites: Annotated[tuple[Site, ...], Items] = ("resid", "attn", "mlp", "head")
    positions: str = "all"                  # all | last | named | offsets from the end ("-1,-2")
    top_k: int = 20                         # cells listed in the summary


class LensOptions(Options):
    """Options of `run_lens`; the one source of their defaults."""
    batch_size: int = Field(32, ge=1)
    positions: tuple[Literal["answer", "items"], ...] = Field(("answer", "items"), min_length=1)
    k_max: Optional[int] = Field(None, ge=1)   # count tokens 0..k_max; None: the largest count in the rows
    n_boot: int = Field(1000, ge=1)
    seed: int = 0


class DLAOptions(Options):
    """Options of `run_dla`; the one source of their defaults."""
    batch_size: int = Field(32, ge=1)
    k_max: Optional[int] = Field(None, ge=1)   # count tokens 0..k_max; None: the largest answer in the rows
    n_boot: int = Field(1000, ge=1)
    seed: int = 0
    top: int = Field(10, ge=1)                 # heads and MLPs listed in the summary


class AttentionOptions(Options):
    """Every default of the attention analysis."""
    batch_size: int = 16
    n_boot: int = 1000
    seed: int = 0
    top_k: int = 10              # heads listed in the summary
    value_weighted: bool = True  # also the value-weighted attention (one more forward per batch)


class ActsOptions(Options):
    """`countlens acts`: what is captured, where, and in which chunks (the resume unit)."""
    sites: Annotated[tuple[str, ...], Items] = Field(("resid",), description="Comma list of resid,attn,mlp,head "
                                                     "(or resid.3).")
    positions: Annotated[tuple[Position, ...], Items] = Field(("last", "items"), description="Comma list of "
                                                              "last,items,prefix.")
    layers: Layers = Field(None, description="Comma list, e.g. emb,0,5 (default: all).")
    batch_size: int = Field(16, ge=1)
    chunk_size: int = Field(256, ge=1, description="Examples per flushed chunk (the resume unit).")
    template: Optional[str] = Field(None, description="Default: each row's, else the model's.")
    lexicon: str = Field("clean-v1", description="For match flags when rows lack match_positions.")


class ProbeOptions(Options):
    """Linear probes: the split, the sites and positions, the controls, the fit; and the capture when
    probing a model directly (batch_size, layers, template)."""
    split: Literal["random", "category", "length"] = Field("random", description="random | category | length")
    folds: int = Field(5, ge=1, description="k-fold CV; 1 = one held-out split of --test-size.")
    test_size: float = Field(0.2, gt=0, lt=1)
    sites: Annotated[Optional[tuple[str, ...]], Items] = Field(
        None, description="Site kinds or names (default: all in the store; resid when collecting).")
    positions: Annotated[Optional[tuple[Position, ...]], Items] = Field(
        None, description="last,items,prefix (default: all in the store; last,items when collecting).")
    layers: Layers = Field(None, description="When collecting: comma list, e.g. emb,0,5 (default: all).")
    controls: Annotated[tuple[Literal[CONTROLS], ...], Items] = Field(
        CONTROLS, description="Comma list of majority,control,shuffled,input.")
    C: float = Field(1.0, gt=0, description="Logistic regression inverse penalty.")
    alpha: Optional[float] = Field(None, description="Ridge penalty (default: n_features).")
    n_boot: int = Field(1000, description="Bootstrap resamples for the selectivity and R2 CIs (accuracies use "
                        "Wilson intervals).")
    seed: int = 0
    n_jobs: Optional[int] = Field(None, description="Parallel workers over layers (default: CPUs).")
    batch_size: int = Field(16, ge=1, description="When collecting.")
    template: Optional[str] = Field(None, description="When collecting.")


class SteerOptions(Options):
    """Steering: the vectors, where they are added, at which scales, and how it is checked."""
    layers: Layers = Field(None, description="Comma list, e.g. emb,0,2 (default: emb and every block).")
    scales: Annotated[tuple[float, ...], BeforeValidator(_scales)] = Field(
        DEFAULT_SCALES, description="Comma list of scales, both signs (0 is always added).")
    positions: Literal["last", "from-list", "all"] = Field("last", description="last | from-list | all")
    vectors: Annotated[tuple[Literal[VECTORS], ...], BeforeValidator(_vectors)] = Field(
        ("mean-diff", "probe", "one-more", "random"), description="mean-diff | probe | both (one-more and random always).",
        json_schema_extra=cli(flag="--vector", default="both"))
    train_frac: float = Field(0.5, gt=0, lt=1, description="Share of rows used to fit the vectors.")
    batch_size: int = Field(64, ge=1)
    generate: bool = Field(True, description="Greedy generation at the best settings.")
    generate_n: Optional[int] = Field(None, description="Generation checks on the first N held-out examples "
                                      "(default: all).")
    max_new_tokens: int = 6
    n_boot: int = 1000
    seed: int = 0
    template: Optional[str] = None
    method: str = Field("fast", description="fast (KV-cached last position; positions=last) | reference.")
    directions: Optional[str] = Field(
        None, description="A `countlens probe` output folder: steer along its saved directions instead of fitting "
        "them (then every example is held out: use ones the probes did not see).")
    memory_budget: Bytes = Field(MEMORY_BUDGET, description="Bytes of KV-cache copies (+ logits) per fast forward.",
                                 json_schema_extra=cli(default=MEMORY_BUDGET_TEXT, type=str))


class AnalysesOptions(Options):
    """The analyses of the counting literature: which of them, and their batches."""
    run: Annotated[tuple[Analysis, ...], Items] = Field(("lens", "dla", "attention", "atp"),
                                                       json_schema_extra=cli(hide=True))
    batch_size: int = Field(16, ge=1)
    template: Optional[str] = None


class ExportOptions(Options):
    """`countlens data export`: the prompts and generation settings the exported task uses."""
    template: Optional[str] = Field(None, description="Render every row with this template (default: the rows' "
                                    "own prompts).")
    prompt_format: Literal["auto", "chat", "raw"] = Field("auto", description="With --model: auto | chat | raw, "
                                                          "as `countlens bench`.")
    max_new_tokens: int = 8
    batch_size: int = Field(16, ge=1, description="The batch size the printed lm_eval command uses.")

