"""`run_bench`: examples x models (x templates) -> durable records -> summary.json, records.parquet, figures.

With `templates`, every example is rendered with each template (from its category and word list)
and every model x template is benchmarked; the template's name is part of each record's key.
Each model's pending examples (those without a finished record under the same key) go to its
backend; every group of results is stored the moment it finishes, so a rerun of the same
command resumes, and a crash or `kill -9` loses nothing that was finished.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from countlens.backends import ApiOptions, GenSettings, RetryPolicy, make_backend, parse_spec
from countlens.backends.base import Backend, Completion, Scored
from countlens.backends.spec import ModelSpec
from countlens.bench.data import BenchExample, load_examples, render
from countlens.bench.metrics import comparisons, model_metrics, templates_section
from countlens.data.answers import PARSER_VERSION
from countlens.bench.progress import NoProgress, Progress, TqdmProgress
from countlens.bench.records import COLUMNS, Record, from_completion, from_scored, key_fields, record_key
from countlens.bench.results import BenchSummary
from countlens.bench.stats import CI, INTERVAL
from countlens.bench.store import RecordStore
from countlens.data.templates import Template, load_template
from countlens.errors import InputError
from countlens.io import atomic_path, short_warning, write_json

MODES = ("generate", "score")
STORE_NAME, SUMMARY_NAME, RECORDS_NAME = "records.sqlite", "summary.json", "records.parquet"


def _specs(models: list[str] | str, mode: str) -> list[ModelSpec]:
    specs = [parse_spec(m) for m in ([models] if isinstance(models, str) else list(models))]
    if not specs:
        raise InputError("give at least one --model")
    labels = [s.label for s in specs]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise InputError(f"--model {dup} is given twice")
    if mode == "score":
        api = [s.label for s in specs if s.is_api]
        if api:
            raise InputError(f"--mode score needs local models (organism, hf:...): {', '.join(api)} "
                             f"{'is an API model' if len(api) == 1 else 'are API models'}; use --mode generate")
    return specs


def _templates(templates: list[str | Template] | str | Template | None) -> list[Template] | None:
    """None (the data file's own prompts) or the loaded templates, names unique."""
    if templates is None:
        return None
    items = [templates] if isinstance(templates, (str, Template)) else list(templates)
    if not items:
        return None
    out = [load_template(t) for t in items]
    names = [t.name for t in out]
    dup = next((x for x in names if names.count(x) > 1), None)
    if dup:
        raise InputError(f"--template {dup} is given twice (two templates named '{dup}')")
    return out


def _run_model(backend: Backend, label: str, examples: list[BenchExample], mode: str, settings: GenSettings,
               k_max: int, store: RecordStore, progress: Progress, template: str | None = None) -> list[Record]:
    """Ask the backend for every example without a finished record; store each result at once."""
    identity = backend.identity()
    fields = [key_fields(identity, ex, mode, settings, k_max if mode == "score" else None, template)
              for ex in examples]
    keys = [record_key(f) for f in fields]
    done = store.finished(keys)
    todo = [i for i, k in enumerate(keys) if k not in done]
    progress.start(label if template is None else f"{label} · {template}", len(examples), len(examples) - len(todo))
    try:
        if todo:
            prompts = [examples[i].prompt for i in todo]
            if mode == "score":
                def on_scored(items: list[tuple[int, Scored]]) -> None:
                    store.put(from_scored(label, examples[todo[j]], fields[todo[j]], s) for j, s in items)
                    progress.advance(len(items))

                backend.score(prompts, k_max, settings, on_scored)
            else:
                def on_done(items: list[tuple[int, Completion]]) -> None:
                    store.put(from_completion(label, examples[todo[j]], fields[todo[j]], c) for j, c in items)
                    progress.advance(len(items))

                backend.generate(prompts, settings, on_done)
    finally:
        progress.finish()
    got = store.get(keys)
    # Another SPEC naming the same weights shares records; results carry this run's name.
    return [replace(got[k], model=label) for k in keys if k in got]


def write_records(path: Path, records: dict[Any, list[Record]]) -> None:
    """The tidy table: one row per (model, example), or (model, template, example) with templates."""
    import pandas as pd

    rows = []
    for recs in records.values():
        for r in recs:
            d = asdict(r)
            d["key_fields"] = json.dumps(d["key_fields"], sort_keys=True)
            rows.append(d)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df["template"].isna().all():  # no --template: the table's columns as before
        df = df.drop(columns="template")
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def run_bench(models: list[str] | str, data: str | Path, out: str | Path, *, n: int | None = None,
              mode: str = "generate", prompt_format: str = "auto", concurrency: int = 8, rpm: float | None = None,
              max_new_tokens: int = 8, prefill: bool = False, system: str | None = None,
              device: str | None = None, dtype: str | None = None, device_map: str | None = None,
              batch_size: int = 64, timeout: float = 60.0, max_retries: int = 6, retry: RetryPolicy | None = None,
              figures: bool = True, progress: bool | Progress = True,
              templates: list[str | Template] | str | Template | None = None,
              handles: dict[str, Any] | None = None, warn: Callable[[str], None] | None = None,
              **load: Any) -> BenchSummary:
    """Benchmark each model on the first `n` rows of `data`; write DIR/summary.json, records, figures.

    `templates` (built-in names, YAML/JSON files or Template objects): render every row with each
    template and benchmark every model x template; the summary then has one `models` entry per
    model x template, comparisons between models per template, and a `templates` section (accuracy
    with a Wilson interval per template, McNemar between templates on the same examples).
    Rerunning the same call resumes: finished records (same key) are skipped, API errors retried.
    `handles` maps a local model's SPEC to an already loaded ModelHandle (the study loads once).
    `warn(message)` hears when the file holds fewer than `n` rows (the run goes on with those).
    `load`: the other LoadOptions of local models (max_memory, offload_folder, engine, remote).
    """
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if max_new_tokens < 1:
        raise InputError("--max-new-tokens must be at least 1")
    specs = _specs(models, mode)
    from countlens.models.registry import preflight

    for spec in specs:  # a model that cannot load fails before any file is written
        if spec.kind == "hf" and spec.label not in (handles or {}):
            preflight(spec.name)
    tpls = _templates(templates)
    examples = load_examples(data, n)
    short = short_warning(n, len(examples), "rows", data)
    if warn is not None and short:
        warn(short)
    variants: dict[str | None, list[BenchExample]] = (
        {None: examples} if tpls is None else {t.name: render(examples, t, str(data)) for t in tpls})
    prefixes = {None: None} if tpls is None else {t.name: t.answer_prefix for t in tpls}
    k_max = max(ex.answer for ex in examples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prog: Progress = progress if not isinstance(progress, bool) else (TqdmProgress() if progress else NoProgress())
    policy = retry or RetryPolicy(max_retries=max_retries, timeout=timeout)
    api = ApiOptions(concurrency=concurrency, rpm=rpm, retry=policy)
    base_settings = GenSettings(max_new_tokens=max_new_tokens, prefill=prefill, system=system)
    store = RecordStore(out / STORE_NAME)
    records: dict[tuple[str, str | None], list[Record]] = {}
    model_config: list[dict[str, Any]] = []
    try:
        for spec in specs:
            backend = make_backend(spec, prompt_format=prompt_format, api=api, batch_size=batch_size,
                                   handle=(handles or {}).get(spec.label), device=device, dtype=dtype,
                                   device_map=device_map, **load)
            settings = base_settings
            if prefill and mode == "generate" and not backend.supports_prefill:
                prog.note(f"{spec.label}: this backend cannot pre-fill the reply; sending the prompt unchanged")
                settings = replace(settings, prefill=False)
            try:
                for name, exs in variants.items():
                    st = settings if prefixes[name] is None else replace(settings, answer_prefix=prefixes[name])
                    records[(spec.label, name)] = _run_model(backend, spec.label, exs, mode, st, k_max, store, prog,
                                                             template=name)
                model_config.append({"model": spec.label, "identity": backend.identity(),
                                     "prefill": settings.prefill if mode == "generate" else None})
            finally:
                backend.close()
                del backend
                gc.collect()
    finally:
        store.close()

    labels = list(dict.fromkeys(label for label, _ in records))
    cmp = [c for name in variants
           for c in comparisons({label: records[(label, name)] for label in labels}, template=name)]
    summary = BenchSummary(
        models=[model_metrics(label, mode, recs, template=name) for (label, name), recs in records.items()],
        comparisons=cmp,
        templates=None if tpls is None else templates_section(
            {label: {name: records[(label, name)] for name in variants} for label in labels}),
        config={"data": str(data), "n": len(examples), "mode": mode, "prompt_format": prompt_format,
                "max_new_tokens": max_new_tokens, "prefill": prefill, "answer_prefix": base_settings.answer_prefix,
                "system": system, "k_max": k_max, "concurrency": concurrency, "rpm": rpm,
                "max_retries": policy.max_retries, "timeout_s": policy.timeout, "parser_version": PARSER_VERSION,
                "accuracy_parser": "lenient", "interval": INTERVAL, "ci": CI,
                **({} if tpls is None else {"templates": [t.to_dict() for t in tpls]}),
                "models": model_config},
        files={"store": STORE_NAME, "records": RECORDS_NAME, "summary": SUMMARY_NAME})
    write_records(out / RECORDS_NAME, records)
    if figures:
        summary.files["figures"] = summary.plot(out)  # report/bench_figures.py, bound in countlens.plot
    write_json(out / SUMMARY_NAME, summary.to_dict())
    return summary


__all__ = ["run_bench"]
