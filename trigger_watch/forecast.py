"""Tomorrow's attack risk per patient, with the factors that drive it, and its rolling-origin validation.

**The forecast.** The panel handed in runs through tomorrow; tomorrow's row holds lag-1 values from today's
diary and last night's sleep, the weather forecast and the calendar at lag 0, and unknown same-day values
(no diary or night yet). Unknown same-day values are averaged over: the risk is computed with them replaced
in turn by the patient's own values of each of their last SAME_DAY_HISTORY at-risk days, and averaged
(:func:`_marginal`). Left missing, the model's missing-indicators (which learned that a diary goes unkept
*in* attacks) would fire for a day that is simply still in the future and double the risk; set to the
patient's mean, the risk would be that of a day whose diary was surely kept, a little too low. A missing
lag-0 value that could be known (no weather forecast fetched) is set to the patient's mean. The baseline
probability is the risk of the patient's usual day (every known factor at its own mean, the unknown ones
averaged over in the same way), so ``attack_probability / baseline_probability`` is what tomorrow's known
values do; the drivers are those values' pushes, largest first.

**The validation** (:func:`rolling_origin`, docs/forecast.md). Rolling origin in blocks: at origins
``d_1 < ... < d_k`` (by default the last ``validation_origins x validation_step_days`` days of the panel), fit
the cohort on the days before ``d`` only, forecast every at-risk day in ``[d, next origin)`` exactly as
:func:`next_day` would have the evening before (same-day values other than weather and calendar hidden),
then walk ``d`` forward. Nothing on or after ``d`` reaches the fit, the prior (unless one is passed in), the
standardisation or the base rate. It costs one cohort fit per origin, not one per day; a forecast for day
``d + j`` comes from a model ``j`` days stale, as a model refitted nightly would be at most one day.
Compared with: the **base-rate forecast**, the patient's own onset rate over at-risk days before ``d``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import rankdata

from trigger_watch import features, models
from trigger_watch.errors import ConfigError

MAX_DRIVERS = 5
#: Factor groups whose lag-0 value is known the evening before (the weather forecast, the calendar).
KNOWN_AHEAD = ("weather", "calendar", "season")
_SEASON = frozenset(f.id for f in features.SEASON)
COHORT_BINS = 10  # calibration bins (deciles of the forecast) for the cohort
PATIENT_BINS = 3  # and for one patient, when it has at least PATIENT_BIN_MIN_DAYS evaluated days
PATIENT_BIN_MIN_DAYS = 30
_EPS = 1e-6
#: recent at-risk days of the patient whose same-day values (diary, night) a forecast averages over
SAME_DAY_HISTORY = 60


def _split(col: str) -> tuple[str, int]:
    factor, _, lag = col.rpartition("@")
    return factor, int(lag)


def _same_day_columns(meta: pd.DataFrame | None, columns: Sequence[str]) -> list[str]:
    """Lag-0 columns of ``columns`` not known the evening before (every group but KNOWN_AHEAD)."""
    if meta is None:
        return [c for c in columns if c.endswith("@0")]
    m = meta.set_index("column")
    return [c for c in columns if c in m.index and int(m.at[c, "lag"]) == 0
            and m.at[c, "group"] not in KNOWN_AHEAD]


def forecast_rows(rows: pd.DataFrame, est: models.TriggerModel, *, hide_same_day: Sequence[str] = ()) -> pd.DataFrame:
    """``rows`` as the model should see a day that is still ahead: the model's columns, the ``hide_same_day``
    columns set to the patient's usual value (validation: what was not known the evening before), and any
    other lag-0 value that is missing (no diary yet, no weather forecast) set to it too."""
    x = rows.reindex(columns=est.columns_).to_numpy(dtype=float, copy=True)
    return pd.DataFrame(_as_forecast(x, est.mean_, _hide_mask(est.columns_, hide_same_day)), columns=est.columns_,
                        index=rows.index)


def _hide_mask(columns: Sequence[str], hide_same_day: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    hide = set(hide_same_day)
    return (np.array([c in hide for c in columns], dtype=bool),
            np.array([c.endswith("@0") for c in columns], dtype=bool))


def _as_forecast(x: np.ndarray, usual, masks: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """In place on ``x`` (days x a model's columns): hidden columns, and missing lag-0 values, -> the usual
    value (``usual``: the model's ``mean_``, or a row of them per row of ``x``)."""
    hide, lag0 = masks
    usual = np.broadcast_to(np.asarray(usual, dtype=float), x.shape)
    fill = hide[None, :] | (lag0[None, :] & ~np.isfinite(x))
    x[fill] = usual[fill]
    return x


def _marginal(est: models.TriggerModel, x: np.ndarray, hist: np.ndarray, masks, *,
              additive: bool = False) -> np.ndarray:
    """Risk of each day of ``x`` (days x ``est.columns_``) given what is known the evening before.

    A same-day value that is unknown (NaN in a ``masks[0]`` column) is averaged over: the unknown values of
    each day are replaced in turn by those of each day of ``hist`` (the patient's recent at-risk days, missing
    values and all) and the risks are averaged -- the patient's risk given what is known, not the risk of an
    "average" day. Any other missing lag-0 value (no weather forecast) is the patient's usual value. Without
    history: the usual value for all of them.

    ``additive``: every day has the same unknown columns and the model's log odds add over the known and the
    unknown columns (a logistic model whose missing-indicator groups lie wholly on one side), so the
    ``days x history`` risks come from ``days + history + 1`` model rows. :func:`_predict_block` checks the
    shortcut against the full computation before it uses it.
    """
    hide, lag0 = masks
    unknown = hide[None, :] & ~np.isfinite(x)
    usual_row = np.asarray(est.mean_, dtype=float)
    usual = np.broadcast_to(usual_row, x.shape)
    ahead = x.copy()
    fill = lag0[None, :] & ~np.isfinite(x) & ~unknown
    ahead[fill] = usual[fill]
    if len(hist) == 0 or not unknown.any():
        ahead[unknown] = usual[unknown]
        return est.predict_proba(ahead)[:, 1]
    n, m = len(ahead), len(hist)
    if additive and (unknown == unknown[0]).all():
        cols = unknown[0]
        ahead[:, cols] = usual_row[cols]
        other = np.repeat(usual_row[None, :], m + 1, axis=0)
        other[:m, cols] = hist[:, cols]
        q = est.predict_proba(np.vstack([ahead, other]))[:, 1]
        q = np.clip(q, 1e-12, 1 - 1e-12)
        eta = np.log(q / (1 - q))
        return expit(eta[:n, None] + eta[None, n:n + m] - eta[-1]).mean(axis=1)
    big = np.repeat(ahead, m, axis=0)
    u = np.repeat(unknown, m, axis=0)
    big[u] = np.tile(hist, (n, 1))[u]
    return est.predict_proba(big)[:, 1].reshape(n, m).mean(axis=1)


def _rows(panel: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """Rows of ``panel`` at ``positions``, without its attrs (pandas deep-copies them on every operation)."""
    out = panel.iloc[positions]
    out.attrs = {}
    return out


def _recent(panel: pd.DataFrame, before: pd.Timestamp) -> pd.DataFrame:
    """The last SAME_DAY_HISTORY at-risk days of each patient before ``before``, sorted by patient (``panel``
    without an ``at_risk`` column holds at-risk days only)."""
    keep = panel["date"] < before
    if "at_risk" in panel:
        keep &= panel["at_risk"].astype(bool)
    past = panel[keep]
    past.attrs = {}  # pandas deep-copies attrs (the factor table) on every operation: keep them off
    return past.sort_values(["patient_id", "date"], kind="stable").groupby("patient_id").tail(SAME_DAY_HISTORY)


def _fitted_model(results: dict, pid) -> models.TriggerModel | None:
    """The patient's fitted model when their status is ``ok`` (else they get no forecast of their own)."""
    res = results.get(pid)
    est = getattr(res, "estimator", None)
    return est if res is not None and est is not None and res.status == "ok" else None


class _InOrder:
    """A frame's values in a model's column order (made once per column layout: models share one)."""

    def __init__(self, frame: pd.DataFrame):
        self.frame, self._by_cols = frame, {}

    def __call__(self, key: tuple) -> np.ndarray:
        if key not in self._by_cols:
            self._by_cols[key] = self.frame.reindex(columns=list(key)).to_numpy(dtype=float)
        return self._by_cols[key]


class _History:
    """Per patient, the recent days' values in a model's column order (one array per column layout)."""

    def __init__(self, recent: pd.DataFrame, meta: pd.DataFrame | None):
        self.recent, self.meta = recent, meta
        pid = recent["patient_id"].to_numpy()
        b = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1], True]) if len(pid) else []  # none: no history
        self.where = {pid[s]: (s, e) for s, e in pairwise(b)}
        self._by_cols: dict[tuple, tuple] = {}

    def layout(self, columns: Sequence[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """For a model's column order: the recent values of the columns ``recent`` has (compact: days x those
        columns, and their positions in ``columns``), and the hide masks of :func:`_marginal`."""
        key = tuple(columns)
        if key not in self._by_cols:
            have = [i for i, c in enumerate(key) if c in self.recent.columns]
            compact = self.recent[[key[i] for i in have]].to_numpy(dtype=float)
            self._by_cols[key] = ((compact, np.asarray(have, dtype=np.int64)),
                                  _hide_mask(key, _same_day_columns(self.meta, key)))
        return self._by_cols[key]

    def stacked(self, pids: Sequence, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`of` of several patients, one under the other, and the position in ``pids`` of each row's
        patient."""
        (compact, have), _ = self.layout(columns)
        spans = np.array([self.where.get(pid, (0, 0)) for pid in pids], dtype=np.int64).reshape(-1, 2)
        days = spans[:, 1] - spans[:, 0]
        owner = np.repeat(np.arange(len(pids)), days)
        first = np.repeat(spans[:, 0] - (np.cumsum(days) - days), days)  # each row's offset into compact
        out = np.full((len(owner), len(columns)), np.nan)
        out[:, have] = compact[first + np.arange(len(owner))]
        return out, owner

    def of(self, pid, columns: Sequence[str]) -> np.ndarray:
        """The patient's recent days in ``columns`` order (NaN where ``recent`` lacks a column)."""
        (compact, have), _ = self.layout(columns)
        a, b = self.where.get(pid, (0, 0))
        out = np.full((b - a, len(columns)), np.nan)
        out[:, have] = compact[a:b]
        return out


def next_day(panel: pd.DataFrame | Ahead, results: dict, tomorrow: date) -> dict[str, dict]:
    """``{patient_id: forecast block}`` for every patient with a fitted model and a row for ``tomorrow``.

    Tomorrow's same-day diary and night are unknown (NaN) unless the panel has them; the forecast averages
    over the patient's own recent values of those (see :func:`_marginal`). ``panel``: the panel, or the
    :class:`Ahead` part of it for ``tomorrow``. The patients whose models share a column layout (all of a
    cohort fit's) are computed together, row by row as :func:`_marginal` does one patient."""
    from trigger_watch.analysis import round4  # here: analysis imports this module

    ahead = panel if isinstance(panel, Ahead) else Ahead.of(panel, tomorrow)
    rows = ahead.rows
    history = _History(ahead.recent, ahead.meta)
    in_order = _InOrder(rows)
    pids = rows["patient_id"].to_numpy()
    layouts: dict[tuple, list[tuple[int, models.TriggerModel]]] = {}
    for i, pid in enumerate(pids):
        est = _fitted_model(results, pid)
        if est is not None:
            layouts.setdefault(tuple(est.columns_), []).append((i, est))
    made: dict[int, dict] = {}
    for key, members in layouts.items():
        where = np.array([i for i, _ in members], dtype=np.int64)
        many = _Models([est for _, est in members])
        masks = history.layout(key)[1]
        values = in_order(key)[where]
        past, owner = history.stacked(pids[where], key)
        p = _marginal_many(many, values, past, owner, masks)
        # the usual day, with the same values unknown as tomorrow and averaged over the same way: the ratio
        # p / base is then what tomorrow's known values do, nothing else
        # (at this time of year: the season's part of the risk is in both, and no driver)
        season = np.array([_split(c)[0] in _SEASON for c in key], dtype=bool)
        usual = np.where(masks[0][None, :] & ~np.isfinite(values), np.nan, many.mean)
        usual[:, season] = values[:, season]
        base = _marginal_many(many, usual, past, owner, masks)
        x = _as_forecast(values.copy(), many.mean, (np.zeros(len(key), dtype=bool), masks[1]))
        c_all = many.dev(x) * many.coef
        keep = (np.abs(c_all) > 1e-6) & ~season[None, :]
        # contribution on the probability scale: risk with this factor at its usual value vs as forecast
        p_without = 1 / (1 + np.exp(-(np.log(p / (1 - p))[:, None] - c_all)))
        # each patient's drivers: the kept columns by size of the rounded contribution, largest first (ties
        # in column order), the first MAX_DRIVERS; dicts made only for those
        lost = np.array(round4((p[:, None] - p_without).ravel()), dtype=float).reshape(p_without.shape)
        keep &= lost != 0  # a push under 0.00005 is shown as 0.0 (or -0.0): no driver
        top = np.argsort(np.where(keep, -np.abs(lost), np.inf), axis=1, kind="stable")[:, :MAX_DRIVERS]
        shown = np.minimum(keep.sum(axis=1), MAX_DRIVERS).tolist()
        names = [_split(c) for c in key]
        p_r, base_r = round4(p), round4(base)
        for j, i in enumerate(where.tolist()):
            cols = top[j, :shown[j]]
            drivers = [{"factor": names[c][0], "lag_days": names[c][1], "contribution": v}
                       for c, v in zip(cols.tolist(), lost[j, cols].tolist())]
            made[i] = {"date": tomorrow.isoformat(), "attack_probability": p_r[j],
                       "baseline_probability": base_r[j], "drivers": drivers}
    return {pids[i]: made[i] for i in sorted(made)}


class _Models:
    """The fitted models of several patients with one column layout, their per-patient attributes stacked
    (a row each): :meth:`TriggerModel._eta` and ``_dev`` for many patients' rows at once."""

    def __init__(self, ests: list[models.TriggerModel]):
        self.mean = np.array([np.asarray(e.mean_, dtype=float) for e in ests]).reshape(len(ests), -1)
        self.coef = np.array([e.coef_ for e in ests], dtype=float).reshape(self.mean.shape)
        self.clip = np.array([e.clip_ for e in ests], dtype=float).reshape(self.mean.shape)
        self.intercept = np.array([e.intercept_ for e in ests], dtype=float)
        self.miss_groups = ests[0].miss_groups_
        self.miss_coef = np.array([e.miss_coef_ for e in ests], dtype=float).reshape(len(ests), -1)

    def dev(self, x: np.ndarray, who: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Row ``r`` of ``x`` as patient ``who[r]``'s deviations from their usual (0 when unknown), clipped."""
        return models.deviation(x, self.mean[who], self.clip[who])

    def eta(self, x: np.ndarray, who: np.ndarray) -> np.ndarray:
        """The log odds of row ``r`` of ``x`` under patient ``who[r]``'s model."""
        eta = self.intercept[who] + np.einsum("ij,ij->i", self.dev(x, who), self.coef[who])
        return models.with_missing(eta, x, self.miss_groups, self.miss_coef[who])


def _marginal_many(many: _Models, x: np.ndarray, past: np.ndarray, owner: np.ndarray, masks) -> np.ndarray:
    """:func:`_marginal` of one day per patient (row ``i`` of ``x`` is patient ``i``'s), ``past`` holding every
    patient's recent days (row ``r`` is patient ``owner[r]``'s)."""
    hide, lag0 = masks
    n = len(x)
    unknown = hide[None, :] & ~np.isfinite(x)
    ahead = x.copy()
    fill = lag0[None, :] & ~np.isfinite(x) & ~unknown
    ahead[fill] = many.mean[fill]
    direct = ahead.copy()
    direct[unknown] = many.mean[unknown]
    p = expit(many.eta(direct, np.arange(n)))
    days = np.bincount(owner, minlength=n)
    averaged = (days > 0) & unknown.any(axis=1)
    if averaged.any():
        take = averaged[owner]
        who = owner[take]
        big = ahead[who]
        u = unknown[who]
        big[u] = past[take][u]
        q = expit(many.eta(big, who))
        p[averaged] = np.bincount(who, weights=q, minlength=n)[averaged] / days[averaged]
    return p


# ------------------------------------------------------------------------------------------ scores

def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both onsets and onset-free days."""
    y = np.asarray(y, dtype=float)
    n1 = y.sum()
    n0 = len(y) - n1
    if n1 < 1 or n0 < 1:
        return None
    r = rankdata(p)
    return float((r[y > 0].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_by_patient(pid: np.ndarray, y: np.ndarray, p: np.ndarray, min_onsets: int = 2,
                   strata: np.ndarray | None = None) -> pd.Series:
    """AUC of each patient's own days (NaN with fewer than ``min_onsets`` onsets or no comparable pair).

    ``strata`` (e.g. the origin of each day's model): only days of the same stratum are compared, so a
    baseline that moves between origins -- it moves *because* of the earlier block's attacks, which biases a
    pooled within-patient AUC below 0.5 -- does not count as discrimination either way."""
    s_ = np.zeros(len(pid)) if strata is None else pd.factorize(np.asarray(strata))[0]
    d = pd.DataFrame({"pid": pid, "s": s_, "y": np.asarray(y, dtype=float), "p": p})
    gs = d.groupby(["pid", "s"], sort=True)
    r = gs["p"].rank(method="average")
    n1 = gs["y"].sum()
    n0 = gs["y"].size() - n1
    u = (r * d["y"]).groupby([d["pid"], d["s"]], sort=True).sum() - n1 * (n1 + 1) / 2
    u, pairs, ons = (x.groupby(level=0, sort=True).sum() for x in (u, n1 * n0, n1))
    ok = (ons >= min_onsets) & (pairs > 0)
    return (u / pairs.where(ok)).where(ok)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> list[dict]:
    """Days cut at quantiles of the forecast: ``bin_low, bin_high, predicted`` (mean forecast), ``observed``
    (onset rate), ``n`` (days). Ties keep bins merged, so fewer than ``n_bins`` may come back."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if len(p) == 0:
        return []
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = []
    for b in range(max(len(edges) - 1, 1)):
        m = idx == b
        if m.any():
            out.append({"bin_low": float(p[m].min()), "bin_high": float(p[m].max()),
                        "predicted": float(p[m].mean()), "observed": float(y[m].mean()), "n": int(m.sum())})
    return out


def calibration_line(y: np.ndarray, p: np.ndarray) -> tuple[float | None, float | None]:
    """(slope, intercept) of the logistic recalibration ``logit P(onset) = a + b logit(p)``; the intercept is
    calibration-in-the-large (``a`` with ``b`` fixed at 1). Perfect calibration: slope 1, intercept 0;
    slope < 1: the forecast is too extreme; intercept > 0: it is too low on average."""
    y = np.asarray(y, dtype=float)
    x = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    if len(y) < 10 or y.min() == y.max():
        return None, None
    slope = None
    if np.ptp(x) > 1e-9:
        X = np.column_stack([np.ones_like(x), x])
        beta = np.array([0.0, 1.0])
        for _ in range(50):
            mu = 1 / (1 + np.exp(-(X @ beta)))
            H = (X * (mu * (1 - mu))[:, None]).T @ X + 1e-9 * np.eye(2)
            step = np.linalg.solve(H, X.T @ (y - mu))
            beta += np.clip(step, -5, 5)
            if np.abs(step).max() < 1e-8:
                break
        slope = float(beta[1])
    a = 0.0
    for _ in range(50):
        mu = 1 / (1 + np.exp(-(a + x)))
        step = (y - mu).sum() / max((mu * (1 - mu)).sum(), 1e-12)
        a += float(np.clip(step, -5, 5))
        if abs(step) < 1e-10:
            break
    return slope, float(a)


def scores(frame: pd.DataFrame, column: str, *, base: str = "p_base", n_bins: int = COHORT_BINS) -> dict:
    """Cohort figures of the forecast in ``frame[column]`` over ``frame``'s days (``patient_id, onset``):
    pooled AUC, mean per-patient AUC, Brier score, Brier skill against ``frame[base]``, calibration."""
    y = frame["onset"].to_numpy(dtype=float)
    p = frame[column].to_numpy(dtype=float)
    strata = frame["origin"].to_numpy() if "origin" in frame else None
    per = auc_by_patient(frame["patient_id"].to_numpy(), y, p, strata=strata)
    brier = float(np.mean((p - y) ** 2)) if len(y) else None
    ref = float(np.mean((frame[base].to_numpy(dtype=float) - y) ** 2)) if len(y) else None
    slope, intercept = calibration_line(y, p)
    return {"days": len(y), "onsets": int(y.sum()), "auc": auc(y, p),
            "mean_patient_auc": float(per.mean()) if per.notna().any() else None,
            "patients_with_auc": int(per.notna().sum()), "brier": brier,
            "brier_skill": (1 - brier / ref) if ref else None,
            "calibration_slope": slope, "calibration_intercept": intercept,
            "calibration": calibration_bins(y, p, n_bins)}


# ------------------------------------------------------------------------------------- validation

@dataclass
class Validation:
    """A rolling-origin validation of the next-day forecast.

    ``per_patient``: ``{patient_id: {cv_auc, cv_brier, cv_days, base_rate_brier, calibration}}`` (the
    triggers.json ``model`` keys; ``cv_auc`` None below 2 onsets or without an onset-free day;
    ``calibration`` 3 bins or empty). ``cohort``: pooled figures of the forecast and of the base rate, the
    protocol and the cost. ``predictions``: one row per evaluated day: ``patient_id, date, origin, onset,
    p`` (the forecast), ``p_same_day`` (the same model with the day's own values: not a forecast, for
    comparison), ``p_base`` (base rate), ``fitted`` (False: the patient had no model at that origin and
    ``p`` is the base rate).
    """

    per_patient: dict[str, dict]
    cohort: dict
    predictions: pd.DataFrame = field(repr=False)


def default_origins(panel: pd.DataFrame, n_origins: int, step_days: int) -> list[pd.Timestamp]:
    """``n_origins`` origins ``step_days`` apart whose blocks end on the panel's last day."""
    last = pd.Timestamp(panel["date"].max())
    return [last - pd.Timedelta(days=(n_origins - k) * step_days - 1) for k in range(n_origins)]


def rolling_origin(panel: pd.DataFrame, config, *,
                   prior: models.CohortPrior | Mapping[pd.Timestamp, models.CohortPrior] | None = None,
                   origins: int | Sequence[date | pd.Timestamp] | None = None, step_days: int | None = None,
                   same_day: bool = False, progress: Callable[[int, int], None] | None = None) -> Validation:
    """Rolling-origin (walk-forward) validation of the next-day forecast over the observed ``panel``
    (docs/internals.md shape, no rows after the last observed day).

    ``origins``: how many (default ``analysis.validation_origins``), placed ``step_days`` apart (default
    ``analysis.validation_step_days``) so that the last block ends on the panel's last day; or the origin
    dates themselves (each block runs to the next origin, the last one ``step_days`` long). At each origin
    ``d`` the cohort is fitted with :func:`models.analyse` on the days before ``d``; each at-risk day of the
    block is forecast from its patient's model as :func:`next_day` would the evening before: the day's own
    values hidden except weather and calendar, and averaged over the patient's last SAME_DAY_HISTORY at-risk
    days before ``d``. A patient without a fitted model at ``d`` (``insufficient_data``) gets the base-rate
    forecast (onset rate over at-risk days before ``d``) and is counted in ``cohort["base_rate_days"]``.
    Cost: one :func:`models.analyse` per origin plus about a quarter of one for the forecasts.

    ``prior``: a :class:`models.CohortPrior` to fit under at every origin instead of estimating one from the
    days before ``d`` each time. Measured, it is barely faster, and a prior estimated from the whole panel has
    seen the evaluated days (cohort-level hyperparameters only): pass None for the strict protocol unless the
    panel is a subset too small to estimate a prior (fewer than 30 patients). Or ``{origin: prior}``: each
    origin's (the pipeline's: the cohort's prior learned before that origin where the model store kept one,
    ``analysis.validation_for``).

    ``same_day``: also score the same models fed each day's own values (``predictions.p_same_day``,
    ``cohort["same_day"]``): not a forecast, a diagnostic of what hiding them costs (docs/forecast.md).
    """
    n_default = int(config["analysis.validation_origins"])
    step = int(step_days if step_days is not None else config["analysis.validation_step_days"])
    if step < 1:
        raise ConfigError(f"analysis.validation_step_days must be at least 1, not {step}")
    meta = panel.attrs.get("factors")
    if origins is None or isinstance(origins, (int, np.integer)):
        n = n_default if origins is None else int(origins)
        starts = default_origins(panel, n, step) if n > 0 and len(panel) else []
    else:
        starts = sorted(pd.Timestamp(d) for d in origins)
    ends = starts[1:] + [starts[-1] + pd.Timedelta(days=step)] if starts else []
    # the at-risk days as a slim key frame (patient, date, onset, row position); factor values are read from
    # the panel only for the days a block forecasts and the days its forecasts average over
    risk = panel["at_risk"].to_numpy(dtype=bool) & panel["onset"].notna().to_numpy()
    at = pd.DataFrame({"patient_id": panel["patient_id"].to_numpy()[risk], "date": panel["date"].to_numpy()[risk],
                       "onset": panel["onset"].to_numpy(dtype=float)[risk], "row": np.flatnonzero(risk)})
    dates = at["date"]
    frames, fit_seconds, fit_cpu = [], [], []
    for k, (d, e) in enumerate(zip(starts, ends)):
        in_block = (dates >= d) & (dates < e)
        if not in_block.any():
            continue
        train = panel[panel["date"] < d]
        train.attrs = dict(panel.attrs)
        t, c = time.perf_counter(), time.process_time()
        at_origin = prior.get(pd.Timestamp(d)) if isinstance(prior, Mapping) else prior
        results = models.analyse(train, config, prior=at_origin, store=False, fingerprint=False) if len(train) else {}
        fit_seconds.append(time.perf_counter() - t)
        fit_cpu.append(time.process_time() - c)
        del train
        hist = at[dates < d]
        rate = hist.groupby("patient_id")["onset"].mean()
        fallback = float(hist["onset"].mean()) if len(hist) else float(at.loc[in_block, "onset"].mean())
        block = _rows(panel, at.loc[in_block, "row"].to_numpy())
        recent = _rows(panel, _recent(hist, d)["row"].to_numpy())
        frames.append(_predict_block(block, results, rate, fallback, d, _History(recent, meta), same_day))
        if progress:
            progress(k + 1, len(starts))
    cols = ["patient_id", "date", "origin", "onset", "p", "p_same_day", "p_base", "fitted"]
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    pred = pred.sort_values(["patient_id", "date"], kind="stable").reset_index(drop=True)
    per_patient = _per_patient(pred)
    cohort = _cohort(pred, starts, step, prior, fit_seconds, fit_cpu)
    return Validation(per_patient, cohort, pred)


def combine(parts: Sequence[Validation], origins, step: int, prior) -> Validation:
    """One validation from validations of disjoint blocks of patients at the same ``origins``."""
    frames = [v.predictions for v in parts if len(v.predictions)]
    cols = ["patient_id", "date", "origin", "onset", "p", "p_same_day", "p_base", "fitted"]
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    pred = pred.sort_values(["patient_id", "date"], kind="stable").reset_index(drop=True)
    per_patient = {k: v for part in parts for k, v in part.per_patient.items()}
    secs = [sum(x) for x in zip(*(v.cohort.get("fit_seconds", []) for v in parts))] if parts else []
    cpu = [sum(x) for x in zip(*(v.cohort.get("fit_cpu_seconds", []) for v in parts))] if parts else []
    return Validation(per_patient, _cohort(pred, list(origins), step, prior, secs, cpu), pred)


@dataclass
class Ahead:
    """What :func:`next_day` reads of a panel for ``day``: that day's rows, and the recent at-risk days before
    it with only the columns a forecast averages over (the same-day ones): a small part of the panel, which
    the pipeline keeps per block of patients instead of the panel itself."""

    rows: pd.DataFrame
    recent: pd.DataFrame
    meta: pd.DataFrame | None

    @classmethod
    def of(cls, panel: pd.DataFrame, day: date) -> Ahead:
        stamp = pd.Timestamp(day)
        meta = panel.attrs.get("factors")
        rows = panel[panel["date"] == stamp]
        rows.attrs = {}
        same = _same_day_columns(meta, [c for c in panel.columns if "@" in c])
        # only the columns kept: masking and sorting the whole panel copied every factor column (~0.5 s of
        # the 10,000-patient cycle's CPU)
        narrow = panel[["patient_id", "date", *(["at_risk"] if "at_risk" in panel else []), *same]]
        recent = _recent(narrow, stamp)
        # float32: 60 days x every patient; a forecast averages over these, 7 significant digits are plenty
        recent = pd.concat([recent[["patient_id", "date"]], recent[same].astype(np.float32)], axis=1)
        return cls(rows, recent, meta)


def _predict_block(block: pd.DataFrame, results: dict, rate: pd.Series, fallback: float, origin,
                   history: _History, same_day: bool) -> pd.DataFrame:
    block = block.sort_values(["patient_id", "date"], kind="stable")
    block.attrs = {}
    pid = block["patient_id"].to_numpy()
    base = rate.reindex(pid).fillna(fallback).to_numpy(dtype=float)
    p, fitted = base.copy(), np.zeros(len(block), dtype=bool)
    p_same = base.copy() if same_day else np.full(len(block), np.nan)
    bounds = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1], True])
    in_order = _InOrder(block)
    additive: bool | None = None
    for a, b in pairwise(bounds):
        est = _fitted_model(results, pid[a])
        if est is None:
            continue
        key = tuple(est.columns_)
        masks = history.layout(key)[1]
        raw = in_order(key)[a:b]
        ahead = raw.copy()
        ahead[:, masks[0]] = np.nan  # what the evening before cannot know
        past = history.of(pid[a], key)
        if additive is None and len(past) and b - a > 1:  # check the shortcut once per block
            exact = _marginal(est, ahead, past, masks)
            additive = bool(np.allclose(_marginal(est, ahead, past, masks, additive=True), exact,
                                        rtol=0, atol=1e-9))
            p[a:b] = exact
        else:
            p[a:b] = _marginal(est, ahead, past, masks, additive=bool(additive))
        if same_day:
            p_same[a:b] = est.predict_proba(raw)[:, 1]
        fitted[a:b] = True
    return pd.DataFrame({"patient_id": pid, "date": block["date"].to_numpy(), "origin": pd.Timestamp(origin),
                         "onset": block["onset"].to_numpy(dtype=float).astype(np.int8), "p": p,
                         "p_same_day": p_same, "p_base": base, "fitted": fitted})


def _r(v, nd: int = 4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _per_patient(pred: pd.DataFrame) -> dict[str, dict]:
    if pred.empty:
        return {}
    y = pred["onset"].to_numpy(dtype=float)
    pid = pred["patient_id"].to_numpy()
    aucs = auc_by_patient(pid, y, pred["p"].to_numpy(), strata=pred["origin"].to_numpy())
    sq = pd.DataFrame({"pid": pid, "m": (pred["p"].to_numpy() - y) ** 2,
                       "b": (pred["p_base"].to_numpy() - y) ** 2})
    g = sq.groupby("pid", sort=True)
    brier, base, n = g["m"].mean(), g["b"].mean(), g["m"].size()
    out = {}
    for k, (a, e) in _bounds(pred):
        p_k = str(k)
        cal = (calibration_bins(y[a:e], pred["p"].to_numpy()[a:e], PATIENT_BINS)
               if e - a >= PATIENT_BIN_MIN_DAYS else [])
        out[p_k] = {"cv_auc": _r(aucs.get(k)), "cv_brier": _r(brier[k]), "cv_days": int(n[k]),
                    "base_rate_brier": _r(base[k]),
                    "calibration": [{**c, "bin_low": _r(c["bin_low"]), "bin_high": _r(c["bin_high"]),
                                     "predicted": _r(c["predicted"]), "observed": _r(c["observed"])}
                                    for c in cal]}
    return out


def _bounds(pred: pd.DataFrame):
    """(patient_id, (start, end)) row ranges of ``pred``, which is sorted by patient."""
    pid = pred["patient_id"].to_numpy()
    b = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1], True])
    return [(pid[s], (s, e)) for s, e in pairwise(b)]


