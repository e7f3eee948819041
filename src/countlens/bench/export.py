"""The counting task in the harnesses users already run: lm-evaluation-harness (YAML + JSONL) and
Inspect AI (a Python task file + JSONL), with the prompt `countlens bench` sends, its strict and
lenient parsers, and accuracy.

Two lm-eval tasks: `countlens_generate` (generate_until, greedy, the strict `(N)` parser and the
lenient one as filters, exact match) reproduces `countlens bench --mode generate`;
`countlens_score` (multiple_choice over 0..K after the answer prefix `(`) reproduces
`--mode score` (argmax of P(digit | prompt + "(")). Paths in the task are absolute, so lm_eval runs
it from any working directory. With `model`, the prompts are what that model's tokenizer sees in
countlens's `auto` format: raw prompts carry the BOS text when the tokenizer has one (lm-eval then
adds no second one), chat models get `--apply_chat_template` on the command line.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from countlens.data.answers import STRICT
from countlens.io import write_jsonl

FORMATS = ("lm-eval", "inspect")
STRICT_REGEX = f"^{STRICT.pattern}$"   # parse_strict as a regex filter (lm-eval searches, so anchor it)

# The exported files open with countlens.data.answers' own source (the parsers `countlens bench` uses),
# so the task runs where countlens is not installed and cannot drift from it.
LM_EVAL_FILTER = '''

def lenient(resps, docs):
    """lm-eval `custom` filter: each response -> its lenient answer as text ("[invalid]" if none)."""
    return [["[invalid]" if g is None else str(g) for g in map(parse_lenient, inst)] for inst in resps]
'''

INSPECT = '''
# The countlens counting task for Inspect AI, greedy as `countlens bench --mode generate`:
# `inspect eval {file} --model hf/FOLDER -M do_sample=False` (run in this folder).
from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, json_dataset
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import generate

DATA = {data!r}


@scorer(metrics=[accuracy(), stderr()])
def counted(lenient: bool = False):
    parse = parse_lenient if lenient else parse_strict

    async def score(state, target: Target):
        got = parse(state.output.completion)
        return Score(value=CORRECT if got is not None and str(got) == target.text else INCORRECT,
                     answer=None if got is None else str(got))
    return score


@task
def countlens_count(lenient: bool = False):
    return Task(dataset=json_dataset(DATA, FieldSpec(input="prompt", target="target", id="id")),
                solver=[generate(max_tokens={max_new_tokens})], scorer=counted(lenient))
'''


def _answers_source() -> str:
    import inspect

    from countlens.data import answers

    return inspect.getsource(answers)


def _rows(data: str | Path, n: int | None, template: str | None) -> list[Any]:
    from countlens.bench.data import load_examples, render

    examples = load_examples(data, n)
    return render(examples, template, str(data)) if template else examples


def _prompt_format(model: str | None, prompt_format: str) -> tuple[Any, str | None]:
    """The tokenizer and its resolved format (None, None without a model: prompts as the data has them)."""
    if model is None:
        return None, None
    from countlens.models.hub import load_tokenizer
    from countlens.models.prompts import resolve_format

    tok = load_tokenizer(model)
    return tok, resolve_format(tok, prompt_format)


def export_task(data: str | Path, out: str | Path, fmt: str = "lm-eval", *, n: int | None = None,
                template: str | None = None, model: str | None = None, prompt_format: str = "auto",
                max_new_tokens: int = 8, batch_size: int = 16) -> dict:
    """Write the task to `out` and return its summary (files, rows, the command lines to run it)."""
    from countlens.errors import InputError
    from countlens.models.prompts import format_prompt
    from countlens.models.registry import resolve

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)} (got '{fmt}')", field="format")
    rows = _rows(data, n, template)
    tok, resolved = _prompt_format(model, prompt_format)
    k_max = max(ex.answer for ex in rows)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    text = (lambda p: format_prompt(tok, p, "raw")) if resolved == "raw" else (lambda p: p)
    records = [{"id": ex.id, "prompt": text(ex.prompt), "answer": ex.answer, "target": str(ex.answer),
                "choices": [str(k) for k in range(k_max + 1)]} for ex in rows]
    jsonl = out / "countlens.jsonl"
    write_jsonl(jsonl, records)
    pretrained = resolve(model) if model else "FOLDER"
    chat = resolved == "chat"
    summary: dict[str, Any] = {"format": fmt, "rows": len(records), "k_max": k_max, "data": str(jsonl),
                               "out": str(out), "prompt_format": resolved or "as in the data"}
    if fmt == "lm-eval":
        import yaml

        common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
                  "test_split": "test", "doc_to_text": "prompt"}
        generate = {"task": "countlens_generate", **common, "output_type": "generate_until",
                    "doc_to_target": "target",
                    "generation_kwargs": {"max_gen_toks": max_new_tokens, "do_sample": False, "until": []},
                    "filter_list": [
                        {"name": "strict", "filter": [{"function": "regex", "regex_pattern": STRICT_REGEX},
                                                      {"function": "take_first"}]},
                        {"name": "lenient", "filter": [{"function": "custom", "filter_fn": "__LENIENT__"},
                                                       {"function": "take_first"}]}],
                    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
                    "metadata": {"version": 1.0, "countlens": "bench --mode generate"}}
        score = {"task": "countlens_score", **common, "output_type": "multiple_choice", "doc_to_target": "answer",
                 "doc_to_choice": "choices", "gen_prefix": "(", "target_delimiter": "",
                 "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                 "metadata": {"version": 1.0, "countlens": "bench --mode score"}}
        for task in (generate, score):
            body = yaml.safe_dump(task, sort_keys=False).replace("__LENIENT__", "!function countlens_utils.lenient")
            (out / f"{task['task']}.yaml").write_text(body)
        (out / "countlens_utils.py").write_text(_answers_source() + LM_EVAL_FILTER)
        args = f"pretrained={pretrained},dtype=float32"
        summary["files"] = [str(jsonl), str(out / "countlens_generate.yaml"), str(out / "countlens_score.yaml"),
                            str(out / "countlens_utils.py")]
        summary["commands"] = {
            task: " ".join(["lm_eval", "--model", "hf", "--model_args", shlex.quote(args), "--tasks", task,
                            "--include_path", shlex.quote(str(out)), "--batch_size", str(batch_size),
                            *(["--apply_chat_template"] if chat else [])])
            for task in ("countlens_generate", "countlens_score")}
        summary["countlens"] = {
            "countlens_generate": f"countlens bench --model {model or 'MODEL'} --data {data} --mode generate",
            "countlens_score": f"countlens bench --model {model or 'MODEL'} --data {data} --mode score"}
    else:
        file = out / "countlens_inspect.py"
        file.write_text(_answers_source() + INSPECT.format(file=file.name, data=str(jsonl),
                                                           max_new_tokens=max_new_tokens))
        summary["files"] = [str(jsonl), str(file)]
        summary["commands"] = {"countlens_count": f"cd {shlex.quote(str(out))} && inspect eval {file.name} "
                                                  f"--model hf/{pretrained} -M do_sample=False"}
    (out / "countlens_task.json").write_text(json.dumps(summary, indent=1))
    return summary
