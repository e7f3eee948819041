"""The study's configuration: one pydantic model, three presets, YAML in and out.

Every preset keeps the controls, confidence intervals and running-count probes; presets
only change sizes and grids.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from countlens.errors import InputError
from countlens.options import (AnalysesOptions, BenchOptions, DataOptions, LoadOptions, PairsOptions, PatchOptions,
                               MEMORY_BUDGET_TEXT, ProbeOptions, SteerOptions, parse_bytes)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def section(options: type[BaseModel], name: str, *, drop: tuple[str, ...] = (), defaults: dict | None = None,
            **own: Any) -> type[BaseModel]:
    """A StudyConfig section made from a stage's Options: the same fields, validation and defaults (so each
    is written once), less the keys the study sets for every stage (`drop`: template, memory budget),
    with the study's own choices (`defaults`) and keys (`own`, e.g. `n`, the examples it uses)."""
    fields: dict[str, Any] = dict(own)
    for key, info in options.model_fields.items():
        if key in drop:
            continue
        info = copy.copy(info)
        if defaults and key in defaults:
            info.default = defaults[key]
        fields[key] = (info.annotation, info)
    return create_model(name, __base__=_Strict, __doc__=options.__doc__, **fields)


DataConfig = section(DataOptions, "DataConfig", drop=("template",), n=(int, Field(600, ge=20)),
                     file=(Optional[str], Field(None, description="Use an existing JSONL instead of generating.")))
PairsConfig = section(PairsOptions, "PairsConfig", drop=("lexicon", "template"), n=(int, Field(40, ge=1)))
BenchConfig = section(BenchOptions, "BenchConfig", drop=("mode",), n=(int, Field(300, ge=1)),
                      modes=(list[Literal["generate", "score"]], ["generate", "score"]))
# "auto" positions: every position from the changed word on for a shallow model (<= DEEP layers), else
# the named positions (changed word, last list word, answer) for resid and the answer position for
# attn / mlp / head (fit_to_model); generate_layers / named_layers None: a spread on a deep model.
PatchConfig = section(PatchOptions, "PatchConfig", drop=("template", "memory_budget"),
                      defaults={"sites": ("resid", "attn", "mlp", "head"), "positions": "auto",
                                "component_positions": "auto", "generate": True})
ProbeConfig = section(ProbeOptions, "ProbeConfig", drop=("template",), n=(int, Field(600, ge=20)),
                      defaults={"sites": ("resid",), "positions": ("last", "items")})
SteerConfig = section(SteerOptions, "SteerConfig", drop=("template", "memory_budget", "directions"),
                      n=(int, Field(600, ge=40)),
                      defaults={"scales": (-1.0, 0.0, 1.0, 2.0, 3.0), "vectors": ("mean-diff", "probe")})
AnalysesConfig = section(AnalysesOptions, "AnalysesConfig", drop=("template",), n=(int, Field(200, ge=20)))


