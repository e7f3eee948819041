"""The stages a user runs one at a time (`countlens patch ...`): one registry, files in and files out.

Each `Stage` is its inputs (a model: the files it reads, where it writes, `--n`), its options (the
stage's own model in `countlens.options`), and `run(inputs, options, load, log) -> summary`, which
reads the inputs, calls the engine (`run_patching`, `run_steering`, ...: no file I/O there) and saves
the result. cli.py makes one command per entry, with one flag per field; the study calls the same
engine functions on its own folders (study/run.py). `text(summary, inputs)` is what a human sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from countlens.options import (ActsOptions, AnalysesOptions, BenchOptions, DataOptions, ExportOptions, LoadOptions,
                               Options, PairsOptions, PatchOptions, ProbeOptions, SteerOptions, cli)
from countlens.report import text

MODEL = "organism, a folder, or hf:NAME."


def _n(what: str, after: str = "") -> Any:
    return Field(None, description=f"The first N {what}, in file order{after} (default: all; fewer, with a "
                                   "warning, if there are fewer).")


def warn_short(asked: int | None, got: int, what: str, source: Any, log: Callable[[str], None]) -> None:
    """--n asked for more than the file holds: say so (the stage still runs on what there is)."""
    from countlens.io import short_warning

    message = short_warning(asked, got, what, source)
    if message:
        log(message)


def warn_rows(n: int | None, data: Path, log: Callable[[str], None]) -> None:
    """--n rows of a JSONL file: warn when it holds fewer (reads at most n rows; nothing without --n)."""
    if n is not None:
        from countlens.io import read_jsonl

        warn_short(n, sum(1 for _ in read_jsonl(data, n)), "rows", data, log)


def loaded(model: str, load: LoadOptions) -> Any:
    from countlens.models.handle import load as load_model

    return load_model(model, **load.model_dump())


class DataInputs(Options):
    n: int = Field(1000, ge=1, description="Number of rows to generate.")
    out: Path = Field(description="Output JSONL.")


def run_data(i: DataInputs, o: DataOptions, load: None, log: Callable) -> dict:
    from countlens.data.generate import generate_dataset

    return generate_dataset(i.out, i.n, **o.model_dump())


class PairsInputs(Options):
    data: Path = Field(description="JSONL dataset.")
    tokenizer: str = Field(description="Tokenizer folder, hub name or 'organism'.")
    n: int = Field(200, ge=1, description="Pairs to build (balanced over N; fewer, with a warning, if the data "
                                          "cannot give that many).")
    out: Path = Field(description="Output JSONL.")


def run_pairs(i: PairsInputs, o: PairsOptions, load: None, log: Callable) -> dict:
    from countlens import build_pairs

    s = build_pairs(i.data, i.tokenizer, i.n, i.out, **o.model_dump())
    if s.get("short_reason"):
        log(f"warning: {s['short_reason']}")
    return s


class ExportInputs(Options):
    format: Literal["lm-eval", "inspect"] = Field(description="lm-eval (YAML + JSONL) | inspect (task file + JSONL).")
    data: Path = Field(description="JSONL dataset.")
    n: Optional[int] = _n("rows of --data")
    out: Path = Field(description="Folder for the task files.")
    model: Optional[str] = Field(None, description="Format the prompts for this model's tokenizer (BOS, chat) and "
                                 "name it in the printed command.")


def run_export(i: ExportInputs, o: ExportOptions, load: None, log: Callable) -> dict:
    from countlens.bench.export import export_task

    warn_rows(i.n, i.data, log)
    return export_task(i.data, i.out, i.format, n=i.n, model=i.model, **o.model_dump())


class PatchInputs(Options):
    model: str = Field("organism", description=MODEL)
    pairs: Path = Field(description="Pairs JSONL from `countlens data pairs`.")
    out: Path = Field(description="Output folder.")
    n: Optional[int] = _n("pairs of the pairs file")


def run_patch(i: PatchInputs, o: PatchOptions, load: LoadOptions, log: Callable) -> dict:
    import sys

    from tqdm.auto import tqdm

    from countlens.interp.patching import load_pairs, run_patching, save_result

    pairs = load_pairs(i.pairs, i.n)
    warn_short(i.n, len(pairs), "pairs", i.pairs, log)
    handle = loaded(i.model, load)
    with tqdm(total=len(pairs) * len(o.directions), desc="patch", unit="pair", file=sys.stderr) as bar:
        result = run_patching(handle, pairs, o, progress=bar.update, log=log)
    return save_result(result, i.out) | {"out": str(i.out), "model": i.model}


class ActsInputs(Options):
    model: str = Field("organism", description=MODEL)
    data: Path = Field(description="JSONL dataset.")
    out: Path = Field(description="Store folder (resumable: rerun to continue).")
    n: Optional[int] = _n("rows of --data")


def run_acts(i: ActsInputs, o: ActsOptions, load: LoadOptions, log: Callable) -> dict:
    from countlens.interp.acts import collect_activations

    warn_rows(i.n, i.data, log)
    return collect_activations(loaded(i.model, load), i.data, i.out, n=i.n, **o.model_dump()).to_dict() \
        | {"out": str(i.out)}


class ProbeInputs(Options):
    acts: Optional[Path] = Field(None, description="Store from `countlens acts`.")
    model: Optional[str] = Field(None, description="Without --acts: collect from this model first.")
    data: Optional[Path] = Field(None, description="Without --acts: the JSONL dataset.")
    out: Path = Field(description="Folder for probes.parquet, summary.json, directions/, figures.")
    n: Optional[int] = _n("examples: of the --acts store (in example order), or rows of --data")
    figures: bool = Field(True, description="Draw the probe_*.png figures.")


def run_probe(i: ProbeInputs, o: ProbeOptions, load: LoadOptions, log: Callable) -> dict:
    from countlens.interp.probes import run_probes

    if i.acts is not None:
        from countlens.interp.store import ActStore

        warn_short(i.n, len(ActStore.open(i.acts).examples), "examples", i.acts, log)
    elif i.data is not None:
        warn_rows(i.n, i.data, log)
    model = loaded(i.model, load) if i.model and i.acts is None and i.data is not None else i.model
    return run_probes(i.acts, model=model, data=i.data, out=i.out, n=i.n, figures=i.figures,
                      **o.model_dump()).summary


class SteerInputs(Options):
    model: str = Field("organism", description=MODEL)
    data: Path = Field(description="Examples JSONL (first part fits vectors, rest evaluates).")
    out: Path = Field(description="Output folder.")
    n: Optional[int] = _n("rows of --data", ", split by --train-frac")


def run_steer(i: SteerInputs, o: SteerOptions, load: LoadOptions, log: Callable) -> dict:
    import sys

    from tqdm.auto import tqdm

    from countlens.data.schema import read_examples
    from countlens.interp.steering import run_steering, save_steering

    rows = [ex.row() for _, ex in read_examples(i.data, i.n)]
    warn_short(i.n, len(rows), "rows", i.data, log)
    handle = loaded(i.model, load)
    n_layers = len(o.layers) if o.layers else handle.n_layers + 1
    with tqdm(total=n_layers * len(o.vectors), desc="steer", file=sys.stderr) as bar:
        result = run_steering(handle, rows, o, progress=bar.update)
    return save_steering(result, i.out) | {"out": str(i.out), "model": i.model}


class AnalyseInputs(Options):
    model: str = Field("organism", description=MODEL)
    data: Path = Field(description="Examples JSONL (the lens, DLA and attention read it).")
    out: Path = Field(description="Output folder.")
    only: Optional[str] = Field(None, description="Comma list of lens,dla,attention,atp (default: lens,dla,"
                                "attention, and atp when --pairs is given).")
    n: Optional[int] = _n("rows of --data")
    pairs: Optional[Path] = Field(None, description="Pairs JSONL for attribution patching (atp).")
    patch: Optional[Path] = Field(None, description="A `countlens patch` folder to compare AtP with.")
    probes: Optional[Path] = Field(None, description="A `countlens probe` folder: its directions (alignment with "
                                   "the digit readout) and accuracy beside the lens.")


def run_analyse(i: AnalyseInputs, o: AnalysesOptions, load: LoadOptions, log: Callable) -> dict:
    from countlens.errors import InputError
    from countlens.study.analyses import ANALYSES, run_analyses

    which = tuple(x.strip() for x in i.only.split(",") if x.strip()) if i.only else \
        tuple(a for a in o.run if i.pairs or a != "atp")
    bad = [w for w in which if w not in ANALYSES]
    if bad:
        raise InputError(f"--only: unknown analyses {bad} (choose from {', '.join(ANALYSES)})")
    if "atp" in which and i.pairs is None:
        raise InputError("--only atp needs --pairs (minimal pairs from `countlens data pairs`)")
    warn_rows(i.n, i.data, log)
    res = run_analyses(loaded(i.model, load), i.out, data=i.data, n=i.n, which=which, batch_size=o.batch_size,
                       template=o.template, pairs=i.pairs, patch=i.patch, probes=i.probes, log=log)
    return {k: r.summary for k, r in res.results.items()} | {"out": str(i.out), "model": i.model,
                                                               "table": res.to_frame().to_dict("records")}


class BenchInputs(Options):
    model: tuple[str, ...] = Field(description="SPEC, repeatable: organism, hf:NAME_OR_PATH, openai:MODEL or "
                                   "openai:MODEL@BASE_URL, anthropic:MODEL, bedrock:MODEL_ID.",
                                   json_schema_extra=cli(repeat=True))
    data: Path = Field(description="JSONL: ours, the original study's, or prompt+answer / input+target.")
    n: Optional[int] = _n("rows of --data")
    out: Path = Field(description="Folder for records, summary.json, records.parquet, figures.")
    template: Optional[tuple[str, ...]] = Field(
        None, description="Repeatable: built-in name (seed-v1, short, fewshot) or YAML/JSON file; renders each row "
        "with each template and compares them (McNemar). Default: the data file's own prompts.",
        json_schema_extra=cli(repeat=True))
    figures: bool = True


def run_bench_stage(i: BenchInputs, o: BenchOptions, load: LoadOptions, log: Callable) -> dict:
    from countlens.bench.display import RichProgress
    from countlens.bench.runner import run_bench

    s = run_bench(list(i.model), i.data, i.out, n=i.n, **o.model_dump(), **load.model_dump(), figures=i.figures,
                  progress=RichProgress(), templates=list(i.template) if i.template else None, warn=log)
    return s.to_dict() | {"out": str(i.out)}


@dataclass(frozen=True)
class Stage:
    name: str                                 # the command (under `group` when set)
    help: str
    inputs: type[Options]
    options: type[Options]
    run: Callable[..., dict]                  # run(inputs, options, load, log) -> the summary (--json prints it)
    text: Callable[[dict, Any], Any]          # what a human sees: a string or a rich renderable
    loads_model: bool = True                  # takes the LoadOptions flags
    group: str | None = None
    folder: str | None = None                 # the study's folder and config section for it (None: not a study stage)
    upstream: tuple[str, ...] = ()            # the study stages whose output it reads (their config is in its hash)

    def __call__(self, i: Options, o: Options, load: LoadOptions | None, log: Callable[[str], None]) -> dict:
        """Check a --model argument before anything is read or written (one line, exit 2, on a bad one),
        then run."""
        if load is not None and load.remote:       # NDIF: a key and a reachable service, nothing local
            from countlens.errors import InputError
            from countlens.models.nnsight_engine import check_remote

            if load.engine != "nnsight":
                raise InputError("--remote runs on NDIF through nnsight: add --engine nnsight")
            check_remote()
        elif isinstance(getattr(i, "model", None), str):
            from countlens.models.registry import preflight

            preflight(i.model)
        return self.run(i, o, load, log)


def _bench_text(s: dict, i: BenchInputs) -> Any:
    from rich.console import Group
    from rich.text import Text

    from countlens.bench.display import tables
    from countlens.bench.results import BenchSummary

    return Group(tables(BenchSummary.model_validate(s)),
                 Text(f"wrote {i.out}/summary.json, records.parquet, records.sqlite and figures"))


STAGES: tuple[Stage, ...] = (  # in the study's order
    Stage("generate", "Generate a balanced counting dataset (deterministic for a seed).", DataInputs, DataOptions,
          run_data, lambda s, i: text.data(s, i.out), loads_model=False, group="data", folder="data"),
    Stage("pairs", "Build token-aligned minimal pairs (counts N and N+1, one word changed).", PairsInputs,
          PairsOptions, run_pairs, lambda s, i: text.pairs(s, i.out), loads_model=False, group="data", folder="pairs",
          upstream=("data",)),
    Stage("export", "Write the counting task for lm-evaluation-harness or Inspect AI (same prompts, parsers, "
          "accuracy).", ExportInputs, ExportOptions, run_export, lambda s, i: text.export(s), loads_model=False,
          group="data"),
    Stage("bench", "Benchmark models on counting prompts: resumable, concurrent, with slices and CIs.", BenchInputs,
          BenchOptions, run_bench_stage, _bench_text, folder="bench", upstream=("data",)),
    Stage("patch", "Activation patching across sites x layers x positions (x heads).", PatchInputs, PatchOptions,
          run_patch, lambda s, i: text.patching(s), folder="patch", upstream=("data", "pairs")),
    Stage("acts", "Collect activations (float16, memory-mapped) at the last token, each list word, the category.",
          ActsInputs, ActsOptions, run_acts, lambda s, i: text.acts(s, i.out)),
    Stage("probe", "Linear probes per site x layer x position with controls, CIs, running count and directions.",
          ProbeInputs, ProbeOptions, run_probe, lambda s, i: text.probes(s, i.out, i.figures), folder="probes",
          upstream=("data",)),
    Stage("steer", "Steer the count: add mean-difference / probe directions, sweep layers x scales, with a random "
          "control.", SteerInputs, SteerOptions, run_steer, lambda s, i: text.steering(s), folder="steer",
          upstream=("data", "probes")),  # the study steers along the probes' saved directions on deep models
    Stage("analyse", "Logit lens, direct logit attribution, attention to the items and attribution patching.",
          AnalyseInputs, AnalysesOptions, run_analyse, lambda s, i: text.analyses(s), folder="analyses",
          upstream=("data", "pairs", "patch", "probes")),
)

STUDY_STAGES: tuple[str, ...] = (*(st.folder for st in STAGES if st.folder), "report")  # `countlens run`'s order
