"""Device sleep exports -> one table of sleep periods (pure parsing; nothing is written here).

Every parser turns one file into a :data:`PERIOD_COLUMNS` frame, one row per sleep period, with true UTC
instants and the local wall-clock times of the place where the sleep happened. Rows the parser cannot
read carry a ``reason``; :mod:`trigger_watch.sleep` validates the rest, quarantines and stores.

Time zones differ per format (``docs/sleep.md`` has the details):

=====================  ============================================================================
format                 how a true instant and the local date are found
=====================  ============================================================================
generic                ISO 8601 with an offset, or local time in the patient's time zone
fitbit                 local device time without offset -> the patient's time zone
fitabase               a date only: the night that ended on ``SleepDay`` (no clock times)
oura                   ISO 8601 with the ring's offset; local = as written
apple-health           ``startDate``/``endDate`` carry an offset (of the exporting phone); local
                       time from the record's ``HKTimeZone`` metadata, else the patient's zone
sleep-as-android       ``Id`` is the start in epoch ms; ``From``/``To`` are local in the ``Tz`` column
=====================  ============================================================================
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any
from xml.parsers import expat
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from trigger_watch.errors import InputFileError

#: One row per sleep period. ``start``/``end``: UTC datetime64 (NaT for a date-only night);
#: ``start_local``/``end_local``: naive local wall-clock datetime64; ``night``: ``YYYY-MM-DD`` for a
#: date-only row (else None, the date comes from ``end_local``); minutes are float minutes; ``efficiency``
#: 0-100 as given by the file (None: computed later as asleep / in bed); ``device_efficiency`` the device's
#: own score, kept for reference; ``reason``: why the parser could not read the row (None when it could).
PERIOD_COLUMNS = ["line", "patient_id", "start", "end", "start_local", "end_local", "night", "minutes_asleep",
                  "time_in_bed_minutes", "efficiency", "device_efficiency", "awakenings", "source", "raw",
                  "reason"]

#: Sleep periods (of one source) closer than this are one sleep, minutes (Apple records; nightly blocks).
MERGE_GAP_MINUTES = 60.0

DEVICE_FORMATS = ("fitbit", "fitabase", "oura", "apple-health", "sleep-as-android")
_ALIASES = {"apple_health": "apple-health", "applehealth": "apple-health", "apple": "apple-health",
            "sleep_as_android": "sleep-as-android", "sleepasandroid": "sleep-as-android", "saa": "sleep-as-android",
            "fitbit-export": "fitbit", "jsonl": "ndjson"}


def _open_csv(path: Path):
    """The file as text for the csv module (BOM dropped); one clear error when it cannot be opened."""
    try:
        return path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from None

#: How much of a file :func:`sniff_device_format` reads to tell a device export
_SNIFF_BYTES = 65536


def sniff_device_format(path: Path) -> tuple[str, str] | None:
    """The device export ``path`` is, told from its first bytes, and what told it; None for anything else
    (a generic table is read as its extension says). Apple Health: XML with ``HealthData``; Fitbit: JSON with
    ``dateOfSleep``; Oura: JSON with ``bedtime_start``; Sleep as Android: a CSV header starting
    ``Id,Tz,From,To``; Fitabase: a CSV header with ``Id``, ``SleepDay`` and ``TotalMinutesAsleep``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES).decode("utf-8-sig", errors="replace")
    except OSError:
        return None  # the reader says why
    text = head.lstrip()
    if text.startswith("<"):
        if "<HealthData" in head or "HKCategoryTypeIdentifierSleepAnalysis" in head:
            return "apple-health", "an Apple Health export (XML with HealthData)"
        return None
    if text.startswith(("{", "[")):
        if '"dateOfSleep"' in head:
            return "fitbit", "a Fitbit export (JSON with dateOfSleep)"
        if '"bedtime_start"' in head:
            return "oura", "an Oura export (JSON with bedtime_start)"
        return None
    first = next(csv.reader([text.split("\n", 1)[0].rstrip("\r")]), [])
    cells = [c.strip().lower() for c in first]
    if cells[:4] == ["id", "tz", "from", "to"]:
        return "sleep-as-android", "a Sleep as Android export (its header starts Id,Tz,From,To)"
    if {"id", "sleepday", "totalminutesasleep"} <= set(cells):
        return "fitabase", "a Fitabase sleepDay file (Id, SleepDay, TotalMinutesAsleep)"
    return None


