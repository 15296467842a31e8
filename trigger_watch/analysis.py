"""The analysis pipeline: stored inputs -> panel -> models -> forecast, flags -> reports and ranking.

This is the one function ``trigger-watch analyze``, each daemon cycle and the demo call. It orchestrates;
the statistics live in ``features``, ``models``, ``forecast`` and ``clinical``, the wording in ``reports``.

The panel is built through *tomorrow* (``as_of + 1``): tomorrow has no diary yet, so it is never at risk
and never used for fitting, but its row carries yesterday's behaviour (lag 1), tonight's sleep when known
and the weather forecast, and that row is what the next-day forecast is made from.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import sqlite_utils

from trigger_watch import compute, features, models, storage

#: Changes when the pipeline or model changes in a way that makes old reports stale.
MODEL_VERSION = f"{models.MODEL_VERSION}+pipeline-1"
SCHEMA_VERSION = 1


@dataclass
class AnalysisOutcome:
    analysed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    model_version: str = MODEL_VERSION
    ranking: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"analysed {len(self.analysed)} patient(s); {len(self.failed)} failed"]
        out.extend(f"  failed {p}: {e}" for p, e in sorted(self.failed.items())[:20])
        if self.skipped:
            out.append(f"  stopped early: {len(self.skipped)} patient(s) not analysed")
        return out


def all_patient_ids(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.execute("SELECT patient_id FROM patients ORDER BY patient_id")]


def analyze(db: sqlite_utils.Database, config, *, as_of: date, patient_ids: list[str] | None = None,
            stop: threading.Event | None = None, progress: Callable | None = None, write: bool = True,
            generated_at: str | None = None) -> AnalysisOutcome:
    """Analyse ``patient_ids`` (all when None) as of ``as_of`` and write their reports and the ranking.

    A patient that fails (a rendering error, a damaged record) is named in ``failed`` and the others go
    on. ``stop`` is checked between patients (between chunks of patients when ``[compute]`` runs the reports
    on several workers); the ones not reached are listed in ``skipped``.
    """
    import time

    from trigger_watch import clinical

    stop = stop or threading.Event()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    everyone = all_patient_ids(db)
    ids = everyone if patient_ids is None else [p for p in patient_ids if p in set(everyone)]
    outcome = AnalysisOutcome()
    if not ids:
        if write:
            outcome.ranking = _write_ranking(db, config, everyone)
        return outcome
    generated_at = generated_at or storage.utcnow_text()
    tomorrow = as_of + timedelta(days=1)

    inputs = features.load_inputs(db, ids, as_of, weather_through=tomorrow)
    timings["load_inputs"] = time.perf_counter() - t

    t = time.perf_counter()
    panel = features.build_panel(inputs, tomorrow)
    timings["build_panel"] = time.perf_counter() - t

    t = time.perf_counter()
    store = models.ModelStore(config.models_dir)
    subset = len(ids) < len(everyone)
    prior = store.load_prior() if subset else None
    fit_panel = panel[panel["date"] <= pd.Timestamp(as_of)]
    fit_panel.attrs = panel.attrs
    results = models.analyse(fit_panel, config, prior=prior, store=store, progress=None)
    timings["models"] = time.perf_counter() - t

    t = time.perf_counter()
    from trigger_watch import forecast

    next_day = forecast.next_day(panel, results, tomorrow)
    validation: dict[str, dict] = {}
    if config["analysis.validation_origins"] > 0:
        checked = forecast.rolling_origin(fit_panel, config, prior=_prior_of(results, prior))
        validation = dict(checked.per_patient)
        outcome.validation = checked.cohort
    timings["forecast"] = time.perf_counter() - t

    t = time.perf_counter()
    observed_panel = fit_panel  # the days up to as_of, without tomorrow's forecast row
    med_days = clinical.medication_days(inputs)
    flags = clinical.flags(observed_panel, med_days, as_of).set_index("patient_id")
    responses = clinical.treatment_response(observed_panel, inputs.treatments, as_of)
    charts = build_charts(observed_panel)
    timings["clinical"] = time.perf_counter() - t

    t = time.perf_counter()
    clinicians = inputs.patients.set_index("patient_id")["clinician_id"].to_dict()
    del inputs, observed_panel, fit_panel, panel  # the reports need only the results from here on
    treatments = dict(iter(responses.groupby("patient_id", sort=False))) if len(responses) else {}

    def parts_of(pid: str) -> dict:
        """What :func:`build_triggers` needs of one patient (picklable: the fitted estimator stays here)."""
        result = results.get(pid)
        return {"result": None if result is None else dataclasses.replace(result, estimator=None),
                "as_of": as_of, "generated_at": generated_at, "forecast": next_day.get(pid),
                "validation": validation.get(pid),
                "flags": flags.loc[pid].to_dict() if pid in flags.index else None,
                "treatments": treatments.get(pid), "clinician_id": clinicians.get(pid)}

    def triggers_of(pid: str) -> dict:
        parts = parts_of(pid)
        return build_triggers(pid, parts.pop("result"), **parts)

    empty_chart = {"calendar": [], "monthly": [], "gaps": []}
    with compute.executor(config, len(ids) if write else 0) as ex:
        if ex.kind == "serial":
            _reports_serial(db, config, ids, triggers_of, charts, empty_chart, write, stop, progress, outcome)
        else:
            _reports_parallel(db, config, ex, ids, parts_of, charts, empty_chart, stop, progress, outcome)
    timings["reports"] = time.perf_counter() - t

    t = time.perf_counter()
    if write:
        outcome.ranking = _write_ranking(db, config, everyone)
    timings["ranking"] = time.perf_counter() - t
    outcome.timings = timings
    return outcome


def _reports_serial(db, config, ids, triggers_of, charts, empty_chart, write, stop, progress, outcome) -> None:
    """One patient after another in this process; ``stop`` is checked between patients."""
    from trigger_watch import reports

    total = len(ids)
    for i, pid in enumerate(ids):
        if stop.is_set():
            outcome.skipped = ids[i:]
            break
        try:
            triggers = triggers_of(pid)
            if write:
                chart = charts.get(pid, empty_chart)
                reports.write_patient_reports(config.reports_dir, triggers, chart)
                with storage.transaction(db):
                    reports.record_history(db, triggers, chart, ranking=ranking_row(triggers))
            outcome.analysed.append(pid)
        except Exception as exc:  # one patient's failure must not stop the others
            outcome.failed[pid] = f"{type(exc).__name__}: {exc}"
        if progress:
            progress(i + 1, total)


def _reports_parallel(db, config, ex: compute.Executor, ids, parts_of, charts, empty_chart, stop, progress,
                      outcome) -> None:
    """Chunks of patients rendered and written by ``ex``'s workers; the history is stored here, one
    transaction per chunk. ``stop`` is checked between chunks: chunks already sent are finished."""
    from trigger_watch import reports

    parts = compute.chunks(ids, ex.workers)
    sent: list[list[str]] = []

    def jobs():
        for k, part in enumerate(parts):
            if stop.is_set():
                outcome.skipped = [p for rest in parts[k:] for p in rest]
                return
            items = []
            for pid in part:
                try:
                    items.append((pid, parts_of(pid), charts.get(pid, empty_chart)))
                except Exception as exc:
                    outcome.failed[pid] = f"{type(exc).__name__}: {exc}"
            sent.append(part)
            yield (str(config.reports_dir), items)

    done, total = 0, len(ids)
    written: set[str] = set()
    for k, (rows, errors) in enumerate(ex.map(write_report_chunk, jobs())):
        outcome.failed.update(errors)
        try:
            reports.record_history_rows(db, rows)
            written.update(r[0] for r in rows)
        except Exception as exc:
            for r in rows:
                outcome.failed[r[0]] = f"{type(exc).__name__}: {exc}"
        done += len(sent[k])
        if progress:
            progress(done, total)
    outcome.analysed.extend(p for p in ids if p in written)


def write_report_chunk(job: tuple[str, list[tuple[str, dict, dict]]]) -> tuple[list[tuple], dict[str, str]]:
    """A worker's task: build, render and write the reports of a chunk of patients.

    ``job`` is ``(reports_dir, [(patient_id, parts, charts), ...])`` with ``parts`` the keyword arguments of
    :func:`build_triggers` (``result`` among them). Returns the history rows of the patients written
    (``reports.history_row``, for the caller to store) and ``{patient_id: error}`` for the others.
    """
    from trigger_watch import reports

    reports_dir, items = job
    docs, errors = [], {}
    for pid, parts, chart in items:
        try:
            parts = dict(parts)
            docs.append((build_triggers(pid, parts.pop("result"), **parts), chart))
        except Exception as exc:  # one patient's failure must not stop the others
            errors[pid] = f"{type(exc).__name__}: {exc}"
    written, failed = reports.write_many_patient_reports(reports_dir, docs)
    errors.update(failed)
    return [reports.history_row(t, c, ranking=ranking_row(t)) for t, c in written], errors


def _prior_of(results: dict, given):
    """The cohort prior this run's fits used (for validation refits), else the one given."""
    for res in results.values():
        est = getattr(res, "estimator", None)
        if est is not None and getattr(est, "prior_", None) is not None:
            return est.prior_
    return given


