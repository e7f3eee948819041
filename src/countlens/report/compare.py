"""Two or more finished studies side by side: what changed inside the model (`countlens compare`).

Reads only the study folders' summaries and tables (no model is loaded), so a base model and its
fine-tuned version, or two architectures, can be compared after the fact. Layers are put on one
axis as depth: `emb` at 0, block i at (i + 1) / n_layers, so models of different depth line up.
Patching is compared by its exact-match rate (the share of pairs whose patched answer becomes the
source's count), which is defined even for a model with no logit difference to move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from countlens.errors import InputError
from countlens.report.findings import bench_summaries
from countlens.summaries import ModelSummary, ProbeSummary, SteerBest, SteerSummary


@dataclass
class RunView:
    label: str
    folder: Path
    model: str
    n_layers: int
    bench: dict[str, dict] = field(default_factory=dict)          # mode -> {accuracy, ci_low, ci_high, n}
    patch: pd.DataFrame | None = None                              # position_name, layer, exact_match, n
    probes: pd.DataFrame | None = None                             # layer, accuracy, ci_low, ci_high, control
    steer: pd.DataFrame | None = None                              # layer, success_rate (best scale per layer)
    steer_best: SteerBest | None = None
    chance: float | None = None

    def depth(self, layer) -> float:
        return 0.0 if layer == "emb" else (int(layer) + 1) / self.n_layers


def load_run(folder: str | Path, label: str | None = None) -> RunView:
    """The numbers `compare` needs from one `countlens run` output folder."""
    folder = Path(folder)
    model = ModelSummary.read(folder / "model.json")
    if model is None:
        raise InputError(f"'{folder}' is not a study folder (no model.json); pass `countlens run` --out folders")
    v = RunView(label=label or model.name or folder.name, folder=folder, model=model.name, n_layers=model.n_layers)
    for mode, s in bench_summaries(folder).items():
        if s.models:
            m = s.models[0]
            v.bench[mode] = {"accuracy": m.accuracy, "ci_low": m.ci_low, "ci_high": m.ci_high, "n": m.n}
            v.chance = 1 / (int(s.config.get("k_max", 5)) + 1)
    table = folder / "patch" / "table.parquet"
    if table.exists():
        t = pd.read_parquet(table)
        t = t[(t.site == "resid") & (t.metric == "exact_match")]
        if "position_name" not in t or t.position_name.isna().all():
            t = t.assign(position_name=t.position.astype(str))
        v.patch = (t.groupby(["position_name", "layer"], sort=False)["value"].agg(["mean", "size"])
                   .rename(columns={"mean": "exact_match", "size": "n"}).reset_index())
    p = ProbeSummary.read(folder / "probes" / "summary.json")
    if p:
        v.probes = pd.DataFrame([{"layer": r.layer, "accuracy": r.accuracy, "ci_low": r.ci_low,
                                  "ci_high": r.ci_high, "control": r.control_accuracy} for r in p.per_layer])
    s = SteerSummary.read(folder / "steer" / "summary.json")
    if s and s.mean_diff:
        v.steer = pd.DataFrame(s.mean_diff.per_layer)
        v.steer_best = s.mean_diff.best
    return v


def compare_table(runs: list[RunView]) -> pd.DataFrame:
    """One row per measure, one column per run: the headline numbers, in percent."""
    rows: list[dict] = []

    def pct(x):
        return None if x is None or x != x else round(100 * x, 1)

    for mode in ("generate", "score"):
        rows.append({"measure": f"benchmark accuracy ({mode}), %",
                     **{r.label: _with_ci(r.bench.get(mode)) for r in runs}})
    for name in ("answer", "changed", "last_item"):
        rows.append({"measure": f"patching at '{name}': best layer's exact-match rate, %",
                     **{r.label: _best_patch(r, name) for r in runs}})
    rows.append({"measure": "probe accuracy at the answer, best layer, %",
                 **{r.label: _best_probe(r) for r in runs}})
    rows.append({"measure": "steering N -> N+1 success (mean-diff, best), % (random control)",
                 **{r.label: (f"{pct(r.steer_best.success_rate)} (random {pct(r.steer_best.control_success_rate)})"
                              if r.steer_best else None) for r in runs}})
    return pd.DataFrame(rows).set_index("measure")


def _with_ci(b: dict | None) -> str | None:
    if not b or b.get("accuracy") is None:
        return None
    return f"{100 * b['accuracy']:.1f} [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]"


def _best_patch(r: RunView, name: str) -> str | None:
    if r.patch is None:
        return None
    t = r.patch[r.patch.position_name == name]
    if t.empty:
        return None
    best = t.loc[t.exact_match.idxmax()]
    return f"{100 * best.exact_match:.1f} (layer {best.layer})"


def _best_probe(r: RunView) -> str | None:
    if r.probes is None or r.probes.empty:
        return None
    best = r.probes.loc[r.probes.accuracy.idxmax()]
    return f"{100 * best.accuracy:.1f} (layer {best.layer}; control {100 * best.control:.1f})"


def compare_figure(runs: list[RunView], path: str | Path) -> Path:
    """Four panels over depth: patching exact match at the answer and at the changed word, probe
    accuracy (with its control task), steering success; one line per run, chance dotted."""
    from countlens.report._plt import plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharex=True)
    for r in runs:
        if r.patch is not None:
            for ax, name in ((axes[0], "answer"), (axes[1], "changed")):
                t = r.patch[r.patch.position_name == name]
                if not t.empty:
                    ax.plot([r.depth(x) for x in t.layer], 100 * t.exact_match, marker=".", label=r.label)
        if r.probes is not None:
            line = axes[2].plot([r.depth(x) for x in r.probes.layer], 100 * r.probes.accuracy, marker=".",
                                label=f"{r.label}")[0]
            axes[2].plot([r.depth(x) for x in r.probes.layer], 100 * r.probes.control, ls="--", alpha=0.5,
                         color=line.get_color(), label=f"{r.label}: control task")
        if r.steer is not None:
            axes[3].plot([r.depth(x) for x in r.steer.layer], 100 * r.steer.success_rate, marker=".", label=r.label)
    chance = next((r.chance for r in runs if r.chance), None)
    titles = ["patching at the answer position\n(resid, exact match of the source count)",
              "patching at the changed list word\n(resid, exact match)", "probe accuracy at the answer\n(dashed: control task)",
              "steering N -> N+1 (mean-diff)\nsuccess at the best scale"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("depth (0 = embeddings, 1 = last block)")
        ax.set_ylim(0, 101)
        if chance:
            ax.axhline(100 * chance, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("%")
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(folders: list[str | Path], out: str | Path, labels: list[str] | None = None) -> dict:
    """compare.md (the table), compare.png (the figure) and compare.json in `out`."""
    from countlens.io import write_json

    if labels and len(labels) != len(folders):
        raise InputError(f"--label given {len(labels)} times for {len(folders)} study folders")
    runs = [load_run(f, (labels or [None] * len(folders))[i]) for i, f in enumerate(folders)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(runs)
    (out / "compare.md").write_text(table.to_markdown() + "\n" if _has_tabulate() else table.to_string() + "\n")
    fig = compare_figure(runs, out / "compare.png")
    summary = {"runs": [{"label": r.label, "folder": str(r.folder), "model": r.model, "n_layers": r.n_layers}
                        for r in runs], "table": json.loads(table.to_json(orient="index")), "figure": str(fig)}
    write_json(out / "compare.json", summary)
    return summary


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
