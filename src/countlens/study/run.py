"""Run the study: data -> pairs -> bench -> patch -> probes (acts inside) -> steer -> analyses -> report.

Each stage writes into DIR/<stage>/ and finishes by writing DIR/<stage>/stage.json with the
hash of the config that produced it; a stage whose stage.json matches is skipped, so a
stopped run resumes where it stopped. `force` reruns the named stages (and nothing else).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countlens.io import write_json
from countlens.options import LoadOptions
from countlens.study.config import StudyConfig, fit_to_model
from countlens.study.stages import STUDY_STAGES
from countlens.study.results import BenchResult, DataResult, PairsResult, ReportResult, load_stage
from countlens.summaries import DataSummary, ModelSummary

STAGES = STUDY_STAGES  # data, pairs, bench, patch, probes, steer, analyses, report (study/stages.py)


@dataclass
class StudyResult:
    """What `run_study` returns: each stage's result object, with .to_frame() (and .plot() where there
    is something to plot): the ones it ran, and the ones it skipped as already done, read back from
    their files (study.results.load_stage)."""
    out: Path
    config: StudyConfig
    stages: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def _done(stage_dir: Path, h: str) -> bool:
    marker = stage_dir / "stage.json"
    return marker.exists() and json.loads(marker.read_text()).get("hash") == h


def _template(cfg: StudyConfig, handle) -> Any:
    return handle.template(cfg.template)


class Study:
    """One object holding the handle (loaded once) and the stage functions."""

    def __init__(self, cfg: StudyConfig, out: Path, log: Callable[[str], None]):
        self.cfg, self.out, self.log = cfg, out, log
        self._handle = None

    @property
    def handle(self):
        if self._handle is None:
            from countlens.models.handle import load

            c = self.cfg
            self._handle = load(c.model, **self.load)
        return self._handle

    @property
    def load(self) -> dict:
        """How the model is loaded: the study's LoadOptions keys."""
        return {k: getattr(self.cfg, k) for k in LoadOptions.model_fields}

    @property
    def data_file(self) -> Path:
        return self.out / "data" / "examples.jsonl"

    def data(self, d: Path) -> Any:
        from countlens.data.generate import generate_dataset, summarize
        from countlens.data.schema import read_examples

        c = self.cfg.data
        if c.file:
            rows = [ex.row() for _, ex in read_examples(c.file, c.n)]
            from countlens.io import write_jsonl

            write_jsonl(self.data_file, rows)
            summary = summarize(rows) | {"source": c.file}
        else:
            tpl = _template(self.cfg, self.handle)
            summary = generate_dataset(self.data_file, c.n, template=tpl, **c.model_dump(exclude={"n", "file"}))
        write_json(d / "summary.json", DataSummary.check(summary))
        from countlens.io import read_jsonl
        from countlens.study.describe import describe_model

        first = next(obj for _, obj in read_jsonl(self.data_file, 1))
        write_json(self.out / "model.json", ModelSummary.check(describe_model(self.handle, _template(self.cfg, self.handle), first)))
        return DataResult(summary, self.data_file)

    def pairs(self, d: Path) -> Any:
        from countlens.data.pairs import build_pairs

        c = self.cfg.pairs
        summary = build_pairs(self.data_file, self.handle.tokenizer, c.n, d / "pairs.jsonl", change_at=c.change_at,
                              seed=c.seed, lexicon=self.cfg.data.lexicon, template=_template(self.cfg, self.handle))
        write_json(d / "summary.json", summary)
        if summary.get("short_reason"):
            self.log(f"warning: {summary['short_reason']}")
        return PairsResult(summary, d / "pairs.jsonl")

    def bench(self, d: Path) -> Any:
        from countlens.bench.runner import run_bench

        c = self.cfg.bench
        results = BenchResult()
        for mode in c.modes:
            results[mode] = run_bench([self.cfg.model], self.data_file, d / mode, n=c.n, mode=mode,
                                      **c.model_dump(exclude={"n", "modes"}), **self.load, progress=False,
                                      handles={self.cfg.model: self.handle})
        return results

    def patch(self, d: Path) -> Any:
        from countlens.interp.patching import PatchOptions, load_pairs, run_patching, save_result

        c = self.cfg.patch
        opts = PatchOptions(**c.model_dump(), template=self.cfg.template, memory_budget=self.cfg.memory_budget_bytes)
        result = run_patching(self.handle, load_pairs(self.out / "pairs" / "pairs.jsonl"), opts, log=self.log)
        save_result(result, d)
        return result

    def probes(self, d: Path) -> Any:
        from countlens.interp.probes import run_probes

        c = self.cfg.probes
        return run_probes(model=self.handle, data=self.data_file, out=d, n=c.n, template=self.cfg.template,
                          progress=False, **c.model_dump(exclude={"n"}))

    def steer(self, d: Path) -> Any:
        from countlens.data.schema import read_examples
        from countlens.interp.steering import SteerOptions, run_steering, save_steering

        c = self.cfg.steer
        rows = [ex.row() for _, ex in read_examples(self.data_file)]
        dirs = self._probe_directions(len(rows))
        if dirs is not None:  # the probes' directions; held out: the examples after the probes' own
            rows = rows[self.cfg.probes.n:self.cfg.probes.n + self._held_out()]
        else:
            rows = rows[:c.n]
        vectors = tuple(dict.fromkeys((*c.vectors, "one-more", "random")))  # the control vectors always run
        opts = SteerOptions(**c.model_dump(exclude={"n", "vectors"}), vectors=vectors, template=self.cfg.template,
                            directions=dirs, memory_budget=self.cfg.memory_budget_bytes)
        result = run_steering(self.handle, rows, opts)
        save_steering(result, d)
        return result

    def _probe_directions(self, n_rows: int) -> str | None:
        """The probes stage's folder when its saved directions cover every steering layer and the data
        has `steer.n`'s held-out share of examples the probes did not see; else None (steering fits its
        own directions on half of its examples). One capture and fit fewer on a deep model."""
        c, pc = self.cfg.steer, self.cfg.probes
        folder = self.out / "probes"
        if not (folder / "directions" / "resid-last").is_dir() or n_rows - pc.n < self._held_out():
            return None
        if pc.layers is not None and (c.layers is None or not {str(x) for x in c.layers} <= {str(x) for x in pc.layers}):
            return None
        return str(folder)

    def _held_out(self) -> int:
        """How many of `steer.n` examples steering holds out when it fits its own directions."""
        from countlens.interp.steering import SteerOptions, train_size

        c = self.cfg.steer
        return c.n - train_size(c.n, SteerOptions(train_frac=c.train_frac))

    def analyses(self, d: Path) -> Any:
        from countlens.study.analyses import run_analyses

        c = self.cfg.analyses
        which = tuple(c.run)
        local_only = [w for w in which if w != "lens"]
        if self.cfg.remote and local_only:   # they read weights, which stay on NDIF (the lens reads in the trace)
            self.log(f"analyses {', '.join(local_only)} skipped: with --remote the model's weights are not here "
                     "(run them locally, or natively on a machine that holds the model)")
            which = tuple(w for w in which if w == "lens")
        return run_analyses(self.handle, d, data=self.data_file, n=c.n, which=which,
                            batch_size=c.batch_size, template=self.cfg.template,
                            pairs=self.out / "pairs" / "pairs.jsonl", patch=self.out / "patch",
                            probes=self.out / "probes", patch_config=self.cfg.patch, log=self.log,
                            memory_budget=self.cfg.memory_budget_bytes)

    def report(self, d: Path) -> Any:
        from countlens.report.html import write_report

        r = write_report(self.out, self.cfg)
        return ReportResult(Path(r["html"]), Path(r["md"]), self.out, figures=r["figures"])


