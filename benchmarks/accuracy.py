"""Accuracy of trigger-watch against the classical per-patient method, on simulated cohorts with planted triggers.

    python benchmarks/accuracy.py [--patients 300] [--seed 20261121] [--days 365 180 90]
                                  [--path pipeline|shortcut|both]

For each diary length it simulates a cohort (trigger_watch.simulate), builds the panel, runs ``models.analyse``
and the classical baseline (one univariate logistic regression per factor and lag over at-risk days, complete
cases, "trigger" when the odds ratio is above 1 at p < 0.05), and prints side by side:

- FDR: share of reported triggers that are not planted (same patient, factor and lag);
- recall of planted triggers, overall and for planted odds ratio >= 2.5 (the OR of the factor's reference
  contrast: exposed vs not, or the plant's ``ref_change`` for a continuous factor);
- warning signs (symptom:*) called triggers; false protective calls (none are planted);
- coverage of the 95% intervals for the planted log odds ratios (per natural unit).

A third row runs the same univariate tests with Benjamini-Hochberg at 10% across the cohort: the classical
method at the error rate trigger-watch promises.

Two ways to build the panel (``--path``):

- ``pipeline`` (the default; what a clinic gets): ``simulate.write_files`` -> ``importing.import_file`` of every
  file (patients, diary, attacks, sleep, weather, treatments) into a temporary SQLite database ->
  ``features.load_inputs`` -> ``features.build_panel`` as of the cohort's last day. Episodes come from the
  24-hour merge rule, baselines from earlier days only, rare tags are dropped, weather is aggregated per local
  day from the imported hourly series.
- ``shortcut``: ``simulate.panel_from_cohort``, a test adapter that builds the panel straight from the
  simulator's frames.

Planted triggers are matched by patient, factor id and lag. A planted trigger whose column is not in the panel,
or whose patient is not, counts as missed (the number is printed as ``absent``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trigger_watch import config as tw_config
from trigger_watch import features, importing, models, simulate, storage

#: import order: patients first (the other kinds need them), as the CLI would
IMPORT_KINDS = ("patients", "diary", "attacks", "sleep", "weather", "treatments")


def baseline(panel: pd.DataFrame) -> pd.DataFrame:
    """Univariate logistic regression per patient, factor and lag (complete cases over at-risk days); the
    time of year (``features.SEASON``) is not a factor."""
    meta = panel.attrs["factors"]
    meta = meta[meta["group"] != "season"]
    cols = meta["column"].tolist()
    at = panel[panel["at_risk"]].sort_values(["patient_id", "date"])
    pids, starts = np.unique(at["patient_id"].to_numpy(), return_index=True)
    ends = np.append(starts[1:], len(at))
    V = at[cols].to_numpy(float)
    Y = at["onset"].to_numpy(float)
    T = int((ends - starts).max())
    P, J = len(pids), len(cols)
    X = np.full((P, T, J), np.nan)
    y = np.zeros((P, T))
    for k, (a, e) in enumerate(zip(starts, ends)):
        X[k, : e - a] = V[a:e]
        y[k, : e - a] = Y[a:e]
    w = np.isfinite(X).astype(float)
    x = np.nan_to_num(X)
    yy = np.broadcast_to(y[..., None], X.shape)
    # standardise for stable Newton steps, then report per natural unit
    n = np.maximum(w.sum(1), 1)
    m = (x * w).sum(1) / n
    sd = np.sqrt(((x - m[:, None]) ** 2 * w).sum(1) / n)
    ok = (sd > 0) & (w.sum(1) >= 20) & ((yy * w).sum(1) >= 2)
    z = np.where(w > 0, (x - m[:, None]) / np.where(sd > 0, sd, 1)[:, None], 0.0)
    a = np.zeros((P, J))
    b = np.zeros((P, J))
    for _ in range(25):
        p = expit(a[:, None] + b[:, None] * z)
        r = w * (yy - p)
        h = w * p * (1 - p)
        g = np.stack([r.sum(1), (r * z).sum(1)], -1)
        haa, hab, hbb = h.sum(1) + 1e-9, (h * z).sum(1), (h * z * z).sum(1) + 1e-9
        det = haa * hbb - hab ** 2
        da = (hbb * g[..., 0] - hab * g[..., 1]) / det
        db = (haa * g[..., 1] - hab * g[..., 0]) / det
        a += np.clip(da, -3, 3)
        b += np.clip(db, -3, 3)
    p = expit(a[:, None] + b[:, None] * z)
    h = w * p * (1 - p)
    haa, hab, hbb = h.sum(1), (h * z).sum(1), (h * z * z).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(haa / (haa * hbb - hab ** 2))
        bn, sn = b / sd, se / sd
        pval = 2 * norm.sf(np.abs(b / se))
    ok &= np.isfinite(pval) & (np.abs(b) < 20)
    return pd.DataFrame({
        "patient_id": np.repeat(pids, J), "factor": np.tile(meta["factor"].to_numpy(), P),
        "lag_days": np.tile(meta["lag"].to_numpy(), P), "log_or": bn.ravel(), "se": sn.ravel(),
        "p_value": pval.ravel(), "ok": ok.ravel(),
        "verdict": np.where(ok & (pval < 0.05), np.where(b > 0, "trigger", "protective"), "none").ravel(),
    })


def baseline_bh(base: pd.DataFrame, fdr: float = 0.10) -> pd.DataFrame:
    """The same univariate tests with Benjamini-Hochberg at ``fdr`` across the whole cohort (a fairer classical
    competitor at a matched error rate)."""
    out = base.copy()
    p = np.where(out["ok"], out["p_value"], np.nan)
    ok = np.isfinite(p)
    order = np.argsort(p[ok])
    m = ok.sum()
    passed = p[ok][order] <= fdr * np.arange(1, m + 1) / m
    k = np.flatnonzero(passed).max() + 1 if passed.any() else 0
    reject = np.zeros(len(out), dtype=bool)
    reject[np.flatnonzero(ok)[order[:k]]] = True
    out["verdict"] = np.where(reject, np.where(out["log_or"] > 0, "trigger", "protective"), "none")
    return out


def score(calls: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """calls: patient_id, factor, lag_days, verdict, log_or, se (natural unit)."""
    t = truth.rename(columns={"lag": "lag_days"})
    key = ["patient_id", "factor", "lag_days"]
    m = calls.merge(t, on=key, how="left")
    m["planted"] = m["log_odds_ratio"].notna()
    trig = m[m["verdict"] == "trigger"]
    # every planted trigger, called or not: one whose column (or patient) is not in the panel is missed
    pl = t.merge(calls, on=key, how="left", indicator=True)
    absent = int((pl["_merge"] == "left_only").sum())
    pl["verdict"] = pl["verdict"].fillna("absent")
    strong = pl[pl["odds_ratio_ref"] >= 2.5]
    cov = pl[np.isfinite(pl["log_or"]) & np.isfinite(pl["se"])]
    inside = (cov["log_or"] - 1.959964 * cov["se"] <= cov["log_odds_ratio"]) & (
        cov["log_odds_ratio"] <= cov["log_or"] + 1.959964 * cov["se"])
    return {
        "triggers": len(trig),
        "fdr": (~trig["planted"]).mean() if len(trig) else float("nan"),
        "recall": (pl["verdict"] == "trigger").mean(),
        "recall_or2.5": (strong["verdict"] == "trigger").mean(),
        "symptom_triggers": int((trig["factor"].str.startswith("symptom:")).sum()),
        "false_protective": int((m["verdict"] == "protective").sum()),
        "coverage": inside.mean() if len(cov) else float("nan"),
        "covered_n": len(cov), "planted": len(pl), "absent": absent,
        "false_by_factor": trig[~trig["planted"]].groupby(["factor", "lag_days"]).size().to_dict(),
    }


def ours(res: dict, scale_unused=None) -> pd.DataFrame:
    rows = []
    for pid, a in res.items():
        s = a.summary
        lo, hi = np.log(s["ci_low"].to_numpy(float)), np.log(s["ci_high"].to_numpy(float))
        rows.append(pd.DataFrame({"patient_id": pid, "factor": s["factor"], "lag_days": s["lag_days"],
                                  "verdict": s["verdict"], "log_or": (lo + hi) / 2,
                                  "se": (hi - lo) / (2 * 1.959964)}))
    return pd.concat(rows, ignore_index=True)


def simulated(n_patients: int, days: int, seed: int) -> simulate.Cohort:
    return simulate.simulate_cohort(n_patients, days, seed)


def shortcut_panel(cohort: simulate.Cohort) -> pd.DataFrame:
    """The test adapter's panel, straight from the simulator's frames."""
    return simulate.panel_from_cohort(cohort)


def pipeline_panel(cohort: simulate.Cohort) -> tuple[pd.DataFrame, dict]:
    """The product's panel: write the import files, import them into a fresh SQLite database (a temporary
    folder, removed afterwards), load and build. Returns the panel and the seconds each step took."""
    secs = {}
    with tempfile.TemporaryDirectory(prefix="tw-accuracy-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = simulate.write_files(cohort, tmp / "files")
        secs["write"] = time.perf_counter() - t0
        db = storage.connect(tmp / "acc.db")
        try:
            today = cohort.start + timedelta(days=cohort.n_days)  # the day after the cohort ends
            as_of = today - timedelta(days=1)
            t0 = time.perf_counter()
            for kind in IMPORT_KINDS:
                r = importing.import_file(db, kind, files[kind], importing.ImportOptions(today=today))
                if r.quarantined:
                    print(f"<!-- {kind}: {r.quarantined} rows quarantined -->")
            secs["import"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            panel = features.build_panel(features.load_inputs(db, None, as_of), as_of)
            secs["panel"] = time.perf_counter() - t0
        finally:
            db.conn.close()
    return panel, secs


def evaluate(panel: pd.DataFrame, cohort: simulate.Cohort) -> tuple[dict, dict, dict, float]:
    """trigger-watch, baseline and baseline + BH on one panel, scored against the cohort's truth."""
    cfg = tw_config.defaults()
    t0 = time.perf_counter()
    res = models.analyse(panel, cfg, store=False)
    elapsed = time.perf_counter() - t0
    base = baseline(panel)
    return (score(ours(res), cohort.truth), score(base, cohort.truth), score(baseline_bh(base), cohort.truth),
            elapsed)


