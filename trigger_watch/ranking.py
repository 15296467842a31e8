"""The clinicians' cohort ranking: who needs attention first, and why, in plain words.

Each patient gets priority points from the flags, the trend, tomorrow's risk, the latest treatment and
diary silence (:data:`POINTS`), plus one point per migraine day in the last 30; the list is ordered by
points, then migraine days in the last 30, then risk, then patient id, so it is deterministic. Every
entry carries ``reasons``: the sentences behind its points, largest first, ending with the frequency line.
The rule and a worked example are in ``docs/clinical.md``. This module only orders and words results it
is given (``clinical.flags``, ``clinical.treatment_response``, the forecast, the trigger models).
"""

from __future__ import annotations

import json
import math
from datetime import date
from functools import lru_cache
from pathlib import Path

import pandas as pd

from trigger_watch.clinical import CLASS_LABELS, OVERUSE_DAYS, SILENT_DAYS, response_words, trend_margin
from trigger_watch.errors import TriggerWatchError

#: Priority points per finding (see docs/clinical.md); each migraine day in the last 30 adds 1 more.
POINTS = {
    "medication_overuse": 40,
    "chronic_migraine": 30,
    "trend_worse": 20,
    "risk_high": 15,
    "risk_moderate": 5,
    "treatment_not_helping": 10,
    "diary_silent": 10,
    "near_overuse": 5,
}
#: Risk bands of tomorrow's attack probability (absolute, so patients compare across the cohort).
RISK_HIGH = 0.5
RISK_MODERATE = 0.25
#: Acute medication on at least (overuse threshold - this) days in the last 30 is "close to overuse".
NEAR_OVERUSE_MARGIN = 2

