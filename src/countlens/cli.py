"""Command line: argument parsing and display only; the work happens in the library.

Conventions: `--json` prints exactly one JSON object (the summary) on stdout; progress and
logs go to stderr; `--n N` is the first N of what a command reads (rows, pairs or examples, in
file order; each --help says which), and fewer than asked is a warning on stderr with the
reason; bad input exits 2 with one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from countlens.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="countlens: how does a language model count?")
data_app = typer.Typer(no_args_is_help=True, help="Generate, audit and pair counting datasets.")
app.add_typer(data_app, name="data")
organism_app = typer.Typer(no_args_is_help=True, help="The shipped counting organism: train, info, path.")
app.add_typer(organism_app, name="organism")

JSON = typer.Option(False, "--json", help="Print one JSON summary object on stdout.")


def _version(value: bool) -> None:
    if value:
        from countlens import __version__

        sys.stdout.write(f"countlens {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """countlens: how does a language model count?"""


def emit(summary: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """The one place that writes a command's result to stdout."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        sys.stdout.write((human if human is not None else json.dumps(summary, indent=2, default=str)) + "\n")


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def warn_short(asked: int | None, got: int, what: str, source: Any) -> None:
    """--n asked for more than the file holds: say so on stderr (the command still runs on what there is)."""
    from countlens.io import short_warning

    message = short_warning(asked, got, what, source)
    if message:
        log(message)


def count_rows(path: Path, n: int | None) -> int:
    """Rows of a JSONL file, up to `n` (stops reading there)."""
    from countlens.io import read_jsonl

    return sum(1 for _ in read_jsonl(path, n))


def check_model(model: str | None) -> None:
    """Resolve a --model argument before anything is read or written (one line, exit 2, on a bad one)."""
    if model:
        from countlens.models.registry import preflight

        preflight(model)


@app.command()
def lexicon(name: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
            as_json: bool = JSON) -> None:
    """Print a lexicon: {"categories": {name: \\[words]}, "noise": \\[words]}."""
    from countlens.data.lexicon import load_lexicon

    lex = load_lexicon(name)
    d = lex.to_dict()
    human = "\n".join([f"lexicon {lex.name}" + (" (read-only)" if lex.read_only else "")]
                      + [f"  {c:<11} {' '.join(ws)}" for c, ws in d["categories"].items()]
                      + [f"  {'noise':<11} {' '.join(d['noise'])}"]
                      + ([f"  ambiguous: {lex.ambiguous}"] if lex.ambiguous else []))
    emit(d, as_json, human)


@data_app.command("generate")
def data_generate(
    n: int = typer.Option(1000, "--n", help="Number of rows to generate."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="Output JSONL."),
    template: str = typer.Option("seed-v1", "--template", help="Built-in name or YAML/JSON file."),
    lexicon: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
    min_len: int = typer.Option(5, "--min-len"),
    max_len: int = typer.Option(10, "--max-len"),
    max_count: int = typer.Option(5, "--max-count"),
    categories: Optional[list[str]] = typer.Option(None, "--categories", help="Repeat or comma-separate."),
    as_json: bool = JSON,
) -> None:
    """Generate a balanced counting dataset (deterministic for a seed)."""
    from countlens.data.generate import generate_dataset

    cats = [c for item in (categories or []) for c in item.split(",") if c] or None
    s = generate_dataset(out, n, seed, template=template, lexicon=lexicon, min_len=min_len, max_len=max_len,
                         max_count=max_count, categories=cats)
    human = (f"wrote {s['rows']} rows to {out}\n  by count:  {s['by_count']}\n"
             f"  by length: {s['by_list_length']}\n  by category: {s['by_category']}")
    emit(s, as_json, human)


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="JSONL dataset (ours or the original study's)."),
    lexicon: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
    n: Optional[int] = typer.Option(None, "--n", help="Audit the first N rows, in file order (default: all)."),
    fix: Optional[Path] = typer.Option(None, "--fix", help="Write a relabelled copy here."),
    as_json: bool = JSON,
) -> None:
    """Audit labels against a lexicon: label errors, repeated words, ambiguous and unknown words."""
    from countlens.data.validate import validate_dataset

    s = validate_dataset(file, lexicon, n=n, fix=fix)
    human = (f"{file} against lexicon {s['lexicon']}\n  rows {s['rows']}  label_errors {s['label_errors']}  "
             f"duplicate_word_lists {s['duplicate_word_lists']}  ambiguous_rows {s['ambiguous_rows']}  "
             f"unknown_words {s['unknown_words']}\n  balance {s['balance']}"
             + (f"\n  relabelled copy: {fix}" if fix else ""))
    emit(s, as_json, human)


