"""Linear probes for the count, per site x layer x position, with every control beside them.

For each site (e.g. resid.3) and each cell (position `last`, each word position of `items`,
`prefix`), `probe_fit.fit_cell` trains a multinomial logistic probe (accuracy) and ridge
regression (R^2) on standardised features with the same folds for every layer, plus:
  - the Hewitt & Liang control task: each word type gets a fixed, seeded random membership
    (rate = the data's match rate) and the control label is the number of marked words;
    selectivity = accuracy - control accuracy;
  - shuffled labels; the difference-of-means direction as a 1-D probe;
  - layer-independent baselines per cell: the majority class and an input-only bag of words
    (category one-hot + counts of the list words seen so far) fitted with the same classifier;
  - the embedding layer ("emb") is simply its own row.
Labels: the final count at `last` and `prefix`, the running count (matches among words 0..i)
at word i of `items`. Splits: `random` (stratified k-fold), `category` and `length` (whole
categories / list lengths held out). Work is parallel over sites (layers) with BLAS limited to
one thread per worker: two BLAS pools fighting over two cores is 5-15x slower.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from countlens.errors import InputError
from countlens.results import ProbeResults
from countlens.summaries import ProbeSummary
from countlens.interp.directions import Directions, write_layout
from countlens.interp.probe_fit import Cell, CellFit, FitConfig, fit_cell, mean_slope
from countlens.interp.store import ActStore, write_parquet
from countlens.sites import Site, layer_key, parse_layer
from countlens.io import write_json
from countlens.options import CONTROLS
from countlens.stats import interval_label

SPLITS = ("random", "category", "length")
TABLE_COLUMNS = ["site", "kind", "layer", "depth", "position", "item", "probe", "metric", "value", "ci_low",
                 "ci_high", "n"]


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------- labels

def assign_folds(examples: pd.DataFrame, split: str = "random", folds: int = 5, test_size: float = 0.2,
                 seed: int = 0) -> np.ndarray:
    """Test fold of each example (-1: training only). Same folds for every layer and position.

    random: stratified by final count; category / length: whole groups held out (groups dealt
    round-robin to folds). folds=1 is one held-out split of `test_size` (for `length`, the
    longest lists: a test of extrapolation).
    """
    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    n = len(examples)
    rng = np.random.default_rng([seed, 17])
    if split == "random":
        y = examples["answer"].to_numpy()
        if folds >= 2:
            from sklearn.model_selection import StratifiedKFold

            if np.bincount(y).max() < folds or n < 2 * folds:
                raise InputError(f"too few examples ({n}) for {folds}-fold cross-validation")
            fold = np.empty(n, dtype=np.int64)
            skf = StratifiedKFold(folds, shuffle=True, random_state=seed)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a rare count with < folds members
                for f, (_, te) in enumerate(skf.split(np.zeros(n), y)):
                    fold[te] = f
            return fold
        fold = np.full(n, -1, dtype=np.int64)
        fold[rng.permutation(n)[:max(1, round(test_size * n))]] = 0
        return fold
    groups = examples["category" if split == "category" else "list_length"].to_numpy()
    uniq = sorted(set(groups.tolist()))
    if len(uniq) < 2:
        raise InputError(f"--split {split}: the data has one {split} only; use --split random")
    if folds >= 2:
        order = [uniq[i] for i in rng.permutation(len(uniq))] if split == "category" else uniq
        k = min(folds, len(uniq))
        fold_of = {g: i % k for i, g in enumerate(order)}
        return np.array([fold_of[g] for g in groups], dtype=np.int64)
    n_test = max(1, round(test_size * len(uniq)))
    test = set(uniq[-n_test:]) if split == "length" else {uniq[i] for i in rng.permutation(len(uniq))[:n_test]}
    return np.array([0 if g in test else -1 for g in groups], dtype=np.int64)


def control_marks(examples: pd.DataFrame, seed: int = 0, rate: float | None = None) -> list[np.ndarray]:
    """Hewitt & Liang control: per example, 0/1 'marked' flags of its words (fixed per word type)."""
    words = examples["words"].tolist()
    if rate is None:
        total = sum(len(w) for w in words)
        rate = float(sum(int(np.sum(m)) for m in examples["match"])) / max(total, 1)
    types = sorted({w for ws in words for w in ws})
    marked = dict(zip(types, np.random.default_rng([seed, 31]).random(len(types)) < rate))
    return [np.array([int(marked[w]) for w in ws], dtype=np.int64) for ws in words]


def build_cells(store: ActStore, examples: pd.DataFrame, fold: np.ndarray, positions: Sequence[str],
                seed: int = 0, control_rate: float | None = None, min_examples: int = 20) -> list[Cell]:
    """One cell per (position, item) with enough examples and at least two count classes."""
    ex_ids = examples["example"].to_numpy()
    keep = set(ex_ids.tolist())
    fold_of = dict(zip(ex_ids.tolist(), fold.tolist()))
    marks = dict(zip(ex_ids.tolist(), control_marks(examples, seed, control_rate)))
    idx = store.index[store.index["example"].isin(keep)]
    cells: list[Cell] = []
    for position in positions:
        sub = idx[idx["position"] == position]
        items = sorted(sub["item"].unique().tolist())
        for item in items:
            rows = sub[sub["item"] == item].sort_values("row")
            exs = rows["example"].to_numpy()
            if position == "items":
                y = rows["running_count"].to_numpy().astype(np.int64)
                yc = np.array([marks[e][:item + 1].sum() for e in exs], dtype=np.int64)
            else:
                y = rows["final_count"].to_numpy().astype(np.int64)
                yc = np.array([marks[e].sum() for e in exs], dtype=np.int64)
            f = np.array([fold_of[e] for e in exs], dtype=np.int64)
            if len(rows) < min_examples or len(np.unique(y)) < 2 or not (f >= 0).any():
                continue
            key = len(cells)
            shuffled = np.random.default_rng([seed, 47, key]).permutation(y)
            cells.append(Cell(key=key, position=position, item=int(item), rows=rows["row"].to_numpy(),
                              examples=exs, y=y, y_control=yc, y_shuffled=shuffled, fold=f))
    if not cells:
        raise InputError("nothing to probe: every position has too few examples or a single count class")
    return cells


def bag_of_words(examples: pd.DataFrame, cell: Cell) -> np.ndarray:
    """Input-only features: category one-hot + counts of the list words the position has seen."""
    ex = examples.set_index("example").loc[cell.examples]
    cats = sorted(examples["category"].unique().tolist())
    vocab = {w: i for i, w in enumerate(sorted({w for ws in examples["words"] for w in ws}))}
    x = np.zeros((len(cell.examples), len(cats) + len(vocab)), dtype=np.float32)
    for r, (cat, words) in enumerate(zip(ex["category"], ex["words"])):
        x[r, cats.index(cat)] = 1
        seen = words if cell.position == "last" else (list(words[:cell.item + 1]) if cell.position == "items" else [])
        for w in seen:
            x[r, len(cats) + vocab[w]] += 1
    return x


# ------------------------------------------------------------------------------------------ tasks

# fit_cell metric name -> (table metric, probe override); majority rows belong to no site or layer
METRICS = {"logistic_accuracy": ("accuracy", None), "ridge_r2": ("r2", None),
           "control_accuracy": ("control_accuracy", None), "shuffled_accuracy": ("shuffled_accuracy", None),
           "dom_accuracy": ("dom_accuracy", None), "selectivity": ("selectivity", None),
           "majority_accuracy": ("accuracy", "majority"),
           "control_majority_accuracy": ("control_accuracy", "majority")}


def _rows(site: str, fit: CellFit, cell: Cell, probe: str) -> list[dict]:
    """Tidy rows of one fit: site "input" for the bag of words, "-" for the majority class."""
    kind, layer = (Site.parse(site).kind, Site.parse(site).layer) if site != "input" else ("input", "-")
    out = []
    for name, (v, lo, hi) in fit.metrics.items():
        metric, override = METRICS[name]
        p = override or probe
        where = ("-", "-", "-", np.nan) if p == "majority" else \
            (site, kind, str(layer), np.nan if layer == "-" else layer_key(layer))
        out.append(dict(zip(("site", "kind", "layer", "depth"), where)) | {
            "position": cell.position, "item": cell.item, "probe": p, "metric": metric, "value": v,
            "ci_low": lo, "ci_high": hi, "n": fit.n})
    return out


def _site_task(root: str, site: str, cells: list[Cell], cfg: FitConfig, probes: tuple[str, ...],
               directions: bool, blas_threads: int) -> dict:
    """All cells of one site (one layer): table rows, last-position predictions, directions."""
    from threadpoolctl import threadpool_limits

    store = ActStore.open(root)
    rows: list[dict] = []
    preds = None
    dirs: dict[str, dict] = {}
    with threadpool_limits(limits=blas_threads):
        for cell in cells:
            x = store.features(site, cell.rows)
            fit = fit_cell(x, cell, cfg, probes, directions=directions and cell.position == "last")
            rows += _rows(site, fit, cell, "linear")
            if cell.position == "last":
                preds = fit.oof
                if fit.directions is not None:
                    dirs["last"] = fit.directions
        if directions:
            items = [c for c in cells if c.position == "items"]
            if items:
                dirs["items"] = _pooled_means(store, site, items)
    return {"site": site, "rows": rows, "preds": preds, "dirs": dirs}


def _pooled_means(store: ActStore, site: str, cells: list[Cell], block: int = 16384) -> dict[str, np.ndarray]:
    """Class means and slope of the running count over all word positions, streamed in blocks."""
    order = np.argsort(np.concatenate([c.rows for c in cells]))
    rows = np.concatenate([c.rows for c in cells])[order]
    y = np.concatenate([c.y for c in cells])[order]
    classes = np.unique(y)
    d = store.dim(site)
    sums = np.zeros((len(classes), d))
    slope_num = np.zeros(d)
    ybar = y.mean()
    arr = store.array(site)
    for s in range(0, len(rows), block):
        x = np.asarray(arr[rows[s:s + block]], dtype=np.float64)
        yb = y[s:s + block]
        for i, k in enumerate(classes):
            sums[i] += x[yb == k].sum(0)
        slope_num += (yb - ybar) @ x
    counts = np.array([(y == k).sum() for k in classes])
    return {"classes": classes.astype(np.int64), "counts": counts.astype(np.int64),
            "means": (sums / counts[:, None]).astype(np.float32),
            "slope": (slope_num / max(((y - ybar) ** 2).sum(), 1e-12)).astype(np.float32)}


def _baseline_task(examples: pd.DataFrame, cells: list[Cell], cfg: FitConfig, controls: tuple[str, ...],
                   blas_threads: int) -> list[dict]:
    """Majority class and the input-only bag of words, per cell (they do not depend on the layer)."""
    from threadpoolctl import threadpool_limits

    rows: list[dict] = []
    with threadpool_limits(limits=blas_threads):
        for cell in cells:
            if "input" in controls:
                fit = fit_cell(bag_of_words(examples, cell), cell, cfg, ("control",), baselines=True)
            else:  # majority only: a constant feature gives the probes nothing to read
                fit = fit_cell(np.zeros((len(cell.y), 1), np.float32), cell, cfg, (), baselines=True)
            for r in _rows("input", fit, cell, "input_bow"):
                if r["probe"] == "majority" and "majority" in controls:
                    rows.append(r)
                elif r["probe"] == "input_bow" and "input" in controls and r["metric"] in (
                        "accuracy", "r2", "control_accuracy", "selectivity"):
                    rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------- results

def _num(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else round(float(x), 4)


def summarise(res: ProbeResults, meta: dict) -> dict:
    s = dict(meta)
    kinds = [k for k in ("resid", "attn", "mlp", "head") if k in set(res.table["kind"])]
    main = s["site"]

    def per_layer(kind: str, position: str = "last") -> list[dict]:
        w = res.per_layer(kind, position)
        out = []
        for _, r in w.iterrows():
            g = lambda c: _num(r[c]) if c in r else None  # noqa: E731
            out.append({"layer": parse_layer(r["layer"]), "accuracy": g("accuracy"), "ci_low": g("accuracy_lo"),
                        "ci_high": g("accuracy_hi"), "control_accuracy": g("control_accuracy"),
                        "selectivity": g("selectivity"), "selectivity_ci_low": g("selectivity_lo"),
                        "selectivity_ci_high": g("selectivity_hi"), "r2": g("r2"), "r2_ci_low": g("r2_lo"),
                        "r2_ci_high": g("r2_hi"), "shuffled_accuracy": g("shuffled_accuracy"),
                        "dom_accuracy": g("dom_accuracy")})
        return out

    s["per_layer"] = per_layer(main) if main else []
    best = max(s["per_layer"], key=lambda r: (r["accuracy"] if r["accuracy"] is not None else -1), default=None)
    s["best_layer"] = best
    b = lambda probe, metric="accuracy", **kw: res.baseline(probe, metric, **kw)  # noqa: E731
    ib, ir = b("input_bow"), b("input_bow", "r2")
    s["input_baseline"] = None if ib is None else {
        "accuracy": _num(ib["value"]), "ci_low": _num(ib["ci_low"]), "ci_high": _num(ib["ci_high"]),
        "r2": _num(ir["value"]) if ir else None, "control_accuracy": _num((b("input_bow", "control_accuracy")
                                                                         or {}).get("value"))}
    mj, cmj = b("majority"), b("majority", "control_accuracy")
    s["majority"] = None if mj is None else {"accuracy": _num(mj["value"]), "ci_low": _num(mj["ci_low"]),
                                             "ci_high": _num(mj["ci_high"]),
                                             "control_accuracy": _num(cmj["value"]) if cmj else None}
    s["sites"] = {k: per_layer(k) for k in kinds}
    if (res.table["position"] == "prefix").any() and main:
        s["prefix"] = [{"layer": r["layer"], "accuracy": r["accuracy"], "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"]} for r in per_layer(main, "prefix")]
    grid = res.running_count("accuracy", main)
    if not grid.empty:
        r2 = res.running_count("r2", main).reindex(index=grid.index, columns=grid.columns)
        ctl = res.running_count("control_accuracy", main).reindex(index=grid.index, columns=grid.columns)
        items = [int(i) for i in grid.columns]
        t = res.table[res.table["position"] == "items"]
        n_by_item = t.groupby("item")["n"].max()

        def base(probe: str, metric: str = "accuracy") -> list:
            return [_num((res.baseline(probe, metric, "items", i) or {}).get("value")) for i in items]

        s["running_count"] = {
            "site": main, "layers": [parse_layer(x) for x in grid.index], "items": items,
            "n": [int(n_by_item.get(i, 0)) for i in items],
            "accuracy": [[_num(v) for v in row] for row in grid.to_numpy()],
            "r2": [[_num(v) for v in row] for row in r2.to_numpy()],
            "control_accuracy": [[_num(v) for v in row] for row in ctl.to_numpy()],
            "majority": base("majority"), "input_baseline": base("input_bow"),
            "input_baseline_r2": base("input_bow", "r2")}
    return s


# -------------------------------------------------------------------------------------------- run

def run_probes(acts: str | Path | None = None, *, model: Any = None, data: str | Path | None = None,
               out: str | Path | None = None, split: str = "random", folds: int = 5, test_size: float = 0.2,
               sites: str | Sequence[str] | None = None, positions: str | Sequence[str] | None = None,
               controls: Sequence[str] = CONTROLS, n: int | None = None, C: float = 1.0,
               alpha: float | None = None, n_boot: int = 1000, seed: int = 0, control_rate: float | None = None,
               n_jobs: int | None = None, backend: str = "loky", save_directions: bool = True,
               figures: bool = True, progress: bool = True, **collect: Any) -> ProbeResults:
    """Probe a store (`acts`), or collect one first from `model` + `data` into OUT/acts: the CLI's
    and the README's one call, `fit_probes` then (with `out`) `save_probes`.

    sites: kinds ("resid") or site names ("resid.3"); default every site in the store.
    positions: default every position kind in the store. controls: any of majority, control,
    shuffled, input. n: the first n examples. With `out`: writes probes.parquet,
    predictions.parquet, summary.json, directions/ and (if `figures`) the probe_*.png figures.
    """
    check_controls(controls)
    if acts is None:
        if model is None or data is None or out is None:
            raise InputError("give --acts DIR, or --model, --data and --out to collect activations first")
        from countlens.interp.acts import collect_activations

        collect_activations(model, data, Path(out) / "acts", n=n, progress=progress, sites=sites or "resid",
                            positions=positions or ("last", "items"), **collect)
        acts = Path(out) / "acts"
    res = fit_probes(acts, split=split, folds=folds, test_size=test_size, sites=sites, positions=positions,
                     controls=controls, n=n, C=C, alpha=alpha, n_boot=n_boot, seed=seed, control_rate=control_rate,
                     n_jobs=n_jobs, backend=backend, directions=save_directions, progress=progress)
    if out is not None:
        save_probes(res, out, figures)
    return res


def check_controls(controls: Sequence[str]) -> None:
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise InputError(f"unknown control(s) {bad} (choose from {', '.join(CONTROLS)})", field="controls")


def fit_probes(acts: str | Path, *, split: str = "random", folds: int = 5, test_size: float = 0.2,
               sites: str | Sequence[str] | None = None, positions: str | Sequence[str] | None = None,
               controls: Sequence[str] = CONTROLS, n: int | None = None, C: float = 1.0,
               alpha: float | None = None, n_boot: int = 1000, seed: int = 0, control_rate: float | None = None,
               n_jobs: int | None = None, backend: str = "loky", directions: bool = True,
               progress: bool = True) -> ProbeResults:
    """Every probe of a store, its controls and baselines: reads the store, writes nothing. With
    `directions`, the count directions fitted on all examples are in `result.directions`."""
    t0 = time.time()
    check_controls(controls)
    store = ActStore.open(acts)
    examples = store.examples.sort_values("example")
    if n is not None:
        examples = examples.iloc[:n]
    site_names = _select_sites(store, sites)
    pos = _select_positions(store, positions)
    fold = assign_folds(examples, split, folds, test_size, seed)
    cells = build_cells(store, examples, fold, pos, seed, control_rate)
    cfg = FitConfig(C=C, alpha=alpha, n_boot=n_boot, seed=seed)
    probes = tuple(c for c in controls if c in ("control", "shuffled"))
    n_jobs = max(1, min(n_jobs or cpu_count(), len(site_names) + 1))
    blas = 1  # parallel over sites instead: two BLAS pools on two cores run 5-15x slower
    # absolute: loky reuses its worker processes, whose working folder is the one they started in
    results, base_rows = _run_tasks(str(store.root.resolve()), site_names, cells, examples, cfg, probes, tuple(controls),
                                    directions, n_jobs, blas, progress, backend)
    rows = [r for res in results for r in res["rows"]] + base_rows
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["item"] = table["item"].astype(int)
    main = next(k for k in ("resid", "attn", "mlp", "head") if any(Site.parse(s).kind == k for s in site_names))
    res = ProbeResults(table=table, predictions=_predictions(results, main), summary={},
                       directions=_directions(results) if directions else [])
    meta = {"acts": str(store.root), "model": store.meta.get("model"), "n_examples": int(len(examples)),
            "split": split, "folds": folds, "test_size": test_size if folds < 2 else None, "seed": seed,
            "n_boot": n_boot, "interval": f"{interval_label()} (accuracies); bootstrap 95% over examples "
                                          "(selectivity, R2)", "C": C, "alpha": alpha if alpha is not None else "n_features",
            "controls": list(controls), "positions": pos, "site": main,
            "classes": sorted(int(k) for k in np.unique(examples["answer"])),
            "control_rate": control_rate if control_rate is not None else "match rate of the data"}
    res.summary = summarise(res, meta)
    res.summary["seconds"] = round(time.time() - t0, 2)
    return res


def _predictions(results: list[dict], kind: str) -> pd.DataFrame:
    """Out-of-fold predictions at the last position, one row per (layer, example), for one site kind."""
    frames = [pd.DataFrame({"site": r["site"], "layer": str(Site.parse(r["site"]).layer), **r["preds"]})
              for r in results if r["preds"] is not None and Site.parse(r["site"]).kind == kind]
    cols = ["site", "layer", "example", "y", "pred", "ridge", "fold"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _select_sites(store: ActStore, sites: str | Sequence[str] | None) -> list[str]:
    names = store.sites
    if sites is None:
        chosen = names
    else:
        want = [s.strip() for s in (sites.split(",") if isinstance(sites, str) else sites) if s.strip()]
        chosen = [s for s in names if s in want or Site.parse(s).kind in want]
        missing = [w for w in want if not any(s == w or Site.parse(s).kind == w for s in names)]
        if missing:
            raise InputError(f"site(s) {missing} not in the store (has: {', '.join(names)})", field="sites")
    return sorted(chosen, key=lambda s: (Site.parse(s).kind, layer_key(Site.parse(s).layer)))


def _select_positions(store: ActStore, positions: str | Sequence[str] | None) -> list[str]:
    have = store.positions
    if positions is None:
        return have
    want = [p.strip() for p in (positions.split(",") if isinstance(positions, str) else positions) if p.strip()]
    missing = [p for p in want if p not in have]
    if missing:
        raise InputError(f"position kind(s) {missing} not in the store (has: {', '.join(have)})", field="positions")
    return [p for p in have if p in want]


def _run_tasks(root: str, site_names: list[str], cells: list[Cell], examples: pd.DataFrame, cfg: FitConfig,
               probes: tuple[str, ...], controls: tuple[str, ...], directions: bool, n_jobs: int, blas: int,
               progress: bool, backend: str = "loky") -> tuple[list[dict], list[dict]]:
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    base_cells = cells if ("input" in controls or "majority" in controls) else []
    jobs = [delayed(_site_task)(root, s, cells, cfg, probes, directions, blas) for s in site_names]
    jobs.append(delayed(_baseline_task)(examples, base_cells, cfg, controls, blas))
    bar = tqdm(total=len(jobs), desc="probes", unit="site", disable=not progress, dynamic_ncols=True)
    out = []
    if n_jobs == 1:
        for j in jobs:
            fn, args, kwargs = j
            out.append(fn(*args, **kwargs))
            bar.update(1)
    else:
        for r in Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(jobs):
            out.append(r)
            bar.update(1)
    bar.close()
    return out[:-1], out[-1]


def _directions(results: list[dict]) -> list[Directions]:
    """One Directions per site kind x position (last, items) whose layers share their classes."""
    saved = []
    for kind in sorted({Site.parse(r["site"]).kind for r in results}):
        mine = sorted([r for r in results if Site.parse(r["site"]).kind == kind],
                      key=lambda r: layer_key(Site.parse(r["site"]).layer))
        for position in ("last", "items"):
            parts = [r for r in mine if position in r["dirs"]]
            if not parts:
                continue
            classes = [tuple(r["dirs"][position]["classes"]) for r in parts]
            if len(set(classes)) != 1:
                continue
            arrays = {k: (parts[0]["dirs"][position][k] if k in ("classes", "counts")
                          else np.stack([r["dirs"][position][k] for r in parts]))
                      for k in parts[0]["dirs"][position]}
            saved.append(Directions(kind=kind, position=position, arrays=arrays,
                                    layers=[Site.parse(r["site"]).layer for r in parts]))
    return saved


def save_probes(res: ProbeResults, out: str | Path, figures: bool = True) -> ProbeResults:
    """probes.parquet, predictions.parquet, directions/ (for steering), the figures and summary.json
    into `out` (each file complete or absent); `res.files` and `res.out` say where."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "probes.parquet", res.table)
    write_parquet(out / "predictions.parquet", res.predictions)
    res.out = out
    res.files = {"table": str(out / "probes.parquet"), "predictions": str(out / "predictions.parquet"),
                 "summary": str(out / "summary.json")}
    for d in res.directions:
        d.save(out / "directions")
    if res.directions:
        write_layout(out / "directions", res.directions)
        res.files["directions"] = str(out / "directions")
    res.summary["files"] = res.files
    if figures:
        res.summary["figures"] = res.plot(out)
    write_json(out / "summary.json", ProbeSummary.check(res.summary, str(out / "summary.json")))
    return res


__all__ = ["CONTROLS", "SPLITS", "ProbeResults", "assign_folds", "bag_of_words", "build_cells", "control_marks",
           "fit_probes", "mean_slope", "run_probes", "save_probes", "summarise"]
