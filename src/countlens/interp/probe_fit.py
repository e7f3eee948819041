"""One probing problem at one site: fit the probes and their controls fold by fold (pure numpy/sklearn).

Everything a number needs to be judged travels with it: per fold the features are
standardised on the training rows only, then the same classifier is fitted on the count, on
the Hewitt & Liang control labels and on shuffled labels; ridge regression gives R^2 and a
difference-of-means direction is scored as a one-dimensional nearest-class-mean probe.
Out-of-fold predictions are pooled. Accuracies (proportions) get Wilson 95 % score intervals,
which stay honest at 0 % and 100 % (a bootstrap of 0/1 hits collapses to a point there); R^2
and selectivity = accuracy - control accuracy (a paired mean of differences) get a bootstrap
over examples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

Metric = tuple[float, float, float]  # value, ci_low, ci_high


@dataclass(frozen=True)
class FitConfig:
    C: float = 1.0                # logistic regression inverse penalty (sklearn's default)
    alpha: float | None = None    # ridge penalty on standardised features; None -> n_features
    max_iter: int = 300
    n_boot: int = 1000
    seed: int = 0


@dataclass
class Cell:
    """A labelled problem shared by all layers of a site: which rows, which labels, which folds."""

    key: int
    position: str          # last | items | prefix
    item: int              # word index for items, else -1
    rows: np.ndarray       # store rows, ordered by example
    examples: np.ndarray   # example index of each row
    y: np.ndarray          # the count (final at last/prefix, running at items)
    y_control: np.ndarray  # Hewitt & Liang control labels
    y_shuffled: np.ndarray # y permuted (seeded)
    fold: np.ndarray       # test fold of each example, -1 = only ever in training

    @property
    def tested(self) -> np.ndarray:
        return self.fold >= 0


@dataclass
class CellFit:
    metrics: dict[str, Metric]
    n: int
    oof: dict[str, np.ndarray] = field(default_factory=dict)  # pooled predictions on tested examples
    directions: dict[str, np.ndarray] | None = None          # full-data fit (see full_fit_directions)


def standardise(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu = x_tr.mean(0)
    sd = x_tr.std(0)
    sd[sd < 1e-6] = 1.0
    return (x_tr - mu) / sd, (x_te - mu) / sd, mu, sd


def logistic(x_tr: np.ndarray, y_tr: np.ndarray, C: float, max_iter: int):
    """A fitted multinomial LogisticRegression, or a constant predictor when one class is seen."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(y_tr)
    if len(classes) < 2:
        return _Constant(classes[0])
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_tr, y_tr)
    return clf


@dataclass
class _Constant:
    value: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