def canonical_format(fmt: str | None) -> str | None:
    """``Apple_Health`` -> ``apple-health``; None stays None."""
    if fmt is None:
        return None
    f = fmt.strip().lower()
    return _ALIASES.get(f, f)


def empty_periods() -> pd.DataFrame:
    return period_frame([])


def period_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with any of PERIOD_COLUMNS) -> a typed period frame."""
    df = pd.DataFrame.from_records(rows, columns=PERIOD_COLUMNS)
    for col in ("start", "end"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("start_local", "end_local"):
        df[col] = pd.to_datetime(df[col]).astype("datetime64[ns]")
    for col in ("minutes_asleep", "time_in_bed_minutes", "efficiency", "device_efficiency", "awakenings"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("patient_id", "night", "source", "raw", "reason"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputFileError(f"time zone {name!r} is not an IANA name (e.g. Europe/Vienna)") from None


def localize(naive: datetime, tz: str) -> datetime:
    """Local wall-clock time in ``tz`` -> aware UTC datetime (a repeated autumn hour takes the first)."""
    aware = naive.replace(tzinfo=zone(tz), fold=0)
    utc = aware.astimezone(UTC)
    if utc.astimezone(zone(tz)).replace(tzinfo=None) != naive:  # spring-forward gap: shift forward
        utc = naive.replace(tzinfo=zone(tz), fold=1).astimezone(UTC)
    return utc


def to_local(utc: datetime, tz: str) -> datetime:
    return utc.astimezone(zone(tz)).replace(tzinfo=None)


def _num(v: Any, name: str, why: list[str]) -> float | None:
    """``v`` as a float; None when missing or empty (unknown). A value that is present but not a finite number
    is None too and appends a reason naming ``name`` and the value to ``why`` (the record is then quarantined)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        if isinstance(v, bool):
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        why.append(f"{name}={v!r} is not a number")
        return None
    if not np.isfinite(x):
        why.append(f"{name}={v!r} is not a finite number")
        return None
    return x


def _load_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path} is not valid JSON: {exc.msg} on line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path} is not UTF-8 text; export it again") from None


# ------------------------------------------------------------------------------------------ Fitbit

