"""Command line: argument parsing and display only; the work happens in the library.

A stage's flags are its Options model's fields (`countlens.options`, via `flags`), so a default
or a help text is written once. Conventions: `--json` prints exactly one JSON object (the
summary) on stdout; progress and logs go to stderr; `--n N` is the first N of what a command
reads (rows, pairs or examples, in file order; each --help says which), and fewer than asked is
a warning on stderr with the reason; bad input exits 2 with one line.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from countlens.errors import InputError
from countlens.finetune import FinetuneConfig
from countlens.models.organism.recipe import FINAL_EVAL_N, Recipe
from countlens.options import LoadOptions
from countlens.report import text
from countlens.study.stages import STAGES, Stage

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="countlens: how does a language model count?")
data_app = typer.Typer(no_args_is_help=True, help="Generate, audit and pair counting datasets.")
app.add_typer(data_app, name="data")
organism_app = typer.Typer(no_args_is_help=True, help="The shipped counting organism: train, info, path.")
app.add_typer(organism_app, name="organism")

JSON = typer.Option(False, "--json", help="Print one JSON summary object on stdout.")


def _flag(name: str, info: Any) -> inspect.Parameter:
    """One Options field as a typer option: its name, default, type and help come from the field."""
    ui = (info.json_schema_extra or {}).get("cli", {})
    default = ui.get("default", info.default if not info.is_required() else ...)
    if isinstance(default, tuple):
        default = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in default)  # wraps in --help
    args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
    optional = typing.get_origin(info.annotation) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else info.annotation
    kind = list[str] if ui.get("repeat") else ui.get("type") or (base if base in (bool, int, float, Path) else str)
    flag = ui.get("flag", "--" + name.replace("_", "-"))
    decl = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind] if default is None
                             else kind, default=typer.Option(default, decl, help=info.description or ""))


def command(models: dict[str, type], body: Callable[..., Any], name: str, doc: str) -> Callable[..., Any]:
    """A typer command with one flag per field of each model (in order) and --json; `body` receives one
    validated instance per model. A flag left at its shown default takes the model's own default."""
    made: dict[str, tuple[str, Any]] = {}   # field -> (its model's group, the default --help shows)
    params = []
    for group, model in models.items():
        for field, info in model.model_fields.items():
            if not (info.json_schema_extra or {}).get("cli", {}).get("hide"):
                assert field not in made, f"two --{field} flags in {name}"
                params.append(p := _flag(field, info))
                made[field] = (group, p.default.default)
    params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=JSON))

    def run(**kw: Any) -> Any:
        values: dict[str, dict] = {g: {} for g in models}
        for field, (group, shown) in made.items():
            if kw[field] != shown:
                values[group][field] = kw[field]
        return body(**{g: m(**values[g]) for g, m in models.items()}, as_json=kw["as_json"])

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__name__, run.__doc__ = name.replace("-", "_"), doc
    return run


def stage_command(st: Stage) -> Callable[..., Any]:
    """The command of one registered stage: its inputs, its options, the load flags, --json."""
    def body(i: Any, o: Any, load: Any = None, as_json: bool = False) -> None:
        summary = st(i, o, load, log)
        emit(summary, as_json, st.text(summary, i))

    models = {"i": st.inputs, "o": st.options} | ({"load": LoadOptions} if st.loads_model else {})
    return command(models, body, st.name, st.help)


