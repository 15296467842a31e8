"""Sleep: importing wearable and app exports, storing sleep periods, and the per-night summary.

One row of ``sleep_periods`` is one sleep period of one patient from one source, with true UTC instants,
its local clock times, and the local date on which it ended (a night belongs to the morning it ends).
Parsing each device's export lives in :mod:`trigger_watch.sleep_formats`; this module validates,
quarantines, stores and summarises.

Never double counting (``docs/sleep.md``):

- **Key** ``(patient_id, source, period_key)``; ``period_key`` is the UTC start, or ``night:YYYY-MM-DD`` for
  a source that only knows the date (Fitabase). Importing the same file again changes nothing.
- **Same source, overlapping periods**: a newly imported period replaces every stored period of the same
  patient and source that overlaps it (two overlapping exports, an export re-cut differently). Inside one
  file, of periods of one source that overlap, the last in the file wins.
- **Different sources** are all kept (provenance), but :func:`nightly` takes each night from one source only:
  the one whose main sleep of that night is longest. So a Fitbit and an Oura record of the same night are
  never added up.
- Apple Health merges its many overlapping records itself (interval union, see ``sleep_formats``).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlite_utils

from trigger_watch import storage
from trigger_watch.errors import ConfigError, InputFileError
from trigger_watch.importing import (
    IMPORTERS,
    PATIENT_ID_RE,
    Checker,
    ImportOptions,
    ImportResult,
    detect_format,
    iter_batches,
    quarantine,
    raw_rows,
)
from trigger_watch.sleep_formats import (
    DEVICE_FORMATS,
    MERGE_GAP_MINUTES,
    PARSERS,
    canonical_format,
    period_frame,
    read_id_map,
    sniff_device_format,
)

KIND = "sleep"
MAX_PERIOD_HOURS = 24.0
#: Minutes asleep may exceed time in bed by this much (rounding in device exports) before a row is rejected.
ASLEEP_TOLERANCE_MINUTES = 1.0
#: Periods of one source overlapping by no more than this are neighbours, not two versions of one sleep
#: (Sleep as Android rounds ``Hours`` to 3.6 s, so consecutive records can overlap by seconds).
OVERLAP_TOLERANCE_MINUTES = 5.0

storage.register_migration(20, "sleep periods", [
    """CREATE TABLE sleep_periods (
        patient_id TEXT NOT NULL,
        source TEXT NOT NULL,
        period_key TEXT NOT NULL,
        start TEXT,
        "end" TEXT,
        start_local TEXT,
        end_local TEXT,
        local_date TEXT NOT NULL,
        tz_offset_minutes INTEGER,
        minutes_asleep REAL,
        time_in_bed_minutes REAL,
        efficiency REAL,
        device_efficiency REAL,
        awakenings REAL,
        is_nap INTEGER NOT NULL DEFAULT 0,
        device_format TEXT NOT NULL,
        file TEXT,
        imported_at TEXT,
        PRIMARY KEY (patient_id, source, period_key)
    )""",
    "CREATE INDEX sleep_periods_night ON sleep_periods (patient_id, local_date)",
    "CREATE INDEX sleep_periods_span ON sleep_periods (patient_id, source, start, \"end\")",
])
storage.register_patient_table("sleep_periods")

#: Columns written by an import (``is_nap`` is derived afterwards from all of a patient's periods).
STORED_COLUMNS = ["patient_id", "source", "period_key", "start", "end", "start_local", "end_local", "local_date",
                  "tz_offset_minutes", "minutes_asleep", "time_in_bed_minutes", "efficiency", "device_efficiency",
                  "awakenings", "device_format", "file", "imported_at"]
KEY = ["patient_id", "source", "period_key"]

NIGHTLY_COLUMNS = ["patient_id", "date", "sleep_hours", "efficiency", "awakenings", "bedtime", "wake_time",
                   "time_in_bed_hours", "nap_hours", "source"]


# ------------------------------------------------------------------------------------------ import

def import_sleep_file(db: sqlite_utils.Database, path: str | Path, fmt: str | None = None,
                      options: ImportOptions | None = None) -> ImportResult:
    """``trigger-watch import sleep FILE --format F [--patient ID]``.

    ``fmt``: ``csv``/``json``/``ndjson`` (generic, also taken from the extension) or one of
    :data:`~trigger_watch.sleep_formats.DEVICE_FORMATS`. Device exports other than Fitabase need
    ``options.patient``. Bad rows are quarantined with a reason; the rest is stored in one transaction.
    """
    if options is None:
        raise InputFileError("import_sleep_file needs ImportOptions (at least today=...)")
    path = Path(path)
    fmt = canonical_format(fmt)
    result = ImportResult(kind=KIND, file=str(path))
    sniffed = sniff_device_format(path) if fmt is None else None
    if sniffed is not None:  # no --format: a device export is read as one, not as a table it is not
        fmt = sniffed[0]
        result.messages.append(f"read as {sniffed[1]}, told from its contents (--format F reads it as F)")
    known = _known_patients(db)
    if fmt in DEVICE_FORMATS:
        frames: Iterable[tuple[pd.DataFrame, pd.DataFrame | None]] = [(_parse_device(path, fmt, options, known),
                                                                         None)]
        device_format = fmt
    else:
        device_format = detect_format(path, fmt)
        frames = _generic_frames(path, device_format, options, known)
    nap_max = _setting(options, "sleep.nap_max_hours", 3.0)
    now = storage.utcnow_text()
    changed: set[str] = set()
    with storage.transaction(db):
        for frame, cells in frames:
            good, rejects = _validate(frame, options, known, cells)
            good, rejects = _resolve_patients(db, good, rejects, options, known, result)
            if rejects:
                result.quarantined += quarantine(db, KIND, str(path), [r[:3] for r in rejects],
                                                 [r[3] for r in rejects])
            if good.empty:
                continue
            same = good.duplicated([c for c in STORED_COLUMNS if c in good.columns], keep="last")
            if same.any():
                result.messages.append(f"{int(same.sum())} row(s) repeat an earlier row exactly and were read once")
                good = good.loc[~same]
            good, superseded = _last_of_overlaps(good)
            good["device_format"] = device_format
            good["file"] = str(path)
            good["imported_at"] = now
            counts = _write(db, good)
            report = getattr(options, "report", None)
            if report is not None:
                report(result.accepted + result.replaced + result.unchanged + result.quarantined + len(good))
            result.accepted += counts[0]
            result.replaced += counts[1] + superseded
            result.unchanged += counts[2]
            changed.update(counts[3])
            if superseded:
                result.messages.append(f"{superseded} period(s) overlapped a later period of the same source in "
                                       f"this file and were replaced by it")
        if changed:
            storage.mark_changed(db, sorted(changed))
            refresh_naps(db, sorted(changed), nap_max_hours=nap_max)
    result.patients.update(changed)
    return result


IMPORTERS[KIND] = import_sleep_file


def _setting(options: ImportOptions, name: str, default: Any) -> Any:
    cfg = options.config
    if cfg is None:
        return default
    try:
        value = cfg[name]
    except (ConfigError, KeyError):  # a config without this setting: the documented default
        return default
    return default if value in (None, "") else value


def _known_patients(db: sqlite_utils.Database) -> dict[str, str | None]:
    return {r[0]: r[1] for r in db.execute("SELECT patient_id, timezone FROM patients")}


def _parse_device(path: Path, fmt: str, options: ImportOptions, known: dict) -> pd.DataFrame:
    patient = options.patient
    if fmt == "fitabase":
        source = options.extra.get("id_map") or _setting(options, "sleep.fitabase_id_map", "")
        return PARSERS[fmt](path, patient=patient, id_map=read_id_map(source))
    if not patient:
        raise InputFileError(f"{path.name}: a {fmt} export carries no patient id of ours; pass --patient ID")
    tz = known.get(patient) or options.default_timezone
    if fmt in ("fitbit", "apple-health"):
        return PARSERS[fmt](path, patient=patient, tz=tz)
    return PARSERS[fmt](path, patient=patient)


def _generic_frames(path: Path, fmt: str, options: ImportOptions,
                    known: dict) -> Iterator[tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Generic CSV/JSON/NDJSON: ``patient_id, start, end`` (ISO 8601, with an offset or local to the patient),
    optional ``minutes_asleep, time_in_bed_minutes, awakenings, efficiency, source``. Yields (periods, the
    batch's cells for quarantining rows verbatim)."""
    from trigger_watch.diary import parse_instants

    for batch in iter_batches(path, fmt, batch_rows=options.batch_rows, renames=options.renames,
                              skips=options.skips, header=options.header):
        problems = period_frame([{"line": ln, "patient_id": None, "raw": raw, "reason": why}
                           for ln, why, raw in batch.problems])
        if batch.frame.empty:
            yield problems, None
            continue
        frame = batch.frame
        c = Checker(frame)
        if "patient_id" not in frame.columns:
            if not options.patient:
                raise InputFileError(f"{path.name} has no patient_id column; pass --patient ID to say whose sleep "
                                     f"it is")
            frame["patient_id"] = options.patient
        pid = c.required("patient_id")
        tz = options.zones(pid, known)
        s_text, e_text = c.required("start", "ISO 8601"), c.required("end", "ISO 8601")
        start, bad_s = parse_instants(s_text, tz)
        end, bad_e = parse_instants(e_text, tz)
        for bad, col, text in ((bad_s, "start", s_text), (bad_e, "end", e_text)):
            c.add(bad, (col + "=" + text[bad].map(repr) + " is not an ISO 8601 date-time (e.g. 2026-03-02T07:30 "
                        "or 2026-03-02T07:30+01:00)").reindex(text.index).to_numpy())
        out = pd.DataFrame(index=frame.index)
        out["line"] = batch.lines
        out["patient_id"] = pid
        out["start"], out["end"] = start, end
        out["start_local"] = _wall_clock(start, s_text, tz)
        out["end_local"] = _wall_clock(end, e_text, tz)
        out["night"] = None
        asleep = c.number("minutes_asleep", 0, None)
        hours = c.number("sleep_hours", 0, 24) if "sleep_hours" in frame.columns else None
        out["minutes_asleep"] = asleep if hours is None else asleep.fillna(hours * 60)
        out["time_in_bed_minutes"] = c.number("time_in_bed_minutes", 0, None)
        out["efficiency"] = c.number("efficiency", 0, 100)
        out["device_efficiency"] = np.nan
        out["awakenings"] = c.number("awakenings", 0, None, integer=True)
        src = c.text("source").astype(object)
        out["source"] = [str(v).strip().lower() if isinstance(v, str) else "generic" for v in src]
        out["raw"] = None  # made only for rejected rows, from the batch (see _validate)
        out["reason"] = c.reasons
        if len(problems):
            yield problems, None
        yield out.reset_index(drop=True), frame.reset_index(drop=True)