def parse_fitbit(path: Path, *, patient: str, tz: str) -> pd.DataFrame:
    """Fitbit Web API v1.2 ``{"sleep": [...]}`` (or several such responses in an array), or the data-export
    array of the same records. Times are local device time: they are placed in the patient's zone ``tz``.
    """
    data = _load_json(path)
    records: list[tuple[int, Any]] = []

    def collect(obj: Any) -> None:
        if isinstance(obj, dict) and isinstance(obj.get("sleep"), list):
            records.extend((len(records) + 1, r) for r in obj["sleep"])
        elif isinstance(obj, dict) and "startTime" in obj:
            records.append((len(records) + 1, obj))
        elif isinstance(obj, list):
            for o in obj:
                collect(o)
        else:
            records.append((len(records) + 1, obj))

    collect(data)
    if not records and not (isinstance(data, dict) and "sleep" in data):
        raise InputFileError(f"{path.name} does not look like a Fitbit sleep export (no 'sleep' list and no "
                             f"records with startTime); check --format")
    rows = []
    for n, rec in records:
        row: dict[str, Any] = {"line": n, "patient_id": patient, "source": "fitbit",
                               "raw": json.dumps(_without_levels(rec), ensure_ascii=False)[:2000]}
        if not isinstance(rec, dict):
            row["reason"] = "record is not a JSON object"
            rows.append(row)
            continue
        try:
            start_l = datetime.fromisoformat(str(rec["startTime"]))
            end_l = datetime.fromisoformat(str(rec["endTime"]))
        except (KeyError, ValueError):
            row["reason"] = (f"startTime={rec.get('startTime')!r} / endTime={rec.get('endTime')!r} are not "
                             f"local date-times like 2025-03-29T22:11:30.000")
            rows.append(row)
            continue
        start_l, end_l = start_l.replace(tzinfo=None), end_l.replace(tzinfo=None)
        levels = rec.get("levels") if isinstance(rec.get("levels"), dict) else {}
        summary = levels.get("summary") if isinstance(levels.get("summary"), dict) else {}
        wake_key = "wake" if summary.get("wake") else "awake"
        wake = summary.get(wake_key) or {}
        why: list[str] = []
        awakenings = _num(rec.get("awakeningsCount"), "awakeningsCount", why)
        if awakenings is None and isinstance(wake, dict):
            awakenings = _num(wake.get("count"), f"levels.summary.{wake_key}.count", why)
        row.update(start=localize(start_l, tz), end=localize(end_l, tz), start_local=start_l, end_local=end_l,
                   minutes_asleep=_num(rec.get("minutesAsleep"), "minutesAsleep", why),
                   time_in_bed_minutes=_num(rec.get("timeInBed"), "timeInBed", why),
                   device_efficiency=_num(rec.get("efficiency"), "efficiency", why), awakenings=awakenings)
        if why:
            row["reason"] = "; ".join(why)
        rows.append(row)
    return period_frame(rows)


def _without_levels(rec: Any) -> Any:
    if isinstance(rec, dict) and "levels" in rec:
        return {k: v for k, v in rec.items() if k != "levels"}
    return rec


# ------------------------------------------------------------------------------------------ Fitabase

def read_id_map(source: Any) -> dict[str, str]:
    """The Fitabase ``Id`` -> patient id map: a dict, or a CSV file ``fitabase_id,patient_id``."""
    if not source:
        return {}
    if isinstance(source, dict):
        return {str(k).strip(): str(v).strip() for k, v in source.items()}
    p = Path(source)
    if not p.is_file():
        raise InputFileError(f"Fitabase id map {str(p)!r} does not exist (a CSV with columns fitabase_id,patient_id)")
    with p.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "fitabase_id" not in fields or "patient_id" not in fields:
            raise InputFileError(f"Fitabase id map {p.name} needs the header fitabase_id,patient_id (has {fields})")
        out = {}
        for r in reader:
            r = {k.strip().lower(): (v or "").strip() for k, v in r.items() if k}
            if r.get("fitabase_id") and r.get("patient_id"):
                out[r["fitabase_id"]] = r["patient_id"]
        return out