def run(n_patients: int, days: int, seed: int, path: str = "pipeline") -> tuple[dict, dict, dict, float]:
    cohort = simulated(n_patients, days, seed)
    panel = pipeline_panel(cohort)[0] if path == "pipeline" else shortcut_panel(cohort)
    return evaluate(panel, cohort)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--days", type=int, nargs="+", default=[365, 180, 90])
    ap.add_argument("--path", choices=("pipeline", "shortcut", "both"), default="pipeline",
                    help="how the panel is built: import + features.build_panel (default), the simulator's "
                         "adapter, or both side by side on the same cohort")
    ap.add_argument("--shortcut", action="store_const", const="shortcut", dest="path",
                    help="same as --path shortcut (the old benchmark)")
    args = ap.parse_args(argv)
    paths = ("pipeline", "shortcut") if args.path == "both" else (args.path,)
    print(f"seed {args.seed} (cohort seed = seed + days), {args.patients} simulated patients per cohort, "
          f"panel: {' and '.join(paths)}")
    head = ("days", "panel", "method", "triggers", "FDR", "recall", "recall OR>=2.5", "symptom->trigger",
            "false protective", "95% coverage")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for days in args.days:
        t0 = time.perf_counter()
        cohort = simulated(args.patients, days, args.seed + days)
        notes = [f"simulate {time.perf_counter() - t0:.0f} s"]
        for path in paths:
            t0 = time.perf_counter()
            if path == "pipeline":
                panel, secs = pipeline_panel(cohort)
                notes.append("write {write:.0f} s, import {import:.0f} s, build_panel {panel:.0f} s"
                             .format(**secs))
            else:
                panel = shortcut_panel(cohort)
                notes.append(f"panel_from_cohort {time.perf_counter() - t0:.0f} s")
            o, b, bh, secs = evaluate(panel, cohort)
            for name, r in (("trigger-watch", o), ("baseline p<0.05", b), ("baseline + BH 10%", bh)):
                print(f"| {days} | {path} | {name} | {r['triggers']} | {r['fdr']:.1%} | {r['recall']:.1%} | "
                      f"{r['recall_or2.5']:.1%} | {r['symptom_triggers']} | {r['false_protective']} | "
                      f"{r['coverage']:.1%} (n={r['covered_n']}) |")
            false = ", ".join(f"{f}@{lag} {n}" for (f, lag), n in sorted(o["false_by_factor"].items()))
            notes.append(f"{path}: {o['planted']} planted triggers, {o['absent']} absent from the panel, "
                         f"{panel['patient_id'].nunique()} patients, {len(panel.attrs['factors'])} factor "
                         f"columns; analyse() {secs:.0f} s; false triggers: {false or 'none'}")
            sys.stdout.flush()
        print(f"<!-- {days} days, cohort seed {args.seed + days}: " + "; ".join(notes) + " -->")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
