"""Terminal display for `countlens bench`: a rich progress bar on stderr and the result tables."""

from __future__ import annotations

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from countlens.bench.results import BenchSummary


class RichProgress:
    """The runner's Progress hook: one bar per model, notes above it, all on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def start(self, model: str, total: int, done: int) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(model, total=total, completed=done)
        if done:
            self.note(f"{model}: {done} of {total} records already finished, resuming")

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def tables(summary: BenchSummary) -> Group:
    """The model table, accuracy by true count, paired comparisons when there are several models,
    and with several templates one prompt-sensitivity table per model."""
    ms = summary.models
    tpl = summary.templates is not None
    main = Table(min_width=60, title=f"countlens bench · {summary.config['mode']} · n = {summary.config['n']} · "
                 f"intervals: {summary.config.get('interval', 'bootstrap')}", title_justify="left")
    for col in ("model", *(("template",) if tpl else ()), "acc %", "95% CI", "strict %", "parse err %", "num err %",
                "API err %", "signed err", "tokens in/out"):
        main.add_column(col, justify="left" if col in ("model", "template") else "right")
    for m in ms:
        main.add_row(m.model, *((m.template,) if tpl else ()), _pct(m.accuracy), f"{_pct(m.ci_low)}-{_pct(m.ci_high)}", _pct(m.accuracy_strict),
                     _pct(m.parse_error_rate), _pct(m.numerical_error_rate), _pct(m.api_error_rate),
                     "-" if m.mean_signed_error is None else f"{m.mean_signed_error:+.2f}",
                     f"{m.tokens.input}/{m.tokens.output}")
    parts: list = [main]
    counts = sorted({k for m in ms for k in m.by_count}, key=int)
    by = Table(title="accuracy % by true count", title_justify="left")
    by.add_column("model")
    for k in counts:
        by.add_column(k, justify="right")
    for m in ms:
        by.add_row(m.label, *[_pct(m.by_count[k].accuracy) if k in m.by_count else "-" for k in counts])
    parts.append(by)
    if ms and ms[0].score:
        sc = Table(title="score mode", title_justify="left")
        for col in ("model", "P(correct)", "E(count)", "E(count) - true", "ECE"):
            sc.add_column(col, justify="left" if col == "model" else "right")
        for m in ms:
            s = m.score
            sc.add_row(m.label, f"{s.p_correct:.3f}", f"{s.mean_expected_count:.3f}", f"{s.mean_expected_error:+.3f}",
                       f"{s.ece:.3f}")
        parts.append(sc)
    if summary.comparisons:
        cmp = Table(title="paired comparisons (a - b, same examples)", title_justify="left")
        for col in ("a", "b", *(("template",) if tpl else ()), "n", "diff %", "95% CI", "McNemar b/c", "McNemar p",
                    "bootstrap p"):
            cmp.add_column(col, justify="left" if col in ("a", "b", "template") else "right")
        for c in summary.comparisons:
            cmp.add_row(c.model_a, c.model_b, *((c.template,) if tpl else ()), str(c.n), f"{100 * c.difference:+.1f}",
                        f"{100 * c.ci_low:+.1f} to {100 * c.ci_high:+.1f}", f"{c.mcnemar_b}/{c.mcnemar_c}",
                        f"{c.mcnemar_p:.3g}", f"{c.bootstrap_p:.3g}")
        parts.append(cmp)
    if tpl:
        parts.extend(template_tables(summary))
    return Group(*parts)


def template_tables(summary: BenchSummary) -> list[Table]:
    """Per model: accuracy with its Wilson interval under each template, then each pair of templates
    on the same examples (a - b, McNemar exact with Holm's adjustment, paired bootstrap CI)."""
    sec = summary.templates
    out: list[Table] = []
    if sec is None:
        return out
    for t in sec.models:
        spread = f" · spread {100 * t.spread:.1f} points" if len(t.templates) > 1 else ""
        acc = Table(title=f"prompt sensitivity · {t.model}{spread}", title_justify="left")
        for col in ("template", "n", "acc %", sec.interval, "strict %", "parse err %", "P(correct)"):
            acc.add_column(col, justify="left" if col == "template" else "right")
        for r in t.templates:
            acc.add_row(r.template, str(r.n), _pct(r.accuracy), f"{_pct(r.ci_low)}-{_pct(r.ci_high)}",
                        _pct(r.accuracy_strict), _pct(r.parse_error_rate),
                        "-" if r.p_correct is None else f"{r.p_correct:.3f}")
        out.append(acc)
        if t.pairs:
            pt = Table(title=f"templates compared · {t.model} (a - b, same examples)", title_justify="left")
            for col in ("a", "b", "n", "diff %", "95% CI", "McNemar b/c", "McNemar p", "Holm p"):
                pt.add_column(col, justify="left" if col in ("a", "b") else "right")
            for p in t.pairs:
                pt.add_row(p.template_a, p.template_b, str(p.n), f"{100 * p.difference:+.1f}",
                           f"{100 * p.ci_low:+.1f} to {100 * p.ci_high:+.1f}", f"{p.mcnemar_b}/{p.mcnemar_c}",
                           f"{p.mcnemar_p:.3g}", f"{p.mcnemar_p_holm:.3g}")
            out.append(pt)
    return out