def parse_fitabase(path: Path, *, patient: str | None, id_map: dict[str, str]) -> pd.DataFrame:
    """``sleepDay_merged.csv``: one row per Id and night; ``SleepDay`` (``4/12/2016 12:00:00 AM``) is the date the
    night ended. Only the date is known, so start/end stay empty. With ``id_map`` the Id is mapped to a patient
    (an Id not in the map is a rejected row); without it, ``patient`` if given (the file must then hold one Id),
    else the Id itself is the patient id.
    """
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        names = [h.strip() for h in next(reader, [])]
        header = [h.lower() for h in names]
        need = ["id", "sleepday", "totalminutesasleep", "totaltimeinbed"]
        if any(n not in header for n in need):
            raise InputFileError(f"{path.name} is not a Fitabase sleepDay file: it needs the columns "
                                 f"Id,SleepDay,TotalSleepRecords,TotalMinutesAsleep,TotalTimeInBed")
        col = {h: i for i, h in enumerate(header)}
        rows = []
        prev = reader.line_num
        for rec in reader:
            line, prev = prev + 1, reader.line_num
            if not rec or all(not c.strip() for c in rec):
                continue
            raw = ",".join(rec)
            row: dict[str, Any] = {"line": line, "source": "fitabase", "raw": raw}
            if len(rec) != len(header):
                row["reason"] = f"has {len(rec)} values but the header has {len(header)} columns"
                rows.append(row)
                continue
            fid = rec[col["id"]].strip()
            row["patient_id"] = id_map.get(fid) if id_map else (patient or fid)
            why: list[str] = []
            if id_map and fid not in id_map:
                why.append(f"Fitabase Id {fid} is not in the id map; add a line '{fid},<patient_id>' to it")
            day_text = rec[col["sleepday"]].strip()
            try:
                day = datetime.strptime(day_text.split(" ")[0], "%m/%d/%Y").date()
                row["night"] = day.isoformat()
            except ValueError:
                why.append(f"SleepDay={day_text!r} is not a date like 4/12/2016 12:00:00 AM")
            for key, out in (("totalminutesasleep", "minutes_asleep"), ("totaltimeinbed", "time_in_bed_minutes")):
                row[out] = _num(rec[col[key]].strip(), names[col[key]], why)
            if why:
                row["reason"] = "; ".join(why)
            row["_fid"] = fid
            rows.append(row)
    if patient and not id_map:
        ids = {r.get("_fid") for r in rows if r.get("_fid")}
        if len(ids) > 1:
            raise InputFileError(f"{path.name} holds {len(ids)} Fitabase Ids; --patient names only one. Map them with "
                                 f"a CSV fitabase_id,patient_id (config sleep.fitabase_id_map) or drop --patient")
    for r in rows:
        r.pop("_fid", None)
    return period_frame(rows)


# ------------------------------------------------------------------------------------------ Oura

def parse_oura(path: Path, *, patient: str) -> pd.DataFrame:
    """Oura API v2 ``usercollection/sleep`` page(s): ``{"data": [...], "next_token": ...}``, an array of such
    pages, or an array of sleep periods. Durations are seconds; times carry the ring's offset."""
    data = _load_json(path)
    items: list[Any] = []

    def collect(obj: Any) -> None:
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            items.extend(obj["data"])
        elif isinstance(obj, list):
            for o in obj:
                collect(o)
        else:
            items.append(obj)

    collect(data)
    rows = []
    for n, rec in enumerate(items, start=1):
        slim = {k: v for k, v in rec.items() if k not in ("heart_rate", "hrv", "movement_30_sec",
                                                           "sleep_phase_30_sec")} if isinstance(rec, dict) else rec
        row: dict[str, Any] = {"line": n, "patient_id": patient, "source": "oura",
                               "raw": json.dumps(slim, ensure_ascii=False)[:2000]}
        rows.append(row)
        if not isinstance(rec, dict):
            row["reason"] = "record is not a JSON object"
            continue
        if rec.get("type") == "deleted":
            row["reason"] = "the period was deleted in the Oura app (type 'deleted')"
            continue
        try:
            s = datetime.fromisoformat(str(rec["bedtime_start"]))
            e = datetime.fromisoformat(str(rec["bedtime_end"]))
            if s.tzinfo is None or e.tzinfo is None:
                raise ValueError
        except (KeyError, ValueError):
            row["reason"] = (f"bedtime_start={rec.get('bedtime_start')!r} / bedtime_end={rec.get('bedtime_end')!r} "
                             f"are not ISO date-times with an offset")
            continue
        why: list[str] = []
        asleep = _num(rec.get("total_sleep_duration"), "total_sleep_duration", why)
        in_bed = _num(rec.get("time_in_bed"), "time_in_bed", why)
        row.update(start=s.astimezone(UTC), end=e.astimezone(UTC),
                   start_local=s.replace(tzinfo=None), end_local=e.replace(tzinfo=None),
                   minutes_asleep=None if asleep is None else asleep / 60,
                   time_in_bed_minutes=None if in_bed is None else in_bed / 60,
                   device_efficiency=_num(rec.get("efficiency"), "efficiency", why),
                   awakenings=_awake_runs(rec.get("sleep_phase_5_min"), awake="4"))
        if why:
            row["reason"] = "; ".join(why)
    return period_frame(rows)