@data_app.command("pairs")
def data_pairs(
    data: Path = typer.Option(..., "--data", help="JSONL dataset."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="Tokenizer folder, hub name or 'organism'."),
    n: int = typer.Option(200, "--n", help="Pairs to build (balanced over N; fewer, with a warning, if the data "
                                           "cannot give that many)."),
    out: Path = typer.Option(..., "--out"),
    change_at: str = typer.Option("first", "--change-at", help="first|last|random|all"),
    seed: int = typer.Option(0, "--seed"),
    lexicon: str = typer.Option("clean-v1", "--lexicon"),
    template: Optional[str] = typer.Option(None, "--template", help="Template of the rows (default: each row's)."),
    as_json: bool = JSON,
) -> None:
    """Build token-aligned minimal pairs (counts N and N+1, one word changed)."""
    from countlens import build_pairs

    s = build_pairs(data, tokenizer, n, out, change_at=change_at, seed=seed, lexicon=lexicon, template=template)
    if s.get("short_reason"):
        log(f"warning: {s['short_reason']}")
    human = (f"wrote {s['pairs']} aligned pairs to {out} (dropped_misaligned {s['dropped_misaligned']}, "
             f"redrawn {s['redrawn']}, by N {s['by_n_low']})")
    emit(s, as_json, human)


@app.command()
def patch(
    model: str = typer.Option("organism", "--model", help="organism, a folder, or hf:NAME."),
    pairs: Path = typer.Option(..., "--pairs", help="Pairs JSONL from `countlens data pairs`."),
    out: Path = typer.Option(..., "--out"),
    n: Optional[int] = typer.Option(None, "--n", help="The first N pairs of the pairs file (in file order)."),
    sites: str = typer.Option("resid", "--sites", help="Comma list of resid,attn,mlp,head."),
    positions: str = typer.Option("last", "--positions", help="last | all (from the changed word on) | named "
                                  "(changed word, last list word, answer) | offsets from the end, e.g. -1,-2."),
    component_positions: Optional[str] = typer.Option(None, "--component-positions",
                                                      help="Positions for attn/mlp/head (default: as --positions)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma list, e.g. emb,0,5 (default: every layer)."),
    memory_budget: str = typer.Option("1GB", "--memory-budget", help="Working set per forward; rows are chunked."),
    direction: str = typer.Option("denoise", "--direction", help="denoise | noise | both"),
    method: str = typer.Option("fast", "--method", help="fast (KV-cache reuse) | reference (full forwards)."),
    generate: bool = typer.Option(False, "--generate", help="Also patch-generate-parse (the original protocol)."),
    filter: str = typer.Option("greedy", "--filter", help="greedy | sampled | none: keep pairs answered right."),
    k_samples: int = typer.Option(5, "--k-samples", help="Samples per prompt for --filter sampled."),
    batch_size: int = typer.Option(16, "--batch-size", help="Pairs per batch (halved on CUDA OOM)."),
    template: Optional[str] = typer.Option(None, "--template", help="Default: the model's native template."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help="auto | chat | raw"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="e.g. auto for several GPUs."),
    as_json: bool = JSON,
) -> None:
    """Activation patching across sites x layers x positions (x heads)."""
    check_model(model)
    from tqdm.auto import tqdm

    from countlens.interp.patching import PatchOptions, load_pairs, run_patching, save_result
    from countlens.models.handle import load

    dirs = ("denoise", "noise") if direction == "both" else (direction,)
    from countlens.study.config import parse_bytes

    opts = PatchOptions(sites=tuple(s.strip() for s in sites.split(",") if s.strip()), positions=positions,
                        component_positions=component_positions,
                        layers=tuple(x.strip() for x in layers.split(",") if x.strip()) if layers else None,
                        memory_budget=parse_bytes(memory_budget),
                        directions=dirs, method=method, batch_size=batch_size, filter=filter,
                        k_samples=k_samples, generate=generate, template=template)
    pair_rows = load_pairs(pairs, n)
    warn_short(n, len(pair_rows), "pairs", pairs)
    handle = load(model, device=device, dtype=dtype, device_map=device_map, prompt_format=prompt_format)
    with tqdm(total=len(pair_rows) * len(dirs), desc="patch", unit="pair", file=sys.stderr) as bar:
        result = run_patching(handle, pair_rows, opts, progress=bar.update, log=log)
    summary = save_result(result, out) | {"out": str(out), "model": model}
    lines = [f"kept {summary['kept_pairs']}/{summary['total_pairs']} pairs (dropped_misaligned "
             f"{summary['dropped_misaligned']})" + (f"; {summary['filter_fallback']}" if summary.get("filter_fallback")
                                                    else "")]
    for d, ds in summary["by_direction"].items():
        curve = "  ".join(f"{e['layer']}:{e['mean']:.2f}" for e in ds["per_layer"])
        lines.append(f"{d}: normalised effect by layer (resid, last position; {ds['informative_pairs']} pairs with "
                     f"|LD gap| > {ds['ld_gap_threshold']}): {curve}")
    emit(summary, as_json, "\n".join(lines + [f"wrote {out}"]))


