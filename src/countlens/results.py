"""The result of every stage as plain data: the schema the engine writes and the report reads.

Each result holds its tables (pandas) and its summary (the dict written as summary.json, checked
against its schema in countlens.summaries; `.typed` gives it as that schema) and has `.to_frame()`; `.plot(dir)` is bound in the package's face (`countlens.plot`), so that figures live
in report/ and nothing here imports the engine or matplotlib. Files a stage writes are a contract
that notebooks read: folder names, summary keys and table columns are only ever added to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from countlens.summaries import (AtPSummary, AttentionSummary, DataSummary, DLASummary, LensSummary, PatchSummary,
                                 ProbeSummary, SteerSummary, Summary, parse)

if TYPE_CHECKING:  # pandas and numpy load when a result is used, so `import countlens` stays light
    import numpy as np
    import pandas as pd


class Typed:
    """`.typed`: the summary dict as its schema (countlens.summaries), attributes instead of keys."""
    SCHEMA: ClassVar[type[Summary]] = Summary

    @property
    def typed(self):
        return parse(self.SCHEMA, self.summary)  # type: ignore[attr-defined]


@dataclass
class DataResult(Typed):
    """The study's dataset: its summary (balance by count, length, category) and the JSONL file."""
    summary: dict
    file: Path
    SCHEMA = DataSummary

    def to_frame(self) -> pd.DataFrame:
        """One row per example: id, category, word_list, answer, list_length, prompt, ..."""
        import pandas as pd

        from countlens.io import read_jsonl

        return pd.DataFrame([obj for _, obj in read_jsonl(self.file)])