def _awake_runs(hypnogram: Any, awake: str) -> float | None:
    """Awake runs between sleep in a hypnogram string (``"4433322211..."``); None when there is none."""
    if not isinstance(hypnogram, str) or not hypnogram:
        return None
    inner = hypnogram.strip(awake)
    return float(len(re.findall(f"{re.escape(awake)}+", inner)))


# ------------------------------------------------------------------------------------------ Sleep as Android

_SAA_TIME = "%d. %m. %Y %H:%M"


def parse_sleep_as_android(path: Path, *, patient: str) -> pd.DataFrame:
    """``sleep-export.csv``: each record is a header line (``Id,Tz,From,To,...``) followed by its data line; the
    column count differs per record. ``Hours`` is the tracked length, ``LenAdjust`` minus the awake minutes."""
    rows = []
    header: list[str] | None = None
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        prev = 0
        try:
            for rec in reader:
                line, prev = prev + 1, reader.line_num
                if not rec or all(not c.strip() for c in rec):
                    continue
                if rec[0].strip() == "Id":
                    missing = [c for c in ("Tz", "From", "To") if c not in (h.strip() for h in rec)]
                    if missing:
                        raise InputFileError(
                            f"{path.name} line {line} has the header {','.join(h.strip() for h in rec[:5])}..., "
                            f"without Sleep as Android's {', '.join(missing)}: is it another kind of file? "
                            f"check --format")
                    header = rec
                    continue
                if header is None:
                    raise InputFileError(f"{path.name} line {line}: a Sleep as Android export starts with a header "
                                         f"line 'Id,Tz,From,To,...'; check --format")
                rows.append(_saa_record(header, rec, line, patient))
        except csv.Error as exc:
            raise InputFileError(f"{path.name} line {prev + 1} is not valid CSV ({exc})") from None
    if header is None:
        raise InputFileError(f"{path.name} has no 'Id,Tz,From,To,...' header line; is it a Sleep as Android export?")
    return period_frame(rows)


def _saa_record(header: list[str], rec: list[str], line: int, patient: str) -> dict:
    named = {h: v for h, v in zip(header[:15], rec[:15])}
    row: dict[str, Any] = {"line": line, "patient_id": patient, "source": "sleep-as-android",
                           "raw": json.dumps(named, ensure_ascii=False)}
    tz = named.get("Tz", "").strip()
    try:
        zone(tz)
        f = datetime.strptime(named.get("From", "").strip(), _SAA_TIME)
        t = datetime.strptime(named.get("To", "").strip(), _SAA_TIME)
    except (ValueError, InputFileError):
        row["reason"] = (f"Tz={tz!r}, From={named.get('From')!r}, To={named.get('To')!r}: expected an IANA zone and "
                         f"times like '14. 07. 2020 4:46'")
        return row
    why: list[str] = []
    ident, hours, adjust = (_num(named.get(k), k, why) for k in ("Id", "Hours", "LenAdjust"))
    if why:
        row["reason"] = "; ".join(why)
        return row
    start = (datetime.fromtimestamp(ident / 1000, UTC).replace(microsecond=0) if ident
             else localize(f, tz))
    end = start + timedelta(seconds=round(hours * 3600)) if hours is not None and hours >= 0 else localize(t, tz)
    adjust = adjust or 0.0
    in_bed = (end - start).total_seconds() / 60
    asleep = in_bed + adjust if -in_bed < adjust <= 0 else in_bed
    events = [c.split("-", 1)[0] for c in rec[15:] if c[:1].isalpha() and "-" in c]
    tracked = any(e.endswith(("_START", "_END")) and e != "TRACKING_STOPPED_BY_USER" for e in events)
    row.update(start=start, end=end, start_local=to_local(start, tz), end_local=to_local(end, tz),
               minutes_asleep=round(asleep, 2), time_in_bed_minutes=round(in_bed, 2),
               awakenings=float(events.count("AWAKE_START")) if tracked else None)
    return row