# ------------------------------------------------------------------------------------------ results

def _clean(v):
    if v is None:
        return None
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else round(float(v), 4)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, pd.Timestamp):
        return v.date().isoformat()
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def build_triggers(pid: str, result, *, as_of: date, generated_at: str, forecast=None, validation=None,
                   flags: dict | None = None, treatments: pd.DataFrame | None = None,
                   clinician_id: str | None = None) -> dict:
    """The triggers.json document of reports.md for one patient (plus documented extra keys)."""
    if result is None:
        data = {"first_day": None, "last_day": None, "diary_days": 0, "missing_days": 0, "at_risk_days": 0,
                "attacks": 0, "migraine_days_last_30": 0}
        status, factors, model = "insufficient_data", [], {"method": models.METHOD, "version": MODEL_VERSION}
    else:
        data = _clean(dict(result.data))
        status = result.status
        summary = result.summary.replace({np.nan: None})
        factors = [_clean(r) for r in summary.to_dict("records")]
        model = _clean(dict(result.model)) | {"version": MODEL_VERSION}
        model.setdefault("model_id", result.model.get("fingerprint"))
    if validation:
        model.update(_clean(validation))
    flag_block = {"chronic_migraine": False, "medication_overuse": False}
    if flags:
        flag_block = _clean(flags)
        flag_block.pop("patient_id", None)
        data["migraine_days_last_30"] = flag_block.get("migraine_days_last_30", data.get("migraine_days_last_30"))
    tr = []
    if treatments is not None and len(treatments):
        tr = [_clean({k: v for k, v in r.items() if k != "patient_id"})
              for r in treatments.replace({np.nan: None}).to_dict("records")]
    return {
        "schema_version": SCHEMA_VERSION,
        "patient_id": pid,
        "clinician_id": clinician_id,
        "generated_at": generated_at,
        "as_of": as_of.isoformat(),
        "data": data,
        "status": status,
        "factors": factors,
        "forecast": _clean(forecast) if forecast else None,
        "flags": flag_block,
        "treatments": tr,
        "model": model,
    }


