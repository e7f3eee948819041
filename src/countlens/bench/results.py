"""The benchmark's result objects: what summary.json holds, as pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class SliceStat(BaseModel):
    n: int
    accuracy: float
    accuracy_strict: float
    ci_low: float
    ci_high: float
    p_correct: float | None = None   # score mode


class Confusion(BaseModel):
    """Rows: true count; columns: predicted count, then `none` (parse or API error)."""

    true: list[int]
    pred: list[int | str]
    matrix: list[list[int]]


class Tokens(BaseModel):
    input: int = 0
    output: int = 0
    reasoning: int = 0
    requests: int = 0
    attempts: int = 0


class ScoreStats(BaseModel):
    p_correct: float
    mean_expected_count: float
    mean_expected_error: float
    ece: float
    mean_confidence: float


class ModelMetrics(BaseModel):
    model: str
    mode: str
    n: int
    template: str | None = None      # set when the run renders its own templates (--template)
    completed: int
    accuracy: float
    accuracy_strict: float
    ci_low: float
    ci_high: float
    parse_error_rate: float
    numerical_error_rate: float
    api_error_rate: float
    mean_signed_error: float | None
    by_count: dict[str, SliceStat]
    by_list_length: dict[str, SliceStat]
    by_category: dict[str, SliceStat]
    confusion: Confusion
    tokens: Tokens
    score: ScoreStats | None = None
    # Wilson intervals of every proportion above: {"accuracy": [low, high], "parse_error_rate": ...}
    intervals: dict[str, list[float]] = {}

    @property
    def label(self) -> str:
        return self.model if self.template is None else f"{self.model} · {self.template}"


class PairedStats(BaseModel):
    """Accuracy of a minus b on the same examples: paired bootstrap CI and p, McNemar exact on the
    discordant pairs (b: right under a only, c: right under b only)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    bootstrap_p: float
    mcnemar_b: int
    mcnemar_c: int
    mcnemar_p: float

    def rounded(self) -> dict[str, Any]:
        """The fields as summary.json holds them: 6 decimals, McNemar's p 8."""
        return {k: round(v, 8 if k == "mcnemar_p" else 6) if isinstance(v, float) else v
                for k, v in self.model_dump().items()}


class Comparison(PairedStats):
    """Two models paired on the examples both answered: a minus b."""

    model_a: str
    model_b: str
    template: str | None = None      # both models on the same template's prompts


class TemplateRow(BaseModel):
    """One model on one template's prompts; the interval is Wilson's."""

    template: str
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    accuracy_strict: float
    parse_error_rate: float
    p_correct: float | None = None   # score mode


class TemplatePair(PairedStats):
    """The same model and examples under two templates: a minus b; McNemar's p Holm-adjusted over
    the model's pairs."""

    template_a: str
    template_b: str
    mcnemar_p_holm: float


class TemplateTable(BaseModel):
    model: str
    templates: list[TemplateRow]
    pairs: list[TemplatePair]
    spread: float                    # best minus worst template accuracy


class TemplatesSection(BaseModel):
    """Prompt sensitivity: every model on every template, paired on the same examples."""

    names: list[str]
    interval: str
    difference_ci: str
    test: str
    models: list[TemplateTable]


class BenchSummary(BaseModel):
    models: list[ModelMetrics]
    comparisons: list[Comparison]
    config: dict[str, Any]
    files: dict[str, Any] = {}
    templates: TemplatesSection | None = None

    def to_dict(self) -> dict[str, Any]:
        """summary.json; a run without --template has no template keys at all (the file as before)."""
        d = self.model_dump(mode="json")
        if d["templates"] is None:
            del d["templates"]
        for row in (*d["models"], *d["comparisons"]):
            if row.get("template") is None:
                row.pop("template", None)
        return d

    def to_frame(self):
        """One row per model: the headline metrics (slices stay in `models[i]`)."""
        import pandas as pd

        keep = ("model", *(("template",) if self.templates else ()), "mode", "n", "accuracy", "accuracy_strict", "ci_low", "ci_high", "parse_error_rate",
                "numerical_error_rate", "api_error_rate", "mean_signed_error")
        return pd.DataFrame([{k: getattr(m, k, None) for k in keep} for m in self.models])