# ------------------------------------------------------------------------------------------ Apple Health

APPLE_SLEEP = "HKCategoryTypeIdentifierSleepAnalysis"
_BAD, _IN_BED, _ASLEEP, _AWAKE, _STAGE = -1, 0, 1, 2, 3  # _BAD: where a malformed record lies
_APPLE_VALUES = {"HKCategoryValueSleepAnalysisInBed": _IN_BED, "0": _IN_BED,
                 "HKCategoryValueSleepAnalysisAsleep": _ASLEEP, "HKCategoryValueSleepAnalysisAsleepUnspecified": _ASLEEP,
                 "1": _ASLEEP,
                 "HKCategoryValueSleepAnalysisAwake": _AWAKE, "2": _AWAKE,
                 "HKCategoryValueSleepAnalysisAsleepCore": _STAGE, "HKCategoryValueSleepAnalysisAsleepDeep": _STAGE,
                 "HKCategoryValueSleepAnalysisAsleepREM": _STAGE, "3": _STAGE, "4": _STAGE, "5": _STAGE}


def _apple_instant(text: str | None) -> int | None:
    """``2019-06-15 08:13:44 -0400`` -> epoch seconds; None when missing or not in that form."""
    try:
        return int(datetime.strptime((text or "").strip(), "%Y-%m-%d %H:%M:%S %z").timestamp())
    except ValueError:
        return None


_NP_TYPES = {"q": np.int64, "h": np.int16, "b": np.int8}
AppleRecord = tuple[int, dict[str, str], list[dict[str, str]]]


def iter_apple_sleep_records(path: Path) -> Iterator[AppleRecord]:
    """Stream ``export.xml`` through expat: yield ``(line, attributes, metadata entries)`` of every sleep
    ``Record`` (line: where its start tag is). Nothing else is kept, so memory stays flat for files of any size."""
    parser = expat.ParserCreate()
    done: list[AppleRecord] = []
    current: list[Any] = []  # the open sleep record: [line, attributes, metadata]
    seen_root = False

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal seen_root
        if tag == "MetadataEntry":
            if current:
                current[2].append(attrs)
        elif not seen_root:
            if tag != "HealthData":
                raise InputFileError(f"{path.name} is not an Apple Health export.xml (root <{tag}>, "
                                     f"expected <HealthData>)")
            seen_root = True
        elif tag == "Record" and attrs.get("type") == APPLE_SLEEP:
            current[:] = [parser.CurrentLineNumber, attrs, []]

    def end(tag: str) -> None:
        if tag == "Record" and current:
            done.append((current[0], current[1], current[2]))
            current.clear()

    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from None
    with fh:
        try:
            while chunk := fh.read(1 << 16):
                parser.Parse(chunk, False)
                yield from done
                done.clear()
            parser.Parse(b"", True)
        except expat.ExpatError as exc:
            raise InputFileError(f"{path.name} is not well-formed XML ({exc}); export it from the Health app "
                                 f"again") from None
    yield from done


def _apple_raw(attrs: dict[str, str], meta: list[dict[str, str]]) -> str:
    """A record as XML again, for a quarantined row."""
    elem = ET.Element("Record", attrs)
    for m in meta:
        ET.SubElement(elem, "MetadataEntry", m)
    return ET.tostring(elem, encoding="unicode")[:2000]


def _apple_problem(n: int, attrs: dict[str, str], kind: int | None, s: int | None, e: int | None) -> str | None:
    sd, ed = attrs.get("startDate"), attrs.get("endDate")
    if kind is None:
        return f"sleep record #{n}: value={attrs.get('value', '')!r} is not a known HKCategoryValueSleepAnalysis value"
    if s is None or e is None:
        return f"sleep record #{n}: startDate={sd!r} / endDate={ed!r} are not like '2019-06-15 08:13:44 -0400'"
    if e < s:
        return f"sleep record #{n}: endDate {ed} is before startDate {sd}"
    if e - s > 24 * 3600:
        return f"sleep record #{n}: {sd} to {ed} is longer than 24 h"
    return None