@app.command()
def acts(
    model: str = typer.Option("organism", "--model", help="organism, a folder, or hf:NAME."),
    data: Path = typer.Option(..., "--data", help="JSONL dataset."),
    out: Path = typer.Option(..., "--out", help="Store folder (resumable: rerun to continue)."),
    sites: str = typer.Option("resid", "--sites", help="Comma list of resid,attn,mlp,head (or resid.3)."),
    positions: str = typer.Option("last,items", "--positions", help="Comma list of last,items,prefix."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma list, e.g. emb,0,5 (default: all)."),
    n: Optional[int] = typer.Option(None, "--n", help="Capture the first N rows of --data, in file order (default: "
                                                       "all; fewer, with a warning, if the file holds fewer)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    chunk_size: int = typer.Option(256, "--chunk-size", help="Examples per flushed chunk (the resume unit)."),
    template: Optional[str] = typer.Option(None, "--template", help="Default: each row's, else the model's."),
    lexicon: str = typer.Option("clean-v1", "--lexicon", help="For match flags when rows lack match_positions."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help="auto | chat | raw"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="e.g. auto for several GPUs."),
    as_json: bool = JSON,
) -> None:
    """Collect activations (float16, memory-mapped) at the last token, each list word, the category."""
    check_model(model)
    warn_short(n, count_rows(data, n), "rows", data)
    from countlens.interp.acts import collect_activations

    s = collect_activations(model, data, out, sites=sites, positions=positions,
                            layers=[x for x in layers.split(",") if x] if layers else None, n=n,
                            batch_size=batch_size, chunk_size=chunk_size, template=template, lexicon=lexicon,
                            device=device, dtype=dtype, device_map=device_map,
                            prompt_format=prompt_format).to_dict()
    emit(s, as_json, f"{'complete' if s['complete'] else 'partial'}: {s['done_examples']}/{s['n_examples']} "
                     f"examples, {s['n_rows']} rows x {len(s['sites'])} sites ({s['bytes_on_disk'] / 2**20:.1f} MiB)"
                     f" in {out} ({s['seconds']} s" + (f", resumed at {s['resumed_from']})" if s["resumed_from"]
                                                        else ")"))


@app.command()
def probe(
    acts_dir: Optional[Path] = typer.Option(None, "--acts", help="Store from `countlens acts`."),
    model: Optional[str] = typer.Option(None, "--model", help="Without --acts: collect from this model first."),
    data: Optional[Path] = typer.Option(None, "--data", help="Without --acts: the JSONL dataset."),
    out: Path = typer.Option(..., "--out", help="Folder for probes.parquet, summary.json, directions/, figures."),
    split: str = typer.Option("random", "--split", help="random | category | length"),
    folds: int = typer.Option(5, "--folds", help="k-fold CV; 1 = one held-out split of --test-size."),
    test_size: float = typer.Option(0.2, "--test-size"),
    sites: Optional[str] = typer.Option(None, "--sites", help="Site kinds or names (default: all in the store; "
                                        "resid when collecting)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="last,items,prefix (default: all in the "
                                            "store; last,items when collecting)."),
    controls: str = typer.Option(",".join(("majority", "control", "shuffled", "input")), "--controls",
                                 help="Comma list of majority,control,shuffled,input."),
    n: Optional[int] = typer.Option(None, "--n", help="Probe the first N examples: of the --acts store (in example "
                                                       "order), or the first N rows of --data in file order (default: "
                                                       "all; fewer, with a warning, if there are fewer)."),
    c: float = typer.Option(1.0, "--C", help="Logistic regression inverse penalty."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Ridge penalty (default: n_features)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the selectivity and R2 CIs "
                               "(accuracies use Wilson intervals)."),
    seed: int = typer.Option(0, "--seed"),
    n_jobs: Optional[int] = typer.Option(None, "--n-jobs", help="Parallel workers over layers (default: CPUs)."),
    batch_size: int = typer.Option(16, "--batch-size", help="When collecting."),
    template: Optional[str] = typer.Option(None, "--template", help="When collecting."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help="When collecting: auto | chat | raw"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="When collecting, e.g. auto."),
    no_figures: bool = typer.Option(False, "--no-figures"),
    as_json: bool = JSON,
) -> None:
    """Linear probes per site x layer x position with controls, CIs, running count and directions."""
    check_model(model)
    if acts_dir is not None:
        from countlens.interp.store import ActStore

        warn_short(n, len(ActStore.open(acts_dir).examples), "examples", acts_dir)
    elif data is not None:
        warn_short(n, count_rows(data, n), "rows", data)
    from countlens.interp.probes import run_probes

    collect = {}
    if acts_dir is None:
        collect = {"batch_size": batch_size, "template": template, "prompt_format": prompt_format,
                   "device": device, "dtype": dtype, "device_map": device_map}
    res = run_probes(acts_dir, model=model, data=data, out=out, split=split, folds=folds, test_size=test_size,
                     sites=sites, positions=positions, controls=[x for x in controls.split(",") if x], n=n, C=c,
                     alpha=alpha, n_boot=n_boot, seed=seed, n_jobs=n_jobs, figures=not no_figures, **collect)
    s = res.summary
    human = probe_table(s)
    if s.get("running_count"):
        rc = s["running_count"]
        best_by_word = [max((row[i] for row in rc["accuracy"] if row[i] is not None), default=None)
                        for i in range(len(rc["items"]))]
        human.append("running count, best accuracy over layers by word: "
                     + " ".join(_pct(v) for v in best_by_word))
    human.append(f"wrote {out}/summary.json, probes.parquet, predictions.parquet, directions/"
                 + ("" if no_figures else ", probe_*.png"))
    emit(s, as_json, "\n".join(human))


def _unsigned_zero(text: str) -> str:
    """'-0.0' -> '0.0' (a rounded zero has no sign)."""
    return text.replace("-", "", 1) if text.lstrip("+-").strip("0.") == "" else text


def _pct(v: float | None) -> str:
    return "-" if v is None else _unsigned_zero(f"{100 * v:.1f}") + "%"


def probe_table(s: dict) -> list[str]:
    """The probe summary as aligned text lines, in percent like the report."""
    def ci(v, lo, hi) -> str:
        return "-" if v is None else f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]"

    def pts(v) -> str:
        return "-" if v is None else _unsigned_zero(f"{100 * v:+.1f}").replace("+0.0", "0.0") + " pts"

    head = ("layer", "accuracy [Wilson 95%]", "control", "selectivity", "R2")
    rows = [(str(r["layer"]), ci(r["accuracy"], r["ci_low"], r["ci_high"]), _pct(r["control_accuracy"]),
             pts(r["selectivity"]), "-" if r["r2"] is None else f"{r['r2']:.3f}") for r in s["per_layer"]]
    widths = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [f"probes on {s['n_examples']} examples ({s['site']}, last position, split {s['split']}, "
             f"{s['folds']} folds); accuracy intervals: Wilson 95 % score intervals over examples "
             "(selectivity and R2: bootstrap 95 % in summary.json)",
             fmt(head), *map(fmt, rows)]
    if s.get("majority"):
        lines.append(f"majority class {_pct(s['majority']['accuracy'])}")
    if s.get("input_baseline"):
        ib = s["input_baseline"]
        lines.append(f"input only (bag of words) {ci(ib['accuracy'], ib['ci_low'], ib['ci_high'])}")
    if s.get("best_layer"):
        b = s["best_layer"]
        lines.append(f"best layer {b['layer']}: accuracy {ci(b['accuracy'], b['ci_low'], b['ci_high'])}, "
                     f"selectivity {pts(b['selectivity'])}, R2 {'-' if b['r2'] is None else format(b['r2'], '.3f')}")
    return lines


@app.command()
def steer(
    model: str = typer.Option("organism", "--model", help="organism, a folder, or hf:NAME."),
    data: Path = typer.Option(..., "--data", help="Examples JSONL (first part fits vectors, rest evaluates)."),
    out: Path = typer.Option(..., "--out"),
    n: Optional[int] = typer.Option(None, "--n", help="The first N rows of --data, in file order, split by "
                                                       "--train-frac (default: all; fewer, with a warning, if the "
                                                       "file holds fewer)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma list, e.g. emb,0,2 (default: all)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Comma list of scales, both signs (default: "
                                         "-2, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 4; 0 is always added)."),
    positions: str = typer.Option("last", "--positions", help="last | from-list | all"),
    vector: str = typer.Option("both", "--vector", help="mean-diff | probe | both (one-more and random always)."),
    train_frac: float = typer.Option(0.5, "--train-frac", help="Share of rows used to fit the vectors."),
    directions: Optional[Path] = typer.Option(None, "--directions", help="A `countlens probe` output folder: "
                                              "steer along its saved directions instead of fitting them "
                                              "(then every example is held out: use ones the probes did not see)."),
    generate: bool = typer.Option(True, "--generate/--no-generate", help="Greedy generation at the best settings."),
    batch_size: int = typer.Option(64, "--batch-size"),
    template: Optional[str] = typer.Option(None, "--template"),
    prompt_format: str = typer.Option("auto", "--prompt-format"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    device_map: Optional[str] = typer.Option(None, "--device-map"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON,
) -> None:
    """Steer the count: add mean-difference / probe directions, sweep layers x scales, with a random control."""
    check_model(model)
    from tqdm.auto import tqdm

    from countlens.data.schema import read_examples
    from countlens.interp.steering import DEFAULT_SCALES, SteerOptions, run_steering, save_steering
    from countlens.models.handle import load

    kinds = {"both": ("mean-diff", "probe"), "mean-diff": ("mean-diff",), "probe": ("probe",)}.get(vector)
    if kinds is None:
        raise InputError(f"--vector must be mean-diff, probe or both (got '{vector}')")
    try:
        scale_list = tuple(float(s) for s in scales.split(",")) if scales else DEFAULT_SCALES
    except ValueError:
        raise InputError(f"--scales must be numbers separated by commas (got '{scales}')") from None
    if 0.0 not in scale_list:
        scale_list = (0.0, *scale_list)
    layer_list = tuple(x.strip() for x in layers.split(",")) if layers else None
    rows = [ex.row() for _, ex in read_examples(data, n)]
    warn_short(n, len(rows), "rows", data)
    handle = load(model, device=device, dtype=dtype, device_map=device_map, prompt_format=prompt_format)
    opts = SteerOptions(layers=layer_list, scales=scale_list, positions=positions,
                        vectors=(*kinds, "one-more", "random"), train_frac=train_frac, generate=generate,
                        batch_size=batch_size, template=template, seed=seed,
                        directions=str(directions) if directions else None)
    n_layers = len(layer_list) if layer_list else handle.n_layers + 1
    with tqdm(total=n_layers * len(opts.vectors), desc="steer", file=sys.stderr) as bar:
        result = run_steering(handle, rows, opts, progress=bar.update)
    summary = save_steering(result, out) | {"out": str(out), "model": model}
    b = summary["best"]
    human = (f"mean-diff N->N+1: best layer {b.get('layer')} scale {b.get('scale')}: success "
             f"{b.get('success_rate', float('nan')):.1%} (random vector of equal norm: "
             f"{b.get('control_success_rate') or 0:.1%}); wrote {out}")
    emit(summary, as_json, human)


@app.command()
def analyse(
    model: str = typer.Option("organism", "--model", help="organism, a folder, or hf:NAME."),
    data: Path = typer.Option(..., "--data", help="Examples JSONL (the lens, DLA and attention read it)."),
    out: Path = typer.Option(..., "--out", help="Writes OUT/lens, OUT/dla, OUT/attention, OUT/atp."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma list of lens,dla,attention,atp (default: "
                                       "lens,dla,attention, and atp when --pairs is given)."),
    n: Optional[int] = typer.Option(None, "--n", help="The first N rows of --data, in file order (default: all; "
                                                       "fewer, with a warning, if the file holds fewer)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Pairs JSONL for attribution patching (atp)."),
    patch: Optional[Path] = typer.Option(None, "--patch", help="A `countlens patch` folder to compare AtP with."),
    probes: Optional[Path] = typer.Option(None, "--probes", help="A `countlens probe` folder: its directions "
                                          "(alignment with the digit readout) and accuracy beside the lens."),
    batch_size: int = typer.Option(16, "--batch-size"),
    template: Optional[str] = typer.Option(None, "--template"),
    prompt_format: str = typer.Option("auto", "--prompt-format"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    device_map: Optional[str] = typer.Option(None, "--device-map"),
    as_json: bool = JSON,
) -> None:
    """Logit lens, direct logit attribution, attention to the items and attribution patching."""
    check_model(model)
    from countlens.study.analyses import ANALYSES, run_analyses

    which = tuple(x.strip() for x in only.split(",") if x.strip()) if only else \
        ANALYSES if pairs else tuple(a for a in ANALYSES if a != "atp")
    bad = [w for w in which if w not in ANALYSES]
    if bad:
        raise InputError(f"--only: unknown analyses {bad} (choose from {', '.join(ANALYSES)})")
    if "atp" in which and pairs is None:
        raise InputError("--only atp needs --pairs (minimal pairs from `countlens data pairs`)")
    warn_short(n, count_rows(data, n), "rows", data)
    from countlens.models.handle import load

    handle = load(model, device=device, dtype=dtype, device_map=device_map, prompt_format=prompt_format)
    res = run_analyses(handle, out, data=data, n=n, which=which, batch_size=batch_size, template=template,
                       pairs=pairs, patch=patch, probes=probes, log=log)
    summary = {k: r.summary for k, r in res.results.items()} | {"out": str(out), "model": model}
    human = [f"{row['analysis']}: {row['quantity']}: {row['value']}" for row in res.to_frame().to_dict("records")]
    emit(summary, as_json, "\n".join(human + [f"wrote {out}"]))


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Study config YAML (start one with --print-config)."),
    model: Optional[str] = typer.Option(None, "--model", help="organism, a folder, or hf:NAME."),
    out: Path = typer.Option(Path("runs/study"), "--out"),
    preset: Optional[str] = typer.Option(None, "--preset", help="quick (default) | seed | full"),
    template: Optional[str] = typer.Option(None, "--template", help="Built-in name or YAML/JSON template file."),
    prompt_format: Optional[str] = typer.Option(None, "--prompt-format", help="auto | chat | raw"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    device_map: Optional[str] = typer.Option(None, "--device-map"),
    force: Optional[list[str]] = typer.Option(None, "--force", help="Rerun a stage (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config YAML and exit."),
    as_json: bool = JSON,
) -> None:
    """The whole study: data -> pairs -> bench -> patch -> probes -> steer -> report.html."""
    from countlens.study.config import build_config, to_yaml
    from countlens.study.run import run_study

    cfg = build_config(config, preset, model=model, template=template, prompt_format=prompt_format,
                       device=device, dtype=dtype, device_map=device_map)
    if print_config:
        sys.stdout.write(to_yaml(cfg))
        return
    result = run_study(cfg, out, force=tuple(force or ()))
    summary = {"report": str(result.report), "report_md": str(out / "report.md"), "out": str(out),
               "skipped": result.skipped, "timings": result.timings, "preset": cfg.preset, "model": cfg.model}
    emit(summary, as_json, f"stages run: {', '.join(result.timings)}; skipped (already done): "
                           f"{', '.join(result.skipped) or 'none'}\nreport: {result.report}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Study folders written by `countlens run --out`."),
    out: Path = typer.Option(..., "--out", help="Folder for compare.md, compare.png and compare.json."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="A name per study folder, in order."),
    as_json: bool = JSON,
) -> None:
    """Finished studies side by side (benchmark, patching, probes, steering over depth); loads no model."""
    from countlens.report.compare import compare as run_compare, load_run

    for r in runs:  # every folder is checked before anything is written
        load_run(r)
    summary = run_compare(runs, out, label)
    emit(summary, as_json, f"{out}/compare.md and {out}/compare.png\n" + (out / "compare.md").read_text())


@app.command()
def models(as_json: bool = JSON) -> None:
    """The named models: installed or not, converted (cached) or not, size, and the folder load() uses."""
    from countlens.models.catalog import list_models

    rows = list_models()
    human = "\n".join(f"{r['name']:<19} {'installed' if r['installed'] else 'not installed':<14} "
                      f"{'cached' if r['cached'] else 'not cached':<11} {r['size_mb'] or 0:>7.1f} MB  "
                      f"{r['path'] or r.get('install') or ''}\n{'':<19} {r['source']}" for r in rows)
    emit({"models": rows}, as_json, human)


def _finetune_defaults():
    from countlens.finetune import FinetuneConfig  # no torch at import: `countlens --version` stays fast

    return FinetuneConfig()


FT = _finetune_defaults()


@app.command()
def finetune(
    out: Path = typer.Option(..., "--out", help="Folder for the adapter, learning curve and checkpoint."),
    base: str = typer.Option("smollm2-135m", "--base", help="Model to fine-tune (a registered name or a folder)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the adapter's initialisation and every batch."),
    steps: int = typer.Option(FT.steps, "--steps", help="Optimizer steps (stops early once held-out accuracy holds)."),
    batch_size: int = typer.Option(FT.batch_size, "--batch-size", help="Fresh examples per step."),
    lr: float = typer.Option(FT.lr, "--lr", help="Peak learning rate of the adapter (warmup, then cosine to 10 %)."),
    rank: int = typer.Option(FT.rank, "--rank", help="LoRA rank (on every linear layer of every block)."),
    loss_on: str = typer.Option(FT.loss_on, "--loss-on", help="answer: every answer token; digit: the count token."),
    eval_n: int = typer.Option(FT.eval_n, "--eval-n", help="Held-out examples checked every --eval-every steps."),
    eval_every: int = typer.Option(FT.eval_every, "--eval-every"),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads."),
    as_json: bool = JSON,
) -> None:
    """Fine-tune a LoRA adapter to count (resumes from OUT/checkpoint); `--model OUT/merged` then loads it."""
    from countlens.finetune import FinetuneConfig, finetune as run_finetune, merge_into

    check_model(base)
    cfg = FinetuneConfig(base=base, seed=seed, steps=steps, batch_size=batch_size, lr=lr, rank=rank,
                         loss_on=loss_on, eval_n=eval_n, eval_every=eval_every, threads=threads)
    summary = run_finetune(cfg, out, log=log)
    summary["merged"] = str(merge_into(out, log=log))
    emit(summary, as_json, f"adapter in {out}/adapter: {summary['held_out_accuracy']:.1%} greedy on "
                           f"{summary['held_out_n']} held-out examples after {summary['steps']} steps "
                           f"({summary['train_seconds'] / 60:.1f} min); merged model: {summary['merged']}")


@organism_app.command("train")
def organism_train(
    out: Path = typer.Option(..., "--out", help="Folder for the HF model, tokenizer, curve, checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(11000, "--steps", help="Total steps (stops early once it counts)."),
    phase_a_steps: int = typer.Option(5000, "--phase-a-steps", help="Steps on the short template first."),
    template: str = typer.Option("seed-v1", "--template", help="Target (native) template."),
    d_model: int = typer.Option(128, "--d-model"),
    n_layers: int = typer.Option(4, "--n-layers"),
    eval_n: int = typer.Option(2000, "--eval-n", help="Fresh examples for the final greedy accuracy."),
    iit_steps: int = typer.Option(2400, "--iit-steps", help="Phase C (interchange intervention) steps; 0 skips it."),
    init_from: Optional[Path] = typer.Option(None, "--from", help="An organism folder after phases A+B: run phase C only."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (1 is robust on a busy machine)."),
    as_json: bool = JSON,
) -> None:
    """Train the organism: phases A, B, then C (interchange training); resumes from OUT/checkpoint.pt."""
    from countlens.models.organism.train import Recipe, train

    recipe = Recipe(seed=seed, steps=steps, phase_a_steps=min(phase_a_steps, steps), target_template=template,
                    d_model=d_model, n_layers=n_layers, iit_steps=iit_steps)
    meta = train(out, recipe, final_eval_n=eval_n, threads=threads, init_from=init_from)
    summary = {"out": str(out), "template": meta["template"], "accuracy": meta["accuracy"],
               "steps": meta["steps"], "train_minutes": meta["train_minutes"]}
    emit(summary, as_json, f"organism in {out}: {meta['accuracy']:.2%} greedy on {eval_n} fresh "
                           f"'{meta['template']}' examples after {meta['steps']} steps ({meta['train_minutes']} min)")


@organism_app.command("info")
def organism_info(model: str = typer.Option("organism", "--model"), as_json: bool = JSON) -> None:
    """The organism's native template, accuracy, recipe and size."""
    import json as _json

    from countlens.models.registry import resolve

    path = Path(resolve(model))
    meta_file = path / "countlens.json"
    if not meta_file.exists():
        raise InputError("no countlens.json: not an organism folder", file=str(path))
    meta = _json.loads(meta_file.read_text())
    cfg = _json.loads((path / "config.json").read_text())
    summary = {"path": str(path), "template": meta["template"], "accuracy": meta.get("accuracy"),
               "eval": meta.get("eval"), "steps": meta.get("steps"), "train_minutes": meta.get("train_minutes"),
               "architecture": cfg.get("architectures", ["?"])[0], "n_layers": cfg.get("num_hidden_layers"),
               "d_model": cfg.get("hidden_size"), "recipe": meta.get("recipe")}
    emit(summary, as_json, f"{path}\n  template {summary['template']}  accuracy {summary['accuracy']}  "
                           f"{summary['architecture']} {summary['n_layers']} layers d={summary['d_model']}")


@organism_app.command("path")
def organism_path_cmd() -> None:
    """Print the shipped organism's folder."""
    from countlens.models.registry import organism_path

    sys.stdout.write(f"{organism_path()}\n")


@app.command()
def bench(
    model: list[str] = typer.Option(..., "--model", help="SPEC, repeatable: organism, hf:NAME_OR_PATH, "
                                    "openai:MODEL or openai:MODEL@BASE_URL, anthropic:MODEL, bedrock:MODEL_ID."),
    data: Path = typer.Option(..., "--data", help="JSONL: ours, the original study's, or prompt+answer / input+target."),
    n: Optional[int] = typer.Option(None, "--n", help="Benchmark the first N rows of --data, in file order (default: "
                                                       "all; fewer, with a warning, if the file holds fewer)."),
    out: Path = typer.Option(..., "--out", help="Folder for records, summary.json, records.parquet, figures."),
    mode: str = typer.Option("generate", "--mode", help="generate | score (local models: P(0..K) in one forward)."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help="auto | chat | raw."),
    concurrency: int = typer.Option(8, "--concurrency", help="Parallel requests (API models)."),
    rpm: Optional[float] = typer.Option(None, "--rpm", help="Requests per minute limit (API models)."),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens"),
    prefill: bool = typer.Option(False, "--prefill", help="Start the reply with '(' where the backend allows."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: none)."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 | auto."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="e.g. auto, to spread over GPUs."),
    batch_size: int = typer.Option(64, "--batch-size", help="Local models."),
    timeout: float = typer.Option(60.0, "--timeout", help="Per request, seconds (API models)."),
    max_retries: int = typer.Option(6, "--max-retries", help="Retries on 429/5xx/timeouts (API models)."),
    template: Optional[list[str]] = typer.Option(
        None, "--template", help="Repeatable: built-in name (seed-v1, short, fewshot) or YAML/JSON file; renders "
        "each row with each template and compares them (McNemar). Default: the data file's own prompts."),
    no_figures: bool = typer.Option(False, "--no-figures"),
    as_json: bool = JSON,
) -> None:
    """Benchmark models on counting prompts: resumable, concurrent, with slices and CIs."""
    from countlens.bench.display import RichProgress, tables
    from countlens.bench.runner import run_bench

    s = run_bench(model, data, out, n=n, mode=mode, prompt_format=prompt_format, concurrency=concurrency, rpm=rpm,
                  max_new_tokens=max_new_tokens, prefill=prefill, system=system, device=device, dtype=dtype,
                  device_map=device_map, batch_size=batch_size, timeout=timeout, max_retries=max_retries,
                  figures=not no_figures, progress=RichProgress(), templates=template or None, warn=log)
    if as_json:
        emit(s.to_dict() | {"out": str(out)}, True)
    else:
        from rich.console import Console

        Console(width=max(Console().width, 140)).print(tables(s))
        sys.stdout.write(f"wrote {out}/summary.json, records.parquet, records.sqlite and figures\n")


def main() -> None:
    try:
        app()
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished results are kept; rerun the same command to resume\n")
        sys.exit(130)