@dataclass
class PairsResult(Typed):
    """The minimal pairs: the build summary and the pairs JSONL file."""
    summary: dict
    file: Path

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: id, n_low, n_high, changed_index, low_word, high_word, token_span, n_tokens."""
        import pandas as pd

        from countlens.io import read_jsonl

        rows = [{k: v for k, v in obj.items() if k not in ("low", "high")} for _, obj in read_jsonl(self.file)]
        return pd.DataFrame(rows)


class BenchResult(dict):
    """{mode: BenchSummary} for the modes that ran, with the frames of all of them together."""

    def to_frame(self) -> pd.DataFrame:
        """One row per mode x model (x template): accuracy with its Wilson interval, error rates."""
        import pandas as pd

        frames = [s.to_frame().assign(mode=mode) for mode, s in self.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dataclass
class PatchResult(Typed):
    """Activation patching: the long table (pair x site x layer x head x position x metric) and its summary."""
    table: pd.DataFrame
    summary: dict
    options: Any = None  # the PatchOptions that produced it (None when read back from files)
    cells: pd.DataFrame | None = None  # per-cell statistics (cells.parquet): CI, sign-flip p, corrected p
    SCHEMA = PatchSummary

    def to_frame(self) -> pd.DataFrame:
        return self.table


@dataclass
class SteerResult(Typed):
    table: pd.DataFrame          # per example x vector x layer x scale: answer, expected, p_target...
    summary: dict
    transitions: dict            # name -> [K+1, K+1] counts (true N x steered answer)
    SCHEMA = SteerSummary

    def to_frame(self) -> pd.DataFrame:
        return self.table


@dataclass
class ProbeResults(Typed):
    """Tidy table of every number, out-of-fold predictions at `last`, and the summary."""

    table: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict
    out: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    directions: list = field(default_factory=list)  # the fitted count directions (interp.directions.Directions)
    SCHEMA = ProbeSummary

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def per_layer(self, kind: str | None = None, position: str = "last", item: int = -1) -> pd.DataFrame:
        """Wide frame: one row per layer (emb first), one column per metric (+ _lo/_hi CIs)."""
        import pandas as pd

        kind = kind or self.summary["site"]
        t = self.table[(self.table["probe"] == "linear") & (self.table["kind"] == kind)
                       & (self.table["position"] == position) & (self.table["item"] == item)]
        if t.empty:
            return pd.DataFrame()
        wide = t.pivot_table(index=["layer", "depth"], columns="metric", values=["value", "ci_low", "ci_high"])
        wide.columns = [m if v == "value" else f"{m}_{'lo' if v == 'ci_low' else 'hi'}" for v, m in wide.columns]
        return wide.reset_index().sort_values("depth").reset_index(drop=True)

    def baseline(self, probe: str, metric: str = "accuracy", position: str = "last", item: int = -1) -> dict | None:
        t = self.table[(self.table["probe"] == probe) & (self.table["metric"] == metric)
                       & (self.table["position"] == position) & (self.table["item"] == item)]
        if t.empty:
            return None
        r = t.iloc[0]
        return {"value": float(r["value"]), "ci_low": float(r["ci_low"]), "ci_high": float(r["ci_high"])}

    def running_count(self, metric: str = "accuracy", kind: str | None = None) -> pd.DataFrame:
        """Layer x word-position grid of a metric of the running-count probe (rows in layer order)."""
        import pandas as pd

        kind = kind or self.summary["site"]
        t = self.table[(self.table["probe"] == "linear") & (self.table["kind"] == kind)
                       & (self.table["position"] == "items") & (self.table["metric"] == metric)]
        if t.empty:
            return pd.DataFrame()
        grid = t.pivot_table(index=["depth", "layer"], columns="item", values="value").sort_index()
        return grid.droplevel("depth")

    def confusion(self, layer: Any | None = None) -> tuple[np.ndarray, list[int], Any]:
        """Confusion matrix [true, predicted] of the last-position probe (best layer by default)."""
        import numpy as np

        layer = str(self.summary["best_layer"]["layer"] if layer is None else layer)
        p = self.predictions[self.predictions["layer"] == layer]
        classes = sorted(set(p["y"]).union(p["pred"]))
        cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
        for a, b in zip(p["y"], p["pred"]):
            cm[classes.index(a), classes.index(b)] += 1
        return cm, classes, layer


@dataclass
class _Analysis(Typed):
    """An analysis result: a tidy `table` (table.parquet) and its `summary` (summary.json, with the
    options that produced it)."""
    table: pd.DataFrame
    summary: dict
    WHAT = "analysis"

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def save(self, out: str | Path) -> Path:
        """table.parquet and summary.json into `out` (each complete or absent); returns `out`."""
        from countlens.io import write_json, write_parquet

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(out / "table.parquet", self.table)
        write_json(out / "summary.json", self.SCHEMA.check(self.summary, str(out / "summary.json")))
        return out

    @classmethod
    def _read(cls, out: str | Path) -> tuple[Path, pd.DataFrame, dict]:
        import json

        import pandas as pd

        from countlens.errors import InputError

        out = Path(out)
        if not (out / "summary.json").exists():
            raise InputError(f"no {cls.WHAT} result here (summary.json is missing)", file=str(out))
        return out, pd.read_parquet(out / "table.parquet"), json.loads((out / "summary.json").read_text())

    @classmethod
    def load(cls, out: str | Path):
        _, table, summary = cls._read(out)
        return cls(table=table, summary=summary)


@dataclass
class LensResult(_Analysis):
    """The logit lens: `table` one row per layer x position x metric; `summary` the answer position per
    layer, the model's own accuracy, the first layer at 90 % of it; `alignment` (with count directions):
    the cosine of each direction with each digit's readout direction (alignment.parquet)."""
    alignment: pd.DataFrame | None = None
    WHAT = "logit-lens"
    SCHEMA = LensSummary

    def save(self, out: str | Path) -> Path:
        from countlens.io import write_parquet

        out = super().save(out)
        if self.alignment is not None:
            write_parquet(out / "alignment.parquet", self.alignment)
        return out

    @classmethod
    def load(cls, out: str | Path) -> LensResult:
        import pandas as pd

        out, table, summary = cls._read(out)
        al = out / "alignment.parquet"
        return cls(table=table, summary=summary, alignment=pd.read_parquet(al) if al.exists() else None)


@dataclass
class DLAResult(_Analysis):
    """Direct logit attribution: one row per component (mean over rows, bootstrap 95 % interval); the
    summary has the total, the top heads and MLPs and the remainders' share."""
    WHAT = "attribution"
    SCHEMA = DLASummary


@dataclass
class AttentionResult(_Analysis):
    """Attention to matching vs non-matching items: query x weighting x layer x head x measure."""
    WHAT = "attention"
    SCHEMA = AttentionSummary


@dataclass
class AtPResult(_Analysis):
    """Attribution patching: exact patching's long table (plus the `delta_ld` estimate) and summary."""
    WHAT = "attribution-patching"
    SCHEMA = AtPSummary