ENTRY_KEYS = ["patient_id", "clinician_id", "rank", "risk_next_day", "risk_band", "migraine_days_last_30",
              "migraine_days_prev_90_per_30", "trend", "chronic_migraine", "medication_overuse", "top_triggers",
              "days_logged_last_30", "last_entry", "latest_treatment_response", "reasons"]


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN/NaT to None, dates to ISO text, containers recursively."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:  # a stored ranking row's numbers (what the rest of this function does with a float)
        return None if math.isnan(value) else value
    if kind is dict:  # a row: its plain values without a call each (the same result)
        out = {}
        for k, v in value.items():
            vk = type(v)
            if vk is float:
                if math.isnan(v):
                    v = None
            elif not (v is None or vk is str or vk is int or vk is bool):
                v = _clean(v)
            out[k if type(k) is str else str(k)] = v
        return out
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _clean(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    return value


def risk_band(risk: float | None) -> str | None:
    """``high`` from 0.5, ``moderate`` from 0.25, else ``low``; None when there is no forecast."""
    if risk is None:
        return None
    return "high" if risk >= RISK_HIGH else "moderate" if risk >= RISK_MODERATE else "low"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def priority(r: dict) -> tuple[int, list[str]]:
    """A patient row's priority points and the reasons behind them, largest first (frequency line last)."""
    found: list[tuple[int, int, str]] = []  # (points, order, sentence)
    meds = r.get("medication_days_last_30") or {}
    m = r.get("migraine_days_last_30") or 0
    prev = r.get("migraine_days_prev_90_per_30")
    logged = r.get("days_logged_last_30")

    if r.get("medication_overuse"):
        classes = r.get("overuse_classes") or []
        parts = []
        for c in classes:
            if c in OVERUSE_DAYS and meds.get(c) is not None:
                parts.append(f"{CLASS_LABELS[c]} on {meds[c]} days: medication overuse threshold ({OVERUSE_DAYS[c]})")
            elif c == "multiple_classes":
                parts.append("acute medication of several classes on 10 or more days a month combined: "
                             "medication overuse")
            else:
                parts.append(f"{CLASS_LABELS.get(c, c)}: medication overuse")
        text = "; ".join(parts) if parts else "medication overuse (ICHD-3)"
        found.append((POINTS["medication_overuse"], 0, text + ", for more than 3 months"))
    else:
        near = [(c, d) for c, d in meds.items()
                if c in OVERUSE_DAYS and d >= OVERUSE_DAYS[c] - NEAR_OVERUSE_MARGIN]
        if near:
            c, d = max(near, key=lambda cd: (cd[1] - OVERUSE_DAYS[cd[0]], cd[0]))
            found.append((POINTS["near_overuse"], 7,
                          (f"{CLASS_LABELS[c]} on {d} days in the last 30: close to the medication overuse "
                           f"threshold ({OVERUSE_DAYS[c]})")))
    if r.get("chronic_migraine"):
        found.append((POINTS["chronic_migraine"], 1,
                      (f"chronic migraine: {r.get('headache_days_last_30', '?')} headache days with {m} migraine "
                       "days in the last 30, 15 or more a month for more than 3 months")))
    trend = r.get("trend")
    rate = r.get("migraine_days_last_30_per_30")
    if logged is not None and rate is not None and abs(rate - m) >= 1:  # gaps change the picture: say so
        freq = (f"{m} migraine days in the last 30 ({logged} days logged, "
                f"{_num(r['migraine_days_last_30_per_30'])} per 30)")
    else:
        freq = f"{m} migraine days in the last 30"
    if trend == "worse":
        found.append((POINTS["trend_worse"], 2, f"{freq}, up from {_num(prev)}"))
    risk = r.get("risk_next_day")
    band = risk_band(risk)
    if band in ("high", "moderate"):
        found.append((POINTS[f"risk_{band}"], 3,
                      f"{band} risk of an attack {_forecast_day(r.get('as_of'))} ({round(risk * 100)}%)"))
    t = r.get("latest_treatment_response")
    if t and t.get("responder") is False:
        found.append((POINTS["treatment_not_helping"], 4,
                      (f"{t.get('treatment')} on {t.get('date')}: "
                       f"{_num(t['migraine_days_per_30_before'])} -> {_num(t['migraine_days_per_30_after'])} "
                       f"migraine days per 30, {response_words(t)}")))
    if r.get("back_test"):  # its numbers are of that day, not today's
        found.append((0, 6, (f"a back-test's report, as of {r.get('as_of')}: the next cycle brings this "
                             "patient up to date")))
    since = r.get("days_since_last_entry")
    if r.get("last_entry") is None:
        found.append((POINTS["diary_silent"], 5, "no diary entry yet"))
    elif since is not None and since >= SILENT_DAYS:
        found.append((POINTS["diary_silent"], 5, f"no diary entry for {since} days"))

    found.sort(key=lambda f: (-f[0], f[1]))
    reasons = [text for _, _, text in found]
    if trend != "worse":
        tail = {"better": f", down from {_num(prev)}" if prev is not None else "",
                "stable": ", stable", None: " (too little diary to tell the trend)"}.get(trend, "")
        now = rate if rate is not None else m
        if trend == "stable" and prev is not None and abs(now - prev) >= trend_margin(prev):
            # past the margin, but not past chance (few attacks: one long attack is one): "stable" alone
            # read as "no change" next to 30 migraine days against 14.5
            tail = (f", {'up' if now > prev else 'down'} from {_num(prev)}, but with this few attacks chance "
                    f"alone could do that")
        reasons.append(freq + tail)
    if t and t.get("responder") is True:
        reasons.append(f"{t.get('treatment')} on {t.get('date')} helped: "
                       f"{_num(t['migraine_days_per_30_before'])} -> {_num(t['migraine_days_per_30_after'])} "
                       "migraine days per 30")
    return sum(p for p, _, _ in found) + int(m), reasons


def _records(rows) -> list[dict]:
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    return [_clean(r if type(r) is dict else dict(r)) for r in rows]


@lru_cache(maxsize=4096)
def _days_since(as_of: pd.Timestamp, text: str) -> int:
    """Days from a last entry's date (text) to ``as_of``: 10,000 patients' rows hold a few hundred distinct
    ones."""
    return (as_of - pd.Timestamp(text)).days


def _forecast_day(as_of) -> str:
    """The day a row's risk is for, by its date: read at 08:00 after a 02:30 cycle, "tomorrow" was today
    (the patient's page, from the same run, said today)."""
    try:
        day = date.fromisoformat(str(as_of)[:10]).toordinal() + 1
    except ValueError:
        return "the next day"
    return "on " + date.fromordinal(day).strftime("%A %d %B").replace(" 0", " ")


def build_ranking(rows, as_of=None) -> list[dict]:
    """The cohort ranking: one ``ranking.json`` entry per patient, highest priority first.

    ``rows``: a DataFrame or dicts, one per patient, with ``patient_id, clinician_id, risk_next_day``
    (daily attack probability or None), the ``clinical.flags`` fields, ``top_triggers`` (up to 3 factor
    ids) and ``latest_treatment_response`` (dict or None). With ``as_of``, ``days_since_last_entry`` is
    counted from ``last_entry`` to it (a patient whose stored report is older is silent for longer);
    without, the row's own ``days_since_last_entry`` (a flags extra) is used. Order: points (:data:`POINTS` plus one per
    migraine day in the last 30), then migraine days in the last 30, then risk, then patient id.
    """
    recs = _records(rows)
    scored = []
    as_of_ts = None
    for r in recs:
        last = r.get("last_entry")
        if last and as_of is not None and not r.get("back_test"):  # fresher than a stored report's own count
            # (a back-test's report counts to its own day: the diary after it was left out, not missing)
            if as_of_ts is None:
                as_of_ts = pd.Timestamp(as_of)
            r["days_since_last_entry"] = (_days_since(as_of_ts, last) if type(last) is str
                                          else (as_of_ts - pd.Timestamp(last)).days)
        score, reasons = priority(r)
        risk = r.get("risk_next_day")
        risk = None if risk is None else round(float(risk), 3)  # ordered by the risk as shown
        key = (-score, -(r.get("migraine_days_last_30") or 0), -(risk if risk is not None else -1.0),
               str(r["patient_id"]))
        entry = {
            "patient_id": str(r["patient_id"]),
            "clinician_id": r.get("clinician_id"),
            "rank": None,
            "risk_next_day": risk,
            "risk_band": risk_band(risk),
            "migraine_days_last_30": int(r.get("migraine_days_last_30") or 0),
            "migraine_days_prev_90_per_30": r.get("migraine_days_prev_90_per_30"),
            "trend": r.get("trend"),
            "chronic_migraine": bool(r.get("chronic_migraine")),
            "medication_overuse": bool(r.get("medication_overuse")),
            "top_triggers": list(r.get("top_triggers") or [])[:3],
            "days_logged_last_30": int(r.get("days_logged_last_30") or 0),
            "last_entry": r.get("last_entry"),
            "latest_treatment_response": r.get("latest_treatment_response") or None,
            "reasons": reasons,
        }
        scored.append((key, entry))
    scored.sort(key=lambda ke: ke[0])
    out = []
    for i, (_, entry) in enumerate(scored, start=1):
        entry["rank"] = i
        out.append(entry)
    return out


def cohort_rows(flags: pd.DataFrame, patients: pd.DataFrame, *, risk: dict | None = None,
                top_triggers: dict | None = None, latest_response: dict | None = None) -> list[dict]:
    """Assemble :func:`build_ranking` rows: every patient of ``patients`` (``patient_id, clinician_id``),
    with its ``clinical.flags`` row (empty counts when it has none), ``risk`` {patient: probability},
    ``top_triggers`` {patient: [factor ids]} and ``latest_response`` {patient: dict}
    (``clinical.latest_treatment_response``)."""
    by_pid = {r["patient_id"]: r for r in _records(flags)} if flags is not None and len(flags) else {}
    out = []
    for p in _records(patients[["patient_id", "clinician_id"]]):
        pid = str(p["patient_id"])
        row = dict(by_pid.get(pid, {"patient_id": pid}))
        row["clinician_id"] = p.get("clinician_id")
        row["risk_next_day"] = (risk or {}).get(pid)
        row["top_triggers"] = (top_triggers or {}).get(pid, [])
        row["latest_treatment_response"] = (latest_response or {}).get(pid)
        out.append(row)
    return out


def filter_by_clinician(ranking: list[dict], clinician_id: str) -> list[dict]:
    """The entries of one clinician's patients, in cohort order, ranked again 1..n within that list."""
    mine = [dict(e) for e in ranking if e.get("clinician_id") == clinician_id]
    for i, e in enumerate(mine, start=1):
        e["rank"] = i
    return mine


# ------------------------------------------------------------------------------ reading and printing

def ranking_path(reports_dir: str | Path) -> Path:
    return Path(reports_dir) / "cohort" / "ranking.json"


def read_ranking(reports_dir: str | Path) -> list[dict]:
    """The latest cohort ranking written by the pipeline (``<reports_dir>/cohort/ranking.json``)."""
    path = ranking_path(reports_dir)
    if not path.is_file():
        raise TriggerWatchError("no ranking yet; run trigger-watch analyze first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TriggerWatchError(f"{path} cannot be read ({exc}); run trigger-watch analyze again") from exc
    if not isinstance(data, list):
        raise TriggerWatchError(f"{path} is not a ranking (a JSON list); run trigger-watch analyze again")
    return data


def to_table(ranking: list[dict]) -> str:
    """Aligned plain-text columns, one line per patient, with the first reason."""
    head = ["rank", "patient", "clinician", "risk", "migraine/30", "trend", "flags", "logged", "first reason"]
    lines = []
    for e in ranking:
        risk = e.get("risk_next_day")
        flags = ",".join(f for f, on in (("CM", e.get("chronic_migraine")), ("MO", e.get("medication_overuse")))
                         if on)
        prev = e.get("migraine_days_prev_90_per_30")
        lines.append([
            str(e.get("rank", "")), str(e.get("patient_id", "")), str(e.get("clinician_id") or "-"),
            "-" if risk is None else f"{e.get('risk_band')} {round(risk * 100)}%",
            f"{e.get('migraine_days_last_30', '')}" + ("" if prev is None else f" (was {_num(prev)})"),
            e.get("trend") or "-", flags or "-", f"{e.get('days_logged_last_30', '')}/30",
            (e.get("reasons") or [""])[0],
        ])
    widths = [max([len(h)] + [len(r[i]) for r in lines]) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([fmt(head)] + [fmt(r) for r in lines])


__all__ = ["ENTRY_KEYS", "POINTS", "build_ranking", "cohort_rows", "filter_by_clinician", "priority",
           "read_ranking", "risk_band", "to_table"]