def _cohort(pred: pd.DataFrame, starts, step, prior, fit_seconds, fit_cpu) -> dict:
    ours = scores(pred, "p") if len(pred) else {}
    fitted = pred[pred["fitted"]] if len(pred) else pred
    out = {
        "protocol": (f"rolling origin: {len(starts)} origins {step} days apart; fit on days before each "
                     "origin, forecast every at-risk day up to the next one with same-day values hidden "
                     "except weather and calendar"),
        "origins": [d.date().isoformat() for d in starts], "step_days": step,
        "prior": ("given for each origin" if isinstance(prior, Mapping) else "given" if prior is not None
                  else "re-estimated at each origin"),
        "patients": int(pred["patient_id"].nunique()) if len(pred) else 0,
        "days": len(pred), "onsets": int(pred["onset"].sum()) if len(pred) else 0,
        "base_rate_days": int((~pred["fitted"]).sum()) if len(pred) else 0,
        "base_rate_patients": int(pred.loc[~pred["fitted"], "patient_id"].nunique()) if len(pred) else 0,
        "fit_seconds": [round(s, 2) for s in fit_seconds], "fit_cpu_seconds": [round(s, 2) for s in fit_cpu],
    }
    if len(pred):
        base = scores(pred, "p_base")
        out.update({"auc": ours["auc"], "mean_patient_auc": ours["mean_patient_auc"],
                    "patients_with_auc": ours["patients_with_auc"], "brier": ours["brier"],
                    "base_rate_brier": base["brier"], "brier_skill": ours["brier_skill"],
                    "calibration_slope": ours["calibration_slope"],
                    "calibration_intercept": ours["calibration_intercept"], "calibration": ours["calibration"],
                    "base_rate_auc": base["auc"], "base_rate_mean_patient_auc": base["mean_patient_auc"],
                    "fitted_only": scores(fitted, "p") if len(fitted) else None,
                    "same_day": scores(pred, "p_same_day") if pred["p_same_day"].notna().all() else None})
    return out