class StudyConfig(section(LoadOptions, "Load")):  # prompt_format, device, dtype, device_map
    _explicit: set = PrivateAttr(default_factory=set)   # dotted keys the user set (YAML or flags)
    model: str = "organism"
    template: Optional[str] = None          # default: the model's native template (or seed-v1)
    preset: Literal["quick", "seed", "full"] = "quick"
    # Working-set budget of the patching and steering forwards (rows are chunked to fit), e.g. 1GB, 512MB.
    memory_budget: str = MEMORY_BUDGET_TEXT
    data: DataConfig = DataConfig()
    pairs: PairsConfig = PairsConfig()
    bench: BenchConfig = BenchConfig()
    patch: PatchConfig = PatchConfig()
    probes: ProbeConfig = ProbeConfig()
    steer: SteerConfig = SteerConfig()
    analyses: AnalysesConfig = AnalysesConfig()

    @property
    def memory_budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    def stage_hash(self, stage: str) -> str:
        """Hash of everything that can change a stage's output (its section + model + upstream)."""
        from countlens.study.stages import STAGES

        upstream = next(([*st.upstream, st.folder] for st in STAGES if st.folder == stage), [])  # report: []
        d = self.model_dump(mode="json")
        key = {"model": d["model"], "template": d["template"], "prompt_format": d["prompt_format"],
               "dtype": d["dtype"], **{s: d[s] for s in upstream}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


DEEP = 8               # more decoder blocks than this: presets use layer subsets and named positions
GENERATE_LAYERS = 4
PROBE_LAYERS = 11
STEER_LAYERS = 8
DEEP_GENERATE_N = 50
NAMED_LAYERS = 11
QUICK_NAMED_LAYERS = 8  # the quick preset on a deep model: resid at the list words on fewer layers
# Sizes that fit a deep (30-layer, 135 M) model's whole quick study in <= 10 minutes on 2 CPU cores
# (BENCHMARKS.md); the seed and full presets keep the larger defaults.
DEEP_QUICK_SIZES = {"pairs.n": 24, "bench.n": 160, "probes.n": 260, "probes.folds": 3, "steer.n": 200,
                    "steer.batch_size": 16, "analyses.n": 64}


def spread_layers(n_layers: int, k: int) -> tuple[str, ...]:
    """`emb`, then k-1 blocks evenly spread over 0..n_layers-1, always including the last."""
    if k - 1 >= n_layers:
        return ("emb", *map(str, range(n_layers)))
    idx = sorted({round(i * (n_layers - 1) / (k - 2)) for i in range(k - 1)}) if k > 2 else [n_layers - 1]
    return ("emb", *map(str, idx))


def pick_layers(layers: tuple[str, ...], k: int) -> tuple[str, ...]:
    """k of `layers` evenly spread over the list, its first and last always included."""
    if k >= len(layers):
        return tuple(layers)
    return tuple(layers[i] for i in sorted({round(j * (len(layers) - 1) / (k - 1)) for j in range(k)}))


def fit_to_model(cfg: "StudyConfig", n_layers: int) -> "StudyConfig":
    """Fill every "auto" / None grid with what this model's depth allows (explicit values win).

    A deep model cannot afford every site x layer x head at every position on a laptop: its
    residual stream is patched at the named positions, components and heads at the answer
    position only, and steering, probes and the generate protocol run on a spread of layers.
    """
    deep = n_layers > DEEP
    p = cfg.patch.model_copy(update={
        "positions": cfg.patch.positions if cfg.patch.positions != "auto" else ("named" if deep else "all"),
        "component_positions": cfg.patch.component_positions if cfg.patch.component_positions != "auto"
        else ("last" if deep else (cfg.patch.positions if cfg.patch.positions != "auto" else "all")),
        "generate_layers": cfg.patch.generate_layers if cfg.patch.generate_layers is not None
        else (spread_layers(n_layers, GENERATE_LAYERS) if deep else None),
        "named_layers": cfg.patch.named_layers if cfg.patch.named_layers is not None
        else (spread_layers(n_layers, QUICK_NAMED_LAYERS if cfg.preset == "quick" else NAMED_LAYERS)
              if deep else None)})
    pr = cfg.probes.model_copy(update={"layers": cfg.probes.layers if cfg.probes.layers is not None
                                       else (spread_layers(n_layers, PROBE_LAYERS) if deep else None)})
    # Steering's layers are among the probes' so that it can steer along their saved directions.
    st = cfg.steer.model_copy(update={"layers": cfg.steer.layers if cfg.steer.layers is not None
                                      else (pick_layers(pr.layers or spread_layers(n_layers, PROBE_LAYERS),
                                                        STEER_LAYERS) if deep else None),
                                      "generate_n": cfg.steer.generate_n if cfg.steer.generate_n is not None
                                      else (DEEP_GENERATE_N if deep else None)})
    out = cfg.model_copy(update={"patch": p, "probes": pr, "steer": st})
    if deep and cfg.preset == "quick":  # sizes that fit a deep model's quick study in ~10 minutes on 2 cores
        for key, value in DEEP_QUICK_SIZES.items():
            if key not in cfg._explicit:
                section, field = key.split(".")
                setattr(out, section, getattr(out, section).model_copy(update={field: value}))
    out._explicit = cfg._explicit
    return out


PRESETS: dict[str, dict] = {
    "quick": {},
    "seed": {  # the original study's protocol, on any HF model, with our controls
        "data": {"n": 5000},
        "pairs": {"n": 200, "change_at": "first"},
        "bench": {"n": 1000},
        "patch": {"sites": ["resid"], "positions": "last", "component_positions": "last", "generate": True,
                  "directions": ["denoise"]},
        "probes": {"n": 5000, "folds": 1, "test_size": 0.2},
        "steer": {"n": 1000},
    },
    "full": {
        "data": {"n": 5000},
        "pairs": {"n": 500, "change_at": "random"},
        "bench": {"n": 2000},
        "patch": {"sites": ["resid", "attn", "mlp", "head"], "positions": "all", "generate": True,
                  "directions": ["denoise", "noise"]},
        "probes": {"n": 5000, "sites": "resid,attn,mlp", "positions": ["last", "items", "prefix"]},
        "steer": {"n": 2000, "positions": "last", "scales": [-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(file: str | Path | None = None, preset: str | None = None, **overrides) -> StudyConfig:
    """Preset defaults, then the YAML file, then command-line overrides (None = not given)."""
    user: dict = {}
    if file is not None:
        try:
            user = yaml.safe_load(Path(file).read_text()) or {}
        except FileNotFoundError:
            raise InputError("file not found", file=str(file)) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"cannot parse YAML ({getattr(e, 'problem', e)})", file=str(file),
                             line=mark.line + 1 if mark else None) from None
        if not isinstance(user, dict):
            raise InputError("expected a mapping", file=str(file))
    name = preset or user.get("preset") or "quick"
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}' (quick, seed, full)")
    merged = _merge(_merge({"preset": name}, PRESETS[name]), user)
    merged = _merge(merged, {k: v for k, v in overrides.items() if v is not None})
    merged["preset"] = name
    explicit = _paths(user) | _paths({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = StudyConfig.model_validate(merged)
        cfg._explicit = explicit
        return cfg
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        line = _line_of(file, err["loc"]) if file else None
        raise InputError(err["msg"].lower(), file=str(file) if file else "config", line=line, field=loc) from None


def _paths(d: dict, prefix: str = "") -> set[str]:
    """Dotted keys a user set (e.g. {"bench.n", "model"}), so model-fitted sizes never override them."""
    out: set[str] = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _paths(v, key + ".") if isinstance(v, dict) else {key}
    return out


def _line_of(file, loc) -> int | None:
    """The line of a (possibly nested) key in a YAML file, for error messages.

    The line of the deepest part of `loc` found: the key itself (not the mapping under it, which
    starts a line later), or the list element an index points at.
    """
    try:
        node = yaml.compose(Path(file).read_text())
    except Exception:  # noqa: BLE001
        return None
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def to_yaml(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
