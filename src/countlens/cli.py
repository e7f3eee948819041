"""Command line: argument parsing and display only; the work happens in the library.

Conventions: `--json` prints exactly one JSON object (the summary) on stdout; progress and
logs go to stderr; `--n N` is the first N rows in file order; bad input exits 2 with one line.
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


def emit(summary: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """The one place that writes a command's result to stdout."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        sys.stdout.write((human if human is not None else json.dumps(summary, indent=2, default=str)) + "\n")


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


@app.command()
def lexicon(name: str = typer.Option("clean-v1", "--lexicon", help="Built-in name or YAML/JSON file."),
            as_json: bool = JSON) -> None:
    """Print a lexicon: {"categories": {name: [words]}, "noise": [words]}."""
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
    n: int = typer.Option(1000, "--n", help="Number of rows."),
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
    n: Optional[int] = typer.Option(None, "--n", help="First N rows only."),
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
    n: int = typer.Option(200, "--n", help="Number of pairs."),
    out: Path = typer.Option(..., "--out"),
    change_at: str = typer.Option("first", "--change-at", help="first|last|random|all"),
    seed: int = typer.Option(0, "--seed"),
    lexicon: str = typer.Option("clean-v1", "--lexicon"),
    template: Optional[str] = typer.Option(None, "--template", help="Template of the rows (default: each row's)."),
    as_json: bool = JSON,
) -> None:
    """Build token-aligned minimal pairs (counts N and N+1, one word changed)."""
    from countlens.data.pairs import build_pairs

    s = build_pairs(data, tokenizer, n, out, change_at=change_at, seed=seed, lexicon=lexicon, template=template)
    human = (f"wrote {s['pairs']} aligned pairs to {out} (dropped_misaligned {s['dropped_misaligned']}, "
             f"redrawn {s['redrawn']}, by N {s['by_n_low']})")
    emit(s, as_json, human)


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
    as_json: bool = JSON,
) -> None:
    """Train the organism from scratch (resumes from OUT/checkpoint.pt)."""
    from countlens.models.organism.train import Recipe, train

    recipe = Recipe(seed=seed, steps=steps, phase_a_steps=min(phase_a_steps, steps), target_template=template,
                    d_model=d_model, n_layers=n_layers)
    meta = train(out, recipe, final_eval_n=eval_n)
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


def main() -> None:
    try:
        app()
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished results are kept; rerun the same command to resume\n")
        sys.exit(130)