def _wall_clock(utc: pd.Series, text: pd.Series, tz: pd.Series) -> pd.Series:
    """Local wall-clock time: as written when the text has a numeric offset, else the instant in the patient's
    zone (``Z`` is UTC, not a local clock)."""
    out = pd.Series(pd.NaT, index=utc.index, dtype="datetime64[ns]")
    parts = text.str.extract(r"([+-])(\d\d):?(\d\d)$")
    has_offset = parts[0].notna() & utc.notna()
    if has_offset.any():
        sign = np.where(parts.loc[has_offset, 0] == "-", -1, 1)
        minutes = sign * (parts.loc[has_offset, 1].astype(int) * 60 + parts.loc[has_offset, 2].astype(int))
        out[has_offset] = (utc[has_offset].dt.tz_localize(None)
                           + pd.to_timedelta(minutes.to_numpy(), unit="min")).to_numpy()
    rest = ~has_offset & utc.notna()
    for zone_name, idx in tz[rest].groupby(tz[rest]).groups.items():
        out.loc[idx] = utc.loc[idx].dt.tz_convert(zone_name).dt.tz_localize(None)
    return out


# ------------------------------------------------------------------------------------------ validation

def _validate(frame: pd.DataFrame, options: ImportOptions, known: dict, cells: pd.DataFrame | None = None,
              ) -> tuple[pd.DataFrame, list[tuple[int | None, str, str, str | None]]]:
    """Typed periods -> (rows to store, rejects as (line, reason, raw, patient_id)). Vectorised. ``cells``: the
    file's cells row for row (generic files), from which a rejected row's raw text is made."""
    frame = frame.reset_index(drop=True)
    reasons = frame["reason"].to_numpy(dtype=object).copy()

    def add(mask: Any, msg: Any) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        msgs = np.broadcast_to(np.asarray(msg, dtype=object), mask.shape) if np.ndim(msg) == 0 else \
            np.asarray(msg, dtype=object)
        reasons[mask] = [m if pd.isna(r) else f"{r}; {m}" for r, m in zip(reasons[mask], msgs[mask])]

    pid = frame["patient_id"].astype(object)
    ok_pid = pid.astype(str).str.fullmatch(PATIENT_ID_RE).fillna(False).astype(bool) & pid.notna()
    add((~ok_pid & pd.Series(reasons).isna()).to_numpy(),
        ("patient id " + pid.astype(str).map(repr) + " must be 1-64 letters, digits, '_', '-' or '.'").to_numpy())
    start, end = frame["start"], frame["end"]
    sl, el = frame["start_local"], frame["end_local"]
    timed = (start.notna() & end.notna()).to_numpy()
    span = ((end - start).dt.total_seconds() / 60).to_numpy(dtype=float)
    before = timed & (span < 0)
    too_long = timed & (span > MAX_PERIOD_HOURS * 60)
    if before.any() or too_long.any():
        s_txt = sl.dt.strftime("%Y-%m-%dT%H:%M").to_numpy(dtype=object)
        e_txt = el.dt.strftime("%Y-%m-%dT%H:%M").to_numpy(dtype=object)
        add(before, "end " + pd.Series(e_txt) + " is before start " + pd.Series(s_txt))
        add(too_long, pd.Series(s_txt) + " to " + pd.Series(e_txt) + f" is longer than {MAX_PERIOD_HOURS:g} h; "
            "split it into separate sleep periods")
    no_time = ~timed & frame["night"].isna().to_numpy() & pd.isna(reasons)
    add(no_time, "start and end are missing")

    asleep = frame["minutes_asleep"].to_numpy(dtype=float)
    in_bed = frame["time_in_bed_minutes"].to_numpy(dtype=float).copy()
    in_bed = np.where(np.isnan(in_bed) & timed & (span >= 0), span, in_bed)
    add(asleep < 0, "minutes asleep " + pd.Series(asleep).map("{:g}".format) + " is negative")
    add(in_bed < 0, "time in bed " + pd.Series(in_bed).map("{:g}".format) + " minutes is negative")
    over = asleep > in_bed + ASLEEP_TOLERANCE_MINUTES
    add(over, "minutes asleep " + pd.Series(asleep).map("{:g}".format) + " is more than the time in bed ("
        + pd.Series(in_bed).map("{:g}".format) + " minutes)")
    eff = frame["efficiency"].to_numpy(dtype=float)
    add((eff < 0) | (eff > 100), "efficiency " + pd.Series(eff).map("{:g}".format) + " is outside 0-100")
    awake = frame["awakenings"].to_numpy(dtype=float)
    add(awake < 0, "awakenings " + pd.Series(awake).map("{:g}".format) + " is negative")

    night = frame["night"].where(frame["night"].notna(), el.dt.strftime("%Y-%m-%d"))
    # after today where the patient lives: a wearable synced at 7 in the morning in Auckland is a UTC server's
    # yesterday evening
    future, said = options.after_today(night, options.zones(pid, known))
    add(future, ("the night ending " + night.fillna("?") + " is in the future " + said).to_numpy())

    bad = pd.notna(reasons)
    if cells is not None and bad.any():
        raw = frame["raw"].to_numpy(dtype=object).copy()
        raw[bad] = raw_rows(cells, bad)
        frame = frame.assign(raw=raw)
    rejects = [(None if pd.isna(ln) else int(ln), r, raw if raw is not None else "", p if isinstance(p, str) else None)
               for ln, r, raw, p in zip(frame["line"][bad], reasons[bad], frame["raw"][bad], pid[bad])]
    good = frame.loc[~bad]
    out = pd.DataFrame({"patient_id": good["patient_id"].astype(object), "source": good["source"].astype(object)})
    out["start"] = _utc_text(good["start"])
    out["end"] = _utc_text(good["end"])
    out["start_local"] = _local_text(good["start_local"])
    out["end_local"] = _local_text(good["end_local"])
    out["local_date"] = night[~bad].astype(object)
    out["period_key"] = out["start"].where(out["start"].notna(), "night:" + out["local_date"])
    offset = ((good["end_local"] - good["end"].dt.tz_localize(None)).dt.total_seconds() / 60).round()
    out["tz_offset_minutes"] = offset.astype("Int64").astype(object).where(offset.notna(), None)
    out["minutes_asleep"] = good["minutes_asleep"].round(2)
    out["time_in_bed_minutes"] = pd.Series(in_bed[~bad], index=good.index).round(2)
    computed = (100 * out["minutes_asleep"] / out["time_in_bed_minutes"]).where(out["time_in_bed_minutes"] > 0)
    out["efficiency"] = good["efficiency"].fillna(computed.clip(upper=100)).round(1)
    out["device_efficiency"] = good["device_efficiency"]
    out["awakenings"] = good["awakenings"]
    out["_seq"] = np.arange(len(out))
    out["_line"] = good["line"].to_numpy(dtype=object)
    out["_raw"] = good["raw"].to_numpy(dtype=object)
    out["_s"] = good["start"].to_numpy(dtype="datetime64[ns]").astype("int64")
    out["_e"] = good["end"].to_numpy(dtype="datetime64[ns]").astype("int64")
    return out.reset_index(drop=True), rejects