def build_charts(panel: pd.DataFrame) -> dict[str, dict]:
    """Per patient: calendar days, monthly counts and gaps of unlogged days (vectorised, then split)."""
    if panel.empty:
        return {}
    p = panel[["patient_id", "date", "observed", "diary_kept", "onset", "in_episode", "migraine_day",
               "headache_day", "intensity"]].copy()
    status = np.select([p["onset"].to_numpy() == 1, p["in_episode"].to_numpy(dtype=bool),
                        p["observed"].to_numpy(dtype=bool)], ["onset", "attack", "free"], "missing")
    p["status"] = status
    p["day"] = p["date"].dt.strftime("%Y-%m-%d")
    p["month"] = p["date"].dt.strftime("%Y-%m")
    monthly = p.groupby(["patient_id", "month"], sort=True).agg(
        migraine_days=("migraine_day", "sum"), headache_days=("headache_day", "sum"),
        days_logged=("diary_kept", "sum")).reset_index()
    # gaps: runs of 7+ consecutive missing days
    miss = status == "missing"
    pid = p["patient_id"].to_numpy()
    new_run = np.r_[True, (miss[1:] != miss[:-1]) | (pid[1:] != pid[:-1])]
    run_id = np.cumsum(new_run)
    runs = pd.DataFrame({"patient_id": pid, "run": run_id, "miss": miss, "day": p["day"].to_numpy()})
    runs = runs[runs["miss"]].groupby(["patient_id", "run"]).agg(start=("day", "first"), end=("day", "last"),
                                                                  days=("day", "size")).reset_index()
    runs = runs[runs["days"] >= 7]
    intensity = p["intensity"].astype(float).round(1)
    cal = pd.DataFrame({"patient_id": pid, "date": p["day"].to_numpy(), "status": status,
                        "intensity": intensity.where(intensity.notna(), None).to_numpy(dtype=object)})
    out: dict[str, dict] = {}
    cal_groups = {k: g.drop(columns="patient_id").to_dict("records") for k, g in cal.groupby("patient_id")}
    mon_groups = {k: [_clean(r) for r in g.drop(columns="patient_id").to_dict("records")]
                  for k, g in monthly.groupby("patient_id")}
    gap_groups = {k: [_clean(r) for r in g[["start", "end", "days"]].to_dict("records")]
                  for k, g in runs.groupby("patient_id")}
    for k in cal_groups:
        out[k] = {"calendar": cal_groups[k], "monthly": mon_groups.get(k, []), "gaps": gap_groups.get(k, [])}
    return out


def _write_ranking(db, config, everyone: list[str]) -> list[dict]:
    """Rank every patient from their latest stored report and write the cohort files."""
    from trigger_watch import ranking, reports

    latest = reports.latest_ranking_rows(db, ranking_row)
    rows = [latest[pid] for pid in everyone if pid in latest]
    ranked = ranking.build_ranking(rows, as_of=max((r["as_of"] for r in rows), default=None))
    reports.write_cohort_reports(config.reports_dir, ranked)
    return ranked


def ranking_row(triggers: dict) -> dict:
    """What the ranking needs of one patient, from their triggers.json document."""
    flags = dict(triggers.get("flags") or {})
    forecast = triggers.get("forecast") or {}
    top = sorted((f for f in triggers.get("factors", []) if f.get("verdict") == "trigger"),
                 key=lambda f: f.get("rank") or 10**6)
    treatments = sorted(triggers.get("treatments") or [], key=lambda t: t.get("date") or "")
    return {**flags, "patient_id": triggers["patient_id"], "clinician_id": triggers.get("clinician_id"),
            "as_of": triggers.get("as_of"),
            "risk_next_day": forecast.get("attack_probability"),
            "baseline_probability": forecast.get("baseline_probability"),
            "top_triggers": list(dict.fromkeys(f["factor"] for f in top))[:3],
            "latest_treatment_response": treatments[-1] if treatments else None}
