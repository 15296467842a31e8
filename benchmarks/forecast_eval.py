"""Rolling-origin validation of the next-day forecast on simulated cohorts, next to the oracle and the base rate.

    python benchmarks/forecast_eval.py [--patients 300] [--days 365] [--seeds 20261121 20261122]
                                       [--origins 3] [--step 30] [--null] [--strict-only] [--cost-only]

For each seed: simulates a cohort (the simulator's realistic planted triggers; ``--null``: also a cohort with
none), builds the panel with the simulator's test adapter, fits the whole cohort once (the cost reference),
then runs ``forecast.rolling_origin`` twice -- re-estimating the cohort prior at each origin (strict) and under
the full fit's prior (what the pipeline passes) -- and prints, over the same evaluated days:

- ours: the forecast as ``next_day`` makes it (same-day values other than weather and calendar hidden);
- ours, same-day values: the same models fed the day's own diary and night (not a forecast: an upper bound);
- base rate: the patient's onset rate over at-risk days before the origin;
- oracle: the simulator's true onset probability of the day (``cohort.daily_truth.p_onset``). It knows the
  day's own stress, sleep and cycle, so it is a ceiling no forecast made the evening before can reach.

Columns: pooled AUC (all patient-days together; rewards telling frequent from rare attackers), mean per-patient
AUC (patients with >= 2 onsets in the window: the figure comparable to published within-person AUCs), Brier
score, Brier skill score against the base rate, calibration slope and intercept (logistic recalibration:
perfect is 1 and 0), then a 10-bin calibration table (deciles of the forecast).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trigger_watch import config as tw_config
from trigger_watch import forecast, models, simulate

PUBLISHED = (0.56, 0.65)


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def table(pred: pd.DataFrame) -> tuple[str, dict]:
    rows = [("ours (forecast)", "p"), ("ours, same-day values", "p_same_day"), ("base rate", "p_base"),
            ("oracle (true risk)", "p_true")]
    out = [("| method | pooled AUC | mean per-patient AUC | Brier | Brier skill vs base rate | cal. slope | "
            "cal. intercept |"), "|---|---|---|---|---|---|---|"]
    sc = {}
    for name, col in rows:
        s = forecast.scores(pred, col)
        sc[col] = s
        out.append(f"| {name} | {_f(s['auc'])} | {_f(s['mean_patient_auc'])} | {_f(s['brier'], '{:.4f}')} | "
                   f"{_f(s['brier_skill'], '{:+.3f}')} | {_f(s['calibration_slope'], '{:.2f}')} | "
                   f"{_f(s['calibration_intercept'], '{:+.2f}')} |")
    return "\n".join(out), sc


def cal_table(sc: dict) -> str:
    out = ["| decile | ours: predicted | ours: observed | days | oracle: predicted | oracle: observed |",
           "|---|---|---|---|---|---|"]
    a, b = sc["p"]["calibration"], sc["p_true"]["calibration"]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else {}
        y = b[i] if i < len(b) else {}
        out.append(f"| {i + 1} | {_f(x.get('predicted'))} | {_f(x.get('observed'))} | {x.get('n', '-')} | "
                   f"{_f(y.get('predicted'))} | {_f(y.get('observed'))} |")
    return "\n".join(out)


def run(seed: int, args, cfg, *, triggers: bool = True) -> None:
    kind = "planted triggers" if triggers else "null cohort (no triggers)"
    print(f"\n## seed {seed}: {args.patients} patients x {args.days} days, {kind}\n")
    t = time.perf_counter()
    cohort = simulate.simulate_cohort(args.patients, args.days, seed, triggers=triggers)
    panel = simulate.panel_from_cohort(cohort)
    print(f"simulate + panel {time.perf_counter() - t:.1f} s; {int(panel['at_risk'].sum()):,} at-risk days")
    t, c = time.perf_counter(), time.process_time()
    full = models.analyse(panel, cfg, store=False)
    fit_wall, fit_cpu = time.perf_counter() - t, time.process_time() - c
    prior = next((r.estimator.prior_ for r in full.values() if r.estimator is not None), None)
    t, c = time.perf_counter(), time.process_time()
    strict = forecast.rolling_origin(panel, cfg, origins=args.origins, step_days=args.step,
                                     same_day=not args.cost_only)
    s_wall, s_cpu = time.perf_counter() - t, time.process_time() - c
    if args.cost_only:  # what the pipeline runs: strict, no same-day diagnostic
        refits = strict.cohort["fit_cpu_seconds"]
        print(f"cost: one full cohort fit {fit_wall:.1f} s wall / {fit_cpu:.1f} s CPU; rolling origin "
              f"{s_wall:.1f} s wall / {s_cpu:.1f} s CPU = {s_cpu / fit_cpu:.2f}x (refits {refits} s CPU = "
              f"{sum(refits) / fit_cpu:.2f}x; forecasts and scoring {s_cpu - sum(refits):.1f} s CPU = "
              f"{(s_cpu - sum(refits)) / fit_cpu:.2f}x)")
        return
    given, g_wall, g_cpu = None, float("nan"), float("nan")
    if not args.strict_only:
        t, c = time.perf_counter(), time.process_time()
        given = forecast.rolling_origin(panel, cfg, prior=prior, origins=args.origins, step_days=args.step,
                                        same_day=True)
        g_wall, g_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"origins {strict.cohort['origins']} (blocks of {args.step} days)")
    pred_cpu = s_cpu - sum(strict.cohort["fit_cpu_seconds"])
    print("(timings include the same-day diagnostic; --cost-only times what the pipeline runs)")
    print(f"cost: one full cohort fit {fit_wall:.1f} s wall / {fit_cpu:.1f} s CPU; rolling origin "
          f"(prior re-estimated) {s_wall:.1f} s / {s_cpu:.1f} s CPU = {s_cpu / fit_cpu:.2f}x; "
          + (f"(prior given) {g_wall:.1f} s / {g_cpu:.1f} s CPU = {g_cpu / fit_cpu:.2f}x; " if given else "")
          + "strict run: refits "
          f"{strict.cohort['fit_cpu_seconds']} s CPU, forecasts and scoring {pred_cpu:.1f} s CPU")
    truth = cohort.daily_truth[["patient_id", "date", "p_onset"]].rename(columns={"p_onset": "p_true"})
    for label, v in (("prior re-estimated at each origin (strict)", strict), ("prior given (pipeline)", given)):
        if v is None:
            continue
        pred = v.predictions.merge(truth, on=["patient_id", "date"], how="left")
        dropped = int(pred["p_true"].isna().sum())
        pred = pred[pred["p_true"].notna()]
        txt, sc = table(pred)
        print(f"\n### {label}: {len(pred):,} days, {int(pred['onset'].sum()):,} onsets, "
              f"{pred['patient_id'].nunique()} patients; {v.cohort['base_rate_days']} days of "
              f"{v.cohort['base_rate_patients']} patients without a model (base rate used)"
              + (f"; {dropped} days not at risk in the truth left out" if dropped else "") + "\n")
        print(txt)
        per = forecast.auc_by_patient(pred["patient_id"].to_numpy(), pred["onset"].to_numpy(),
                                      pred["p"].to_numpy(), strata=pred["origin"].to_numpy())
        per = per.dropna()
        lo, hi = PUBLISHED
        print(f"\nper-patient AUC of ours: median {per.median():.3f}, IQR {per.quantile(.25):.3f}-"
              f"{per.quantile(.75):.3f}, {len(per)} patients; {np.mean(per < lo):.0%} below {lo}, "
              f"{np.mean((per >= lo) & (per <= hi)):.0%} within {lo}-{hi}, {np.mean(per > hi):.0%} above")
        if v is strict:
            print("\n" + cal_table(sc))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seeds", type=int, nargs="+", default=[20261121, 20261122])
    ap.add_argument("--origins", type=int, default=3)
    ap.add_argument("--step", type=int, default=30)
    ap.add_argument("--null", action="store_true", help="also evaluate a cohort without planted triggers")
    ap.add_argument("--strict-only", action="store_true", help="skip the run under the full fit's prior")
    ap.add_argument("--cost-only", action="store_true", help="time one fit and the pipeline's validation only")
    args = ap.parse_args(argv)
    print(f"forecast_eval: seeds {args.seeds}; {os.cpu_count()} cores; numpy {np.__version__}, "
          f"pandas {pd.__version__}")
    cfg = tw_config.defaults()
    for seed in args.seeds:
        run(seed, args, cfg)
    if args.null:
        run(args.seeds[0], args, cfg, triggers=False)


if __name__ == "__main__":
    main()