def _version(value: bool) -> None:
    if value:
        from countlens import __version__

        sys.stdout.write(f"countlens {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """countlens: how does a language model count?"""


def emit(summary: dict[str, Any], as_json: bool, human: Any = None) -> None:
    """The one place that writes a command's result to stdout."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    elif human is None or isinstance(human, str):
        sys.stdout.write((human if human is not None else json.dumps(summary, indent=2, default=str)) + "\n")
    else:  # a rich renderable (the benchmark's tables)
        from rich.console import Console

        Console(width=max(Console().width, 140)).print(human)


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


@app.command()
def lexicon(name: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
            as_json: bool = JSON) -> None:
    """Print a lexicon: {"categories": {name: \\[words]}, "noise": \\[words]}."""
    from countlens.data.lexicon import load_lexicon

    lex = load_lexicon(name)
    emit(lex.to_dict(), as_json, text.lexicon(lex))


@data_app.command("validate")
def data_validate(file: Path = typer.Argument(..., help="JSONL dataset (ours or the original study's)."),
                  lexicon: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
                  n: Optional[int] = typer.Option(None, "--n", help="Audit the first N rows, in file order "
                                                  "(default: all)."),
                  fix: Optional[Path] = typer.Option(None, "--fix", help="Write a relabelled copy here."),
                  as_json: bool = JSON) -> None:
    """Audit labels against a lexicon: label errors, repeated words, ambiguous and unknown words."""
    from countlens.data.validate import validate_dataset

    emit(s := validate_dataset(file, lexicon, n=n, fix=fix), as_json, text.validation(s, file, fix))


@app.command()
def run(config: Optional[Path] = typer.Argument(None, help="Study config YAML (start one with --print-config)."),
        model: Optional[str] = typer.Option(None, "--model", help="organism, a folder, or hf:NAME."),
        out: Path = typer.Option(Path("runs/study"), "--out"),
        preset: Optional[str] = typer.Option(None, "--preset", help="quick (default) | seed | full"),
        template: Optional[str] = typer.Option(None, "--template", help="Built-in name or YAML/JSON template file."),
        prompt_format: Optional[str] = typer.Option(None, "--prompt-format", help="auto | chat | raw"),
        device: Optional[str] = typer.Option(None, "--device"), dtype: Optional[str] = typer.Option(None, "--dtype"),
        device_map: Optional[str] = typer.Option(None, "--device-map"),
        force: Optional[list[str]] = typer.Option(None, "--force", help="Rerun a stage (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config YAML and exit."),
        as_json: bool = JSON) -> None:
    """The whole study: data -> pairs -> bench -> patch -> probes -> steer -> analyses -> report.html."""
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
def compare(runs: list[Path] = typer.Argument(..., help="Study folders written by `countlens run --out`."),
            out: Path = typer.Option(..., "--out", help="Folder for compare.md, compare.png and compare.json."),
            label: Optional[list[str]] = typer.Option(None, "--label", help="A name per study folder, in order."),
            as_json: bool = JSON) -> None:
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

    emit({"models": (rows := list_models())}, as_json, text.models(rows))


FT = FinetuneConfig()
RECIPE = Recipe()


@app.command()
def finetune(out: Path = typer.Option(..., "--out", help="Folder for the adapter, learning curve and checkpoint."),
             base: str = typer.Option(FT.base, "--base", help="Model to fine-tune (a registered name or a folder)."),
             seed: int = typer.Option(FT.seed, "--seed", help="Seeds the adapter's initialisation and every batch."),
             steps: int = typer.Option(FT.steps, "--steps", help="Optimizer steps (stops early once held-out accuracy "
                                                                 "holds)."),
             batch_size: int = typer.Option(FT.batch_size, "--batch-size", help="Fresh examples per step."),
             lr: float = typer.Option(FT.lr, "--lr", help="Peak learning rate of the adapter (warmup, then cosine to "
                                                          "10 %)."),
             rank: int = typer.Option(FT.rank, "--rank", help="LoRA rank (on every linear layer of every block)."),
             loss_on: str = typer.Option(FT.loss_on, "--loss-on", help="answer: every answer token; digit: the count "
                                                                       "token."),
             eval_n: int = typer.Option(FT.eval_n, "--eval-n", help="Held-out examples checked every --eval-every."),
             eval_every: int = typer.Option(FT.eval_every, "--eval-every"),
             threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads."),
             as_json: bool = JSON) -> None:
    """Fine-tune a LoRA adapter to count (resumes from OUT/checkpoint); `--model OUT/merged` then loads it."""
    from countlens.finetune import finetune as run_finetune, merge_into
    from countlens.models.registry import preflight

    preflight(base)
    cfg = FinetuneConfig(base=base, seed=seed, steps=steps, batch_size=batch_size, lr=lr, rank=rank,
                         loss_on=loss_on, eval_n=eval_n, eval_every=eval_every, threads=threads)
    summary = run_finetune(cfg, out, log=log)
    summary["merged"] = str(merge_into(out, log=log))
    emit(summary, as_json, text.finetune(summary, out))


@organism_app.command("train")
def organism_train(
        out: Path = typer.Option(..., "--out", help="Folder for the HF model, tokenizer, curve, checkpoint."),
        seed: int = typer.Option(RECIPE.seed, "--seed"),
        steps: int = typer.Option(RECIPE.steps, "--steps", help="Total steps (stops early once it counts)."),
        phase_a_steps: int = typer.Option(RECIPE.phase_a_steps, "--phase-a-steps",
                                          help="Steps on the short template first."),
        template: str = typer.Option(RECIPE.target_template, "--template", help="Target (native) template."),
        d_model: int = typer.Option(RECIPE.d_model, "--d-model"),
        n_layers: int = typer.Option(RECIPE.n_layers, "--n-layers"),
        eval_n: int = typer.Option(FINAL_EVAL_N, "--eval-n", help="Fresh examples for the final greedy accuracy."),
        iit_steps: int = typer.Option(RECIPE.iit_steps, "--iit-steps",
                                      help="Phase C (interchange intervention) steps; 0 skips it."),
        init_from: Optional[Path] = typer.Option(None, "--from", help="An organism folder after phases A+B: run phase "
                                                 "C only."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (1 is robust on a busy machine)."),
        as_json: bool = JSON) -> None:
    """Train the organism: phases A, B, then C (interchange training); resumes from OUT/checkpoint.pt."""
    from countlens.models.organism.train import train

    recipe = Recipe(seed=seed, steps=steps, phase_a_steps=min(phase_a_steps, steps), target_template=template,
                    d_model=d_model, n_layers=n_layers, iit_steps=iit_steps)
    meta = train(out, recipe, final_eval_n=eval_n, threads=threads, init_from=init_from)
    summary = {"out": str(out), **{k: meta[k] for k in ("template", "accuracy", "steps", "train_minutes")}}
    emit(summary, as_json, f"organism in {out}: {meta['accuracy']:.2%} greedy on {eval_n} fresh "
                           f"'{meta['template']}' examples after {meta['steps']} steps ({meta['train_minutes']} min)")


@organism_app.command("info")
def organism_info(model: str = typer.Option("organism", "--model"), as_json: bool = JSON) -> None:
    """The organism's native template, accuracy, recipe and size."""
    from countlens.models.registry import organism_info as info

    emit(s := info(model), as_json, text.organism(s))


@organism_app.command("path")
def organism_path_cmd() -> None:
    """Print the shipped organism's folder."""
    from countlens.models.registry import organism_path

    sys.stdout.write(f"{organism_path()}\n")


for _stage in STAGES:
    (data_app if _stage.group == "data" else app).command(_stage.name)(stage_command(_stage))


def main() -> None:
    try:
        app()
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished results are kept; rerun the same command to resume\n")
        sys.exit(130)