def environment(cfg: StudyConfig) -> dict:
    import torch
    import transformers

    from countlens import __version__

    return {"countlens": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "device": cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            "threads": torch.get_num_threads()}


def model_depth(model: str) -> int:
    """Decoder blocks of a local model, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from countlens.models.registry import resolve

    cfg = AutoConfig.from_pretrained(resolve(model))
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))


def run_study(cfg: StudyConfig, out: str | Path = "runs/study", *, force: tuple[str, ...] = (),
              progress: bool = True, log: Callable[[str], None] | None = None) -> StudyResult:
    """Run every stage not already done for this config; return the stage results."""
    from tqdm.auto import tqdm

    from countlens.errors import InputError
    from countlens.study.config import to_yaml

    bad = [s for s in force if s not in STAGES]
    if bad:
        raise InputError(f"--force: unknown stage(s) {bad} (stages: {', '.join(STAGES)})")
    from countlens.models.registry import preflight

    preflight(cfg.model)  # a model that cannot load fails before anything is written
    cfg = fit_to_model(cfg, model_depth(cfg.model))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda m: sys.stderr.write(m + "\n"))
    (out / "config.yaml").write_text(to_yaml(cfg))
    study = Study(cfg, out, log)
    result = StudyResult(out=out, config=cfg)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    bar = tqdm(STAGES, desc="study", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for stage in bar:
        bar.set_postfix_str(stage)
        d = out / stage
        h = cfg.stage_hash(stage)
        if stage != "report" and stage not in force and _done(d, h):
            result.skipped.append(stage)
            result.stages[stage] = load_stage(out, stage)
            continue
        if d.exists() and stage != "report":
            shutil.rmtree(d)  # a half-finished or stale stage starts clean
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if stage == "report":
            write_json(out / "timings.json", timings)
            write_json(out / "environment.json", environment(cfg))
        result.stages[stage] = getattr(study, stage)(d)
        timings[stage] = round(time.time() - t0, 2)
        result.timings[stage] = timings[stage]
        write_json(d / "stage.json", {"stage": stage, "hash": h, "seconds": timings[stage]})
        write_json(out / "timings.json", timings)
    return result
