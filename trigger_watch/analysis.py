"""The analysis pipeline: stored inputs -> panel -> models -> forecast, flags -> reports and ranking.

This is the one function ``trigger-watch analyze``, each daemon cycle and the demo call. It orchestrates;
the statistics live in ``features``, ``models``, ``forecast`` and ``clinical``, the wording in ``reports``.

The panel is built through *tomorrow* (``as_of + 1``): tomorrow has no diary yet, so it is never at risk
and never used for fitting, but its row carries yesterday's behaviour (lag 1), tonight's sleep when known
and the weather forecast, and that row is what the next-day forecast is made from.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import shutil
import tempfile
import threading
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlite_utils

from trigger_watch import clinical, compute, features, forecast, models, storage
from trigger_watch.progress import stage

#: Changes when the pipeline or model changes in a way that makes old reports stale.
MODEL_VERSION = f"{models.MODEL_VERSION}+pipeline-1"
SCHEMA_VERSION = 1


class AnalysisHalted(Exception):
    """Work of a cycle that the cycle gave up on before it ended (:func:`validation_for`'s ``halt``)."""


@dataclass
class AnalysisOutcome:
    analysed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    model_version: str = MODEL_VERSION
    ranking: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    #: temporary report files an interrupted run had left, removed by this one
    leftovers_removed: int = 0
    #: the cohort prior the fits used (None: nobody could be fitted)
    prior: models.CohortPrior | None = None
    #: the prior was learned from this many patients' days through as_of first: the stored one saw later days
    prior_learned: int = 0

    def lines(self) -> list[str]:
        out = [f"analysed {len(self.analysed)} patient(s); {len(self.failed)} failed"]
        if self.leftovers_removed:
            out.append(f"  removed {self.leftovers_removed} temporary report file(s) an interrupted run left")
        out.extend(f"  failed {p}: {e}" for p, e in sorted(self.failed.items())[:20])
        if self.skipped:
            out.append(f"  stopped early: {len(self.skipped)} patient(s) not analysed")
        if self.prior_learned:
            out.append(f"  the cohort's pooled prior was learned again from all {self.prior_learned} patients' days "
                       f"up to this date: the stored one had seen later days")
        return out


def learns_prior(config, ids: Collection[str], everyone: Collection[str], as_of: date) -> bool:
    """Whether :func:`analyze` of ``ids`` as of ``as_of`` learns the cohort prior from ``everyone`` first.
    Some patients are fitted under the stored cohort prior, unless it saw days after ``as_of`` (a back-test,
    ``analyze --as-of``) or there is none (the models folder emptied): then under the prior learned from
    every patient's days through ``as_of``, as a full run would (no data after ``as_of`` is used)."""
    subset = len(set(ids) & set(everyone)) < len(everyone)
    return subset and models.ModelStore(config.models_dir).prior_through(as_of) is None


def all_patient_ids(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.execute("SELECT patient_id FROM patients ORDER BY patient_id")]


CHART_COLUMNS = ["patient_id", "date", "observed", "diary_kept", "onset", "in_episode", "migraine_day",
                 "headache_day", "intensity"]


@dataclass
class _Block:
    """What the pipeline keeps of one block of patients between reading their data and writing reports."""

    ids: list[str]
    ahead: forecast.Ahead | None  # what forecast.next_day reads: the forecast day's rows, recent days
    chart_rows: pd.DataFrame  # the days the charts are drawn from (CHART_COLUMNS, compact dtypes)
    flags: dict[str, dict]  # clinical.flags' row of each patient
    responses: dict[str, pd.DataFrame]  # treatment responses per patient
    clinicians: dict[str, str | None]
    forecasts: dict[str, dict] | None = None  # forecast.next_day's, made just before the block's reports
    not_applicable: dict[str, tuple[str, ...]] = field(default_factory=dict)  # factors a patient cannot have


def analyze(db: sqlite_utils.Database, config, *, as_of: date, patient_ids: list[str] | None = None,
            stop: threading.Event | None = None, progress: Callable | None = None, write: bool = True,
            generated_at: str | None = None,
            validate: bool | Collection[str] | None = None, back_test: bool = False,
            _prior_only: bool = False) -> AnalysisOutcome:
    """Analyse ``patient_ids`` (all when None) as of ``as_of`` and write their reports and the ranking.

    A patient that fails (a rendering error, a damaged record) is named in ``failed`` and the others go
    on. ``stop`` is checked between patients (between chunks of patients when ``[compute]`` runs the reports
    on several workers); the ones not reached are listed in ``skipped``.

    The patients go through in blocks of ``[compute] block_patients``: each block's inputs are read, its
    panel built and reduced to what the later stages need (the model's design blocks, moved to files under
    the models folder; the forecast day's rows; the chart days; flags and treatment responses) before the
    next block is read, so memory grows with the block, not the cohort. The cohort fit then pools every
    block, and the reports are written block by block. ``validate``: run the rolling-origin validation of
    the forecast for these patients (True), none (False), the ones listed, or (None) those due tonight: a
    seventh of the cohort each night by default (:func:`validate_due`). ``back_test``: ``as_of`` is before
    yesterday. The forecast day's stored weather is then the weather recorded after ``as_of``, not a forecast,
    which ``analyze --as-of`` must not use: that day's weather is left unknown, as when no forecast could be
    fetched; and the reports are marked a back-test's (triggers.json ``"back_test": true``), which the
    ranking does not count as the present. ``progress``: a
    :class:`~trigger_watch.progress.Progress` is shown every stage (reading, fit, validation, reports); a
    plain callback ``(done, total)`` counts the reports written.
    """
    import time

    from trigger_watch import reports  # here, not at the top: the workers' reading needs no templates

    stop = stop or threading.Event()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if back_test and validate is None:  # one run as of a past day: no later night validates the rest
        validate = True
    everyone = all_patient_ids(db)
    known = set(everyone)
    ids = everyone if patient_ids is None else [p for p in patient_ids if p in known]
    outcome = AnalysisOutcome()
    if write:  # before any work: another database's reports folder is refused
        reports.claim_folder(config.reports_dir, storage.database_id(db), config.database)
    if not ids:
        if write:
            outcome.ranking = _write_ranking(db, config, everyone)
        return outcome
    generated_at = generated_at or storage.utcnow_text()
    tomorrow = as_of + timedelta(days=1)
    weather_through = as_of if back_test else tomorrow
    store = models.ModelStore(config.models_dir)
    subset = len(ids) < len(everyone)
    prior, keep = None, not _prior_only  # keep: this run's fits go to the model store
    if subset:
        prior = store.prior_through(as_of)
        if prior is None:  # learns_prior's case
            learned = analyze(db, config, as_of=as_of, stop=stop, progress=progress, write=False, validate=False,
                              back_test=back_test, _prior_only=True)
            prior = outcome.prior = learned.prior
            outcome.prior_learned = len(everyone)
        current = store.load_prior()
        # a back-test's fits are not the current ones: they stay out of the store
        keep = current is None or (prior is not None and current.id == prior.id)
    # sub-stages of the first pass ("pass/step"): the seconds each step took, summed over the blocks (in the
    # workers when there are several: they overlap each other and the reading)
    for k in ("load_inputs", "build_panel", "prepare", "ahead", "clinical"):
        timings[f"read_and_reduce/{k}"] = 0.0

    Path(config.models_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_spills(config.models_dir)
    blocks: list[_Block] = []
    parts: list[models.Prepared] = []
    sizes = compute.chunks(ids, 1, size=int(config["compute.block_patients"]))
    # the blocks, then the results, stay to the end: the collector need not look through them again and again
    with storage.objects_settled() as settle:
        with contextlib.ExitStack() as stack:
            ex = stack.enter_context(compute.executor(config, len(ids)))
            # one block: this process, no files; several: the executor's workers, design blocks in files
            first = ex if len(sizes) > 1 else compute.Executor()
            # the workers start and import the pipeline while this process reads the cohort's columns
            started = first.start(("trigger_watch.analysis",))
            columns = features.cohort_columns(db, ids if subset else None, as_of)
            timings["columns"] = time.perf_counter() - t
            t0 = time.perf_counter()
            spill = stack.enter_context(tempfile.TemporaryDirectory(prefix=".fit-", dir=config.models_dir))
            spill_dir = Path(spill) if len(sizes) > 1 else None
            removed: list[compute.Background] = []  # the design blocks' files, removed once the fit is done
            # Local workers read their blocks from the database file themselves (SQLite serves several readers);
            # a Dask worker may be on another machine: the blocks are read here and sent.
            db_file = _file_of(db) if ex.kind == "local" else None
            if db_file:
                t = time.perf_counter()
                features.warm_weather(db, ids if subset else None, as_of, weather_through=weather_through)
                timings["columns"] += time.perf_counter() - t
            started()

            def jobs():
                for block_ids in sizes:
                    t = time.perf_counter()
                    source = _block_source(db, db_file if first is ex else None, block_ids, as_of, weather_through)
                    timings["read_and_reduce/load_inputs"] += time.perf_counter() - t
                    # a Dask worker cannot reach this machine's folder: it returns the design blocks instead
                    yield (config, block_ids, source, as_of, columns, None if ex.kind == "dask" else spill_dir,
                           weather_through)

            learning = "learning the cohort prior: " if _prior_only else ""
            reading = stage(progress, f"{learning}reading the patients' days")
            for part, block, secs in first.map(reduce_block, jobs()):
                if spill_dir is not None and ex.kind == "dask":
                    for ch in part.chunks:
                        ch.spill(spill_dir)
                if parts and part.design.columns != parts[0].design.columns:
                    raise models.ModelError("blocks of patients built panels with different columns")
                parts.append(part)
                blocks.append(block)
                settle()
                for k, v in secs.items():
                    timings[f"read_and_reduce/{k}"] += v
                if reading:
                    reading(sum(len(b.ids) for b in blocks), len(ids))
            timings["read_and_reduce"] = time.perf_counter() - t0

            t = time.perf_counter()
            stack.callback(store.wait)  # the model store is written while the reports are
            reports_start = threading.Event()
            early: list[compute.Background] = []
            halt = threading.Event()
            stack.callback(halt.set)  # this cycle failed or was interrupted: the validation sends no more blocks
            validation_of = functools.partial(validation_for, db, config, ids, as_of, columns=columns,
                                              subset=subset, validate=validate, outcome=outcome, ex=ex,
                                              db_file=db_file)

            def fitted(cohort_prior) -> None:
                outcome.prior = cohort_prior
                # The fit has read the design blocks for the last time: their files (~1 GB at 10,000
                # patients) go now, on a thread, instead of after the reports. Removed before the kernel's
                # writeback reaches them, they are never written to the disk at all.
                if spill_dir is not None:
                    removed.append(compute.Background(shutil.rmtree, spill_dir, ignore_errors=True, name="spill"))
                if _prior_only:
                    return
                # The validation needs only the cohort prior: its blocks go to the local workers now, while
                # this process makes the cohort's calls (~1.5 s at 10,000 patients that the workers waited
                # out). The thread only dispatches and waits: the workers read the database file themselves.
                if db_file:
                    early.append(compute.Background(validation_of, {}, prior=cohort_prior, halt=halt,
                                                    progress=stage(progress, checking), name="validation"))

            checking = "checking the forecast on the patients' past days"
            results = models.fit_prepared(parts, config, prior=prior, store=store if keep else False,
                                          map_fn=first.map if first.kind == "local" else None,
                                          save_after=reports_start, fitted=fitted,
                                          progress=stage(progress, f"{learning}fitting the models, round"))
            del parts
            if outcome.prior is None:  # the stored fits, reused: the prior they were fitted under
                outcome.prior = _prior_of(results, prior)
            if _prior_only:  # what a subset of the patients is fitted under (above): the prior, nothing else
                if subset is False and outcome.prior is not None:
                    store.keep_prior(outcome.prior, as_of.isoformat())
                for job in removed:
                    job.result()
                outcome.timings = timings
                return outcome
            compute.release_memory()  # the fit's working arrays: the validating workers need the room
            settle()
            timings["fit"] = time.perf_counter() - t

            timings["forecast"] = 0.0

            def forecast_block(block: _Block) -> None:
                # each patient's forecast is their own: made block by block here while the workers validate or
                # render the blocks before (forecast.next_day of the whole cohort gives the same)
                start = time.perf_counter()
                ahead, block.ahead = block.ahead, None
                block.forecasts = forecast.next_day(ahead, results, tomorrow) if ahead is not None else {}
                timings["forecast"] += time.perf_counter() - start

            t = time.perf_counter()
            if early:
                for block in blocks:  # this process would only wait: the first blocks' forecasts meanwhile
                    if early[0].done():
                        break
                    forecast_block(block)
                validation = early[0].result()
            else:
                validation = validation_of(results, progress=stage(progress, checking))
            timings["validation"] = time.perf_counter() - t - timings["forecast"]  # what the cycle waited
            t, made = time.perf_counter(), timings["forecast"]

            for job in removed:  # long done: the validation took longer
                job.result()
            reports_start.set()
            if write:  # marked until the ranking is written: a run killed before then is cleaned up after
                outcome.leftovers_removed = reports.begin_writing(config.reports_dir, config.models_dir)
            _reports(db, config, ex, blocks, results, forecast_block, validation, as_of=as_of,
                     generated_at=generated_at, write=write, stop=stop, back_test=back_test,
                     progress=stage(progress, "writing reports", main=True), outcome=outcome)
            timings["reports"] = time.perf_counter() - t - (timings["forecast"] - made)

        t = time.perf_counter()
        if write:
            outcome.ranking = _write_ranking(db, config, everyone)
            reports.end_writing(config.models_dir)
        timings["ranking"] = time.perf_counter() - t
    outcome.timings = timings
    return outcome


def _reports(db, config, ex, blocks, results, forecast_block, validation, *, as_of, generated_at, write, stop,
             progress, outcome, back_test: bool = False) -> None:
    """Build every patient's triggers.json and write the reports: by ``ex``'s workers, or here.
    ``forecast_block(block)`` sets ``block.forecasts``; it is called as each block's reports begin."""

    def parts_of(pid: str, block: _Block) -> dict:
        """What :func:`build_triggers` needs of one patient (picklable: the fitted estimator stays here)."""
        result = results.get(pid)
        if block.forecasts is None:
            forecast_block(block)
        return {"result": None if result is None else dataclasses.replace(result, estimator=None),
                "as_of": as_of, "generated_at": generated_at, "forecast": block.forecasts.get(pid),
                "validation": validation.get(pid),
                "flags": block.flags.get(pid),
                "treatments": block.responses.get(pid), "clinician_id": block.clinicians.get(pid),
                "not_applicable": block.not_applicable.get(pid, ()), "back_test": back_test}

    if not write:
        _reports_serial(blocks, parts_of, stop, progress, outcome)
    else:  # in chunks, also in this process: two file-system syncs a chunk, not five a patient
        _reports_in_chunks(db, config, ex, blocks, parts_of, stop, progress, outcome,
                           summaries=getattr(results, "summaries", None))


def remove_stale_spills(models_dir, older_than: float = 3600.0) -> int:
    """Remove the design blocks' folders (``.fit-*``) that a killed run left in ``models_dir`` (~1 GB at 10,000
    patients, kept for good otherwise). Only those untouched for ``older_than`` seconds: a run going on beside
    this one (the cycle's lock keeps them apart; a library caller may not take it) is never in the way.
    Returns how many were removed."""
    import time

    removed = 0
    for folder in Path(models_dir).glob(".fit-*"):
        try:
            if folder.is_dir() and time.time() - folder.stat().st_mtime > older_than:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            pass
    return removed


def reduce_block(job) -> tuple[models.Prepared, _Block, dict[str, float]]:
    """A worker's task in the first pass: one block of patients' inputs reduced to what the later stages
    need -- the model's design blocks (in files under ``spill`` when given), the forecast day's rows, flags,
    treatment responses and the chart days. ``job``: ``(config, patient_ids, inputs, as_of, columns,
    spill, weather_through)``. Returns them with the seconds each step took (of this worker's time)."""
    import time

    config, ids, inputs, as_of, columns, spill, weather_through = job
    tomorrow = as_of + timedelta(days=1)
    secs = {}
    t = time.perf_counter()
    if isinstance(inputs, str):
        inputs = _block_inputs(inputs, ids, as_of, weather_through)
        secs["load_inputs"] = time.perf_counter() - t
        t = time.perf_counter()
    panel = features.build_panel(inputs, tomorrow, columns=columns)
    fit_panel = panel[panel["date"] <= pd.Timestamp(as_of)]
    fit_panel.attrs = panel.attrs
    secs["build_panel"] = time.perf_counter() - t
    t = time.perf_counter()
    part = models.prepare(fit_panel, config, spill_dir=spill)
    secs["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    ahead = forecast.Ahead.of(panel, tomorrow)
    secs["ahead"] = time.perf_counter() - t
    t = time.perf_counter()
    block = _clinical_block(ids, inputs, fit_panel, as_of)
    block.ahead = ahead
    secs["clinical"] = time.perf_counter() - t
    return part, block, secs


def _block_source(db, db_file: str | None, ids: list[str], as_of: date, through: date | None = None):
    """What a block's task gets to read its patients from: the database file when its worker can open it
    (a local worker), else their inputs read here (``features.load_inputs``)."""
    return db_file or features.load_inputs(db, ids, as_of, weather_through=through)


def _block_inputs(source, ids: list[str], as_of: date, through: date | None = None) -> features.PanelInputs:
    """In the task: the block's inputs, read from the database file if that is what :func:`_block_source`
    sent."""
    if isinstance(source, str):
        return features.load_inputs(_reader(source), ids, as_of, weather_through=through)
    return source


_READERS: dict[str, sqlite_utils.Database] = {}


def _reader(path: str) -> sqlite_utils.Database:
    """This worker process's connection to the database file (opened once, kept for the next block)."""
    if path not in _READERS:
        _READERS[path] = storage.connect(path, migrate=False)
    return _READERS[path]


def _file_of(db: sqlite_utils.Database) -> str | None:
    """The file behind ``db``'s main database; None in memory."""
    for _, name, file in db.conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or None
    return None


def _clinical_block(ids: list[str], inputs, panel: pd.DataFrame, as_of: date) -> _Block:
    """Flags, treatment responses and the chart days of one block of patients (``panel``: through as_of)."""
    med_days = clinical.medication_days(inputs)
    # a dict per patient, made here in the worker: a row taken out of the frame for each patient cost the
    # main process ~0.55 s a night at 10,000
    flags = clinical.flags(panel, med_days, as_of).set_index("patient_id").to_dict("index")
    responses = clinical.treatment_response(panel, inputs.treatments, as_of)
    treatments = dict(iter(responses.groupby("patient_id", sort=False))) if len(responses) else {}
    chart_rows = panel[CHART_COLUMNS].copy()
    chart_rows.attrs = {}
    by_id = inputs.patients.set_index("patient_id")
    clinicians = by_id["clinician_id"].to_dict()
    # a patient recorded as male has no menstrual window: "we have no record of your period" was said to him
    not_applicable = {str(p): NOT_APPLICABLE_TO_MEN for p in by_id.index[by_id["sex"].eq("M").to_numpy()]}
    return _Block(list(ids), None, chart_rows, flags, treatments, clinicians, not_applicable=not_applicable)


EMPTY_CHART = {"calendar": [], "monthly": [], "gaps": []}
#: The factors left out of the report of a patient whose sex is recorded as M.
NOT_APPLICABLE_TO_MEN = ("menstrual_window",)


def _reports_serial(blocks: list[_Block], parts_of, stop, progress, outcome) -> None:
    """A run that writes nothing: each patient's triggers.json built, one after another in this process, to
    find the ones that fail; ``stop`` is checked between patients. (Reports are written in chunks,
    :func:`_reports_in_chunks`.)"""
    total, done = sum(len(b.ids) for b in blocks), 0
    for k, block in enumerate(blocks):
        block.chart_rows = None
        for i, pid in enumerate(block.ids):
            if stop.is_set():
                outcome.skipped = block.ids[i:] + [p for b in blocks[k + 1:] for p in b.ids]
                return
            try:
                parts = parts_of(pid, block)
                build_triggers(pid, parts.pop("result"), **parts)
                outcome.analysed.append(pid)
            except Exception as exc:  # one patient's failure must not stop the others
                outcome.failed[pid] = f"{type(exc).__name__}: {exc}"
            done += 1
            if progress:
                progress(done, total)


def _reports_in_chunks(db, config, ex: compute.Executor, blocks: list[_Block], parts_of, stop, progress,
                       outcome, *, summaries=None) -> None:
    """Chunks of patients rendered and written by ``ex``'s workers (or here, by the serial executor); the
    history is stored here, one transaction per chunk. ``stop`` is checked between chunks: chunks already
    sent are finished. ``summaries``: see :func:`_pack_summaries`."""
    from trigger_watch import reports

    ids = [p for b in blocks for p in b.ids]
    size = len(compute.chunks(ids, ex.workers)[0])
    sent: list[list[str]] = []

    def jobs():
        for k, block in enumerate(blocks):
            parts = compute.chunks(block.ids, ex.workers, size=size)
            for j, part in enumerate(parts):
                if stop.is_set():
                    outcome.skipped = [p for rest in parts[j:] for p in rest] + [
                        p for b in blocks[k + 1:] for p in b.ids]
                    return
                items = []
                for p in part:
                    try:
                        items.append((p, parts_of(p, block)))
                    except Exception as exc:
                        outcome.failed[p] = f"{type(exc).__name__}: {exc}"
                # each chunk's chart days go with it: the workers draw the charts
                rows = block.chart_rows[block.chart_rows["patient_id"].isin(part)]
                sent.append(part)
                yield (str(config.reports_dir), *_pack_summaries(items, summaries), rows,
                       bool(config["storage.report_spares"]))
            block.chart_rows = None

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


def write_report_chunk(job: tuple) -> tuple[list[tuple], dict[str, str]]:
    """A worker's task: build, draw, render and write the reports of a chunk of patients.

    ``job`` is ``(reports_dir, [(patient_id, parts), ...], summaries, chart_rows, spares)`` with ``parts`` the
    keyword arguments of :func:`build_triggers` (``result`` among them, its summary in ``summaries``: see
    :func:`_pack_summaries`), ``chart_rows`` those patients' days (CHART_COLUMNS) for :func:`build_charts`
    and ``spares`` ``[storage] report_spares`` (:data:`reports.SPARE`). Returns the history rows of the
    patients written (``reports.history_row``, for the caller to store) and ``{patient_id: error}`` for the
    others.
    """
    from trigger_watch import reports

    # No cyclic garbage collection during the chunk: its hundreds of thousands of small objects (a dict per
    # calendar day, per factor) live through many young-generation passes and set off full collections of
    # the worker's whole heap (measured: 2-12% of the chunk's CPU), while a chunk leaves ~20 objects in
    # cycles to collect.
    with storage.collector_paused():
        reports_dir, items, summaries, chart_rows, spares = job
        factors = _factor_records(items, summaries)
        charts = build_charts(chart_rows)
        docs, errors = [], {}
        for (pid, parts), given in zip(items, factors):
            try:
                parts = dict(parts)
                docs.append((build_triggers(pid, parts.pop("result"), factors=given, **parts),
                             charts.get(pid, EMPTY_CHART)))
            except Exception as exc:  # one patient's failure must not stop the others
                errors[pid] = f"{type(exc).__name__}: {exc}"
        written, failed = reports.write_many_patient_reports(reports_dir, docs, spares=spares)
        errors.update(failed)
        return [reports.history_row(t, c, ranking=ranking_row(t), triggers_json=j) for t, c, j in written], errors


def _pack_summaries(items: list[tuple[str, dict]], source=None) -> tuple[list[tuple[str, dict]], tuple]:
    """A chunk's items for a worker, their results' summaries taken out into one frame: pickling a few
    hundred small frames with text columns cost the sending process ~20 times what one frame of them does.
    Returns the items (each result's ``summary`` None) and ``(frame, rows per item)``: a worker makes the
    triggers.json factors of them all at once (:func:`_factor_records`).

    ``source`` (``models.Analyses.summaries``): the frame the fitted patients' summaries are slices of; those
    are taken out of it with one ``take`` (joining 10,000 patients' slices again, a chunk at a time, cost the
    daemon ~2 s of a night's cycle)."""
    body = None if source is None else source.body
    like = None if body is None else body.dtypes
    pieces, rows, sizes, out = [], [], [], []
    for pid, parts in items:
        result = parts["result"]
        summary = None if result is None else result.summary
        span = None if summary is None or body is None else source.span(pid, summary)
        if span is not None:
            rows.append(np.arange(*span))
        elif summary is None or (like is not None and not summary.dtypes.equals(like)):
            sizes.append(-1)  # sent as it is (a frame of other dtypes would change them in the concat)
            out.append((pid, parts))
            continue
        else:
            if rows:
                pieces.append(body.take(np.concatenate(rows)))
                rows = []
            pieces.append(summary)
            like = summary.dtypes if like is None else like
        sizes.append(len(summary))
        out.append((pid, {**parts, "result": dataclasses.replace(result, summary=None)}))
    if rows:
        pieces.append(body.take(np.concatenate(rows)))
    if not pieces:
        return out, (None, sizes)
    if len(pieces) > 1:
        return out, (pd.concat(pieces, ignore_index=True), sizes)
    return out, (pieces[0].set_axis(pd.RangeIndex(len(pieces[0]))), sizes)


def _factor_records(items: list[tuple[str, dict]], packed) -> list[list[dict] | None]:
    """Each item's triggers.json ``factors`` from the summaries :func:`_pack_summaries` took out (all of them
    at once, :func:`_records` of the frame, then each patient's rows), None for an item whose summary
    travelled with it (:func:`build_triggers` turns that one into records itself)."""
    frame, sizes = packed
    records = _records(frame) if frame is not None else []
    out, at = [], 0
    for n in sizes:
        out.append(records[at:at + n] if n >= 0 else None)
        at += max(n, 0)
    return out


def validate_due(config, stored: dict, ids: list[str], as_of: date, validate) -> list[str]:
    """The patients of ``ids`` whose forecast is validated in this run.

    The rolling-origin validation refits the cohort at each origin, which costs more than the night's fit
    itself, and what it measures moves slowly: a patient is validated once every
    ``analysis.validation_every_days`` (7) nights, on the night of their :func:`validation_slot`, so each
    night validates about a seventh of the cohort instead of all of it once a week. A patient who is overdue
    and whose night it is not (never validated, or whose stored validation is a full period old: a missed
    slot, the daemon was down, or they had no new data that night) is validated at their next run while such
    patients are few: at most a night's share (the most patients of ``ids`` any one night has) or
    ``analysis.validation_catch_up`` (250), whichever is more (new patients, one missed night). When more are
    (a new installation's first night, a cohort that missed a week) each waits for their own night instead,
    so that no night validates more than about two nights' shares of a large cohort.
    One validated with data after ``as_of`` (a back-test, ``--as-of``) is validated at once.
    ``validate`` True: all of them; False: none; a collection of patient ids: those of ``ids``.
    ``analysis.validation_origins = 0`` turns it off."""
    if validate is False or int(config["analysis.validation_origins"]) <= 0:
        return []
    every = int(config["analysis.validation_every_days"])
    if validate is True or every <= 0:
        return list(ids)
    if validate is not None:
        chosen = set(validate)
        return [p for p in ids if p in chosen]
    today, stale = as_of.isoformat(), (as_of - timedelta(days=every)).isoformat()
    slots = [validation_slot(p, every) for p in ids]
    seen = [stored.get(p, {}).get("cv_as_of", "") for p in ids]
    # tonight's own: their night, and not validated tonight already (nor with later data: below)
    tonight = [n == as_of.toordinal() % every and s < today for n, s in zip(slots, seen, strict=True)]
    # overdue beyond tonight's own (never validated, "", is overdue too): the extra work a catch-up adds
    extra = [s <= stale and not mine for s, mine in zip(seen, tonight, strict=True)]
    # a night's share: the largest night's patients, so that one missed night is always caught up
    share = max(max(collections.Counter(slots).values(), default=0), int(config["analysis.validation_catch_up"]))
    catch_up = sum(extra) <= share
    # made with data after as_of (a back-test, --as-of): used here, it would leak the days after it
    return [p for p, s, mine, late in zip(ids, seen, tonight, extra, strict=True)
            if s > today or mine or (late and catch_up)]


def validation_slot(patient_id: str, every: int) -> int:
    """The night (``as_of.toordinal() % every``) a patient's forecast is validated on: a stable hash of the
    id, the same in every process and run, which spreads the cohort evenly over the nights."""
    return zlib.crc32(patient_id.encode("utf-8")) % every


def validate_block(job) -> forecast.Validation:
    """A worker's task: the rolling-origin validation of one block of patients. ``job``: ``(config,
    patient_ids, inputs or the database file, as_of, columns, prior, origins)``."""
    config, ids, inputs, as_of, columns, prior, origins = job
    panel = features.build_panel(_block_inputs(inputs, ids, as_of), as_of, columns=columns)
    return forecast.rolling_origin(panel, config, prior=prior, origins=origins)


def validation_for(db, config, ids: list[str], as_of: date, results: dict, columns, *, subset: bool,
                   validate: bool | Collection[str] | None, outcome: AnalysisOutcome,
                   ex: compute.Executor | None = None, db_file: str | None = None,
                   prior: models.CohortPrior | None = None, halt: threading.Event | None = None,
                   progress: Callable | None = None) -> dict[str, dict]:
    """Each patient's forecast validation (the ``cv_*`` keys of triggers.json): run for those due
    (:func:`validate_due`), block by block under this run's cohort prior (``prior``, else the one
    ``results`` were fitted with), and kept in the models folder for the nights it is not due. Returns
    ``{patient_id: keys}`` for ``ids``. ``halt`` set (the cycle, which runs this on a thread, gave up):
    no more blocks are sent, and :class:`AnalysisHalted` is raised instead of keeping a part. ``progress``:
    called ``(patients checked, patients due)`` as the blocks come back."""
    store = models.ModelStore(config.models_dir)
    saved = store.load_validation(MODEL_VERSION)
    stored: dict[str, dict] = dict(saved.get("patients", {}))
    due = validate_due(config, stored, ids, as_of, validate)
    if due:
        step = int(config["analysis.validation_step_days"])
        origins = forecast.default_origins(pd.DataFrame({"date": [pd.Timestamp(as_of)]}),
                                           int(config["analysis.validation_origins"]), step)
        prior = _origin_priors(store, origins, prior if prior is not None else _prior_of(results, None))
        ex = ex or compute.Executor()
        # half-size blocks: a block's refits hold its panel, a training copy and the fit's design at once
        # (a worker peaked at 585 MB on 250 patients, 400 MB on 125, for the same seconds per patient)
        blocks = compute.chunks(due, 1, size=max(1, int(config["compute.block_patients"]) // 2))
        run_on = ex if len(blocks) > 1 else compute.Executor()

        def jobs():
            for block in blocks:
                if halt is not None and halt.is_set():  # the cycle gave up on it: send no more blocks
                    return
                yield (config, block, _block_source(db, db_file if run_on is ex else None, block, as_of), as_of,
                       columns, prior, origins)

        parts, checked_so_far = [], 0
        for part, block in zip(run_on.map(validate_block, jobs()), blocks):
            parts.append(part)
            checked_so_far += len(block)
            if progress:
                progress(checked_so_far, len(due))
        if halt is not None and halt.is_set():
            raise AnalysisHalted("the validation was halted before its end: nothing of it is kept")
        checked = forecast.combine(parts, origins, step, prior)
        strict = sum(p is not prior.fallback for p in prior.values())
        checked.cohort["prior"] = "learned from the days before each origin" if strict == len(origins) else (
            f"learned from the days before {strict} of the {len(origins)} origins; this run's at the others "
            "(its hyperparameters have seen the days they score)")
        for pid in due:
            stored.pop(pid, None)
        stored.update({pid: {**v, "cv_as_of": as_of.isoformat()} for pid, v in checked.per_patient.items()})
        cohort = saved.get("cohort") if subset and saved.get("cohort") else checked.cohort
        store.save_validation({"version": MODEL_VERSION, "patients": stored, "cohort": cohort})
        outcome.validation = checked.cohort
    return {p: stored[p] for p in ids if p in stored} | _first_validation(config, ids, stored, as_of)


def _first_validation(config, ids: list[str], stored: dict, as_of: date) -> dict[str, dict]:
    """``{patient_id: {"cv_due": day}}`` for the patients of ``ids`` never validated: the ``as_of`` of the
    nightly run that validates them at the latest, the next on their :func:`validation_slot` (sooner when the
    overdue are few, :func:`validate_due`). Nothing when the validation is off or runs every night."""
    every = int(config["analysis.validation_every_days"])
    if every <= 0 or int(config["analysis.validation_origins"]) <= 0:
        return {}
    today = as_of.toordinal()
    return {p: {"cv_due": date.fromordinal(today + 1 + (validation_slot(p, every) - today - 1) % every).isoformat()}
            for p in ids if p not in stored}


class _OriginPriors(dict):
    """``{origin: prior}`` for the validation's refits, and the prior used where none was kept (``fallback``)."""

    fallback: models.CohortPrior | None = None


def _origin_priors(store: models.ModelStore, origins, run_prior) -> _OriginPriors:
    """Each validation origin's cohort prior: the one the store kept learned from the days before it (a
    nightly full run of that time, :meth:`models.ModelStore.prior_through`), else ``run_prior``, this run's,
    whose hyperparameters have seen the days the validation scores (docs/forecast.md)."""
    out = _OriginPriors()
    out.fallback = run_prior
    for d in origins:
        kept = store.prior_through((pd.Timestamp(d) - pd.Timedelta(days=1)).date())
        out[pd.Timestamp(d)] = kept if kept is not None else run_prior
    return out


def _prior_of(results: dict, given):
    """The cohort prior this run's fits used (for validation refits), else the one given."""
    for res in results.values():
        est = getattr(res, "estimator", None)
        if est is not None and getattr(est, "prior_", None) is not None:
            return est.prior_
    return given


# ------------------------------------------------------------------------------------------ results

def _clean(v):
    kind = type(v)
    if kind is str or kind is int or kind is bool or v is None:  # the common cases first (same results)
        return v
    if kind is float:
        return None if not math.isfinite(v) else round(v, 4)
    if kind is dict:
        return {k: _clean(x) for k, x in v.items()}
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


def _records(frame: pd.DataFrame, skip: str | None = None) -> list[dict]:
    """``[_clean(r) for r in frame.replace({np.nan: None}).to_dict("records")]`` (without column ``skip``),
    built column by column (a report chunk's summaries are one frame of ~4,000 rows): a missing value (NaN,
    None, NA, NaT) is None, as the replace made it, and every other value is cleaned."""
    names = list(frame.columns)
    if len(set(names)) < len(names):
        records = frame.replace({np.nan: None}).to_dict("records")
        return [_clean({k: x for k, x in r.items() if k != skip}) for r in records]
    keep = [i for i, k in enumerate(names) if k != skip]
    names = [names[i] for i in keep]
    columns = [_column_values(frame.iloc[:, i]) for i in keep]
    return [dict(zip(names, row)) for row in zip(*columns)] if columns else [{} for _ in range(len(frame))]


def _column_values(column: pd.Series) -> list:
    """One column's values as :func:`_records` puts them in its records."""
    kind = column.dtype
    if kind == np.float64:  # finite floats rounded, NaN and infinities None (what _clean makes of them)
        return round4(column.to_numpy())
    if kind == np.int64 or kind == np.bool_:
        return column.to_numpy().tolist()  # Python ints and bools
    out = column.to_numpy(dtype=object, na_value=None).tolist()
    if isinstance(kind, pd.StringDtype | pd.Int64Dtype):  # text or Python ints, missing ones None: as they are
        return out
    for i, v in enumerate(out):
        if not (type(v) is str or v is None):  # text, the usual case here, as it is
            out[i] = None if v is pd.NaT else _clean(v)  # a date column's missing values stay NaT
    return out


def round4(values: np.ndarray) -> list:
    """``[round(v, 4) if math.isfinite(v) else None for v in values.tolist()]``, the same floats, in numpy.

    ``rint(v * 1e4) / 1e4`` is the double nearest to ``k / 10**4`` (the division is correctly rounded), as
    Python's ``round`` is, whenever ``k`` is the same whole number: that is, unless the product's own rounding
    moved it across a half (or it is past 2**52, where it has no fraction to round). Those few values go
    through ``round``. A report chunk's ~16,000 values of one column: ~1 ms against ~7 ms."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = values * 1e4
        size = np.abs(scaled)
        near_half = np.abs(scaled - np.floor(scaled) - 0.5) <= 4 * np.spacing(size)
        exact = finite & ~near_half & (size < 2.0**52)
        out = np.where(exact, np.rint(scaled) / 1e4, 0.0).astype(object)
    for i in np.flatnonzero(finite & ~exact).tolist():
        out[i] = round(float(values[i]), 4)
    out[~finite] = None
    return out.tolist()


def build_triggers(pid: str, result, *, as_of: date, generated_at: str, forecast=None, validation=None,
                   flags: dict | None = None, treatments: pd.DataFrame | None = None,
                   clinician_id: str | None = None, factors: list[dict] | None = None,
                   not_applicable: Collection[str] = (), back_test: bool = False) -> dict:
    """The triggers.json document of reports.md for one patient (plus documented extra keys). ``factors``:
    ``_records(result.summary)`` when the caller made it already (then ``result.summary`` is not read).
    ``not_applicable``: factor ids this patient cannot have (:data:`NOT_APPLICABLE_TO_MEN`), left out.
    ``back_test``: adds ``"back_test": true`` (docs/reports.md)."""
    if result is None:
        data = {"first_day": None, "last_day": None, "diary_days": 0, "missing_days": 0, "at_risk_days": 0,
                "attacks": 0, "migraine_days_last_30": 0, "headache_recorded_days": 0}
        status, factors, model = "insufficient_data", [], {"method": models.METHOD, "version": MODEL_VERSION}
    else:
        data = _clean(dict(result.data))
        status = result.status
        factors = _records(result.summary) if factors is None else factors
        if not_applicable:
            factors = [f for f in factors if f.get("factor") not in not_applicable]
        model = _clean(dict(result.model)) | {"version": MODEL_VERSION}
        model.setdefault("model_id", result.model.get("fingerprint"))
    if validation:
        model.update(_clean(validation))
    for key in ("cv_auc", "cv_brier", "cv_days"):  # reports.md's keys, null until a validation covers them
        model.setdefault(key, None)
    flag_block = {"chronic_migraine": False, "medication_overuse": False}
    if flags:
        flag_block = _clean(flags)
        flag_block.pop("patient_id", None)
        data["migraine_days_last_30"] = flag_block.get("migraine_days_last_30", data.get("migraine_days_last_30"))
    tr = []
    if treatments is not None and len(treatments):
        tr = _records(treatments, skip="patient_id")
    doc = {
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
    if back_test:  # as of an earlier day than the present: the ranking must not read it as today's
        doc["back_test"] = True
    return doc


_STATUSES = ("onset", "attack", "free", "missing")


def build_charts(panel: pd.DataFrame) -> dict[str, dict]:
    """Per patient: calendar days, monthly counts and gaps of unlogged days (vectorised, then split)."""
    if panel.empty:
        return {}
    pid = panel["patient_id"].to_numpy(dtype=object)
    # one str object per status, shared by every day (smaller and faster to send to the report workers)
    status_code = np.select([panel["onset"].to_numpy() == 1, panel["in_episode"].to_numpy(dtype=bool),
                             panel["observed"].to_numpy(dtype=bool)], [0, 1, 2], 3)
    status = np.array(_STATUSES, dtype=object)[status_code]
    # day and month texts: each distinct date formatted once
    day_code, day_values = pd.factorize(panel["date"], sort=True)
    day_index = pd.DatetimeIndex(day_values)
    day_text = np.asarray(day_index.strftime("%Y-%m-%d"), dtype=object)
    month_code, month_text = pd.factorize(np.asarray(day_index.strftime("%Y-%m"), dtype=object), sort=True)
    days = day_text[day_code]
    months = month_code[day_code]
    # patients in sorted order; each patient's rows in the panel's order
    code, keys = pd.factorize(pid, sort=True)
    n = len(keys)
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(n + 1)).tolist()

    # monthly counts (sums over each patient's days of a month)
    key = code.astype(np.int64) * len(month_text) + months
    monthly = pd.DataFrame({"key": key, "migraine_days": panel["migraine_day"].to_numpy(),
                            "headache_days": panel["headache_day"].to_numpy(),
                            "days_logged": panel["diary_kept"].to_numpy()}).groupby("key", sort=True).sum()
    mkey = monthly.index.to_numpy()
    m_bounds = np.searchsorted(mkey // len(month_text), np.arange(n + 1)).tolist()
    sums = [monthly[c].tolist() if monthly[c].dtype.kind in "iub" else [_clean(v) for v in monthly[c].tolist()]
            for c in ("migraine_days", "headache_days", "days_logged")]
    m_rows = [{"month": m, "migraine_days": a, "headache_days": b, "days_logged": c}
              for m, a, b, c in zip(month_text[mkey % len(month_text)].tolist(), *sums)]

    # gaps: runs of 7+ consecutive missing days
    miss = status == "missing"
    new_run = np.r_[True, (miss[1:] != miss[:-1]) | (pid[1:] != pid[:-1])]
    first = np.flatnonzero(new_run & miss)
    size = np.diff(np.append(np.flatnonzero(new_run), len(miss)))[np.cumsum(new_run)[first] - 1]
    long_runs = size >= 7
    first, size = first[long_runs], size[long_runs]
    g_code = code[first]
    g_order = np.argsort(g_code, kind="stable")
    g_rows = [{"start": s, "end": e, "days": k} for s, e, k in
              zip(days[first[g_order]].tolist(), days[first[g_order] + size[g_order] - 1].tolist(),
                  size[g_order].tolist())]
    g_bounds = np.searchsorted(g_code[g_order], np.arange(n + 1)).tolist()

    rounded = panel["intensity"].astype(float).round(1)
    intensity = rounded.where(rounded.notna(), None).to_numpy(dtype=object)
    cal = [{"date": d, "status": s, "intensity": i} for d, s, i in
           zip(days[order].tolist(), status[order].tolist(), intensity[order].tolist())]
    out: dict[str, dict] = {}
    for k, name in enumerate(keys.tolist()):
        out[name] = {"calendar": cal[bounds[k]:bounds[k + 1]], "monthly": m_rows[m_bounds[k]:m_bounds[k + 1]],
                     "gaps": g_rows[g_bounds[k]:g_bounds[k + 1]]}
    return out


def _write_ranking(db, config, everyone: list[str]) -> list[dict]:
    """Rank every patient from their latest stored report and write the cohort files.

    No cyclic garbage collection meanwhile: the ~30 small objects a patient's row and entry make set off
    passes that found nothing to free and took a quarter of the ranking's time (0.4 of 1.6 s at 10,000
    patients, on this machine at half speed)."""
    from trigger_watch import ranking, reports

    with storage.collector_paused():
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
            "latest_treatment_response": treatments[-1] if treatments else None,
            **({"back_test": True} if triggers.get("back_test") else {})}