def _bad_anchors(attrs: dict[str, str], s: int | None, e: int | None) -> list[tuple[int, int]]:
    """Where a malformed record lies, as intervals, so the night it belongs to is quarantined with it: its span
    when both dates read and are at most 24 h apart, else each date that reads (``creationDate`` when neither
    does); none when no date reads."""
    if s is not None and e is not None and abs(e - s) <= 24 * 3600:
        return [(min(s, e), max(s, e))]
    points = [x for x in (s, e) if x is not None]
    if not points:
        c = _apple_instant(attrs.get("creationDate"))
        points = [] if c is None else [c]
    return [(x, x) for x in points]


def parse_apple_health(path: Path, *, patient: str, tz: str,
                       gap_minutes: float = MERGE_GAP_MINUTES) -> pd.DataFrame:
    """Apple Health ``export.xml`` sleep records -> merged sleep periods, streamed.

    All sources are merged: the records whose intervals (in bed, asleep, awake, stages) lie closer than
    ``gap_minutes`` form one period; its time in bed is the union of all of them, its minutes asleep the union of
    the asleep-type ones (so a Watch and a phone app covering the same night count once), awakenings the gaps
    between asleep intervals (known only when the period has Awake or stage records). A malformed record is a
    row with a reason of its own, and every other record of its period is quarantined with it (the period
    without it would replace a stored good one); rows carry the record's XML line.
    """
    starts, ends = array("q"), array("q")
    kinds, zones_ix, srcs = array("b"), array("h"), array("h")
    refs, lines = array("q"), array("q")  # record number (good) or index into ``bad`` (_BAD); XML line
    zone_names: dict[str, int] = {}
    source_names: dict[str, int] = {}
    bad: list[dict] = []
    for n, (line, attrs, meta) in enumerate(iter_apple_sleep_records(path), start=1):
        kind = _APPLE_VALUES.get(attrs.get("value", ""))
        s, e = _apple_instant(attrs.get("startDate")), _apple_instant(attrs.get("endDate"))
        reason = _apple_problem(n, attrs, kind, s, e)
        if reason:
            for a, b in _bad_anchors(attrs, s, e):
                starts.append(a)
                ends.append(b)
                kinds.append(_BAD)
                zones_ix.append(-1)
                srcs.append(-1)
                refs.append(len(bad))
                lines.append(line)
            bad.append({"line": line, "patient_id": patient, "source": "apple-health", "reason": reason,
                        "raw": _apple_raw(attrs, meta)})
            continue
        tzname = None
        for m in meta:
            if m.get("key") == "HKTimeZone":
                tzname = m.get("value")
        starts.append(s)
        ends.append(e)
        kinds.append(kind)
        zones_ix.append(zone_names.setdefault(tzname, len(zone_names)) if tzname else -1)
        srcs.append(source_names.setdefault(attrs.get("sourceName") or "?", len(source_names)))
        refs.append(n)
        lines.append(line)
    periods = _merge_apple(*(np.frombuffer(a, dtype=_NP_TYPES[a.typecode])
                             for a in (starts, ends, kinds, zones_ix, srcs, refs, lines)), gap_minutes)
    names_by_ix = {i: z for z, i in zone_names.items()}
    sources_by_ix = {i: s for s, i in source_names.items()}
    rows = []
    tainted: dict[int, str] = {}  # record number -> why its good record is quarantined
    for p in periods:
        if p["bad"]:
            first = bad[p["bad"][0]]
            why = f"another record of this night is malformed: {first['reason']} (line {first['line']})"
            if len(p["bad"]) > 1:
                why += f"; and {len(p['bad']) - 1} more"
            tainted.update(dict.fromkeys(p["good"], why))
            continue
        ztz = names_by_ix.get(p["zone"], tz) if p["zone"] >= 0 else tz
        try:
            zone(ztz)
        except InputFileError:
            ztz = tz
        s = datetime.fromtimestamp(p["start"], UTC)
        e = datetime.fromtimestamp(p["end"], UTC)
        rows.append({"line": p["line"], "patient_id": patient, "source": "apple-health", "start": s, "end": e,
                     "start_local": to_local(s, ztz), "end_local": to_local(e, ztz),
                     "minutes_asleep": p["asleep"], "time_in_bed_minutes": p["in_bed"],
                     "awakenings": p["awakenings"],
                     "raw": json.dumps({"records": p["records"],
                                        "sources": sorted(sources_by_ix[i] for i in p["sources"]),
                                        "time_zone": ztz})})
    if tainted:  # read again for their XML: only when a night has a malformed record
        for n, (line, attrs, meta) in enumerate(iter_apple_sleep_records(path), start=1):
            if n in tainted:
                bad.append({"line": line, "patient_id": patient, "source": "apple-health", "reason": tainted[n],
                            "raw": _apple_raw(attrs, meta)})
    return period_frame(rows + sorted(bad, key=lambda r: r["line"]))


