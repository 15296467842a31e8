"""Per-patient trigger models: a discrete-time hazard of attack onset, pooled across the cohort, with FDR control.

The method (docs/models.md has the why and the accuracy table):

1. **One hazard model per patient**: a logistic regression of ``onset`` on every factor and lag together, over
   the patient's at-risk days only (days inside an episode are not at risk). Factors are standardised within
   the patient for the fit (continuous ones clipped at 2.5 SD so a storm or a sleepless night cannot carry an
   estimate); a missing value is imputed from the adjacent day (same factor, other lag, the patient's own
   day-to-day correlation), else the patient's mean, and a missing-indicator per source (diary, sleep,
   weather) and lag absorbs what missingness says about attacks (diary days go missing in attacks).
2. **Partial pooling** (empirical Bayes): per column (factor and lag) the patients' effects are modelled as a
   spike-and-slab, ``0`` with probability ``pi0``, else ``N(mu, tau^2)`` (log odds ratio per exposure for
   booleans, per cohort-typical within-patient SD for continuous factors), estimated from the whole cohort.
   It enters each patient's fit as in EMVS (Rockova & George 2014), with ``p1`` the posterior probability
   that the patient's effect is real, as the normal prior with the mean and variance of the mixture
   ``p1 N(mu, tau^2) + (1 - p1) N(0, SPIKE_TAU^2)``: nil factors leave the adjustment set, real but uncertain
   ones stay in it, and common triggers need less evidence per patient. The fit is a batched penalised
   Newton over blocks of patients (numpy), three rounds (a ridge seeded by one-step score statistics, two
   EMVS).
3. **Columns that are consequences of the attack** -- lag-0 behaviour (avoidance on attack days; and stress,
   rated in the same evening and raised by the pain) and
   ``symptom:*`` (the premonitory phase) -- are not adjustment covariates (adjusting for a consequence of the
   outcome biases every other coefficient); each gets a one-step added-variable (score) estimate against the
   fitted model and its own pooled prior.
4. **Calls**: the posterior (with each patient's own data left out of its prior) gives each patient, factor
   and lag a local false sign rate (``lfsr``: the posterior probability that the called direction is wrong).
   q-values are running means of the sorted ``lfsr`` over every call the cohort run can make, triggers and
   protective factors in one family, warning signs in another; calling every q <= ``analysis.fdr`` keeps the
   expected share of false calls at or below it. Verdicts follow reports.md (symptoms are warning signs,
   lag-0 behaviour is never called).

The odds ratio and 95% interval reported are the patient's own adjusted estimate: the posterior with the
pooled prior divided out again (Gaussian approximation; a weak N(0, 1.5^2) is kept against sparse-data bias),
so the interval says what this patient's data say;
the pooled posterior decides verdict and rank and drives the next-day risk (:meth:`TriggerModel.predict_proba`).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController  # installed with scikit-learn

from trigger_watch import storage
from trigger_watch.errors import ModelError

MODEL_VERSION = "eb-hazard-6"  # 2: moment-matched EMVS prior; 3: same-day stress is a consequence (stored runs refitted);
# 4: days_to_answer in the summaries (the fit is as in 3; stored runs are made again to have it); 5: adjusted
# for the time of year (features.SEASON); a diary's own columns are behaviour (lag 0 never called); waits in
# diary days (_short_wait); 6: data.headache_recorded_days (stored runs are made again to have it, and the
# waits _empty_summary gives a patient with nothing to fit)
METHOD = ("discrete-time hazard (logistic over at-risk days, all factors and lags jointly, adjusted for the time "
          "of year) with empirical-Bayes partial pooling across the cohort; q-values from the local false sign rate")

SUMMARY_COLUMNS = ["factor", "label", "lag_days", "verdict", "rank", "odds_ratio", "ci_low", "ci_high", "q_value",
                   "exposed_days", "attacks_after_exposure", "days_needed", "p_value", "unexposed_days",
                   "attacks_without_exposure", "exposure", "days_to_answer"]

UNITS = {"alcohol_units": "drinks", "caffeine_mg": "mg", "exercise_minutes": "min", "water_l": "l",
         "screen_hours": "h", "sleep_hours": "h", "stress": "/10", "sleep_quality": "/10", "pressure_change": "hPa",
         "temperature_max": "C", "temperature_change": "C", "humidity": "%", "precipitation": "mm",
         "awakenings": "awakenings", "sleep_efficiency": "%", "bedtime_shift": "h"}

_MIN_OBS = 20  # non-missing at-risk days a column needs in a patient
_MIN_EXPOSED = 10  # exposed (and unexposed) days a boolean column needs (fewer: the Wald approximation fails)
_WINSOR = 2.5  # continuous factors are clipped at this many within-patient SDs for the fit
#: the longest wait for enough data said in days (ten years); the pages say a wait over a year in words
MAX_WAIT_DAYS = 3650
_EB_MIN_PATIENTS = 30  # fewer patients inform a column: the given (or default) prior is used for it
_MISS_SD = 1.0  # prior SD of a missing-indicator coefficient
_Z = norm.ppf(0.975)
#: ``days_to_answer``: the extra diary days tried (a year at most), the chance of a settled factor they must give,
#: and the |estimate / SE| a call is taken to need (the cohort's q-values called at 2.2-2.9 in simulated cohorts)
_ANSWER_DAYS = np.array([30, 60, 90, 135, 180, 270, 365])
_ANSWER_CHANCE = 0.5
_Z_CALL = 3.0


# ----------------------------------------------------------------------------------------------- prior

TAU_MIN = 0.25  # narrowest first-round ridge spread (cohort units): it regularises, it must not erase
SLAB_TAU_MIN = 0.3  # a slab narrower than this cannot be told from the spike by one patient's data
SPIKE_TAU = 0.05  # the spike as a prior N(0, SPIKE_TAU^2) inside the fit (cohort units)
NULL_WEIGHT = 10.0  # Dirichlet weight on pi0 (as ashr's nullweight): when the data cannot tell, favour "no effect"
WEAK_SD = 1.5  # weakly informative prior kept in the reported estimate (log OR per exposure / per cohort SD)
DEFAULT_PRIOR = {"pi0": 0.8, "mu": 0.0, "tau": 0.5}  # for columns that fewer than 30 patients inform


@dataclass
class CohortPrior:
    """The pooled spike-and-slab prior per panel column: a coefficient is 0 with probability ``pi0``, else
    ``N(mu, tau^2)``, in units of ``scale`` (1 for booleans: log odds ratio exposed vs not; for a continuous
    factor the cohort's typical within-patient SD); ``n_patients`` informed it."""

    table: pd.DataFrame  # column, pi0, mu, tau, scale, n_patients

    @classmethod
    def default(cls, columns, scale) -> CohortPrior:
        return cls(pd.DataFrame({"column": list(columns), **DEFAULT_PRIOR,
                                 "scale": np.asarray(scale, dtype=float), "n_patients": 0}))

    def lookup(self, columns) -> pd.DataFrame:
        return self.table.set_index("column").reindex(list(columns))

    @property
    def id(self) -> str:
        t = self.table[["column", "pi0", "mu", "tau"]].round(3)
        return hashlib.sha256(pd.util.hash_pandas_object(t, index=False).to_numpy().tobytes()).hexdigest()[:12]


def _normal_prior_ml(b: np.ndarray, s: np.ndarray, ok: np.ndarray, n_iter: int = 100) -> np.ndarray:
    """Spread ``tau`` of a centred normal prior, ``b_i ~ N(0, tau^2 + s_i^2)``, by marginal ML per column."""
    okf = ok.astype(float)
    b = np.where(ok, b, 0.0)
    s2 = np.where(ok, s ** 2, 1.0)
    tau2 = np.full(b.shape[1], 0.25)
    for _ in range(n_iter):
        w = okf / (tau2 + s2)
        tau2 = np.clip((w ** 2 * (b ** 2 - s2)).sum(0) / np.maximum((w ** 2).sum(0), 1e-12), TAU_MIN ** 2, 9.0)
    return np.sqrt(tau2)


def _fit_spike_slab(b: np.ndarray, s: np.ndarray, ok: np.ndarray, n_iter: int = 200, init=None):
    """EM for ``b_i ~ pi0 N(0, s_i^2) + (1 - pi0) N(mu, tau^2 + s_i^2)``, one prior per column (arrays (P, J)).

    ``tau`` is kept >= SLAB_TAU_MIN and ``pi0`` carries a null-favouring penalty: without them a narrow slab
    at a small nonzero mean is indistinguishable from the spike for noisy patients, yet turns into confident
    sign calls for all of them."""
    okf = ok.astype(float)
    b = np.where(ok, b, 0.0)
    s2 = np.where(ok, s ** 2, 1.0)
    n = okf.sum(axis=0)
    J = b.shape[1]
    pi0, mu, tau2 = np.full(J, 0.8), np.full(J, 0.2), np.full(J, 0.25)
    if init is not None:
        pi0, mu, tau2 = init[0].copy(), init[1].copy(), init[2] ** 2
    l0 = -0.5 * (np.log(s2) + b ** 2 / s2)
    for _ in range(n_iter):
        v1 = tau2 + s2
        l1 = -0.5 * (np.log(v1) + (b - mu) ** 2 / v1)
        r1 = expit(np.log1p(-pi0) + l1 - np.log(pi0) - l0) * okf
        pi0 = np.clip((n - r1.sum(axis=0) + NULL_WEIGHT - 1) / (n + NULL_WEIGHT - 1), 1e-3, 1 - 1e-3)
        w = 1 / v1
        mu = (r1 * w * b).sum(axis=0) / np.maximum((r1 * w).sum(axis=0), 1e-12)
        rw2 = r1 * w ** 2
        tau2 = (rw2 * ((b - mu) ** 2 - s2)).sum(axis=0) / np.maximum(rw2.sum(axis=0), 1e-12)
        tau2 = np.clip(tau2, SLAB_TAU_MIN ** 2, 3.0 ** 2)
    return pi0, mu, np.sqrt(tau2), n


def _spike_slab_columns(job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's task: :func:`_fit_spike_slab` of some columns. ``job``: ``(b, s, ok, n_iter, init)``."""
    b, s, ok, n_iter, init = job
    return _fit_spike_slab(b, s, ok, n_iter=n_iter, init=init)[:3]


def _spike_slab_by_columns(b, s, ok, n_iter: int, init, map_fn: Callable | None = None, parts: int = 2):
    """:func:`_fit_spike_slab`'s ``(pi0, mu, tau)`` fitted on ``parts`` groups of columns, on ``map_fn``'s
    workers when given and the cohort is large (at 10,000 patients the EM took ~4 s of the daemon's time).
    Each column's prior is its own, so this is the whole fit; the groups are the same wherever they run, so
    every backend gets the same bits (a group's vectorised logs and exponents may round its last bit unlike
    the whole array's would)."""
    cuts = np.array_split(np.arange(b.shape[1]), parts)
    jobs = [(b[:, c], s[:, c], ok[:, c], n_iter, None if init is None else tuple(x[c] for x in init))
            for c in cuts]
    run = map_fn if map_fn is not None and b.size >= 200_000 else map
    out = list(run(_spike_slab_columns, jobs))
    return tuple(np.concatenate([o[k] for o in out]) for k in range(3))


def _loo_prior(b, s, ok, pi0, mu, tau):
    """Each patient's prior with that patient left out (one EM step from the cohort fit), arrays (P, J).

    Without it a single patient's extreme estimate can build its own slab ("one patient in 60 has OR 12 for
    chocolate") and then support its own call; with it, a call must be supported by the *other* patients'
    data (and its own)."""
    okf = ok.astype(float)
    b = np.where(ok, b, 0.0)
    s2 = np.where(ok, s ** 2, 1.0)
    n = okf.sum(0)
    tau2 = tau ** 2
    v1 = tau2 + s2
    l0 = -0.5 * (np.log(s2) + b ** 2 / s2)
    l1 = -0.5 * (np.log(v1) + (b - mu) ** 2 / v1)
    r1 = expit(np.log1p(-pi0) + l1 - np.log(pi0) - l0) * okf
    w = 1 / v1
    R, A, B = r1.sum(0), (r1 * w * b).sum(0), (r1 * w).sum(0)
    C, D = (r1 * w ** 2 * ((b - mu) ** 2 - s2)).sum(0), (r1 * w ** 2).sum(0)
    n_i = np.maximum(n - okf, 0)
    pi0_i = np.clip((n_i - (R - r1) + NULL_WEIGHT - 1) / (n_i + NULL_WEIGHT - 1), 1e-3, 1 - 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_i = np.where(B - r1 * w > 1e-9, (A - r1 * w * b) / (B - r1 * w), mu)
        t2 = np.where(D - r1 * w ** 2 > 1e-12, (C - r1 * w ** 2 * ((b - mu) ** 2 - s2)) / (D - r1 * w ** 2), tau2)
    tau_i = np.sqrt(np.clip(t2, SLAB_TAU_MIN ** 2, 9.0))
    return (np.where(ok, pi0_i, pi0), np.where(ok, mu_i, mu), np.where(ok, tau_i, tau))


def _posterior(b, s, pi0, mu, tau):
    """Spike-and-slab posterior of each estimate: P(slab), slab mean and SD, P(beta > 0), P(beta < 0)."""
    s2 = s ** 2
    v = tau ** 2 + s2
    l0 = -0.5 * (np.log(s2) + b ** 2 / s2)
    l1 = -0.5 * (np.log(v) + (b - mu) ** 2 / v)
    p1 = expit(np.log1p(-pi0) + l1 - np.log(pi0) - l0)
    v1 = 1 / (1 / tau ** 2 + 1 / s2)
    m1 = v1 * (mu / tau ** 2 + b / s2)
    sd1 = np.sqrt(v1)
    return p1, m1, sd1, p1 * norm.cdf(m1 / sd1), p1 * norm.cdf(-m1 / sd1)


def q_values(lfsr: np.ndarray) -> np.ndarray:
    """q-value of each call: the mean local false sign rate of all calls at least as strong (NaN stays NaN)."""
    lfsr = np.asarray(lfsr, dtype=float)
    q = np.full(lfsr.shape, np.nan)
    ok = np.isfinite(lfsr)
    order = np.argsort(lfsr[ok], kind="stable")
    run = np.cumsum(lfsr[ok][order]) / np.arange(1, order.size + 1)
    run = np.minimum.accumulate(run[::-1])[::-1]
    qq = np.empty(order.size)
    qq[order] = run
    q[ok] = qq
    return q


# ------------------------------------------------------------------------------------------ the design

@dataclass
class _Design:
    """Columns of a panel and their roles: ``main`` are modelled jointly, ``side`` get added-variable estimates;
    ``shown``: in the summaries (not the time of year, ``features.SEASON``, an adjustment only)."""

    meta: pd.DataFrame  # column, factor, lag, kind, group, label, behaviour, side
    main: list[str]
    side: list[str]

    @classmethod
    def from_panel(cls, panel: pd.DataFrame) -> _Design:
        meta = panel.attrs.get("factors")
        if meta is None:
            raise ModelError("the panel has no attrs['factors'] metadata; build it with features.build_panel")
        meta = meta[meta["column"].isin(panel.columns)].copy().reset_index(drop=True)
        meta["behaviour"] = meta["behaviour"].astype(bool)
        meta["lag"] = meta["lag"].astype(int)
        meta["side"] = (meta["group"] == "symptom") | (meta["behaviour"] & (meta["lag"] == 0))
        meta["shown"] = meta["group"] != "season"
        return cls(meta, meta.loc[~meta["side"], "column"].tolist(), meta.loc[meta["side"], "column"].tolist())

    @property
    def columns(self) -> list[str]:
        return self.main + self.side

    @property
    def is_bool(self) -> np.ndarray:
        kind = dict(zip(self.meta["column"], self.meta["kind"]))
        return np.array([kind[c] == "boolean" for c in self.columns], dtype=bool)

    def lag_pairs(self) -> list[tuple[int, int]]:
        """(lag 0, lag 1) index pairs of the same factor among the main columns."""
        key = dict(zip(self.meta["column"], zip(self.meta["factor"], self.meta["lag"])))
        where = {(f, int(lag)): i for i, (f, lag) in enumerate(key[c] for c in self.main)}
        return [(i, where[(f, 1)]) for (f, lag), i in where.items() if lag == 0 and (f, 1) in where]

    def miss_groups(self) -> dict[tuple[str, int], list[int]]:
        """Missing-indicator groups: main-column indices per (source, lag); calendar factors are never missing."""
        if "_miss" not in self.__dict__:
            m = self.meta.set_index("column").loc[self.main]
            out: dict[tuple[str, int], list[int]] = {}
            for i, (g, lag) in enumerate(zip(m["group"], m["lag"])):
                if _source(g) != "calendar":
                    out.setdefault((_source(g), int(lag)), []).append(i)
            self.__dict__["_miss"] = out
        return self.__dict__["_miss"]


def _source(group: str) -> str:
    if group == "season":  # known for every day, like the calendar
        return "calendar"
    return group if group in ("sleep", "weather", "calendar") else "diary"


def _gram(X: np.ndarray, sw: np.ndarray, which: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Penalised Hessian X'WX + diag(lam) of the patients ``which`` (one small BLAS call per patient, in
    float32: faster than a stacked matmul and precise enough for Newton steps)."""
    K = X.shape[2]
    out = np.empty((len(which), K, K))
    sw = sw.astype(np.float32)
    for i, p in enumerate(which):
        B = X[p] * sw[p][:, None]
        out[i] = B.T @ B
    out += np.eye(K)[None] * lam[which][:, None, :]
    return out


@dataclass
class _Chunk:
    """A block of patients ready to fit: the standardised design and the descriptive counts."""

    pids: np.ndarray
    X: np.ndarray  # (P, T, K): main columns, missing indicators, intercept
    Zs: np.ndarray  # (P, T, S): side columns
    y: np.ndarray
    w: np.ndarray
    usable: np.ndarray  # (P, J) all columns
    mean: np.ndarray
    sd: np.ndarray
    miss_use: np.ndarray  # (P, G)
    counts: dict
    beta: np.ndarray | None = None
    path: Path | None = None  # where X, Zs, y and w wait while spilled (see :meth:`spill`)
    #: the main columns' one-step score statistics (:func:`_score_of`), made while the block is in memory
    score: tuple[np.ndarray, np.ndarray] | None = None

    _BIG = ("X", "Zs", "y", "w")

    def spill(self, folder: Path) -> None:
        """Move the big arrays to an uncompressed file in ``folder``: a national cohort's design does not fit
        in memory at once, and the fit reads each block once per round (from the page cache, not the disk).
        The file is the arrays' .npy records one after another (an .npz costs a zip and its checksums)."""
        self.path = Path(folder) / f"chunk-{secrets.token_hex(6)}.npy"
        with open(self.path, "wb") as fh:
            for k in self._BIG:
                np.save(fh, getattr(self, k))
        for k in self._BIG:
            setattr(self, k, None)

    @contextmanager
    def loaded(self) -> Iterator[_Chunk]:
        """The chunk with its big arrays in memory (read back if spilled, dropped again afterwards)."""
        if self.path is None:
            yield self
            return
        with open(self.path, "rb") as fh:
            for k in self._BIG:
                setattr(self, k, np.load(fh))
        try:
            yield self
        finally:
            for k in self._BIG:
                setattr(self, k, None)


def _nice(x: np.ndarray) -> np.ndarray:
    """x rounded to two significant digits (thresholds people read: 2.4 drinks, 150 mg)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = 10.0 ** (np.floor(np.log10(np.abs(x))) - 1)
        return np.where(np.isfinite(mag) & (mag > 0), np.round(x / mag) * mag, x)


def _count(mask: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Per-segment counts of True along axis 0 (exact: float32 holds every count up to 2**24, and its
    reduceat is several times faster than the integer one)."""
    return np.add.reduceat(mask.astype(np.float32), seg, axis=0).astype(np.int64)


@dataclass
class _Layout:
    """What standardising a block's rows needs to know of the design's columns."""

    Km: int
    is_bool: np.ndarray
    lag0: np.ndarray  # (lag 0, lag 1) column pairs of the same factor among the main columns
    lag1: np.ndarray
    groups: list[list[int]]  # main columns per missing-indicator group
    low: np.ndarray  # where the standardised values are clipped: -_WINSOR, -inf for booleans

    @classmethod
    def of(cls, design: _Design) -> _Layout:
        pairs = np.array(design.lag_pairs(), dtype=np.intp).reshape(-1, 2)
        is_bool = design.is_bool
        return cls(len(design.main), is_bool, pairs[:, 0], pairs[:, 1], list(design.miss_groups().values()),
                   np.where(is_bool, -np.inf, -_WINSOR))


def _standardise(V: np.ndarray, y: np.ndarray, seg: np.ndarray, lens: np.ndarray, lay: _Layout):
    """The design rows of some patients' at-risk days (``V`` their values, column-major, rows sorted by
    patient, ``seg`` where each patient starts): main and side columns standardised within the patient
    (float64, before the fit's float32), the missing-indicators, and the per-patient statistics and counts.
    Every (rows, columns) array is column-major, as the segment sums want it, per-patient values included
    (``per_row``: a repeat, not a gather). Each number is computed as by the whole-block version this replaced
    (the same operations in the same order), so the design is the same bit for bit."""
    is_bool = lay.is_bool

    def per_row(a):  # per-patient values repeated over the patient's rows
        return np.repeat(np.ascontiguousarray(a.T), lens, axis=1).T

    obs = np.isfinite(V)
    Vo = np.where(obs, V, 0.0).astype(float)
    nobs = _count(obs, seg)
    n1 = np.maximum(nobs, 1)
    mean = np.add.reduceat(Vo, seg, axis=0) / n1
    sd = np.sqrt(np.maximum(np.add.reduceat(Vo * Vo, seg, axis=0) / n1 - mean ** 2, 0.0))
    n_exp = _count(obs & (V > 0.5), seg)
    usable = (nobs >= _MIN_OBS) & (sd > 1e-6 * np.maximum(np.abs(mean), 1))
    usable &= ~is_bool[None] | ((n_exp >= _MIN_EXPOSED) & (nobs - n_exp >= _MIN_EXPOSED))
    sd_safe = np.where(usable, sd, 1.0)
    Z = np.where(obs & per_row(usable), (Vo - per_row(mean)) / per_row(sd_safe), 0.0)
    # A day missing from the diary is imputed from the adjacent day (the same factor at the other lag,
    # scaled by the patient's own day-to-day correlation), not just set to the mean: diary days go
    # missing in attacks, and with mean imputation yesterday's value would stand in for today's and
    # take its effect (the missing-indicators still absorb the level). All pairs at once, and only the
    # imputed cells are written (no column is in two pairs, and a cell imputed at one lag is one whose
    # other lag is observed, so not itself imputed).
    if len(lay.lag0):
        o0, o1 = obs[:, lay.lag0], obs[:, lay.lag1]
        z0, z1 = Z[:, lay.lag0], Z[:, lay.lag1]
        both = o0 & o1
        nb = np.add.reduceat(both.astype(np.int32), seg, axis=0)
        rho = np.add.reduceat(z0 * z1 * both, seg, axis=0) / np.maximum(nb, 1)
        rho = np.where(nb >= 10, np.clip(rho, -0.95, 0.95), 0.0)
        pidx = np.repeat(np.arange(len(seg)), lens)
        for to, src, miss in ((lay.lag0, z1, ~o0 & o1), (lay.lag1, z0, ~o1 & o0)):
            c, r = np.divmod(np.flatnonzero(miss.T), len(V))
            Z[r, to[c]] = rho[pidx[r], c] * src[r, c]
    # continuous factors clipped at _WINSOR SDs (booleans: bounds they cannot reach)
    np.clip(Z, lay.low, -lay.low, out=Z)
    ind = np.empty((len(V), len(lay.groups)), dtype=bool, order="F")
    miss_use = np.empty((len(seg), len(lay.groups)), dtype=bool)
    for gi, ix in enumerate(lay.groups):
        ind[:, gi] = (~obs[:, ix]).all(1)  # the whole source is missing that day
        n_ind = np.add.reduceat(ind[:, gi].astype(np.int32), seg)
        miss_use[:, gi] = (n_ind >= 3) & (n_ind <= lens - 3)
    ind &= per_row(miss_use)
    # descriptive counts over at-risk days with the factor observed; "exposed" for a continuous factor is
    # a value at or above about its upper quartile for this patient (mean + 0.67 SD, rounded)
    cont = ~is_bool
    thr = np.ones_like(mean)  # booleans: 1
    mx = np.maximum.reduceat(np.where(obs[:, cont], V[:, cont], -np.inf), seg, axis=0)
    thr[:, cont] = np.minimum(_nice(mean[:, cont] + 0.6745 * sd[:, cont]), mx)
    expo = obs & (V >= per_row(_up32(thr)))
    exposed = _count(expo, seg)
    # the other counts from these and from the attack days alone (unexposed = observed - exposed)
    att = np.flatnonzero(y > 0)
    cuts = np.searchsorted(att, np.r_[seg, len(V)])
    att_obs, att_expo = _count_some(obs[att], cuts), _count_some(expo[att], cuts)
    counts = {"exposed_days": exposed, "attacks_after_exposure": att_expo, "unexposed_days": nobs - exposed,
              "attacks_without_exposure": att_obs - att_expo, "threshold": thr, "nobs": nobs}
    return Z, ind, usable, mean, sd, miss_use, counts


def _up32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 at or above each float64: for a float32 ``v``, ``v >= x`` exactly when
    ``v >= _up32(x)`` (so the comparison needs no float64 copy of ``v``; beyond float32's range: +-inf)."""
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
        return np.where(x32 < x, np.nextafter(x32, np.float32(np.inf)), x32)


def _count_some(mask: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Per-segment counts of True along axis 0, segments ``cuts[i]:cuts[i + 1]`` (empty ones too)."""
    run = np.zeros((len(mask) + 1, mask.shape[1]), dtype=np.int64)
    np.cumsum(mask, axis=0, out=run[1:])
    return run[cuts[1:]] - run[cuts[:-1]]


def _chunks(frame: pd.DataFrame, design: _Design, rows: np.ndarray | None = None, *,
            chunk_cells: int = 8_000_000, tile_rows: int = 4096) -> list[_Chunk]:
    """Cut the at-risk rows of ``frame`` (positions ``rows``, else all; sorted by patient) into blocks of
    patients, standardise them and pad them into (patients, days, columns) arrays for the batched fit.
    Per-patient statistics come from segment sums.

    A block is standardised ``tile_rows`` rows (whole patients) at a time: each patient's numbers are its
    own, and the float64 temporaries of a tile stay in the cache where a block's went to memory."""
    cols = design.columns
    lay = _Layout.of(design)
    Km, S, G = lay.Km, len(design.side), len(lay.groups)
    K = Km + G + 1
    rows = np.arange(len(frame)) if rows is None else rows
    pid_all = frame["patient_id"].to_numpy()[rows]
    bounds = np.flatnonzero(np.r_[True, pid_all[1:] != pid_all[:-1], True])
    starts, ends = bounds[:-1], bounds[1:]
    V_all = np.empty((len(rows), len(cols)), dtype=np.float32, order="F")  # column-major: see _standardise
    for j, c in enumerate(cols):
        V_all[:, j] = frame[c].to_numpy(dtype=np.float32)[rows]
    y_all = frame["onset"].to_numpy(dtype=float)[rows]
    per = max(1, int(chunk_cells // max(1, int((ends - starts).max(initial=1)) * (K + S))))
    out = []
    for c0 in range(0, len(starts), per):
        cs, ce = starts[c0:c0 + per], ends[c0:c0 + per]
        lens = ce - cs
        Pc, T = len(cs), int(lens.max())
        X = np.zeros((Pc, T, K), dtype=np.float32)
        Zs = np.zeros((Pc, T, S), dtype=np.float32)
        y = np.zeros((Pc, T))
        w = np.zeros((Pc, T))
        parts = []
        # tiles: runs of whole patients of about tile_rows rows
        cuts = np.flatnonzero(np.diff((cs - cs[0]) // tile_rows, prepend=-1))
        for p0, p1 in pairwise([*cuts, Pc]):
            r0, r1 = cs[p0], ce[p1 - 1]
            Z, ind, *stats = _standardise(V_all[r0:r1], y_all[r0:r1], cs[p0:p1] - r0, lens[p0:p1], lay)
            # the rows' places in the padded arrays, flat (patient * T + day): one scatter per array
            flat = np.arange(r1 - r0) + np.repeat(np.arange(p0, p1) * T - (cs[p0:p1] - r0), lens[p0:p1])
            D = np.empty((r1 - r0, K), dtype=np.float32)
            D[:, :Km] = Z[:, :Km]
            D[:, Km:Km + G] = ind
            D[:, -1] = 1.0
            X.reshape(Pc * T, K)[flat] = D
            Zs.reshape(Pc * T, S)[flat] = Z[:, Km:]
            y.reshape(-1)[flat] = y_all[r0:r1]
            w.reshape(-1)[flat] = 1.0
            parts.append(stats)
        usable, mean, sd, miss_use = (np.concatenate(x) for x in zip(*(p[:4] for p in parts)))
        counts = {k: np.concatenate([p[4][k] for p in parts]) for k in parts[0][4]}
        out.append(_Chunk(pid_all[cs], X, Zs, y, w, usable, mean, sd, miss_use, counts,
                          score=_score_of(X, y, w, Km)))
    return out


def _prior_arrays(ch: _Chunk, Km: int, G: int, lam_c: np.ndarray, centre_c: np.ndarray, scale: np.ndarray):
    """Per-patient ridge penalty and centre of the main columns, from cohort units to the fit's units."""
    K = Km + G + 1
    Pc = len(ch.pids)
    f = np.where(ch.sd[:, :Km] > 0, ch.sd[:, :Km], 1.0) / scale[None, :Km]  # cohort -> standardised units
    lam = np.empty((Pc, K))
    centre = np.zeros((Pc, K))
    lam[:, :Km] = np.where(ch.usable[:, :Km], np.broadcast_to(lam_c, (Pc, Km)) / f ** 2, 1e8)
    centre[:, :Km] = np.where(ch.usable[:, :Km], np.broadcast_to(centre_c, (Pc, Km)) * f, 0.0)
    lam[:, Km:Km + G] = np.where(ch.miss_use, 1 / _MISS_SD ** 2, 1e8)
    lam[:, -1] = 1e-4
    return lam, centre


def _fit_chunk(ch: _Chunk, lam: np.ndarray, centre: np.ndarray, max_iter: int = 25, tol: float = 1e-4):
    """Penalised logistic Newton for a block of patients (warm-started from the last round). Returns (beta,
    diagonal of the posterior covariance, side-column score U and efficient information I)."""
    X, y, w = ch.X, ch.y, ch.w
    P, _, K = X.shape
    if ch.beta is None:
        beta = centre.copy()
        ybar = np.clip((y * w).sum(1) / np.maximum(w.sum(1), 1), 1e-3, 1 - 1e-3)
        beta[:, -1] = np.log(ybar / (1 - ybar))
    else:
        beta = ch.beta.copy()
    active = np.ones(P, dtype=bool)
    for _ in range(max_iter):
        mu = expit(np.einsum("ptk,pk->pt", X, beta.astype(np.float32)).astype(float))
        a = np.flatnonzero(active)
        g = np.einsum("ptk,pt->pk", X[a], (w[a] * (y[a] - mu[a])).astype(np.float32)) - lam[a] * (
            beta[a] - centre[a])
        H = _gram(X, np.sqrt(w * mu * (1 - mu)), a, lam)
        step = np.clip(np.linalg.solve(H, g[..., None])[..., 0], -3, 3)
        beta[a] += step
        active[a] = np.abs(step).max(1) > tol
        if not active.any():
            break
    mu = expit(np.einsum("ptk,pk->pt", X, beta.astype(np.float32)).astype(float))
    wt = w * mu * (1 - mu)
    # one weighted Gram of [main | side] gives the covariance and the side columns' efficient information
    Zs = ch.Zs
    S = Zs.shape[2]
    full = np.empty((P, K + S, K + S))
    sw = np.sqrt(wt).astype(np.float32)
    for p in range(P):
        B = np.concatenate([X[p], Zs[p]], axis=1) * sw[p][:, None]
        full[p] = B.T @ B
    H = full[:, :K, :K] + np.eye(K)[None] * lam[:, None, :]
    Hinv = np.linalg.inv(H)
    var = np.einsum("pkk->pk", Hinv)
    ZWX = full[:, K:, :K]
    ZWZ = np.einsum("pss->ps", full[:, K:, K:])
    U = np.einsum("pts,pt->ps", Zs, (w * (y - mu)).astype(np.float32)).astype(float)
    info = np.maximum(ZWZ - np.einsum("psk,pks->ps", ZWX, Hinv @ ZWX.transpose(0, 2, 1)), 0.0)
    ch.beta = beta
    return beta, var, U, info


def _score_stats(chunks: list[_Chunk]):
    """One-step score statistics of each main column alone (against an intercept-only model), standardised
    units: the first, cheap look at the cohort that seeds the prior. Each block's were made with it
    (:func:`_chunks`, in the worker that prepared it): reading every spilled block back here to make them
    kept the daemon busy ~0.8 s at the start of the fit while the workers waited (10,000 patients, half
    speed)."""
    return tuple(np.concatenate([chunk.score[k] for chunk in chunks]) for k in (0, 1))


def _score_of(X: np.ndarray, y: np.ndarray, w: np.ndarray, Km: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's one-step score statistics (:func:`_score_stats`): estimates and standard errors (P, Km)."""
    p0 = (y * w).sum(1) / np.maximum(w.sum(1), 1)
    Z = X[..., :Km]
    U = np.einsum("ptk,pt->pk", Z, (w * (y - p0[:, None])).astype(np.float32)).astype(float)
    info = np.maximum((p0 * (1 - p0))[:, None] * np.einsum("ptk,ptk->pk", Z, Z).astype(float), 1e-9)
    return U / info, 1 / np.sqrt(info)


# ----------------------------------------------------------------------------------------------- fitting

@dataclass
class _Fit:
    """Per-patient results of a cohort fit, in cohort units (arrays (P, J) over design.columns)."""

    pids: list[str]
    lik_b: np.ndarray  # the patient's own estimate: the fit with this column's prior divided out
    lik_se: np.ndarray
    usable: np.ndarray
    lfsr: np.ndarray  # local false sign rate under the pooled prior
    direction: np.ndarray  # +1 / -1
    post_mean: np.ndarray  # pooled posterior mean (cohort units)
    sd: np.ndarray
    mean: np.ndarray
    intercept: np.ndarray
    miss_coef: np.ndarray
    counts: dict
    prior: CohortPrior


def _cohort_scale(chunks: list[_Chunk], design: _Design) -> np.ndarray:
    sd = np.concatenate([c.sd for c in chunks])
    us = np.concatenate([c.usable for c in chunks])
    med = np.array([np.median(sd[us[:, j], j]) if us[:, j].any() else 1.0 for j in range(sd.shape[1])])
    return np.where(design.is_bool, 1.0, med)


def _fit_cohort(rows: pd.DataFrame, design: _Design, prior: CohortPrior | None, eligible: dict[str, bool],
                rounds: int = 3, progress: Callable | None = None) -> _Fit:
    """Fit every patient of ``rows`` (at-risk rows sorted by patient): :func:`_fit_chunks` of its blocks."""
    return _fit_chunks(_chunks(rows, design), design, prior, eligible, rounds, progress)


def _fit_loaded(ch: _Chunk, lam: np.ndarray, centre: np.ndarray):
    with _threadpools().limit(limits=1, user_api="blas"), ch.loaded():  # many tiny matrices: threads only contend
        return _fit_chunk(ch, lam, centre)


@functools.cache
def _threadpools() -> ThreadpoolController:
    """This process's thread pools, looked up once: ``threadpool_limits`` inspects every loaded library
    each time (~4 ms with numpy's, scipy's and scikit-learn's; a night's fits and validation call it
    hundreds of times)."""
    return ThreadpoolController()


def _fit_spilled(task) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A worker's share of a fitting round: ``(path, beta, lam, centre)`` of a spilled block -> its fit."""
    path, beta, lam, centre = task
    ch = _Chunk(np.empty(0), None, None, None, None, None, None, None, None, {}, beta=beta, path=Path(path))
    return _fit_loaded(ch, lam, centre)


def _fit_chunks(chunks: list[_Chunk], design: _Design, prior: CohortPrior | None, eligible: dict[str, bool],
                rounds: int = 3, progress: Callable | None = None, map_fn: Callable | None = None) -> _Fit:
    """Fit every patient of ``chunks`` (blocks from :func:`_chunks`) with a pooled spike-and-slab prior.

    Round 1 fits a ridge whose per-column spread comes from one-step score statistics (centred: it pools
    the size of effects, never their sign). Each later round is an EM step of spike-and-slab regression
    (EMVS, Rockova & George 2014): the spike-and-slab prior per column is re-estimated from the patients'
    own estimates, and each patient's prior becomes the normal with the mean ``p1 mu`` and the variance of
    ``p1 N(mu, tau^2) + (1 - p1) N(0, SPIKE_TAU^2)``, ``p1`` the posterior probability that the effect is real
    -- factors that are nil for this patient drop out of the adjustment set instead of diluting the others,
    while an effect that is probably real stays in it.

    ``map_fn(fn, items)``: runs a round's block fits elsewhere (an executor's ``map``; the blocks must be
    spilled to files the workers can read); by default they run here, one after another.
    """
    cols = design.columns
    Km = len(design.main)
    G = len(design.miss_groups())
    pids = np.concatenate([c.pids for c in chunks]).astype(str)
    ok = np.array([eligible.get(p, True) for p in pids])
    usable = np.concatenate([c.usable for c in chunks])
    sd_all = np.concatenate([c.sd for c in chunks])
    scale = _cohort_scale(chunks, design)
    if prior is not None:  # the prior's spreads are in its own units: keep them (a subset's SDs differ)
        scale = prior.lookup(cols)["scale"].fillna(pd.Series(scale, index=cols)).to_numpy(dtype=float)
    to_c = scale[None, :] / np.where(sd_all > 0, sd_all, 1.0)  # standardised -> cohort units
    inform = usable & ok[:, None]
    n_inf = inform.sum(0)
    learn = (n_inf >= _EB_MIN_PATIENTS) & (prior is None)
    given = (prior or CohortPrior.default(cols, scale)).lookup(cols)
    g_pi0 = given["pi0"].fillna(DEFAULT_PRIOR["pi0"]).to_numpy()
    g_mu = given["mu"].fillna(DEFAULT_PRIOR["mu"]).to_numpy()
    g_tau = given["tau"].fillna(DEFAULT_PRIOR["tau"]).to_numpy()
    # round-1 ridge: the second moment of the effects
    ridge = np.maximum(np.sqrt((1 - g_pi0) * (g_mu ** 2 + g_tau ** 2)), TAU_MIN)[:Km]
    if learn[:Km].any():
        b0, s0 = _score_stats(chunks)
        est = _normal_prior_ml(b0 * to_c[:, :Km], s0 * to_c[:, :Km], inform[:, :Km])
        ridge = np.where(learn[:Km], est, ridge)
    lam_c = np.broadcast_to(1 / ridge ** 2, (len(pids), Km)).copy()
    centre_c = np.zeros((len(pids), Km))
    pi0, mu, tau = g_pi0.copy(), g_mu.copy(), g_tau.copy()
    e_pi0, e_mu, e_tau = pi0, mu, tau
    offsets = np.cumsum([0] + [len(ch.pids) for ch in chunks])
    for r in range(rounds):
        tasks = []
        for ch, a, e in zip(chunks, offsets[:-1], offsets[1:]):
            lam, centre = _prior_arrays(ch, Km, G, lam_c[a:e], centre_c[a:e], scale)
            tasks.append((ch, lam, centre))
        if map_fn is not None and all(ch.path is not None for ch in chunks):
            # spilled blocks go to the workers as file names; only the small arrays travel
            out = list(map_fn(_fit_spilled, [(ch.path, ch.beta, lam, centre) for ch, lam, centre in tasks]))
        else:
            out = [_fit_loaded(ch, lam, centre) for ch, lam, centre in tasks]
        for ch, res in zip(chunks, out):
            ch.beta = res[0]
        betas, vars_, Us, Is = zip(*out)
        beta, var = np.concatenate(betas), np.concatenate(vars_)
        U, info = np.concatenate(Us), np.concatenate(Is)
        # the patient's own estimate: divide this column's prior out of its posterior (Gaussian approximation)
        m_c = beta[:, :Km] * to_c[:, :Km]
        v_c = var[:, :Km] * to_c[:, :Km] ** 2
        prec = 1 / v_c - lam_c
        informative = (prec > 0.01) & (prec * v_c > 1e-6)  # the data say something (SE < 10 cohort units)
        prec = np.where(informative, prec, 1.0)
        b_main = (m_c / v_c - lam_c * centre_c) / prec
        # ... keeping a weakly informative N(0, WEAK_SD^2) (Gelman et al. 2008): a patient with 5 attacks on
        # 12 exposed days would otherwise show an odds ratio of 9 (sparse-data bias away from 1)
        b_main = b_main * prec / (prec + 1 / WEAK_SD ** 2)
        prec = prec + 1 / WEAK_SD ** 2
        side_ok = usable[:, Km:] & (info > 1e-9)
        info_w = info / to_c[:, Km:] ** 2 + 1 / WEAK_SD ** 2  # precision in cohort units, weak prior kept
        b_side = np.where(side_ok, U / np.where(side_ok, info, 1) * to_c[:, Km:] * (info / to_c[:, Km:] ** 2)
                          / info_w, 0.0)
        s_side = np.where(side_ok, 1 / np.sqrt(info_w), 1.0)
        lik_b = np.concatenate([b_main, b_side], axis=1)
        lik_se = np.concatenate([1 / np.sqrt(prec), s_side], axis=1)
        use = usable & np.concatenate([informative, side_ok], axis=1)
        if learn.any():
            e_pi0, e_mu, e_tau = _spike_slab_by_columns(lik_b, lik_se, use & ok[:, None], 200 if r == 0 else 60,
                                                        None if r == 0 else (e_pi0, e_mu, e_tau), map_fn)
            pi0, mu, tau = (np.where(learn, e_pi0, g_pi0), np.where(learn, e_mu, g_mu),
                            np.where(learn, e_tau, g_tau))
        bb, ss = np.where(use, lik_b, 0.0), np.where(use, lik_se, 1.0)
        loo = _loo_prior(bb, ss, use & ok[:, None] & learn[None], pi0, mu, tau)
        p1, m1, _, ppos, pneg = _posterior(bb, ss, *loo)
        p1 = np.where(use, p1, 1 - pi0[None])
        if r < rounds - 1:
            # every patient's prior for the next round: the normal with the mean and variance of its spike-and-
            # slab mixture weighted by p1, ``p1 N(mu, tau^2) + (1 - p1) N(0, SPIKE_TAU^2)``. (EMVS's expected
            # precision ``p1/tau^2 + (1-p1)/SPIKE_TAU^2`` is the spike's unless p1 is ~1: a probably real effect,
            # p1 = 0.7, was held within +-0.09, so it left the adjustment set -- its null twin, sleep_hours for
            # sleep_short, took part of its effect -- and its own estimate was extrapolated from near 0.)
            pk = p1[:, :Km]
            centre_c = pk * mu[:Km]
            lam_c = 1 / (pk * tau[:Km] ** 2 + pk * (1 - pk) * mu[:Km] ** 2 + (1 - pk) * SPIKE_TAU ** 2)
        if progress:
            progress(r + 1, rounds)
    lfsr = np.where(use, 1 - np.maximum(ppos, pneg), np.nan)
    direction = np.where(ppos >= pneg, 1, -1)
    post_mean = np.where(use, p1 * m1, 0.0)
    counts = {k: np.concatenate([c.counts[k] for c in chunks]) for k in chunks[0].counts}
    table = pd.DataFrame({"column": cols, "pi0": pi0, "mu": mu, "tau": tau, "scale": scale, "n_patients": n_inf})
    return _Fit(list(pids), lik_b, lik_se, use, lfsr, direction, post_mean, sd_all,
                np.concatenate([c.mean for c in chunks]), beta[:, -1], beta[:, Km:Km + G], counts,
                CohortPrior(table))


# ----------------------------------------------------------------------------------------- the estimator

#: a fitted TriggerModel's attributes: the same for every patient of a cohort fit, and one row per patient
_SHARED = ("columns_", "miss_groups_", "prior_")
_PER_PATIENT = ("mean_", "coef_", "clip_", "miss_coef_", "intercept_")


def _fitted_state(fit: _Fit, design: _Design) -> dict:
    """Every patient's fitted model at once (per natural unit): the :data:`_SHARED` attributes, and the
    :data:`_PER_PATIENT` ones as arrays with a row per patient (:meth:`TriggerModel._restore`)."""
    Km = len(design.main)
    scale = fit.prior.table["scale"].to_numpy()[None, :Km]
    coef = np.where(fit.usable[:, :Km] | np.isfinite(fit.post_mean[:, :Km]), fit.post_mean[:, :Km] / scale, 0.0)
    coef = np.where(fit.sd[:, :Km] > 0, coef, 0.0)
    # deviations are clipped as in the fit (continuous factors at _WINSOR within-patient SDs)
    clip = np.where(design.is_bool[None, :Km], np.inf, _WINSOR * fit.sd[:, :Km])
    return {"columns_": list(design.main), "miss_groups_": list(design.miss_groups().values()),
            "prior_": fit.prior, "mean_": fit.mean[:, :Km], "coef_": coef, "clip_": clip,
            "miss_coef_": fit.miss_coef, "intercept_": fit.intercept}


class TriggerModel(BaseEstimator):
    """One patient's trigger model (scikit-learn conventions).

    ``fit(X, y, factors=meta)``: X holds the patient's at-risk panel rows (``"<factor>@<lag>"`` columns), y the
    0/1 onsets, ``factors`` the panel's ``attrs["factors"]``. Alone, a patient is fitted under ``prior`` (a
    :class:`CohortPrior`, e.g. from the last cohort run) or the default prior; :func:`analyse` fits a whole
    cohort at once with the pooled prior and returns fitted models.
    """

    def __init__(self, prior: CohortPrior | None = None, fdr: float = 0.10):
        self.prior = prior
        self.fdr = fdr

    def fit(self, X: pd.DataFrame, y, factors: pd.DataFrame | None = None) -> TriggerModel:
        meta = factors if factors is not None else X.attrs.get("factors")
        if meta is None:
            raise ModelError("TriggerModel.fit needs the factor metadata (factors=panel.attrs['factors'])")
        rows = X.copy()
        rows["onset"] = np.asarray(y, dtype=float)
        if not np.isin(rows["onset"].unique(), (0.0, 1.0)).all():
            raise ModelError("y must be 0/1 attack onsets")
        rows["patient_id"] = "patient"
        rows.attrs["factors"] = meta
        design = _Design.from_panel(rows)
        fit = _fit_cohort(rows, design, self.prior, {"patient": True}, rounds=2)
        n = len(rows)
        data = {"patient": {"diary_days": n, "at_risk_days": n, "attacks": int(rows["onset"].sum())}}
        summary = _verdicts(fit, design, {"patient": "ok"}, data, self.fdr, 0.8, 1.25, 0, 0)["patient"]
        self._restore(_fitted_state(fit, design), 0, summary)
        return self

    def _restore(self, state: dict, i: int, summary: pd.DataFrame) -> TriggerModel:
        """Patient ``i`` of ``state`` (:func:`_fitted_state` of a cohort fit, or the model store's copy)."""
        for name in _SHARED:
            setattr(self, name, state[name])
        for name in _PER_PATIENT:
            setattr(self, name, state[name][i])
        self.intercept_ = float(self.intercept_)
        self.summary_ = summary
        return self

    @property
    def summary(self) -> pd.DataFrame:
        """One row per factor and lag: the triggers.json ``factors`` entries plus p_value, unexposed days, ...."""
        check_is_fitted(self, "coef_")
        return self.summary_

    def _values(self, X) -> np.ndarray:
        """X's values in ``columns_`` order: a DataFrame by column name, an array as it is."""
        if isinstance(X, pd.DataFrame):
            return X.reindex(columns=self.columns_).to_numpy(dtype=float)
        x = np.asarray(X, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.columns_):
            raise ModelError(f"expected rows of {len(self.columns_)} values (columns_), got shape {x.shape}")
        return x

    def _eta(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        x = self._values(X)
        return with_missing(self.intercept_ + self._dev(x) @ self.coef_, x, self.miss_groups_, self.miss_coef_)

    def predict_proba(self, X) -> np.ndarray:
        """Attack-onset probability for each row (a day's factor values; a DataFrame, or an array in
        ``columns_`` order): array (n, 2) of [no onset, onset]."""
        p = expit(self._eta(X))
        return np.column_stack([1 - p, p])

    def contributions(self, X):
        """Each factor's push on the log odds of each row, relative to the patient's usual day (the drivers):
        a DataFrame for a DataFrame, an array (rows x ``columns_``) for an array."""
        check_is_fitted(self, "coef_")
        c = self._dev(self._values(X)) * self.coef_
        return pd.DataFrame(c, columns=self.columns_, index=X.index) if isinstance(X, pd.DataFrame) else c

    def _dev(self, x: np.ndarray) -> np.ndarray:
        return deviation(x, self.mean_, self.clip_)


def deviation(x: np.ndarray, mean: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Deviation of each value of ``x`` from the patient's usual (0 when unknown), clipped as in the fit
    (``mean``, ``clip``: one patient's, or a row of them per row of ``x``)."""
    return np.where(np.isfinite(x), np.clip(x - mean, -clip, clip), 0.0)


def with_missing(eta: np.ndarray, x: np.ndarray, miss_groups: list, miss_coef: np.ndarray) -> np.ndarray:
    """``eta`` (the log odds of each row of ``x`` from its values) plus each missing-indicator group's
    coefficient on the rows where all of the group's columns are missing (``miss_coef``: one per group, or a
    row of them per row of ``x``)."""
    miss = ~np.isfinite(x)
    coef = np.asarray(miss_coef, dtype=float)
    for g, ix in enumerate(miss_groups):
        eta = eta + coef[..., g] * miss[:, ix].all(1)
    return eta


# ---------------------------------------------------------------------------------------- the cohort

@dataclass
class PatientAnalysis:
    """What the models say about one patient (see docs/internals.md). ``estimator`` predicts next-day risk."""

    status: str  # ok | insufficient_data
    data: dict
    summary: pd.DataFrame
    model: dict
    estimator: TriggerModel | None = field(default=None, repr=False)


class ModelStore:
    """Fitted models under ``models_dir``, one cohort run at a time:

    - ``index.joblib``: model version, the cohort prior and its id, and per patient the fingerprint of the
      panel rows the model was fitted on (small: read to decide whether anything changed), and the name of
      the current delta file, if any;
    - ``analyses.joblib``: every patient's :class:`PatientAnalysis` (summary, data block, fitted estimator)
      of the last full run;
    - ``analyses-delta-<token>.joblib``: the patients refitted since then under the same prior (the daemon's
      incremental cycles). A cycle that changes 1 % of the patients rewrites this small file, not the whole
      store; when it holds more than a quarter of the patients it is folded into ``analyses.joblib``.

    One file per run, not one per patient: 10,000 small files cost more to write and read than the fit.
    """

    INDEX, ANALYSES, DELTA = "index.joblib", "analyses.joblib", "analyses-delta-{}.joblib"
    VALIDATION = "validation.joblib"
    #: the cohort priors of earlier runs by the last day of the data they were learned from, for back-tests
    PRIORS = "priors.joblib"
    #: how many earlier priors are kept (a few kB each: a year and more of nightly runs)
    PRIORS_KEPT = 400
    #: fold the delta into the base file when it holds more than this share of the patients
    COMPACT_SHARE = 0.25

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._pending: tuple[threading.Thread, dict] | None = None
        self._analyses: dict | None = None
        self._delta: dict | None = None
        self._priors: dict[str, CohortPrior] | None = None

    def load_index(self) -> dict | None:
        rec = self._read(self.root / self.INDEX)
        return rec if rec and rec.get("version") == MODEL_VERSION else None

    def load_prior(self) -> CohortPrior | None:
        idx = self.load_index()
        return idx["prior"] if idx else None

    def prior_through(self, day) -> CohortPrior | None:
        """The newest stored cohort prior learned from no data after ``day`` (a date or ``YYYY-MM-DD``): the
        current run's, else one kept from an earlier run (:attr:`PRIORS`); None when every stored prior saw
        later days. A run that analyses some patients as of ``day`` must not borrow a prior that saw the days
        after it: ``analyze --as-of`` promises that no later data is used (cli.md). A store written before
        the horizon was recorded knows only when its prior was saved, which no day of its data can follow."""
        day = str(day)
        idx = self.load_index()
        if idx is not None and (idx.get("through") or idx.get("saved_at", "9999")[:10]) <= day:
            return idx["prior"]
        kept = self._kept_priors()
        usable = [k for k in kept if k <= day]
        return kept[max(usable)] if usable else None

    def _kept_priors(self) -> dict[str, CohortPrior]:
        """:attr:`PRIORS` of this model version, read once per store object (~0.1 s for 400)."""
        if self._priors is None:
            kept = self._read(self.root / self.PRIORS) or {}
            self._priors = dict(kept.get("priors", {})) if kept.get("version") == MODEL_VERSION else {}
        return self._priors

    def summary(self) -> dict:
        """What the store holds, for ``trigger-watch status``: the model version, how many patients' fits,
        when they were saved, the last day the cohort prior was learned from (None: unknown, a store written
        before it was recorded), and the earlier priors kept for back-tests (how many, first and last day)."""
        idx = self.load_index()
        kept = sorted(self._kept_priors())
        return {"version": MODEL_VERSION, "patients": len(idx["fingerprints"]) if idx else 0,
                "saved_at": idx.get("saved_at") if idx else None, "prior_through": idx.get("through") if idx else None,
                "kept_priors": len(kept), "kept_first": kept[0] if kept else None,
                "kept_last": kept[-1] if kept else None}

    def keep_prior(self, prior: CohortPrior, through: str | None) -> None:
        """Keep ``prior``, learned from data up to the day ``through``, for later back-tests
        (:meth:`prior_through`); the oldest go beyond :attr:`PRIORS_KEPT`."""
        if not through:
            return
        self._priors = None  # another process may have kept one since
        priors = dict(self._kept_priors())
        priors[str(through)] = prior
        for old in sorted(priors)[:-self.PRIORS_KEPT]:
            del priors[old]
        self._write(self.root / self.PRIORS, {"version": MODEL_VERSION, "priors": priors})
        self._priors = priors

    def is_current(self, patient_id: str, fingerprint: str, prior_id: str | None = None) -> bool:
        """The stored model of this patient was fitted on exactly these data (and this prior, if given)."""
        idx = self.load_index()
        return (idx is not None and idx["fingerprints"].get(patient_id) == fingerprint
                and (prior_id is None or idx["prior_id"] == prior_id))

    def _load_delta(self, idx: dict | None) -> dict:
        name = (idx or {}).get("delta")
        return dict(_unpack(self._read(self.root / name))) if name else {}

    def load(self, patient_id: str) -> PatientAnalysis | None:
        if self._delta is None:
            self._delta = self._load_delta(self.load_index())
        if patient_id in self._delta:
            return self._delta[patient_id]
        if self._analyses is None:
            self._analyses = _unpack(self._read(self.root / self.ANALYSES))
        return self._analyses.get(patient_id)

    def save_run_later(self, *args, after: threading.Event | None = None, **kwargs) -> None:
        """:meth:`save_run` on a background thread (the pipeline writes the reports meanwhile), once ``after``
        is set if given; :meth:`wait` finishes it (setting ``after``) and raises what it raised. Each file is
        still replaced atomically, the index last."""
        self.wait()
        box: dict = {"after": after}

        def run() -> None:
            try:
                if after is not None:
                    after.wait()
                self.save_run(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 -- handed to wait()
                box["error"] = exc

        self._pending = (threading.Thread(target=run, name="model-store", daemon=False), box)
        self._pending[0].start()

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            if pending[1]["after"] is not None:
                pending[1]["after"].set()
            pending[0].join()
            if "error" in pending[1]:
                raise pending[1]["error"]

    def save_run(self, prior: CohortPrior, fingerprints: dict[str, str], results: dict, *,
                 merge: bool = False, summaries: pd.DataFrame | None = None, through: str | None = None) -> None:
        """Keep this run. ``merge``: a run over some patients under the stored prior (the daemon refitting the
        changed ones) adds to the stored run instead of replacing it. ``summaries``: every result's summary
        in one frame, in the order of ``results``, when the caller has it (saves a copy of them all).
        ``through``: the last day of the data the run saw (``YYYY-MM-DD``); a run that learned its prior keeps
        it as the prior learned through that day (:meth:`prior_through`)."""
        idx = self.load_index() if merge else None
        delta_name = None
        merged = idx is not None and idx["prior_id"] == prior.id
        if merge:  # the prior was given: its horizon is not this run's (unknown: its saving day stands in)
            through = idx.get("through") if merged else None
        else:
            self.keep_prior(prior, through)
        if merged:
            fingerprints = {**idx["fingerprints"], **fingerprints}
            delta = {**self._load_delta(idx), **results}
            if len(delta) > self.COMPACT_SHARE * len(fingerprints):
                base = _unpack(self._read(self.root / self.ANALYSES))
                self._write(self.root / self.ANALYSES, _pack({**base, **delta}))
                self._analyses, self._delta = None, {}
            else:
                delta_name = self.DELTA.format(secrets.token_hex(4))
                self._write(self.root / delta_name, _pack(delta))
                self._delta = delta
        else:
            self._write(self.root / self.ANALYSES, _pack(results, summaries))
            self._analyses, self._delta = dict(results), {}
        self._write(self.root / self.INDEX, {"version": MODEL_VERSION, "prior": prior, "prior_id": prior.id,
                                             "through": through,
                                             "fingerprints": dict(fingerprints), "delta": delta_name,
                                             "saved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                             # a merge keeps the prior, so also its forgotten patients
                                             "forgotten": bool(idx is not None and idx["prior_id"] == prior.id
                                                               and idx.get("forgotten"))})
        for old in self.root.glob(self.DELTA.format("*")):  # deltas the index no longer names
            if old.name != delta_name:
                old.unlink(missing_ok=True)

    def load_validation(self, version: str) -> dict:
        """The stored forecast validation (``analysis.validation_for``) when made by ``version``, else {}."""
        rec = self._read(self.root / self.VALIDATION) or {}
        return rec if rec.get("version") == version else {}

    def save_validation(self, record: dict) -> None:
        self._write(self.root / self.VALIDATION, record)

    def forget(self, patient_id: str) -> int:
        """Remove a patient's fitted analysis, fingerprint and validation from the store (``diary.forget``).
        Each file is rewritten atomically, the index last, and only when it holds the patient; the other
        patients' entries are kept as they are. The index then says the cohort prior was estimated with a
        patient since forgotten (``forgotten``): a full run estimates it again instead of reusing the fits.
        The earlier runs' priors (:attr:`PRIORS`) are removed. Returns how many files were rewritten or
        removed."""
        self.wait()
        for stale in self.root.glob("*.joblib.tmp"):  # an interrupted write's copy
            stale.unlink(missing_ok=True)
        changed = 0
        for path in [self.root / self.ANALYSES, *sorted(self.root.glob(self.DELTA.format("*")))]:
            kept = _without(self._read(path), patient_id)
            if kept is not None:
                self._write(path, kept)
                changed += 1
        rec = self._read(self.root / self.VALIDATION)
        if isinstance(rec, dict) and patient_id in rec.get("patients", {}):
            patients = {p: v for p, v in rec["patients"].items() if p != patient_id}
            self._write(self.root / self.VALIDATION, {**rec, "patients": patients})
            changed += 1
        idx = self._read(self.root / self.INDEX)
        if isinstance(idx, dict) and patient_id in idx.get("fingerprints", {}):
            fps = {p: f for p, f in idx["fingerprints"].items() if p != patient_id}
            self._write(self.root / self.INDEX, {**idx, "fingerprints": fps, "forgotten": True})
            changed += 1
            # the earlier runs' priors pooled them too: a back-test learns its prior again, without them
            if (self.root / self.PRIORS).exists():
                (self.root / self.PRIORS).unlink()
                changed += 1
        self._analyses = self._delta = self._priors = None
        return changed

    #: The first line of every file the store writes; a pickle (protocol 5) follows. joblib's pickler, which
    #: wrote them before, is Python code: for the 10,000-patient store (140 MB) it took ~1.3 s of the
    #: daemon's time at half speed to write, where the C pickler takes a tenth of that (and reads it in a
    #: ninth of joblib's time). Files without the line (joblib's) are still read, by joblib.
    HEADER = b"trigger-watch model store: pickle protocol 5\n"

    @classmethod
    def _read(cls, p: Path):
        try:
            with open(p, "rb") as fh:
                if fh.read(len(cls.HEADER)) == cls.HEADER:
                    return pickle.load(fh)
            return joblib.load(p)  # written before the header
        except Exception:  # noqa: BLE001 -- a missing, damaged or foreign file is refitted, never fatal
            return None

    def _write(self, p: Path, obj) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(self.HEADER)
            pickle.dump(obj, fh, protocol=5)
        tmp.replace(p)  # atomic: a reader never sees half a file


def _pack(results: dict[str, PatientAnalysis], body: pd.DataFrame | None = None) -> dict:
    """A cohort's analyses as a few columnar pieces: every summary in one frame, the fitted models' state
    as :func:`_fitted_state` has it (arrays with a row per fitted patient). Pickling 10,000 small DataFrames
    and estimators instead costs seconds and, while it runs, about as much memory again as the objects."""
    pids = list(results)
    items = [results[p] for p in pids]
    fitted = [i for i, a in enumerate(items) if a.estimator is not None and hasattr(a.estimator, "coef_")]
    models_ = [items[i].estimator for i in fitted]
    if models_ and any(m.columns_ != models_[0].columns_ for m in models_):
        return {"format": 1, "results": dict(results)}  # not one design: keep the objects
    lengths = np.array([len(a.summary) for a in items], dtype=np.int64)
    state = None
    if models_:
        state = {name: getattr(models_[0], name) for name in _SHARED} | {
            name: np.stack([getattr(m, name) for m in models_]) for name in _PER_PATIENT}
    return {
        "format": 3, "pids": pids, "status": [a.status for a in items], "data": [a.data for a in items],
        "model": [a.model for a in items], "lengths": lengths,
        # ``body``: the summaries already in one frame, in this order (the fit's); else one copy of them all
        "summary": (body if body is not None and len(body) == int(lengths.sum())
                    else pd.concat([a.summary for a in items], ignore_index=True) if items else None),
        "fitted": np.array(fitted, dtype=np.int64), "fdr": [m.fdr for m in models_], "state": state,
    }


class _Packed(Mapping):
    """The analyses of a store written by :func:`_pack`, rebuilt one patient at a time as they are asked for."""

    def __init__(self, packed: dict):
        self.p = packed
        self.where = {pid: i for i, pid in enumerate(packed["pids"])}
        self.start = np.concatenate([[0], np.cumsum(packed["lengths"])])
        self.row = {int(i): k for k, i in enumerate(packed["fitted"])}

    def __getitem__(self, pid: str) -> PatientAnalysis:
        i, p = self.where[pid], self.p
        summary = summary_rows(p["summary"], self.start[i], self.start[i + 1])
        est = None
        if i in self.row:
            k, state = self.row[i], p["state"]
            est = TriggerModel(prior=state["prior_"], fdr=p["fdr"][k])._restore(state, k, summary)
        return PatientAnalysis(p["status"][i], p["data"][i], summary, p["model"][i], est)

    def __iter__(self):
        return iter(self.p["pids"])

    def __len__(self) -> int:
        return len(self.p["pids"])


def _without(obj, patient_id: str) -> dict | None:
    """A stored analyses file (what :meth:`ModelStore._read` returned) without one patient; None when it
    does not hold them. :func:`_pack`'s pieces are cut, not rebuilt: the others' values stay as stored."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == 1:
        obj = {**obj, "results": _without(obj["results"], patient_id)}
        return obj if obj["results"] is not None else None
    if "format" not in obj:  # the objects by patient id
        return {p: a for p, a in obj.items() if p != patient_id} if patient_id in obj else None
    if obj["format"] != 3 or patient_id not in obj["pids"]:
        return None
    i = [str(p) for p in obj["pids"]].index(patient_id)
    start = np.concatenate([[0], np.cumsum(obj["lengths"])])
    summary = obj["summary"]
    if summary is not None:
        summary = summary.take(np.r_[0:start[i], start[i + 1]:len(summary)]).reset_index(drop=True)
    fitted = np.asarray(obj["fitted"], dtype=np.int64)
    k = np.flatnonzero(fitted == i)  # the patient's row of the fitted state, if fitted
    state = obj["state"]
    if state is not None and k.size:
        state = {name: np.delete(v, k, axis=0) if name in _PER_PATIENT else v for name, v in state.items()}
    fdr = [f for j, f in enumerate(obj["fdr"]) if j not in k]
    fitted = np.delete(fitted, k)
    fitted = fitted - (fitted > i)

    def drop(items: list) -> list:
        return list(items[:i]) + list(items[i + 1:])

    return {**obj, "pids": drop(obj["pids"]), "status": drop(obj["status"]), "data": drop(obj["data"]),
            "model": drop(obj["model"]), "lengths": np.delete(obj["lengths"], i), "summary": summary,
            "fitted": fitted, "fdr": fdr, "state": state if len(fitted) else None}


def _unpack(obj) -> Mapping:
    """What :meth:`ModelStore._read` returned, as ``{patient_id: PatientAnalysis}`` (empty when missing)."""
    if not obj:
        return {}
    if not isinstance(obj, dict):
        return {}
    if "format" in obj:  # 3: _pack's pieces; 1: the objects themselves; any other: refitted
        return _Packed(obj) if obj["format"] == 3 else obj["results"] if obj["format"] == 1 else {}
    return obj


def fingerprints(panel: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """A hash per patient of the panel rows a fit uses (any change of a value, a day or a column changes it)."""
    # the columns side by side as they are: panel[names] would copy them (labels do not enter the hash)
    names = ["patient_id", "date", "at_risk", "onset"] + columns
    h = pd.util.hash_pandas_object(pd.DataFrame(dict(enumerate(panel[c] for c in names)), copy=False),
                                   index=False)
    hv = h.to_numpy()
    pid = panel["patient_id"].to_numpy()
    if not len(pid):  # patients enrolled with no records yet
        return {}
    bounds = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1], True])
    head = hashlib.sha256(("|".join(columns) + MODEL_VERSION).encode()).digest()
    return {str(pid[a]): hashlib.sha256(head + hv[a:b].tobytes()).hexdigest()[:20]
            for a, b in pairwise(bounds)}


def analyse(panel: pd.DataFrame, config, *, prior: CohortPrior | None = None,
            progress: Callable[[int, int], None] | None = None,
            store: ModelStore | bool | None = None, fingerprint: bool = True) -> dict[str, PatientAnalysis]:
    """Fit every patient of ``panel`` (the panel of docs/internals.md) and make the cohort's calls.

    ``config``: reads ``analysis.*`` and ``storage.models_dir``. ``prior``: a :class:`CohortPrior` to use
    instead of estimating one (a clinic of a few patients can borrow a big cohort's prior); columns that fewer
    than 30 patients of this run inform use it (or the default) anyway. ``store``: a :class:`ModelStore`,
    ``None`` for the one under ``config.models_dir``, ``False`` for none. With a store, a run whose patients'
    data are unchanged (same fingerprints) and whose prior is unchanged reuses the stored fits.
    ``fingerprint=False`` (only with ``store=False``; :func:`fit_prepared` refuses a store without
    fingerprints): the models' ``fingerprint`` is None, not a hash of the data (a refit that is used and
    thrown away, as the validation's are, does not need one: ~5 % of its CPU).

    The same as :func:`fit_prepared` of one :func:`prepare` (the pipeline prepares blocks of patients one
    at a time, so that a national cohort's panel never has to be in memory at once).
    """
    if panel.empty:
        return {}
    return fit_prepared([prepare(panel, config, fingerprint=fingerprint)], config, prior=prior, progress=progress,
                        store=store)


@dataclass
class Prepared:
    """A block of patients made ready for the cohort fit by :func:`prepare`."""

    design: _Design
    data: dict[str, dict]
    status: dict[str, str]
    fingerprints: dict[str, str | None]
    chunks: list[_Chunk]


def prepare(panel: pd.DataFrame, config, *, spill_dir: Path | None = None, fingerprint: bool = True) -> Prepared:
    """What the fit needs of the patients of ``panel``: data blocks, status, fingerprints (None each with
    ``fingerprint=False``) and the design blocks of their at-risk days (moved to files under ``spill_dir``
    when given). Blocks of one cohort must have the same columns (``features.build_panel(...,
    columns=features.cohort_columns(...))``)."""
    min_days, min_att = int(config["analysis.min_at_risk_days"]), int(config["analysis.min_attacks"])
    design = _Design.from_panel(panel)
    panel = _bare(panel)
    if not _sorted(panel):  # features.build_panel's panels are
        panel = panel.sort_values(["patient_id", "date"], kind="stable")
    window = pd.Timedelta(days=int(config["analysis.max_history_days"]))
    if len(panel) and panel["date"].max() - panel["date"].min() >= window:
        last = panel.groupby("patient_id", sort=False)["date"].transform("max")
        panel = panel[panel["date"] > last - window]
    data = _data_blocks(panel)
    status = {p: ("ok" if d["at_risk_days"] >= min_days and d["attacks"] >= min_att else "insufficient_data")
              for p, d in data.items()}
    fps = fingerprints(panel, design.columns) if fingerprint else dict.fromkeys(data)
    at = _fit_rows(panel)
    chunks = _chunks(panel, design, at) if len(at) else []
    if spill_dir is not None:
        for ch in chunks:
            ch.spill(spill_dir)
    return Prepared(design, data, status, fps, chunks)


def _bare(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its attrs (sharing its data): pandas deep-copies a frame's attrs -- a panel's table
    of missing shares -- into every column or row selection taken from it, at more cost than the selection."""
    out = pd.DataFrame(frame, copy=False)
    out.attrs = {}
    return out


def _fit_rows(panel: pd.DataFrame) -> np.ndarray:
    """Positions of the rows a fit uses: at-risk days with a known onset, of patients with two or more."""
    keep = panel["at_risk"].astype(bool).to_numpy() & panel["onset"].notna().to_numpy()
    codes, ids = pd.factorize(panel["patient_id"])
    keep &= codes >= 0
    rows = np.flatnonzero(keep)
    return rows[np.bincount(codes[rows], minlength=len(ids))[codes[rows]] >= 2]


def _sorted(panel: pd.DataFrame) -> bool:
    """Rows sorted by patient, then date (patients compared by their rank among the sorted ids)."""
    pid = pd.factorize(panel["patient_id"], sort=True)[0]
    day = panel["date"].to_numpy()
    same = pid[1:] == pid[:-1]
    return bool((pid[1:] >= pid[:-1]).all() and (day[1:][same] > day[:-1][same]).all())


def fit_prepared(parts: list[Prepared], config, *, prior: CohortPrior | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 store: ModelStore | bool | None = None, map_fn: Callable | None = None,
                 save_after: threading.Event | None = None,
                 fitted: Callable[[CohortPrior], None] | None = None) -> dict[str, PatientAnalysis]:
    """The cohort fit and calls over every patient of ``parts`` (see :func:`analyse`); ``map_fn``: see
    :func:`_fit_chunks`; ``save_after``: the store is written on a background thread once this event is
    set (``store.wait()`` finishes it), not before returning; ``fitted(prior)``: called with the cohort
    prior as soon as the fit has it, before the calls are made (not when the stored fits are reused)."""
    if not parts:
        return {}
    fdr = float(config["analysis.fdr"])
    lo, hi = float(config["analysis.no_association_low"]), float(config["analysis.no_association_high"])
    min_days, min_att = int(config["analysis.min_at_risk_days"]), int(config["analysis.min_attacks"])
    if store is None:
        store = ModelStore(config.models_dir)
    design = parts[0].design
    data = {k: v for part in parts for k, v in part.data.items()}
    status = {k: v for part in parts for k, v in part.status.items()}
    fps = {k: v for part in parts for k, v in part.fingerprints.items()}
    if store and None in fps.values():
        raise ValueError("a model store needs the fingerprints: prepare(..., fingerprint=False) goes with "
                         "store=False")
    cached = _cached(store, data, fps, prior) if store else None
    if cached is not None:
        return cached
    chunks = [ch for part in parts for ch in part.chunks]
    results = Analyses()
    if chunks:
        fit = _fit_chunks(chunks, design, prior, {p: s == "ok" for p, s in status.items()}, progress=progress,
                          map_fn=map_fn)
        if fitted is not None:
            fitted(fit.prior)
        # A summary, model and analysis for every patient: ~60 tracked objects each, which set off full
        # collections of the caller's whole heap again and again while they pile up, and make no cycles
        # (10,000 patients: the slicing alone 1.0 s with the collector on, 0.26 s paused; this step of the
        # nightly cycle 2.3 s -> ~1.5 s).
        with storage.collector_paused():
            summaries = results.summaries = _verdicts(fit, design, status, data, fdr, lo, hi, min_days, min_att)
            fitted_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            n_ok = sum(s == "ok" for s in status.values())
            prior_id = fit.prior.id
            state = _fitted_state(fit, design)
            for i, pid in enumerate(fit.pids):
                est = TriggerModel(prior=fit.prior, fdr=fdr)._restore(state, i, summaries[pid])
                model = {"method": METHOD, "version": MODEL_VERSION, "fingerprint": fps[pid],
                         "model_id": f"{MODEL_VERSION}:{fps[pid]}:{prior_id}", "prior_id": prior_id,
                         "fitted_at": fitted_at, "pooled_over": n_ok}
                results[pid] = PatientAnalysis(status[pid], data[pid], summaries[pid], model, est)
    for pid in data:
        if pid not in results:
            results[pid] = PatientAnalysis(status[pid], data[pid],
                                           _empty_summary(design, data[pid], min_days, min_att),
                                           {"method": METHOD, "version": MODEL_VERSION, "fingerprint": fps[pid]})
    if store and chunks:
        body = summaries.body if list(results) == list(summaries) else None  # nobody without a fit
        through = max(d["last_day"] for d in data.values())  # no fit here saw a later day
        # a run under a given prior keeps that prior: the fit's own table of it covers only this run's columns
        # (a patient without a food the cohort logs), so its id differs, and the run would replace the store
        kept = prior if prior is not None else fit.prior
        if save_after is not None:
            store.save_run_later(kept, fps, results, merge=prior is not None, after=save_after, summaries=body,
                                 through=through)
        else:
            store.save_run(kept, fps, results, merge=prior is not None, summaries=body, through=through)
    return results


def _cached(store: ModelStore, data: dict, fps: dict, prior: CohortPrior | None):
    """Every patient unchanged since the stored run (same patients, same data, same prior): the stored analyses."""
    idx = store.load_index()
    if idx is None or (prior is not None and prior.id != idx["prior_id"]):
        return None
    if any(idx["fingerprints"].get(pid) != fp for pid, fp in fps.items()):
        return None
    if prior is None and (set(idx["fingerprints"]) != set(fps) or idx.get("forgotten")):
        return None  # a full run over another set of patients, or the prior pooled a forgotten one
    out = {pid: store.load(pid) for pid in data}
    return None if any(v is None for v in out.values()) else out


def _data_blocks(panel: pd.DataFrame) -> dict[str, dict]:
    """Per patient (in order of first row): first and last day and the day counts, by counting codes (a
    group-by per count cost several times more)."""
    code, ids = pd.factorize(panel["patient_id"])
    ok = code >= 0
    code = code[ok]
    date = panel["date"].to_numpy()[ok]
    first = np.full(len(ids), np.iinfo(np.int64).max)
    last = np.full(len(ids), np.iinfo(np.int64).min)
    np.minimum.at(first, code, date.view(np.int64))
    np.maximum.at(last, code, date.view(np.int64))
    first, last = first.view(date.dtype), last.view(date.dtype)
    recent = date > last[code] - np.timedelta64(30, "D")
    at = panel["at_risk"].astype(bool).to_numpy()[ok]

    def per_patient(x):
        return np.bincount(code, weights=x, minlength=len(ids)).astype(np.int64).tolist()

    counts = {
        "diary_days": per_patient(panel["diary_kept"].to_numpy()[ok]),
        "missing_days": per_patient(~panel["observed"].astype(bool).to_numpy()[ok]),
        "at_risk_days": per_patient(at),
        "attacks": per_patient(panel["onset"].fillna(0).astype(int).to_numpy()[ok] * at),
        "migraine_days_last_30": per_patient(panel["migraine_day"].astype(bool).to_numpy()[ok] & recent),
        # days whose record says whether there was a headache: an attack, a diary headache yes/no or its
        # intensity (0 with a diary that never says: its days are not known to be headache-free)
        "headache_recorded_days": per_patient((panel["headache_day"].astype(bool).to_numpy()
                                               | panel["intensity"].notna().to_numpy())[ok]),
    }
    days = [pd.Series(d).dt.strftime("%Y-%m-%d").tolist() for d in (first, last)]
    return {str(p): {"first_day": days[0][i], "last_day": days[1][i], **{k: v[i] for k, v in counts.items()}}
            for i, p in enumerate(ids)}


def _labels(meta: pd.DataFrame) -> np.ndarray:
    """The panel's labels already say the lag ("... the day before"; docs/internals.md)."""
    return meta["label"].astype(str).to_numpy()


def _days_needed(bc, sc, lo, hi, diary_days, at_risk, usable, exposed, min_days, attacks, min_att,
                 unexposed=None):
    """Rough extra diary days to settle a factor at its observed effect: 80% power at the 5% level, or an
    interval narrow enough to fall inside the no-association band (whichever comes first). Arrays (P, J).
    A factor too rarely varied to fit: until ~10 days each with and without it; unknown (NaN) when it was
    the same on every day (more days like those settle nothing; it said 0 days). Every wait is counted in
    at-risk days and given in diary days, at the patient's share of days at risk: a patient with a headache
    on most days was told 46 days where 1,640 was the truth (14 of their 499 days were at risk)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.abs(bc)
        f_trig = np.where(a > 0, (sc * (_Z + 0.84) / a) ** 2, np.inf)
        room = min(np.log(hi), -np.log(lo)) - a
        f_null = np.where(room > 0, (sc * _Z / room) ** 2, np.inf)
        f = np.minimum(f_trig, f_null)
        per_day = _diary_days_per_at_risk_day(diary_days, at_risk)[:, None]
        need = np.where(np.isfinite(f), np.maximum(f - 1, 0) * at_risk[:, None] * per_day, np.nan)
        rate = exposed / np.maximum(at_risk, 1)[:, None]
        need_exp = np.where(rate > 0, (10 - exposed) / rate, np.nan)  # until ~10 exposed days
        if unexposed is not None:  # ... and ~10 without
            urate = unexposed / np.maximum(at_risk, 1)[:, None]
            need_exp = np.where(urate > 0, np.maximum(need_exp, (10 - unexposed) / urate), np.nan)
        need = np.where(usable, need, need_exp * per_day)
        need = np.maximum(need, _short_wait(at_risk, attacks, min_days, min_att, diary_days)[:, None])
    return np.where(np.isfinite(need), np.minimum(np.ceil(need), MAX_WAIT_DAYS), np.nan)


def _short_wait(at_risk, attacks, min_days: int, min_att: int, diary_days) -> np.ndarray:
    """Diary days until a patient has ``min_days`` at-risk days and ``min_att`` attacks, at their rates so
    far (at-risk days per diary day, attacks per at-risk day); 0 once they have."""
    wait = np.maximum(min_days - at_risk, 0) + np.maximum(min_att - attacks, 0) * at_risk / np.maximum(attacks, 1)
    return wait * _diary_days_per_at_risk_day(diary_days, at_risk)


def _diary_days_per_at_risk_day(diary_days, at_risk):
    """How many diary days a patient logs per at-risk day (at least 1): what turns a wait counted in at-risk
    days into the diary days a page says."""
    return np.maximum(diary_days / np.maximum(at_risk, 1), 1)


def _answer_chance(bc, sc, p1, m1, sd1, f, lo, hi):
    """The chance that a factor is settled once its information is ``f`` times today's: its estimate then
    called (|b/se| >= ``_Z_CALL``) or its interval inside the no-association band [lo, hi].

    The estimate then, ``(bc + (f - 1) b_new) / f`` with the new days' ``b_new ~ N(beta, sc^2 / (f - 1))``,
    that is ``N(bc / f + (f - 1) / f * beta, (f - 1) sc^2 / f^2)`` given the true ``beta``, averaged over
    the pooled posterior of ``beta`` (the spike at 0 with weight ``1 - p1``, the slab ``N(m1, sd1^2)``): each
    a normal, so both chances are differences of normal CDFs."""
    from scipy.special import ndtr

    g = (f - 1) / f
    se_then = sc / np.sqrt(f)
    band_lo, band_hi = np.log(lo) + _Z * se_then, np.log(hi) - _Z * se_then
    call = _Z_CALL * se_then
    chance = 0.0
    spike, slab = (bc / f, g * sc ** 2 / f), (bc / f + g * m1, g * sc ** 2 / f + (g * sd1) ** 2)
    for weight, (mean, var) in ((1 - p1, spike), (p1, slab)):
        sd = np.sqrt(var)
        band = np.where(band_hi > band_lo, ndtr((band_hi - mean) / sd) - ndtr((band_lo - mean) / sd), 0.0)
        called = ndtr((-call - mean) / sd) + ndtr((mean - call) / sd)
        chance = chance + weight * (band + called)
    return chance


def _days_to_answer(bc, sc, prior: pd.DataFrame, diary_days, rows, lo, hi):
    """Extra diary days (one of ``_ANSWER_DAYS``) after which a factor is more likely settled than not
    (``_answer_chance`` >= ``_ANSWER_CHANCE``), for the ``rows`` mask of (P, J); NaN where not within a year.
    ``prior``: the cohort prior's pi0, mu and tau of each column (J rows, in the order of the arrays).

    ``days_needed`` assumes the observed effect is the true one, and in simulated cohorts only 4-9 % of its
    promises came true: a factor's estimate is mostly noise, which regresses. This one averages over what the
    effect may be (the cohort's pooled posterior), and information grows with diary days. Evaluated at a
    year first: most factors are not settled by then, and only the others are refined."""
    need = np.full(bc.shape, np.nan)
    idx = np.nonzero(rows)
    if not idx[0].size:
        return need
    b, s = bc[idx], sc[idx]
    pi0, mu, tau = (prior[k].to_numpy(dtype=float)[idx[1]] for k in ("pi0", "mu", "tau"))
    p1, m1, sd1, _, _ = _posterior(b, s, pi0, mu, tau)
    days = np.maximum(np.asarray(diary_days, dtype=float)[idx[0]], 1.0)
    likely = _answer_chance(b, s, p1, m1, sd1, 1 + _ANSWER_DAYS[-1] / days, lo, hi) >= _ANSWER_CHANCE
    out = np.full(b.shape, np.nan)
    out[likely] = _ANSWER_DAYS[-1]
    sub = np.nonzero(likely)[0]
    for extra in _ANSWER_DAYS[-2::-1]:  # the fewest days that do it
        if not sub.size:
            break
        chance = _answer_chance(b[sub], s[sub], p1[sub], m1[sub], sd1[sub], 1 + extra / days[sub], lo, hi)
        ok = chance >= _ANSWER_CHANCE
        out[sub[ok]] = extra
        sub = sub[ok]
    need[idx] = out
    return need


def _verdicts(fit: _Fit, design: _Design, status, data, fdr, lo, hi, min_days, min_att) -> dict[str, pd.DataFrame]:
    """Cohort-wide calls (q-values over every possible call) and the per-patient summaries."""
    meta = design.meta.set_index("column").loc[design.columns].reset_index()
    P, J = fit.post_mean.shape
    lag = meta["lag"].to_numpy()
    behaviour = meta["behaviour"].to_numpy()
    symptom = (meta["group"] == "symptom").to_numpy()
    shown = meta["shown"].to_numpy(dtype=bool)
    ok = np.array([status[p] == "ok" for p in fit.pids])[:, None]
    usable = fit.usable
    direction, lfsr, m = fit.direction, fit.lfsr, fit.post_mean
    # Lag-0 behaviour is recorded in the evening of the onset day and is changed by the attack in both
    # directions (drinks skipped in pain: "protective"; coffee or a skipped meal because of the attack:
    # "trigger"), so it is estimated and shown but never called; its lag-1 row carries the answer.
    lag0_behaviour = (behaviour & (lag == 0))[None]
    callable_ = usable & ok & shown[None] & ~lag0_behaviour & ~(symptom[None] & (direction < 0))
    # two families, each with its own FDR: triggers and protective factors; warning signs. Near-certain
    # warning signs in the same ranking would let weak trigger calls ride on them.
    q = np.full((P, J), np.nan)
    for fam in (~symptom[None], symptom[None]):
        sel = callable_ & fam
        q = np.where(sel, q_values(np.where(sel, lfsr, np.nan).ravel()).reshape(P, J), q)
    called = callable_ & (q <= fdr)
    scale = fit.prior.table["scale"].to_numpy()[None]
    bc, sc = fit.lik_b, fit.lik_se
    in_band = usable & ok & (bc - _Z * sc >= np.log(lo)) & (bc + _Z * sc <= np.log(hi))
    verdict = np.zeros((P, J), dtype=np.int8)  # codes of _VERDICTS (0: insufficient_data)
    verdict[in_band] = _VERDICTS.index("no_association")
    verdict[called & (direction > 0) & ~symptom[None]] = _VERDICTS.index("trigger")
    verdict[called & (direction < 0)] = _VERDICTS.index("protective")
    verdict[called & symptom[None]] = _VERDICTS.index("warning_sign")
    b, se = bc / scale, sc / scale  # natural units
    with np.errstate(over="ignore", invalid="ignore"):
        orr = np.where(usable, np.exp(b), np.nan)
        cil = np.where(usable, np.exp(b - _Z * se), np.nan)
        cih = np.where(usable, np.exp(b + _Z * se), np.nan)
        pval = np.where(usable, 2 * norm.sf(np.abs(b / se)), np.nan)
    diary = np.array([data[p]["diary_days"] for p in fit.pids], dtype=float)
    at_risk = np.array([data[p]["at_risk_days"] for p in fit.pids], dtype=float)
    attacks = np.array([data[p]["attacks"] for p in fit.pids], dtype=float)
    cnt = fit.counts
    need = _days_needed(bc, sc, lo, hi, diary, at_risk, usable, cnt["exposed_days"], min_days, attacks, min_att,
                        unexposed=cnt["unexposed_days"])
    # no headache on record (a diary that never says, no attack): logging more of the same settles nothing
    unrecorded = np.array([_no_headache_record(data[p]) for p in fit.pids])[:, None]
    need = np.where((verdict == 0) & ~lag0_behaviour & ~unrecorded, need, np.nan)
    answer = _days_to_answer(bc, sc, fit.prior.lookup(design.columns), diary,
                             (verdict == 0) & ~lag0_behaviour & usable & ~unrecorded, lo, hi)
    # a patient short of min_at_risk_days / min_attacks has no calls until then
    answer = np.maximum(answer, np.ceil(_short_wait(at_risk, attacks, min_days, min_att, diary))[:, None])
    answer = np.where(answer <= _ANSWER_DAYS[-1], answer, np.nan)
    # rank the triggers within each patient: strongest evidence (smallest lfsr) first, then the larger effect
    trig = verdict == _VERDICTS.index("trigger")
    key = np.where(trig, np.nan_to_num(lfsr, nan=1.0) - 1e-9 * np.nan_to_num(m), np.inf)
    rank = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1, kind="stable") + 1.0
    rank = np.where(trig, rank, np.nan)
    kinds = meta["kind"].to_numpy()
    units = np.array([UNITS.get(f, "") for f in meta["factor"]])
    units = np.array([("" if not u else (u if u.startswith("/") else " " + u)) for u in units])
    # a factor never observed has no threshold (its maximum, -inf): no exposure to name
    levels, at = np.unique(np.where(np.isfinite(cnt["threshold"]), cnt["threshold"], np.inf), return_inverse=True)
    # every patient's rows in one frame, in the summary's order (triggers by rank, then by q-value), built
    # from the (P, J) arrays through one gather: a long frame sorted afterwards held three copies at once
    key = np.where(trig, rank, J + 1 + np.nan_to_num(q, nan=2.0))
    key[:, ~shown] = np.inf  # the adjustment-only columns last, and left out
    Js = int(shown.sum())
    cols = np.argsort(key, axis=1, kind="stable")[:, :Js]  # each patient's columns in summary order
    flat = (cols + (np.arange(P) * J)[:, None]).ravel()
    cols = cols.ravel()
    labels = _labels(meta)
    # the exposure: "yes" for a yes/no factor, else ">= <threshold><unit>", each distinct (threshold,
    # column) written once (thresholds are rounded to two digits)
    pairs, pair_of = np.unique(at.reshape(-1)[flat] * J + cols, return_inverse=True)
    expo_txt = ["yes" if kinds[j] == "boolean" else f">= {levels[k]:g}{units[j]}" if levels[k] < np.inf else ""
                for k, j in zip(*np.divmod(pairs, J))]

    def ints(a):
        return a.ravel()[flat].astype(int)

    body = pd.DataFrame({
        "factor": _text_column(meta["factor"].to_numpy(), cols), "label": _text_column(labels, cols),
        "lag_days": lag[cols],
        "verdict": _text_column(_VERDICTS, verdict.ravel()[flat]), "rank": pd.array(rank.ravel()[flat], dtype="Int64"),
        "odds_ratio": orr.ravel()[flat], "ci_low": cil.ravel()[flat], "ci_high": cih.ravel()[flat],
        "q_value": q.ravel()[flat], "exposed_days": ints(cnt["exposed_days"]),
        "attacks_after_exposure": ints(cnt["attacks_after_exposure"]),
        "days_needed": pd.array(need.ravel()[flat], dtype="Int64"), "p_value": pval.ravel()[flat],
        "unexposed_days": ints(cnt["unexposed_days"]),
        "attacks_without_exposure": ints(cnt["attacks_without_exposure"]),
        "exposure": _text_column(expo_txt, pair_of.reshape(-1)),
        "days_to_answer": pd.array(answer.ravel()[flat], dtype="Int64"),
    })
    out = _Summaries()
    out.body = body  # every summary in one frame, in the order of ``out`` (the model store keeps this)
    out.rows = {pid: (i * Js, (i + 1) * Js) for i, pid in enumerate(fit.pids)}
    for pid, (start, stop) in out.rows.items():
        out[pid] = summary_rows(body, start, stop)
    return out


#: The verdicts of the summaries, by their code in :func:`_verdicts`.
_VERDICTS = ("insufficient_data", "no_association", "trigger", "protective", "warning_sign")
#: The dtype a frame gives a column of Python str: pandas 3's Arrow-backed ``str``, object before it.
_TEXT = pd.Series(["text"]).dtype


def _text_column(texts, codes: np.ndarray):
    """``texts[codes]`` as the column a frame makes of those strings (``_TEXT``), each text converted once:
    converting a column of 10,000 patients' rows str by str was a fifth of :func:`_verdicts`."""
    texts = [str(t) for t in texts]
    if _TEXT == object:
        return np.asarray(texts, dtype=object)[codes]
    import pyarrow as pa

    return pd.array(pa.array(texts, type=pa.large_string()).take(pa.array(codes)), dtype=_TEXT)


def summary_rows(frame: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of a frame of several patients' summaries, as one patient's summary (index
    0..n-1): a view (copy on write) relabelled, not the copy ``reset_index`` makes."""
    rows = frame.iloc[start:stop]
    rows.index = pd.RangeIndex(stop - start)
    return rows


class _Summaries(dict):
    """``{patient_id: summary}`` whose summaries are consecutive slices of one frame, ``body``, each patient's
    rows at ``rows[patient_id]`` (a ``(start, stop)`` pair)."""

    body: pd.DataFrame | None = None
    rows: dict[str, tuple[int, int]] | None = None

    def span(self, patient_id: str, summary: pd.DataFrame) -> tuple[int, int] | None:
        """Where ``summary`` is in :attr:`body`, when it is this patient's slice of it (None otherwise)."""
        if self.rows is None or self.get(patient_id) is not summary:
            return None
        return self.rows.get(patient_id)


class Analyses(dict):
    """``{patient_id: PatientAnalysis}`` as :func:`fit_prepared` returns it; ``summaries``: the fitted
    patients' summaries as slices of one frame (:class:`_Summaries`), which lets a caller take many of them
    at once instead of joining them again (None when they were not made so: loaded from the store)."""

    summaries: _Summaries | None = None


def _no_headache_record(d: dict) -> bool:
    """A data block with diary days of which none says whether there was a headache, and no attack: the
    days are not known to be headache-free (reports.no_headache_record reads the same in triggers.json)."""
    return bool(d.get("diary_days")) and d.get("headache_recorded_days") == 0 and not d.get("attacks")


def _empty_summary(design: _Design, d: dict, min_days: int, min_att: int) -> pd.DataFrame:
    """A patient with nothing to fit (fewer than two at-risk days): every factor insufficient_data, waiting
    the diary days that :func:`_short_wait` gives at the patient's rates so far. With no day at risk in
    their diary days (a headache on every day), that rate is the one their days have shown: it reads
    "more than a year" (the cap), where 60 days was said whatever they had logged."""
    m = design.meta[design.meta["shown"]]
    n = len(m)
    wait = _short_wait(d["at_risk_days"], d["attacks"], min_days, min_att, d["diary_days"])
    need = int(min(np.ceil(wait), MAX_WAIT_DAYS)) or min_days
    if _no_headache_record(d):
        need = pd.NA  # logging more of the same settles nothing
    s = pd.DataFrame({
        "factor": m["factor"], "label": _labels(m), "lag_days": m["lag"].astype(int),
        "verdict": "insufficient_data", "rank": pd.array([pd.NA] * n, dtype="Int64"),
        "odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "q_value": np.nan, "exposed_days": 0,
        "attacks_after_exposure": 0, "days_needed": pd.array([need] * n, dtype="Int64"), "p_value": np.nan,
        "unexposed_days": 0, "attacks_without_exposure": 0, "exposure": "",
        "days_to_answer": pd.array([pd.NA] * n, dtype="Int64"),
    })
    return s[SUMMARY_COLUMNS].reset_index(drop=True)