def ridge(x_tr: np.ndarray, y_tr: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge on centred features (x_tr already standardised): weights, intercept."""
    import scipy.linalg

    y = y_tr.astype(x_tr.dtype)
    ym = float(y.mean())
    g = x_tr.T @ x_tr
    g[np.diag_indices_from(g)] += alpha
    w = scipy.linalg.solve(g, x_tr.T @ (y - ym), assume_a="pos", check_finite=False)
    return w, ym


def ridge_from_gram(gram_tr: np.ndarray, n_tr: int, m: np.ndarray, sd: np.ndarray, xs_tr: np.ndarray,
                    y_tr: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """`ridge` on standardised train features, from the Gram of globally centred train rows.

    gram_tr = sum over train rows of xc xc^T (xc = x - global mean), m = train mean of xc, sd =
    train std: the standardised Gram is (gram_tr - n m m^T) / (sd sd^T). Subtracting each test
    fold's Gram from the full one halves the cost of k-fold ridge (n d^2 twice instead of k-1 times).
    """
    import scipy.linalg

    ym = float(y_tr.mean())
    g = (gram_tr - n_tr * np.outer(m, m)) / np.outer(sd, sd)
    g[np.diag_indices_from(g)] += alpha
    rhs = (xs_tr.T @ (y_tr.astype(xs_tr.dtype) - ym)).astype(np.float64)
    w = scipy.linalg.solve(g, rhs, assume_a="pos", check_finite=False)
    return w.astype(xs_tr.dtype), ym


def mean_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The difference-of-means count direction: activation change per +1 count (least squares)."""
    yc = y - y.mean()
    return (yc @ (x - x.mean(0))) / max(float(yc @ yc), 1e-12)


def dom_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    """Nearest class mean along the difference-of-means direction (a 1-D probe)."""
    u = mean_slope(x_tr, y_tr.astype(np.float64))
    norm = np.linalg.norm(u)
    if norm < 1e-12:
        return np.full(len(x_te), np.bincount(y_tr).argmax())
    u = u / norm
    z_tr, z_te = x_tr @ u, x_te @ u
    classes = np.unique(y_tr)
    centres = np.array([z_tr[y_tr == k].mean() for k in classes])
    return classes[np.abs(z_te[:, None] - centres[None, :]).argmin(1)]


def majority_predict(y_tr: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, np.bincount(y_tr).argmax())


def bootstrap_index(n: int, n_boot: int, seed: int, key: int) -> np.ndarray:
    return np.random.default_rng([seed, key, n]).integers(0, n, size=(n_boot, n), dtype=np.int32)


def proportion_ci(hits: np.ndarray) -> Metric:
    """Accuracy of 0/1 hits with its Wilson 95 % interval."""
    from countlens.stats import wilson_ci

    h = np.asarray(hits, dtype=bool)
    if h.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = wilson_ci(int(h.sum()), int(h.size))
    return float(h.mean()), lo, hi


def mean_ci(values: np.ndarray, idx: np.ndarray) -> Metric:
    v = values.astype(np.float64)
    boots = v[idx].mean(1)
    return float(v.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def r2_ci(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> Metric:
    y = y.astype(np.float64)
    res2 = (y - pred) ** 2
    tot = ((y - y.mean()) ** 2).sum()
    value = 1 - res2.sum() / tot if tot > 0 else float("nan")
    yb = y[idx]
    totb = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = 1 - res2[idx].sum(1) / totb
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return float(value), float("nan"), float("nan")
    return float(value), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def fit_cell(x: np.ndarray, cell: Cell, cfg: FitConfig, probes: tuple[str, ...] = ("control", "shuffled"),
             baselines: bool = False, directions: bool = False) -> CellFit:
    """Cross-validated probes on features x [n, d] for one cell.

    Always: logistic (accuracy), ridge (R^2), difference-of-means (accuracy). `probes` adds the
    control task and shuffled labels; `baselines` adds the majority class (layer-independent,
    so it is computed once per cell rather than per layer).
    """
    n = len(cell.y)
    tested = cell.tested
    names = ["logistic", "dom"] + [p for p in probes if p in ("control", "shuffled")]
    if baselines:
        names += ["majority", "control_majority"]
    pred = {k: np.full(n, -1, dtype=np.int64) for k in names}
    ridge_pred = np.full(n, np.nan)
    x = np.asarray(x, dtype=np.float32)
    alpha = cfg.alpha if cfg.alpha is not None else float(x.shape[1])
    gmean = x.mean(0)
    xc = x - gmean
    gram = (xc.T @ xc).astype(np.float64)
    for f in np.unique(cell.fold[tested]):
        te = cell.fold == f
        tr = ~te
        y_tr = cell.y[tr]
        if "majority" in pred:
            pred["majority"][te] = majority_predict(y_tr, te.sum())
            pred["control_majority"][te] = majority_predict(cell.y_control[tr], te.sum())
        xs_tr, xs_te, mu, sd = standardise(x[tr], x[te])
        pred["logistic"][te] = logistic(xs_tr, y_tr, cfg.C, cfg.max_iter).predict(xs_te)
        if "control" in pred:
            pred["control"][te] = logistic(xs_tr, cell.y_control[tr], cfg.C, cfg.max_iter).predict(xs_te)
        if "shuffled" in pred:
            pred["shuffled"][te] = logistic(xs_tr, cell.y_shuffled[tr], cfg.C, cfg.max_iter).predict(xs_te)
        gram_tr = gram - (xc[te].T @ xc[te]).astype(np.float64)
        w, b = ridge_from_gram(gram_tr, int(tr.sum()), (mu - gmean).astype(np.float64), sd.astype(np.float64),
                               xs_tr, y_tr, alpha)
        ridge_pred[te] = xs_te @ w + b
        pred["dom"][te] = dom_predict(x[tr], y_tr, x[te])
    y, yc = cell.y[tested], cell.y_control[tested]
    idx = bootstrap_index(int(tested.sum()), cfg.n_boot, cfg.seed, cell.key)
    truth = {"control": yc, "control_majority": yc, "shuffled": cell.y_shuffled[tested]}
    hit = {k: v[tested] == truth.get(k, y) for k, v in pred.items()}
    m: dict[str, Metric] = {f"{k}_accuracy": proportion_ci(h) for k, h in hit.items()}
    m["ridge_r2"] = r2_ci(y, ridge_pred[tested], idx)
    if "control" in hit:
        m["selectivity"] = mean_ci(hit["logistic"].astype(float) - hit["control"], idx)
    oof = {"y": y, "pred": pred["logistic"][tested], "ridge": ridge_pred[tested],
           "example": cell.examples[tested], "fold": cell.fold[tested]}
    dirs = full_fit_directions(x, cell.y, cfg, gram) if directions else None
    return CellFit(metrics=m, n=int(tested.sum()), oof=oof, directions=dirs)


def full_fit_directions(x: np.ndarray, y: np.ndarray, cfg: FitConfig,
                        gram: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Directions for steering, fitted on all rows and mapped back to raw activation units.

    means [K+1, d] class means; slope [d] difference-of-means direction per +1 count;
    probe_coef [K+1, d] / probe_intercept [K+1]: logits = x @ coef.T + intercept on raw x;
    ridge_coef [d] / ridge_intercept: count = x @ coef + intercept.
    """
    x = np.asarray(x, dtype=np.float32)
    classes = np.unique(y)
    means = np.stack([x[y == k].mean(0) for k in classes]).astype(np.float32)
    xs, _, mu, sd = standardise(x, x[:1])
    clf = logistic(xs, y, cfg.C, cfg.max_iter)
    if isinstance(clf, _Constant):
        coef = np.zeros((len(classes), x.shape[1]), np.float32)
        icpt = np.zeros(len(classes), np.float32)
    else:
        coef = clf.coef_ / sd[None, :]
        icpt = clf.intercept_ - coef @ mu
        if coef.shape[0] == 1:  # binary: sklearn keeps one row for the positive class
            coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    alpha = cfg.alpha if cfg.alpha is not None else float(x.shape[1])
    if gram is None:
        w, b = ridge(xs, y, alpha)
    else:  # the Gram of x - mean(x) over all rows, already computed for the folds
        w, b = ridge_from_gram(gram, len(x), np.zeros(x.shape[1]), sd.astype(np.float64), xs, y, alpha)
    return {"classes": classes.astype(np.int64), "means": means, "counts": np.bincount(y)[classes].astype(np.int64),
            "slope": mean_slope(x.astype(np.float64), y.astype(np.float64)).astype(np.float32),
            "probe_coef": coef.astype(np.float32), "probe_intercept": np.asarray(icpt, np.float32),
            "ridge_coef": (w / sd).astype(np.float32), "ridge_intercept": np.float32(b - (w / sd) @ mu)}
