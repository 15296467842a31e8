"""Tomorrow's attack risk per patient, with the factors that drive it.

The panel handed in runs through tomorrow; tomorrow's row holds lag-1 behaviour from today's diary, the
weather forecast at lag 0 and unknown same-day behaviour (NaN, treated by the model as "usual"). The
baseline probability is the model's risk for the patient's usual day (every factor at its own mean).
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from trigger_watch.features import column_name  # noqa: F401  (documented panel naming)

MAX_DRIVERS = 5


def _split(col: str) -> tuple[str, int]:
    factor, _, lag = col.rpartition("@")
    return factor, int(lag)


def next_day(panel: pd.DataFrame, results: dict, tomorrow: date) -> dict[str, dict]:
    """``{patient_id: forecast block}`` for every patient with a fitted model and a row for ``tomorrow``."""
    rows = panel[panel["date"] == pd.Timestamp(tomorrow)]
    out: dict[str, dict] = {}
    for pid, row in zip(rows["patient_id"], rows.index):
        res = results.get(pid)
        est = getattr(res, "estimator", None)
        if res is None or est is None or res.status != "ok":
            continue
        x = rows.loc[[row]]
        p = float(est.predict_proba(x)[0, 1])
        usual = pd.DataFrame([np.full(len(est.columns_), np.nan)], columns=est.columns_)
        usual.loc[0, :] = est.mean_
        base = float(est.predict_proba(usual)[0, 1])
        contrib = est.contributions(x).iloc[0]
        contrib = contrib[contrib.abs() > 1e-6]
        top = contrib.reindex(contrib.abs().sort_values(ascending=False).index)[:MAX_DRIVERS]
        drivers = []
        for col, c in top.items():
            factor, lag = _split(col)
            # contribution on the probability scale: risk with this factor at its usual value vs as forecast
            p_without = 1 / (1 + np.exp(-(np.log(p / (1 - p)) - c)))
            drivers.append({"factor": factor, "lag_days": lag, "contribution": round(p - p_without, 4)})
        out[pid] = {"date": tomorrow.isoformat(), "attack_probability": round(p, 4),
                    "baseline_probability": round(base, 4), "drivers": drivers}
    return out


def stored_validation(store, results: dict) -> dict[str, dict]:
    """Per patient, the rolling-origin validation figures kept with their model (empty when not run)."""
    out = {}
    for pid, res in results.items():
        v = getattr(res, "validation", None) or (res.model.get("validation") if res is not None else None)
        if v:
            out[pid] = v
    return out