def _union_pieces(s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted-by-start intervals -> their union as disjoint (starts, ends)."""
    if len(s) == 0:
        return s, e
    run_end = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    idx = np.flatnonzero(new)
    piece_end = np.maximum.reduceat(e, idx)
    return s[idx], piece_end


def _merge_apple(s: np.ndarray, e: np.ndarray, kind: np.ndarray, zone_ix: np.ndarray, src: np.ndarray,
                 ref: np.ndarray, line: np.ndarray, gap_minutes: float) -> list[dict]:
    """Group record intervals into periods (gaps < ``gap_minutes`` join) and measure unions per period. A period
    with a ``_BAD`` interval is not measured: it lists its good record numbers (``good``) and bad indexes (``bad``)."""
    if len(s) == 0:
        return []
    order = np.argsort(s, kind="stable")
    s, e, kind, zone_ix, src, ref, line = (a[order] for a in (s, e, kind, zone_ix, src, ref, line))
    run_end = np.maximum.accumulate(e)
    brk = np.ones(len(s), dtype=bool)
    brk[1:] = s[1:] > run_end[:-1] + gap_minutes * 60
    bounds = np.append(np.flatnonzero(brk), len(s))
    out = []
    for a, b in pairwise(bounds):
        ps, pe, pk = s[a:b], e[a:b], kind[a:b]
        is_bad = pk == _BAD
        if is_bad.any():
            out.append({"bad": sorted(set(ref[a:b][is_bad].tolist())), "good": ref[a:b][~is_bad].tolist()})
            continue
        bs, be = _union_pieces(ps, pe)
        asleep_mask = (pk == _ASLEEP) | (pk == _STAGE)
        sleep_s, sleep_e = _union_pieces(ps[asleep_mask], pe[asleep_mask])
        has_detail = bool(((pk == _AWAKE) | (pk == _STAGE)).any())
        zi = zone_ix[a:b][zone_ix[a:b] >= 0]
        out.append({
            "bad": [], "line": int(line[a:b].min()),
            "start": int(ps.min()), "end": int(pe.max()),
            "in_bed": float((be - bs).sum()) / 60,
            "asleep": float((sleep_e - sleep_s).sum()) / 60 if asleep_mask.any() else None,
            "awakenings": float(max(len(sleep_s) - 1, 0)) if has_detail and asleep_mask.any() else None,
            "zone": int(zi[np.argmax(pe[zone_ix[a:b] >= 0])]) if len(zi) else -1,
            "sources": set(src[a:b].tolist()), "records": int(b - a),
        })
    return out


# ------------------------------------------------------------------------------------------ dispatch

Parser = Callable[..., pd.DataFrame]
PARSERS: dict[str, Parser] = {"fitbit": parse_fitbit, "fitabase": parse_fitabase, "oura": parse_oura,
                              "apple-health": parse_apple_health, "sleep-as-android": parse_sleep_as_android}