def _utc_text(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").where(ts.notna(), None).astype(object)


def _local_text(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%S").where(ts.notna(), None).astype(object)


def _resolve_patients(db, good: pd.DataFrame, rejects: list, options: ImportOptions, known: dict,
                      result: ImportResult) -> tuple[pd.DataFrame, list]:
    """Rows of unknown patients are quarantined, or the patients created with ``--create-patients``."""
    unknown = ~good["patient_id"].isin(list(known))
    if not unknown.any():
        return good, rejects
    new = sorted(set(good.loc[unknown, "patient_id"]))
    if options.create_patients:
        db.conn.executemany(
            "INSERT OR IGNORE INTO patients (patient_id, timezone, source, imported_at) VALUES (?, ?, ?, ?)",
            [(p, options.default_timezone, "created on sleep import", storage.utcnow_text()) for p in new])
        known.update(dict.fromkeys(new, options.default_timezone))
        result.messages.append(f"created {len(new)} new patient(s) with time zone {options.default_timezone}: "
                               f"{', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
        return good, rejects
    for pid, line, raw in zip(good.loc[unknown, "patient_id"], good.loc[unknown, "_line"],
                              good.loc[unknown, "_raw"]):
        rejects.append((None if pd.isna(line) else int(line),
                        f"patient {pid!r} is not known; import it first or pass --create-patients", raw or "", pid))
    return good.loc[~unknown].reset_index(drop=True), rejects


_SCRATCH = ["_seq", "_s", "_e", "_line", "_raw"]


def _last_of_overlaps(good: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Of periods of one patient and source in this file that overlap each other, keep the last in the file."""
    timed = good["start"].notna()
    g = good[timed].sort_values(["patient_id", "source", "start", "_seq"])
    if len(g) < 2:
        return good.drop(columns=_SCRATCH), 0
    same = (g["patient_id"].eq(g["patient_id"].shift()) & g["source"].eq(g["source"].shift())).to_numpy()
    run_end = g.groupby(["patient_id", "source"], sort=False)["_e"].cummax().to_numpy()
    tol = int(OVERLAP_TOLERANCE_MINUTES * 60 * 1e9)
    overlap = same & np.concatenate([[False], g["_s"].to_numpy()[1:] < run_end[:-1] - tol])
    cluster = np.cumsum(~overlap)
    winner = g.groupby(cluster)["_seq"].transform("max").to_numpy()
    keep_seq = set(g["_seq"][g["_seq"].to_numpy() == winner]) | set(good.loc[~timed, "_seq"])
    kept = good[good["_seq"].isin(keep_seq)].drop(columns=_SCRATCH)
    return kept, len(good) - len(kept)


# ------------------------------------------------------------------------------------------ writing

def _write(db: sqlite_utils.Database, good: pd.DataFrame) -> tuple[int, int, int, list[str]]:
    """Replace stored same-source periods that overlap a new one, then upsert by key. In a transaction."""
    conn = db.conn
    conn.execute("DROP TABLE IF EXISTS temp.sleep_incoming")
    conn.execute('CREATE TEMP TABLE sleep_incoming (patient_id TEXT, source TEXT, period_key TEXT, start TEXT, '
                 '"end" TEXT, lo TEXT, start_plus TEXT, end_minus TEXT)')
    timed = good[good["start"].notna()]
    s = pd.to_datetime(timed["start"], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    e = pd.to_datetime(timed["end"], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    tol = pd.Timedelta(minutes=OVERLAP_TOLERANCE_MINUTES)
    staged = pd.DataFrame({"patient_id": timed["patient_id"], "source": timed["source"],
                           "period_key": timed["period_key"], "start": timed["start"], "end": timed["end"],
                           "lo": _utc_text(s - pd.Timedelta(hours=MAX_PERIOD_HOURS)),
                           "start_plus": _utc_text(s + tol), "end_minus": _utc_text(e - tol)})
    conn.executemany("INSERT INTO temp.sleep_incoming VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     staged.itertuples(index=False, name=None))
    # Stored periods of the same patient and source overlapping a new one by more than the tolerance
    # (periods last at most 24 h, so a stored start after `lo` bounds the index range).
    overlapped = conn.execute(
        'DELETE FROM sleep_periods WHERE rowid IN (SELECT s.rowid FROM temp.sleep_incoming t JOIN sleep_periods s '
        'ON s.patient_id = t.patient_id AND s.source = t.source AND s.start > t.lo AND s.start < t.end_minus '
        'AND s."end" > t.start_plus AND s.period_key <> t.period_key)').rowcount
    conn.execute("DROP TABLE temp.sleep_incoming")
    rows = good[STORED_COLUMNS].astype(object).where(good[STORED_COLUMNS].notna(), None)
    ins, rep, unch, changed = storage.upsert_rows(db, "sleep_periods", STORED_COLUMNS,
                                                  rows.itertuples(index=False, name=None), KEY,
                                                  ignore_in_compare=("file", "imported_at"))
    if overlapped:
        changed = sorted(set(changed) | set(good["patient_id"]))
        ins = max(ins - overlapped, 0)
        rep += overlapped
    return ins, rep, unch, changed


# ------------------------------------------------------------------------------------------ reading

_EPOCH = "unixepoch({})" if sqlite3.sqlite_version_info >= (3, 38) else "CAST(strftime('%s', {}) AS INTEGER)"
_PERIOD_SQL = (
    "SELECT s.patient_id, s.source, " + ", ".join(_EPOCH.format(c) for c in ("s.start", 's."end"', "s.start_local",
                                                                               "s.end_local", "s.local_date"))
    + ", s.minutes_asleep, s.time_in_bed_minutes, s.efficiency, s.awakenings{extra} FROM sleep_periods s")
_NUMERIC = ["start", "end", "start_local", "end_local", "day", "minutes_asleep", "time_in_bed_minutes",
            "efficiency", "awakenings"]


def period_sql(extra: str = "") -> str:
    """The periods' query without its WHERE (``extra``: more columns of ``sleep_periods s``)."""
    return _PERIOD_SQL.format(extra=extra)


def load_periods(db: sqlite_utils.Database, patient_ids: Iterable[str] | None = None,
                 as_of: date | None = None, *, with_rowid: bool = False) -> pd.DataFrame:
    """Stored periods in one query, as numbers: ``start``/``end`` epoch seconds (NaN for a date-only night),
    ``start_local``/``end_local`` local wall-clock seconds since 1970-01-01 local, ``day`` the local date's
    midnight in the same local seconds, minutes as floats; plus ``patient_id``, ``source`` (and ``rowid``, ``is_nap``)."""
    columns = _read_periods(db, patient_ids, as_of, with_rowid=with_rowid)
    names = list(columns)
    df = pd.DataFrame({n: columns[n] for n in names[2:]}, columns=names[2:])
    df.insert(0, "source", columns["source"])
    df.insert(0, "patient_id", columns["patient_id"])
    return df


def _read_periods(db: sqlite_utils.Database, patient_ids: Iterable[str] | None, as_of: date | None, *,
                  with_rowid: bool = False) -> dict[str, np.ndarray]:
    """:func:`load_periods` as numpy columns (object ``patient_id``, ``source``; float the others), for
    :func:`nightly`, which needs no DataFrame of them."""
    where, params = [], []
    ids = None if patient_ids is None else list(dict.fromkeys(patient_ids))
    cut = None if as_of is None else pd.Timestamp(as_of).strftime("%Y-%m-%d")
    if ids is not None and cut is not None and not with_rowid:  # the cycle's reading: from the packs
        from trigger_watch import packs

        packed = packs.read(db.conn, "sleep_periods", ids, cut)
        if packed is not None:
            return {n: packed[n].to_numpy(zero_copy_only=False) for n in ("patient_id", "source", *_NUMERIC)}
    if ids is not None:  # any number of ids, one parameter, through the patient index
        where.append(storage.patients_in("s.patient_id"))
        params.append(json.dumps(ids))
    if cut is not None:
        where.append("s.local_date <= ?")
        params.append(cut)
    sql = period_sql(", s.rowid, s.is_nap" if with_rowid else "")
    if where:
        sql += " WHERE " + " AND ".join(where)
    names = ["patient_id", "source", *_NUMERIC] + (["rowid", "is_nap"] if with_rowid else [])
    # Through one 2-D object array: far cheaper than DataFrame.from_records or zip(*rows) on millions of rows;
    # np.fromiter over the chained rows builds it in half the time np.array(rows) takes to probe their shape.
    with storage.collector_paused():
        rows = db.conn.execute(sql, params).fetchall()
        arr = np.fromiter(itertools.chain.from_iterable(rows), dtype=object, count=len(rows) * len(names))
        arr = arr.reshape(len(rows), len(names))
        del rows
    numbers = arr[:, 2:].astype(float)  # None -> NaN
    out = {"patient_id": arr[:, 0], "source": arr[:, 1]}
    out.update((n, numbers[:, i]) for i, n in enumerate(names[2:]))
    return out


@dataclass
class _Blocks:
    """Sleep blocks: periods of one patient and source less than MERGE_GAP_MINUTES apart (arrays per block)."""

    row_block: np.ndarray  # block number of every period, in the input's order
    pid: np.ndarray        # patient code (into ``patients``)
    src: np.ndarray        # source code (into ``sources``)
    day: np.ndarray        # local date of the block's end, days since 1970-01-01
    start: np.ndarray      # epoch seconds, NaN for a date-only night
    bedtime: np.ndarray    # hours from the local midnight before ``day``
    wake_time: np.ndarray  # hours after that midnight
    asleep: np.ndarray     # minutes, NaN unknown
    in_bed: np.ndarray     # minutes, NaN unknown
    efficiency: np.ndarray
    awakenings: np.ndarray
    is_main: np.ndarray    # the longest block of its patient, source and day
    size: np.ndarray       # minutes in bed (asleep when in bed is unknown)
    patients: np.ndarray
    sources: np.ndarray


def _nansum_at(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sums over consecutive runs starting at ``idx``; NaN where every value of a run is NaN."""
    known = ~np.isnan(values)
    total = np.add.reduceat(np.where(known, values, 0.0), idx)
    return np.where(np.add.reduceat(known.astype(np.int64), idx) > 0, total, np.nan)


def _blocks(p: dict[str, np.ndarray]) -> _Blocks:
    """Group periods (the columns of :func:`_read_periods`) into blocks and pick each patient/source/day's main
    block. Vectorised (numpy)."""
    pid, patients = pd.factorize(p["patient_id"], sort=True)
    src, sources = pd.factorize(p["source"])
    start = p["start"]
    timed = ~np.isnan(start)
    big = np.int64(1) << np.int64(34)  # > any epoch second until 2514
    group_all = pid.astype(np.int64) * (len(sources) + 1) + src
    # One int64 key sorts by patient, source, start (date-only nights last in their group).
    order = np.argsort(group_all * big + np.where(timed, np.nan_to_num(start), big - 1).astype(np.int64),
                       kind="stable")
    pid_s, src_s, timed_s, group = pid[order], src[order], timed[order], group_all[order]
    s = start[order]
    e = p["end"][order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    # Running latest end within each group: offset each group so one global cumulative max never crosses groups.
    e_int = np.where(timed_s, np.nan_to_num(e), 0).astype(np.int64)
    run_end = np.maximum.accumulate(group * big + e_int) - group * big
    prev_end = np.concatenate([[np.iinfo(np.int64).min // 2], run_end[:-1]])
    prev_timed = np.concatenate([[False], timed_s[:-1]])
    brk = new_group | ~timed_s | ~prev_timed | (s > prev_end + MERGE_GAP_MINUTES * 60)
    idx = np.flatnonzero(brk)
    block_sorted = np.cumsum(brk) - 1
    row_block = np.empty(len(order), dtype=np.int64)
    row_block[order] = block_sorted

    e_fill = np.where(timed_s, e, -np.inf)
    b_end = np.maximum.reduceat(e_fill, idx)
    is_last = e_fill == b_end[block_sorted]
    last = np.maximum.reduceat(np.where(is_last, np.arange(len(order)), -1), idx)  # row with the latest end
    day = np.floor(p["day"][order][last] / 86400)
    midnight = day * 86400.0
    asleep = _nansum_at(p["minutes_asleep"][order], idx)
    in_bed = _nansum_at(p["time_in_bed_minutes"][order], idx)
    count = np.diff(np.append(idx, len(order)))
    ratio = np.where(in_bed > 0, np.minimum(100 * asleep / np.where(in_bed > 0, in_bed, 1), 100), np.nan)
    efficiency = np.where(count > 1, np.round(ratio, 1), p["efficiency"][order][idx])
    size = np.nan_to_num(np.where(np.isnan(in_bed), asleep, in_bed))
    b_pid, b_src, b_start = pid_s[idx], src_s[idx], s[idx]
    b_key = group[idx] * np.int64(1 << 20) + day.astype(np.int64)  # patient, source, day
    rank = np.lexsort((np.nan_to_num(b_start, nan=np.inf), -size, b_key))
    first = np.ones(len(rank), dtype=bool)
    first[1:] = b_key[rank][1:] != b_key[rank][:-1]
    is_main = np.zeros(len(idx), dtype=bool)
    is_main[rank[first]] = True
    return _Blocks(row_block=row_block, pid=b_pid, src=b_src, day=day, start=b_start,
                   bedtime=(p["start_local"][order][idx] - midnight) / 3600,
                   wake_time=(p["end_local"][order][last] - midnight) / 3600,
                   asleep=asleep, in_bed=in_bed, efficiency=efficiency,
                   awakenings=_nansum_at(p["awakenings"][order], idx),
                   is_main=is_main, size=size, patients=np.asarray(patients, dtype=object),
                   sources=np.asarray(sources, dtype=object))


def refresh_naps(db: sqlite_utils.Database, patient_ids: list[str], *, nap_max_hours: float = 3.0) -> int:
    """Recompute ``is_nap`` of these patients' periods: outside their day's main block and shorter than
    ``nap_max_hours`` (in bed). Run after an import, inside its transaction. Returns rows changed."""
    p = _read_periods(db, patient_ids, None, with_rowid=True)
    if not len(p["patient_id"]):
        return 0
    b = _blocks(p)
    nap_block = ~b.is_main & (b.size < nap_max_hours * 60)
    nap = nap_block[b.row_block].astype(int)
    changed = nap != p["is_nap"]
    db.conn.executemany("UPDATE sleep_periods SET is_nap = ? WHERE rowid = ?",
                        zip(nap[changed].tolist(), p["rowid"][changed].tolist()))
    return int(changed.sum())


def nightly(db: sqlite_utils.Database, patient_ids: Iterable[str] | None = None,
            as_of: date | None = None) -> pd.DataFrame:
    """One row per patient and local date on which a main sleep ended (the night before that day).

    The main sleep of a date is the longest (by time in bed) sleep block ending on it; a block is the periods of one
    source less than ``MERGE_GAP_MINUTES`` apart (a night split by a tracker restart counts whole). Each night
    comes from one source only (the one with the longest main sleep), so sources never add up.

    Columns: ``patient_id``; ``date`` (datetime64, local day the sleep ended); ``sleep_hours`` (hours asleep in the
    main sleep, NaN when only time in bed is known); ``efficiency`` (0-100, asleep / in bed of the main sleep);
    ``awakenings`` (count, NaN unknown); ``bedtime`` (local clock hours from the midnight before ``date``:
    23:30 -> -0.5, 00:30 -> 0.5); ``wake_time`` (local hours after midnight); ``time_in_bed_hours``;
    ``nap_hours`` (hours asleep in the other sleep blocks of that source that ended that day, 0 when none; NaN for
    a date-only source such as Fitabase); ``source``. Fitabase nights have no clock times: bedtime and wake_time
    are NaN.
    """
    p = _read_periods(db, patient_ids, as_of)
    if not len(p["patient_id"]):
        out = pd.DataFrame({c: pd.Series(dtype=float) for c in NIGHTLY_COLUMNS})
        out["patient_id"] = out["patient_id"].astype(object)
        out["source"] = out["source"].astype(object)
        out["date"] = pd.Series(dtype="datetime64[ns]")
        return out
    b = _blocks(p)
    # Non-main sleep of each patient/source/day (blocks sorted so each such group is one run).
    nsrc = len(b.sources) + 1
    key = (b.pid.astype(np.int64) * nsrc + b.src) * np.int64(1 << 20) + b.day.astype(np.int64)
    order = np.argsort(key, kind="stable")
    gstart = np.ones(len(order), dtype=bool)
    gstart[1:] = key[order][1:] != key[order][:-1]
    gidx = np.flatnonzero(gstart)
    other = np.where(b.is_main[order], 0.0, np.nan_to_num(b.asleep[order]))
    naps_sorted = np.add.reduceat(other, gidx)[np.cumsum(gstart) - 1]
    naps = np.empty(len(order))
    naps[order] = naps_sorted
    # One source per night: the main block with the most time in bed (then the earliest).
    m = np.flatnonzero(b.is_main)
    night = b.pid[m].astype(np.int64) * np.int64(1 << 20) + b.day[m].astype(np.int64)
    rank_m = np.lexsort((np.nan_to_num(b.start[m], nan=np.inf), -b.size[m], night))
    rank = m[rank_m]
    first = np.ones(len(rank), dtype=bool)
    first[1:] = night[rank_m][1:] != night[rank_m][:-1]
    n = rank[first]
    timed = ~np.isnan(b.start[n])
    out = pd.DataFrame({
        "patient_id": b.patients[b.pid[n]],
        "date": (b.day[n].astype(np.int64) * 86400 * 10**9).astype("datetime64[ns]"),
        "sleep_hours": b.asleep[n] / 60,
        "efficiency": b.efficiency[n],
        "awakenings": b.awakenings[n],
        "bedtime": b.bedtime[n],
        "wake_time": b.wake_time[n],
        "time_in_bed_hours": b.in_bed[n] / 60,
        "nap_hours": np.where(timed, naps[n] / 60, np.nan),
        "source": b.sources[b.src[n]],
    })
    return out  # already in patient, date order (patient codes are sorted, ``rank`` sorts by patient and day)
