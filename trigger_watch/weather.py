"""Weather per grid cell: fetching from Open-Meteo, offline import, and daily values per patient-day.

Weather belongs to a **grid cell** (the patient's home rounded to ``weather.grid_degrees``, about the
model's 0.1 degree), never to a patient: every patient in a cell shares one series, and requests ask for
several cells at once. Hourly values are stored once in UTC (``weather_hourly``); each value records its
``source``: ``archive`` (reanalysis, final), ``forecast`` (recent days and tomorrow, replaced by archive
values once the archive has them, about ``archive_lag_days`` later) or ``import`` (a file).

``weather_days`` says per cell and UTC day how many hours are stored and how fresh they are, so a run asks
only for what is missing (:func:`fetch_weather`). :func:`daily_for_patients` turns hours into each
patient's local days in the patient's own time zone. The HTTP side (budget, retries) is in ``openmeteo``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import requests
import sqlite_utils

from trigger_watch import storage
from trigger_watch.errors import InputFileError, TriggerWatchError, WeatherError, WeatherRateLimited
from trigger_watch.openmeteo import (
    HOURLY_VARS,
    OpenMeteoClient,
    RateLimiter,
    WeatherOffline,
    WeatherRequestRejected,
    WeatherUnavailable,
    block_frame,
    call_weight,
    looks_like_open_meteo_csv,
    looks_like_open_meteo_json,
    read_block,
    read_open_meteo_csv,
)

# ------------------------------------------------------------------------------------------ schema

storage.register_migration(10, "weather: cells, hourly values, coverage, imported daily values, budget", [
    """CREATE TABLE weather_cells (
        cell_id TEXT PRIMARY KEY,
        latitude REAL NOT NULL, longitude REAL NOT NULL, grid_degrees REAL NOT NULL,
        grid_latitude REAL, grid_longitude REAL, elevation REAL,
        needed_from TEXT, needed_to TEXT,
        last_attempt_at TEXT, last_success_at TEXT, last_error TEXT
    )""",
    """CREATE TABLE weather_hourly (
        cell_id TEXT NOT NULL,
        time_utc TEXT NOT NULL,
        pressure_msl REAL, temperature_2m REAL, relative_humidity_2m REAL, precipitation REAL,
        source TEXT NOT NULL,
        fetched_on TEXT, fetched_at TEXT,
        PRIMARY KEY (cell_id, time_utc)
    ) WITHOUT ROWID""",
    """CREATE TABLE weather_days (
        cell_id TEXT NOT NULL, date_utc TEXT NOT NULL,
        hours INTEGER NOT NULL, final_hours INTEGER NOT NULL, fetched_on TEXT,
        PRIMARY KEY (cell_id, date_utc)
    ) WITHOUT ROWID""",
    """CREATE TABLE weather_daily (
        cell_id TEXT NOT NULL, date TEXT NOT NULL, utc_offset_seconds INTEGER,
        pressure_mean REAL, pressure_min REAL, pressure_max REAL,
        temperature_max REAL, temperature_min REAL, temperature_mean REAL,
        humidity REAL, precipitation REAL,
        source TEXT NOT NULL, imported_at TEXT,
        PRIMARY KEY (cell_id, date)
    )""",
    "CREATE TABLE weather_budget (at REAL NOT NULL, weight REAL NOT NULL)",
    "CREATE INDEX weather_budget_at ON weather_budget (at)",
])

storage.register_migration(11, "weather: local-day cache per cell and zone, change stamps", [
    "ALTER TABLE weather_days ADD COLUMN stamp INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX weather_days_stamp ON weather_days (stamp)",
    """CREATE TABLE weather_local_days (
        cell_id TEXT NOT NULL, tz TEXT NOT NULL, date TEXT NOT NULL, stamp INTEGER NOT NULL,
        pressure_mean REAL, pressure_min REAL, pressure_max REAL, temperature_max REAL, temperature_mean REAL,
        humidity REAL, precipitation REAL, rank INTEGER,
        PRIMARY KEY (cell_id, tz, date)
    ) WITHOUT ROWID""",
])

SOURCE_RANK = {"archive": 0, "import": 1, "forecast": 2}   # higher is worse
_RANK_SOURCE = {v: k for k, v in SOURCE_RANK.items()}
DAILY_COLUMNS = ["pressure_mean", "pressure_min", "pressure_max", "temperature_max", "temperature_min",
                 "temperature_mean", "humidity", "precipitation"]
OUTPUT_COLUMNS = ["patient_id", "date", "pressure_mean", "pressure_min", "pressure_max", "pressure_change",
                  "temperature_max", "temperature_mean", "temperature_change", "humidity", "precipitation",
                  "source"]
#: physically possible ranges (our units); values outside are quarantined (import) or dropped (fetch)
LIMITS = {"pressure_msl": (850.0, 1090.0, "hPa"), "temperature_2m": (-90.0, 60.0, "C"),
          "relative_humidity_2m": (0.0, 100.0, "%"), "precipitation": (0.0, 500.0, "mm")}
MIN_HOURS = 18          # a local day needs this many hourly values of a variable, else that value is NaN
MERGE_GAP_DAYS = 7      # missing runs closer than this are fetched as one range


# ------------------------------------------------------------------------------------------ cells

def cell_ids(lat: Any, lon: Any, grid: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid cells of points: ``(cell_id, centre_lat, centre_lon)``; ids look like ``"48.2,16.4"``."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    clat = np.round(np.round(lat / grid) * grid, 4) + 0.0
    clon = np.round(np.round(lon / grid) * grid, 4) + 0.0
    ids = np.array([f"{a:g},{b:g}" for a, b in zip(clat, clon)], dtype=object)
    return ids, clat, clon


def _grid_in_use(db: sqlite_utils.Database, default: float = 0.1) -> float:
    row = db.execute("SELECT grid_degrees FROM weather_cells ORDER BY last_attempt_at DESC LIMIT 1")
    row = row.fetchone()
    return float(row[0]) if row else default


def _ensure_cells(db: sqlite_utils.Database, cells: pd.DataFrame, grid: float) -> None:
    db.conn.executemany(
        "INSERT INTO weather_cells (cell_id, latitude, longitude, grid_degrees) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(cell_id) DO NOTHING",
        [(c, float(a), float(b), grid)
         for c, a, b in cells[["cell_id", "lat", "lon"]].itertuples(index=False)])


def _located_patients(db: sqlite_utils.Database, grid: float) -> pd.DataFrame:
    p = pd.read_sql("SELECT patient_id, timezone, latitude, longitude FROM patients "
                    "WHERE latitude IS NOT NULL AND longitude IS NOT NULL", db.conn)
    p["cell_id"], p["lat"], p["lon"] = cell_ids(p["latitude"], p["longitude"], grid)
    return p


# ------------------------------------------------------------------------------------------ storing

def _utc_text(t: pd.Series) -> np.ndarray:
    arr = t.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    return np.char.add(np.datetime_as_string(arr, unit="s").astype(str), "Z").astype(object)


def store_hourly(db: sqlite_utils.Database, cell_id: str, frame: pd.DataFrame, source: str, fetched_on: date,
                 ) -> tuple[int, int, int]:
    """Write hourly values of one cell (``time_utc`` datetime64 UTC + :data:`HOURLY_VARS`). In a transaction.

    Values are merged per variable: a missing value (NaN, or a variable the frame lacks) never replaces a
    stored one. Rows of the same hour are combined first, per variable the last value given. Forecast
    values never replace archive or imported ones, and an hour with no value at all changes nothing. The
    stored ``source`` is the incoming one, or the worse of the two when stored values of the hour survive
    (an import of humidity alone over a forecast hour stays ``forecast``). Returns ``(new, replaced,
    unchanged)`` hours.
    """
    if frame.empty:
        return 0, 0, 0
    f = pd.DataFrame({"time_utc": _utc_text(frame["time_utc"])})
    for v in HOURLY_VARS:
        f[v] = frame[v].to_numpy(dtype=float) if v in frame else np.nan
    if f["time_utc"].duplicated().any():    # last() skips NaN: per variable the last value given
        f = f.groupby("time_utc", sort=False, as_index=False).last()
    olds = ["o_p", "o_t", "o_h", "o_r"]
    old = pd.read_sql(
        "SELECT time_utc, pressure_msl AS o_p, temperature_2m AS o_t, relative_humidity_2m AS o_h, "
        "precipitation AS o_r, source AS o_source, fetched_on AS o_on, fetched_at AS o_at FROM weather_hourly "
        "WHERE cell_id = ? AND time_utc BETWEEN ? AND ?",
        db.conn, params=(cell_id, f["time_utc"].min(), f["time_utc"].max()))
    m = f.merge(old, on="time_utc", how="left")
    exists = m["o_source"].notna().to_numpy()
    given = m[list(HOURLY_VARS)].to_numpy(dtype=float)
    stored = m[olds].to_numpy(dtype=float)
    merged = np.where(np.isnan(given), stored, given)
    survives = (np.isnan(given) & ~np.isnan(stored)).any(axis=1)
    old_rank = m["o_source"].map(SOURCE_RANK).fillna(-1).to_numpy()
    keep_old_source = exists & survives & (old_rank > SOURCE_RANK[source])
    out_source = np.where(keep_old_source, m["o_source"], source)
    final = m["o_source"].isin(["archive", "import"]).to_numpy()
    blocked = exists & (((source == "forecast") & final) | np.isnan(given).all(axis=1))
    same = (exists & ((merged == stored) | (np.isnan(merged) & np.isnan(stored))).all(axis=1)
            & (out_source == m["o_source"].to_numpy()))
    now, on = storage.utcnow_text(), fetched_on.isoformat()
    # a kept older source keeps its own fetch stamps (a forecast hour is not fresher for an import)
    w = pd.DataFrame(merged, columns=list(HOURLY_VARS)).assign(
        time_utc=m["time_utc"], source=out_source,
        fetched_on=np.where(keep_old_source, m["o_on"], on), fetched_at=np.where(keep_old_source, m["o_at"], now))
    w = w[~blocked]
    cols = [w[c].to_numpy(dtype=object, na_value=None).tolist()
            for c in ("time_utc", *HOURLY_VARS, "source", "fetched_on", "fetched_at")]
    db.conn.executemany(
        "INSERT OR REPLACE INTO weather_hourly (cell_id, time_utc, pressure_msl, temperature_2m, "
        "relative_humidity_2m, precipitation, source, fetched_on, fetched_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(cell_id, *r) for r in zip(*cols)])
    _update_coverage(db, cell_id, f["time_utc"].min()[:10], f["time_utc"].max()[:10])
    new = int((~exists).sum())
    unchanged = int((blocked | same).sum())
    return new, len(m) - new - unchanged, unchanged


def _update_coverage(db: sqlite_utils.Database, cell_id: str, first: str, last: str) -> None:
    """Recount the stored hours of UTC days ``first``..``last`` and give them a new change stamp."""
    stamp = db.execute("SELECT coalesce(max(stamp), 0) + 1 FROM weather_days").fetchone()[0]
    db.conn.execute(
        "INSERT OR REPLACE INTO weather_days (cell_id, date_utc, hours, final_hours, fetched_on, stamp) "
        "SELECT cell_id, substr(time_utc, 1, 10), count(*), sum(source IN ('archive', 'import')), "
        "min(fetched_on), ? "
        "FROM weather_hourly WHERE cell_id = ? AND time_utc >= ? AND time_utc < ? GROUP BY 1, 2",
        (stamp, cell_id, first + "T00:00:00Z",
         (date.fromisoformat(last) + timedelta(days=1)).isoformat() + "T00:00:00Z"))


def _check_limits(frame: pd.DataFrame, names: dict[str, str] | None = None) -> pd.Series:
    """Per row, every impossible value as text (None when the row is fine). ``names``: column -> limit key."""
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for col, key in (names or {v: v for v in HOURLY_VARS}).items():
        if col not in frame:
            continue
        lo, hi, unit = LIMITS[key]
        bad = (frame[col] < lo) | (frame[col] > hi)
        if bad.any():
            shown = frame.loc[bad, col].round(2).astype(str)
            text = f"{col}=" + shown + f" {unit} is outside {lo:g}-{hi:g} {unit}"
            reasons[bad] = [t if r is None else f"{r}; {t}" for r, t in zip(reasons[bad], text)]
    return reasons


# ------------------------------------------------------------------------------------------ daily values

def daily_for_patients(db: sqlite_utils.Database, patients: pd.DataFrame, start: date, end: date, *,
                       grid_degrees: float | None = None) -> pd.DataFrame:
    """Daily weather per patient and local day (in the patient's own IANA zone), ``start``..``end``.

    ``patients``: ``patient_id, timezone, latitude, longitude``. One row per patient-day with data:
    ``pressure_mean/min/max`` (hPa, sea level), ``pressure_change`` (hPa, today's mean minus the previous
    local day's, NaN if that is missing), ``temperature_max/mean`` (C), ``temperature_change`` (C, change of
    the mean), ``humidity`` (mean %), ``precipitation`` (sum, mm) and ``source`` (worst of the day's hours:
    forecast > import > archive). A value needs >= ``MIN_HOURS`` hours, else NaN. Days known only from an
    imported daily block use that block's day as the local day (approximate: its day is midnight to
    midnight at the file's fixed UTC offset). Vectorised: patients are grouped by (cell, zone), and the
    aggregates come from the ``weather_local_days`` cache (:func:`local_days`). ``grid_degrees``: the
    config's ``weather.grid_degrees`` (default: the grid of the cells fetched last).
    """
    grid = grid_degrees or _grid_in_use(db)
    p = patients.dropna(subset=["latitude", "longitude"]).copy()
    if p.empty:
        return _empty_output()
    p["tz"] = p["timezone"].fillna("UTC").replace("", "UTC")
    for tz in p["tz"].unique():
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            who = p.loc[p["tz"] == tz, "patient_id"].iloc[0]
            raise TriggerWatchError(
                f"patient {who!r} has the unknown time zone {tz!r}; "
                f"re-import the patient with an IANA name such as Europe/Vienna") from None
    p["cell_id"] = cell_ids(p["latitude"], p["longitude"], grid)[0]
    cells = sorted(p["cell_id"].unique())
    marks = ",".join("?" * len(cells))
    groups = p[["cell_id", "tz"]].drop_duplicates()
    days = local_days(db, groups, start - timedelta(days=1), end)
    daily = pd.read_sql(f"SELECT cell_id, date, pressure_mean, pressure_min, pressure_max, temperature_max, "
                        f"temperature_mean, humidity, precipitation, source FROM weather_daily "
                        f"WHERE cell_id IN ({marks}) AND date >= ? AND date <= ?", db.conn,
                        params=(*cells, (start - timedelta(days=1)).isoformat(), end.isoformat()))
    if not daily.empty:
        daily["date"] = pd.to_datetime(daily["date"], format="%Y-%m-%d")
        daily["rank"] = daily.pop("source").map(SOURCE_RANK).fillna(1).astype(int)
        daily = daily.merge(groups, on="cell_id")
        if not days.empty:
            have = days[["cell_id", "tz", "date"]].assign(_have=True)
            daily = daily.merge(have, on=["cell_id", "tz", "date"], how="left")
            daily = daily[daily["_have"].isna()].drop(columns="_have")
        days = pd.concat([days, daily], ignore_index=True) if not days.empty else daily
    if days.empty:
        return _empty_output()
    value_cols = ["pressure_mean", "pressure_min", "pressure_max", "temperature_max", "temperature_mean",
                  "humidity", "precipitation"]
    days = days.dropna(subset=value_cols, how="all").sort_values(["cell_id", "tz", "date"], ignore_index=True)
    prev = days.groupby(["cell_id", "tz"], sort=False)[["date", "pressure_mean", "temperature_mean"]].shift(1)
    consecutive = (days["date"] - prev["date"]) == pd.Timedelta(days=1)
    days["pressure_change"] = (days["pressure_mean"] - prev["pressure_mean"]).where(consecutive)
    days["temperature_change"] = (days["temperature_mean"] - prev["temperature_mean"]).where(consecutive)
    days = days[(days["date"] >= pd.Timestamp(start)) & (days["date"] <= pd.Timestamp(end))]
    days["source"] = days["rank"].map(_RANK_SOURCE)
    out = p[["patient_id", "cell_id", "tz"]].merge(days, on=["cell_id", "tz"])
    out = out[OUTPUT_COLUMNS].sort_values(["patient_id", "date"], ignore_index=True)
    out["date"] = out["date"].astype("datetime64[ns]")
    for c in OUTPUT_COLUMNS[2:-1]:
        out[c] = out[c].astype(float)
    return out


def warm_cache(db: sqlite_utils.Database, patients: pd.DataFrame, start: date, end: date, *,
               grid_degrees: float | None = None) -> None:
    """Bring the ``weather_local_days`` cache up to date for ``patients`` over ``start``..``end``: afterwards
    :func:`daily_for_patients` over any of them and any days inside that range only reads (the pipeline
    warms it once, then reads blocks of patients in parallel)."""
    p = patients.dropna(subset=["latitude", "longitude"])
    if p.empty:
        return
    pairs = pd.DataFrame({"cell_id": cell_ids(p["latitude"], p["longitude"], grid_degrees or _grid_in_use(db))[0],
                          "tz": p["timezone"].fillna("UTC").replace("", "UTC").to_numpy()}).drop_duplicates()
    local_days(db, pairs, start - timedelta(days=2), end)


_AGG_COLUMNS = ["pressure_mean", "pressure_min", "pressure_max", "temperature_max", "temperature_mean",
                "humidity", "precipitation", "rank"]


def local_days(db: sqlite_utils.Database, pairs: pd.DataFrame, start: date, end: date) -> pd.DataFrame:
    """Hourly weather aggregated to local days for each (``cell_id``, ``tz``) pair, ``start``..``end``.

    Served from ``weather_local_days``; a local day is recomputed (in SQLite, per zone) when any UTC day
    it overlaps has a newer change stamp in ``weather_days`` than the cached row. Returns ``cell_id, tz,
    date`` (datetime64) and :data:`_AGG_COLUMNS` (``rank``: 0 archive, 1 import, 2 forecast).
    """
    cells = sorted(pairs["cell_id"].unique())
    marks = ",".join("?" * len(cells))
    wd = storage.read_table(db.conn, "weather_days", ["cell_id", "date_utc", "stamp"],
                            f"cell_id IN ({marks}) AND date_utc >= ? AND date_utc <= ?",
                            (*cells, (start - timedelta(days=1)).isoformat(),
                             (end + timedelta(days=1)).isoformat()))
    if wd.empty:
        return pd.DataFrame(columns=["cell_id", "tz", "date", *_AGG_COLUMNS])
    wd["date"] = pd.to_datetime(wd.pop("date_utc"), format="%Y-%m-%d")
    # a local day overlaps its own UTC date and the dates either side
    need = (pd.concat([wd.assign(date=wd["date"] + pd.Timedelta(days=k)) for k in (-1, 0, 1)])
            .groupby(["cell_id", "date"], as_index=False)["stamp"].max())
    need = need[(need["date"] >= pd.Timestamp(start)) & (need["date"] <= pd.Timestamp(end))]
    cand = pairs.merge(need, on="cell_id")
    cache = storage.read_table(db.conn, "weather_local_days", ["cell_id", "tz", "date", "stamp", *_AGG_COLUMNS],
                               f"cell_id IN ({marks}) AND date >= ? AND date <= ?",
                               (*cells, start.isoformat(), end.isoformat()))
    cache = cache.rename(columns={"stamp": "cached"})
    cache["date"] = pd.to_datetime(cache["date"], format="%Y-%m-%d")
    m = cand.merge(cache, on=["cell_id", "tz", "date"], how="left")
    stale = m["cached"].isna() | (m["cached"] < m["stamp"])
    if stale.any():
        fresh = _aggregate_local(db, m.loc[stale, ["cell_id", "tz", "date", "stamp"]])
        rows = fresh.assign(date=fresh["date"].dt.strftime("%Y-%m-%d"))[["cell_id", "tz", "date", "stamp",
                                                                         *_AGG_COLUMNS]].astype(object)
        with storage.transaction(db):
            db.conn.executemany(f"INSERT OR REPLACE INTO weather_local_days (cell_id, tz, date, stamp, "
                                f"{', '.join(_AGG_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (4 + len(_AGG_COLUMNS)))})",
                                rows.where(rows.notna(), None).itertuples(index=False, name=None))
        m = pd.concat([m[~stale], fresh], ignore_index=True)
    out = m[["cell_id", "tz", "date", *_AGG_COLUMNS]]
    return out[out["rank"].notna()].reset_index(drop=True)


def _aggregate_local(db: sqlite_utils.Database, wanted: pd.DataFrame) -> pd.DataFrame:
    """Aggregate stored hours to the ``wanted`` (cell_id, tz, date, stamp) local days, in SQLite per zone.

    The local date of a UTC hour is its date after adding the zone's offset at that instant (a CASE over
    the zone's transitions), so a DST day has 23 or 25 hours. A value needs ``MIN_HOURS`` hours, else NaN.
    """
    parts = []
    for tz, g in wanted.groupby("tz"):
        lo = pd.Timestamp(g["date"].min() - pd.Timedelta(days=1), tz="UTC")
        hi = pd.Timestamp(g["date"].max() + pd.Timedelta(days=2), tz="UTC")
        tz_cells = sorted(g["cell_id"].unique())
        agg = pd.read_sql(
            f"SELECT cell_id, date(time_utc, {_offset_sql(tz, lo, hi)}) AS date, "
            "avg(pressure_msl) AS pressure_mean, min(pressure_msl) AS pressure_min, "
            "max(pressure_msl) AS pressure_max, count(pressure_msl) AS n_p, "
            "max(temperature_2m) AS temperature_max, avg(temperature_2m) AS temperature_mean, "
            "count(temperature_2m) AS n_t, avg(relative_humidity_2m) AS humidity, "
            "count(relative_humidity_2m) AS n_h, sum(precipitation) AS precipitation, "
            "count(precipitation) AS n_r, "
            "max(CASE source WHEN 'archive' THEN 0 WHEN 'import' THEN 1 ELSE 2 END) AS rank "
            f"FROM weather_hourly WHERE cell_id IN ({','.join('?' * len(tz_cells))}) "
            "AND time_utc >= ? AND time_utc < ? GROUP BY 1, 2",
            db.conn, params=(*tz_cells, _utc_text(pd.Series([lo]))[0], _utc_text(pd.Series([hi]))[0]))
        for cols, n in ((["pressure_mean", "pressure_min", "pressure_max"], "n_p"),
                        (["temperature_max", "temperature_mean"], "n_t"), (["humidity"], "n_h"),
                        (["precipitation"], "n_r")):
            agg[cols] = agg[cols].astype(float)
            agg.loc[agg[n] < MIN_HOURS, cols] = np.nan
        agg["date"] = pd.to_datetime(agg["date"], format="%Y-%m-%d")
        agg["rank"] = agg["rank"].astype(float)
        agg = agg.drop(columns=["n_p", "n_t", "n_h", "n_r"])
        parts.append(g.merge(agg, on=["cell_id", "date"], how="left"))
    return pd.concat(parts, ignore_index=True)


def _offset_sql(tz: str, lo: pd.Timestamp, hi: pd.Timestamp) -> str:
    """SQL giving the ``date()`` modifier that turns ``time_utc`` into local time in ``tz`` (lo..hi)."""
    hours = pd.date_range(lo, hi, freq="h")
    offsets = ((hours.tz_convert(tz).tz_localize(None) - hours.tz_localize(None)).total_seconds()).astype(int)
    change = np.flatnonzero(np.diff(offsets)) + 1
    if len(change) == 0:
        return f"'{int(offsets[0]):+d} seconds'"
    at = _utc_text(pd.Series(hours[change]))
    whens = " ".join(f"WHEN time_utc < '{t}' THEN '{int(offsets[i - 1]):+d} seconds'"
                     for t, i in zip(at, change))
    return f"CASE {whens} ELSE '{int(offsets[-1]):+d} seconds' END"


def _empty_output() -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype=float) for c in OUTPUT_COLUMNS})
    out["patient_id"] = out["patient_id"].astype(object)
    out["source"] = out["source"].astype(object)
    out["date"] = out["date"].astype("datetime64[ns]")
    return out


# ------------------------------------------------------------------------------------------ planning

@dataclass(frozen=True)
class Request:
    """One Open-Meteo request: several cells, one API, one UTC date range (inclusive)."""

    api: str                 # "archive" or "forecast"
    cells: tuple[str, ...]
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def weight(self) -> float:
        return call_weight(len(HOURLY_VARS), self.days, len(self.cells))


def needed_ranges(db: sqlite_utils.Database, config: Any, today: date, start: date | None = None,
                  end: date | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Per cell, the UTC days the patients' records need: ``(needs, patients, notes)``.

    A patient needs weather from the day before its first diary day or attack (the change from the
    previous day), capped at ``analysis.max_history_days``, to tomorrow (the forecast); ``start``/``end``
    replace that range. Local days straddle UTC days, so the range is widened by one day on each side.
    ``needs``: ``cell_id, lat, lon, start, end`` (dates); ``patients``: ``patient_id, cell_id``.
    """
    grid = float(config["weather.grid_degrees"])
    p = _located_patients(db, grid)
    notes = []
    unlocated = db.execute("SELECT count(*) FROM patients WHERE latitude IS NULL OR longitude IS NULL")
    unlocated = unlocated.fetchone()[0]
    if unlocated:
        notes.append(f"{unlocated} patient(s) have no home latitude/longitude: no weather for them")
    first = pd.read_sql(
        "SELECT patient_id, min(d) AS first FROM (SELECT patient_id, date AS d FROM diary UNION ALL "
        "SELECT patient_id, substr(coalesce(start_local, start), 1, 10) FROM attacks) GROUP BY patient_id",
        db.conn)
    last_day = end or today + timedelta(days=1)
    if start is not None:
        p["start"] = pd.Timestamp(start)
    else:
        p = p.merge(first, on="patient_id", how="left")
        waiting = int(p["first"].isna().sum())
        if waiting:
            notes.append(f"{waiting} located patient(s) have no diary days yet: nothing to fetch for them")
        p = p.dropna(subset=["first"])
        floor = pd.Timestamp(today - timedelta(days=int(config["analysis.max_history_days"]) + 1))
        p["start"] = (pd.to_datetime(p["first"], format="%Y-%m-%d", errors="coerce")
                      - pd.Timedelta(days=1)).clip(lower=floor)
    p["end"] = pd.Timestamp(last_day)
    p = p[p["start"] <= p["end"]]
    needs = p.groupby("cell_id").agg(lat=("lat", "first"), lon=("lon", "first"), start=("start", "min"),
                                     end=("end", "max")).reset_index()
    needs["start"] = (needs["start"] - pd.Timedelta(days=1)).dt.date
    needs["end"] = (needs["end"] + pd.Timedelta(days=1)).dt.date
    return needs, p[["patient_id", "cell_id", "timezone"]], notes


def plan_requests(db: sqlite_utils.Database, needs: pd.DataFrame, today: date, *, lag_days: int,
                  cells_per_request: int, max_weight: float, align: bool = True) -> tuple[list[Request], int]:
    """The requests that fetch exactly what is missing: ``(requests, cells already complete)``.

    A UTC day up to ``today - lag_days`` comes from the archive and is complete with 24 archive or
    imported hours; a later day comes from the forecast and is complete with 24 hours fetched today (or
    final ones). Missing runs of a cell are merged across small gaps, a new cell's archive run starts on
    the first of its month and runs are cut at calendar years, so cells with similar needs share requests.
    """
    if needs.empty:
        return [], 0
    archive_end = today - timedelta(days=lag_days)
    frames = [pd.DataFrame({"cell_id": c, "day": pd.date_range(s, e, freq="D")})
              for c, s, e in needs[["cell_id", "start", "end"]].itertuples(index=False)]
    need = pd.concat(frames, ignore_index=True)
    cells = list(needs["cell_id"])
    cov = pd.read_sql(f"SELECT cell_id, date_utc, hours, final_hours, fetched_on FROM weather_days "
                      f"WHERE cell_id IN ({','.join('?' * len(cells))})", db.conn, params=cells)
    cov["day"] = pd.to_datetime(cov.pop("date_utc"), format="%Y-%m-%d")
    need = need.merge(cov, on=["cell_id", "day"], how="left")
    archive = need["day"] <= pd.Timestamp(archive_end)
    final = need["final_hours"].fillna(0) >= 24
    fresh = (need["hours"].fillna(0) >= 24) & (need["fetched_on"].fillna("") >= today.isoformat())
    need["api"] = np.where(archive, "archive", "forecast")
    missing = need[~(final | (~archive & fresh))]
    first_needed = dict(zip(needs["cell_id"], needs["start"]))
    pieces: dict[tuple[str, date, date], list[str]] = {}
    for (cell, api), g in missing.groupby(["cell_id", "api"], sort=True):
        days = g["day"].sort_values()
        run_id = (days.diff() > pd.Timedelta(days=MERGE_GAP_DAYS)).cumsum()
        for _, run in days.groupby(run_id):
            s, e = run.iloc[0].date(), run.iloc[-1].date()
            if align and api == "archive" and s == first_needed[cell]:   # share requests with other cells
                s = s.replace(day=1)
            while s <= e:
                piece_end = min(e, date(s.year, 12, 31))
                pieces.setdefault((api, s, piece_end), []).append(cell)
                s = piece_end + timedelta(days=1)
    plan: list[Request] = []
    for (api, s, e), cs in sorted(pieces.items()):
        n = max(1, cells_per_request)
        while n > 1 and call_weight(len(HOURLY_VARS), (e - s).days + 1, n) > max_weight:
            n -= 1
        plan.extend(Request(api, tuple(cs[i:i + n]), s, e) for i in range(0, len(cs), n))
    return plan, len(set(cells) - set(missing["cell_id"]))


# ------------------------------------------------------------------------------------------ fetching

@dataclass
class FetchResult:
    """What one ``fetch-weather`` run did. ``failed`` maps cell id -> why (retried on the next run)."""

    cells: int = 0
    cells_up_to_date: int = 0
    planned_requests: int = 0
    requests: int = 0
    calls_weighted: float = 0.0
    hours_stored: int = 0
    waited_seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)
    #: the first failure, as recorded: what the error names when nothing could be fetched
    first_problem: str = ""
    messages: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        out = [(f"weather: {self.cells} cell(s) needed, {self.cells_up_to_date} already up to date; "
                f"{self.requests} HTTP request(s) ({self.calls_weighted:.1f} Open-Meteo calls), "
                f"{self.hours_stored} hourly value(s) stored, {len(self.patients)} patient(s) changed")]
        if self.waited_seconds:
            out.append(f"  waited {self.waited_seconds:.0f} s for the Open-Meteo rate budget")
        if self.failed:
            out.append(f"  {len(self.failed)} cell(s) failed and will be retried on the next run:")
            out.extend(f"    {cell}: {why}" for cell, why in sorted(self.failed.items()))
        out.extend(f"  note: {m}" for m in self.messages)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def fetch_weather(db: sqlite_utils.Database, config: Any, session: requests.Session, *,
                  start: date | None = None, end: date | None = None, today: date,
                  progress: Callable[[int, int], None] | None = None, limiter: RateLimiter | None = None,
                  clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                  rng: random.Random | None = None) -> FetchResult:
    """Fetch the hourly weather the patients' days need (history and tomorrow), only what is missing.

    Cells are fetched in multi-cell requests within the call budget. A cell that fails is recorded in
    ``weather_cells.last_error`` and in ``FetchResult.failed``; the others go on, and what is stored is
    kept (each request is one transaction). When not one request succeeds (no network, budget spent) it
    raises ``WeatherUnavailable`` / ``WeatherRateLimited`` instead, naming the first problem.
    ``today`` is the clock; ``clock``/``sleep``/``rng`` are injected for tests.
    """
    result = FetchResult()
    if not config["weather.enabled"]:
        result.messages.append("weather fetching is off (weather.enabled = false); use `import weather FILE`")
        return result
    grid = float(config["weather.grid_degrees"])
    needs, members, notes = needed_ranges(db, config, today, start, end)
    result.messages.extend(notes)
    result.cells = len(needs)
    with storage.transaction(db):
        _ensure_cells(db, needs, grid)
        db.conn.executemany("UPDATE weather_cells SET needed_from = ?, needed_to = ?, grid_degrees = ? "
                            "WHERE cell_id = ?", [(s.isoformat(), e.isoformat(), grid, c) for c, s, e in
                                                  needs[["cell_id", "start", "end"]].itertuples(index=False)])
    limiter = limiter or RateLimiter(db, per_minute=config["weather.calls_per_minute"],
                                     per_hour=config["weather.calls_per_hour"],
                                     per_day=config["weather.calls_per_day"], clock=clock, sleep=sleep)
    plan, result.cells_up_to_date = plan_requests(
        db, needs, today, lag_days=config["weather.archive_lag_days"],
        cells_per_request=config["weather.cells_per_request"], max_weight=0.9 * limiter.limits[0][1],
        align=start is None)
    result.planned_requests = len(plan)
    client = OpenMeteoClient(session, limiter, user_agent=config["weather.user_agent"],
                             timeout=config["weather.timeout_seconds"],
                             max_retries=config["weather.max_retries"],
                             backoff=config["weather.backoff_seconds"], sleep=sleep, rng=rng)
    by_cell = members.groupby("cell_id")["patient_id"].apply(list).to_dict()
    queue, done, total, succeeded = deque(plan), 0, len(plan), 0
    limited = False
    offline = False
    while queue:
        req = queue.popleft()
        try:
            _run_request(db, config, client, req, today, by_cell, result)
            succeeded += 1
        except WeatherRequestRejected as exc:
            if len(req.cells) > 1:   # find the one cell the server refuses; the others still go
                queue.extendleft(Request(req.api, (c,), req.start, req.end) for c in reversed(req.cells))
                total += len(req.cells)
            else:
                _fail(db, result, req, str(exc))
        except WeatherRateLimited as exc:
            for r in [req, *queue]:
                _fail(db, result, r, f"not fetched: {exc}")
            limited = True
            break
        except WeatherOffline as exc:
            _fail(db, result, req, str(exc))
            if not succeeded:  # no request has got through: the rest would wait out their retries the same way
                offline = True
                for r in queue:
                    _fail(db, result, r, "not tried: the first request could not connect (no network?)")
                break
        except WeatherError as exc:
            _fail(db, result, req, str(exc))
        done += 1
        if progress:
            progress(done, total)
    result.requests, result.calls_weighted = client.requests, client.calls
    result.waited_seconds = limiter.waited + client.slept
    if plan and not succeeded:   # a whole failure (no network, budget spent): one clear error
        error = WeatherRateLimited if limited and done == 0 else WeatherUnavailable
        hint = ""
        if offline:
            hint = (". Check that this server can reach Open-Meteo (its network, a proxy: HTTPS_PROXY), or "
                    "import saved weather instead (trigger-watch import weather FILE).")
        raise error(f"no weather could be fetched for any of {len(result.failed)} cell(s); nothing changed; "
                    f"the next run tries again. First problem: {result.first_problem}{hint}")
    if result.hours_stored:   # aggregate the new hours to the patients' local days now, not at analysis time
        pairs = members.assign(tz=members["timezone"].fillna("UTC").replace("", "UTC"))[["cell_id", "tz"]]
        local_days(db, pairs.drop_duplicates(), needs["start"].min(), needs["end"].max())
    return result


def _run_request(db: sqlite_utils.Database, config: Any, client: OpenMeteoClient, req: Request, today: date,
                 by_cell: dict[str, list[str]], result: FetchResult) -> None:
    coords = db.execute(f"SELECT cell_id, latitude, longitude FROM weather_cells WHERE cell_id IN "
                        f"({','.join('?' * len(req.cells))})", req.cells).fetchall()
    where = {c: (a, b) for c, a, b in coords}
    params = {"latitude": ",".join(f"{where[c][0]:g}" for c in req.cells),
              "longitude": ",".join(f"{where[c][1]:g}" for c in req.cells),
              "hourly": ",".join(HOURLY_VARS), "timezone": "GMT",
              "start_date": req.start.isoformat(), "end_date": req.end.isoformat()}
    url = config["weather.archive_url" if req.api == "archive" else "weather.forecast_url"]
    answers = client.get(url, params, req.weight)
    if len(answers) != len(req.cells):
        raise WeatherError(f"Open-Meteo answered {len(answers)} location(s) for {len(req.cells)} asked")
    lo, hi = pd.Timestamp(req.start, tz="UTC"), pd.Timestamp(req.end + timedelta(days=1), tz="UTC")
    not_yet = pd.Timestamp(today - timedelta(days=config["weather.archive_lag_days"] + 7), tz="UTC")
    now = storage.utcnow_text()
    with storage.transaction(db):
        for cell, obj in zip(req.cells, answers):
            frame, _ = block_frame(obj, "hourly")
            if frame.empty:
                raise WeatherError(f"the answer for cell {cell} has no hourly block")
            frame = frame[(frame["time_utc"] >= lo) & (frame["time_utc"] < hi)].copy()
            for v in HOURLY_VARS:
                if v not in frame:
                    frame[v] = np.nan
                lo_v, hi_v, _ = LIMITS[v]
                bad = (frame[v] < lo_v) | (frame[v] > hi_v)
                if bad.any():
                    result.messages.append(f"{cell}: {int(bad.sum())} impossible {v} value(s) dropped")
                    frame.loc[bad, v] = np.nan
            if req.api == "archive":   # the archive has not caught up with these hours yet
                frame = frame[~(frame[list(HOURLY_VARS)].isna().all(axis=1) & (frame["time_utc"] >= not_yet))]
            new, replaced, _ = store_hourly(db, cell, frame, req.api, today)
            result.hours_stored += new + replaced
            db.conn.execute("UPDATE weather_cells SET grid_latitude = ?, grid_longitude = ?, elevation = ?, "
                            "last_attempt_at = ?, last_success_at = ?, last_error = NULL WHERE cell_id = ?",
                            (obj.get("latitude"), obj.get("longitude"), obj.get("elevation"), now, now, cell))
            if new + replaced:
                changed = by_cell.get(cell, [])
                storage.mark_changed(db, changed)
                result.patients.update(changed)


def _fail(db: sqlite_utils.Database, result: FetchResult, req: Request, why: str) -> None:
    text = f"{req.api} {req.start}..{req.end}: {why}"
    result.first_problem = result.first_problem or text
    for c in req.cells:
        result.failed[c] = text if c not in result.failed else f"{result.failed[c]}; {text}"
    with storage.transaction(db):
        db.conn.executemany("UPDATE weather_cells SET last_attempt_at = ?, last_error = ? WHERE cell_id = ?",
                            [(storage.utcnow_text(), text, c) for c in req.cells])


# ------------------------------------------------------------------------------------------ import

_DAILY_NAMES = {"pressure_msl_mean": "pressure_mean", "pressure_msl_min": "pressure_min",
                "pressure_msl_max": "pressure_max", "temperature_2m_max": "temperature_max",
                "temperature_2m_min": "temperature_min", "temperature_2m_mean": "temperature_mean",
                "relative_humidity_2m_mean": "humidity", "precipitation_sum": "precipitation",
                # the CSV's daily rows use the hourly names for daily means and sums
                "pressure_msl": "pressure_mean", "temperature_2m": "temperature_mean",
                "relative_humidity_2m": "humidity", "precipitation": "precipitation"}
_DAILY_LIMITS = {"pressure_mean": "pressure_msl", "pressure_min": "pressure_msl",
                 "pressure_max": "pressure_msl",
                 "temperature_max": "temperature_2m", "temperature_min": "temperature_2m",
                 "temperature_mean": "temperature_2m", "humidity": "relative_humidity_2m"}
_OFFSET_RE = r"(?:Z|[+-]\d\d:?\d\d)$"


#: ``import weather --format`` values besides the file formats: a saved Open-Meteo answer, a NOAA LCD file
OPEN_METEO, NOAA_LCD = "open-meteo", "noaa-lcd"
SERVICE_FORMATS = (OPEN_METEO, NOAA_LCD)


def import_weather_file(db: sqlite_utils.Database, path: Path, fmt: str | None = None, options: Any = None,
                        **kw: Any) -> Any:
    """``import weather FILE``: a saved Open-Meteo JSON answer (hourly and/or daily) or our weather CSV.

    Values are stored for the file's grid cell with source ``import``; a row with an impossible value is
    quarantined whole; every patient in a changed cell is marked changed.
    """
    from trigger_watch import importing

    path = Path(path)
    fmt = kw.get("fmt", fmt)
    options = kw.get("options", options)
    result = importing.ImportResult(kind="weather", file=str(path))
    fmt = (fmt or "").lower().replace("_", "-")
    om_csv = path.suffix.lower() == ".csv" and looks_like_open_meteo_csv(path)
    if om_csv and fmt in ("", "csv", OPEN_METEO, "openmeteo"):
        _import_open_meteo(db, path, options, result, read_open_meteo_csv(path))
    elif fmt in (NOAA_LCD, "lcd") or (fmt in ("", "csv") and path.suffix.lower() == ".csv"
                                      and looks_like_noaa_lcd(path)):
        _import_rows(db, path, "csv", options, result, lcd=True)
    elif fmt in (OPEN_METEO, "openmeteo") or (
            not fmt and path.suffix.lower() == ".json" and looks_like_open_meteo_json(path)):
        _import_open_meteo(db, path, options, result)
    else:
        fmt = importing.detect_format(path, fmt or None)
        _import_rows(db, path, fmt, options, result)
    return result


def _config(options: Any) -> Any:
    from trigger_watch import config as config_mod

    return options.config if options is not None and options.config is not None else config_mod.defaults()


def _import_open_meteo(db: sqlite_utils.Database, path: Path, options: Any, result: Any,
                       locations: list[dict] | None = None) -> None:
    from trigger_watch import importing

    if locations is None:
        try:
            data = json.loads(path.read_text(encoding=importing.file_encoding(path)))
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path} is not valid JSON: {exc.msg} on line {exc.lineno}") from None
        locations = data if isinstance(data, list) else [data]
    if not all(isinstance(o, dict) and ("hourly" in o or "daily" in o) for o in locations):
        raise InputFileError(f"{path} is not an Open-Meteo answer: it needs an `hourly` or `daily` block")
    grid = float(_config(options)["weather.grid_degrees"])
    today = options.today if options is not None else date.today()
    touched: set[str] = set()
    merged = 0
    with storage.transaction(db):
        for obj in locations:
            try:
                lat, lon = float(obj["latitude"]), float(obj["longitude"])
            except (KeyError, TypeError, ValueError):
                raise InputFileError(f"{path}: a location has no latitude/longitude") from None
            pid = getattr(options, "patient", None)
            if pid:   # the answer's grid point may round to a neighbouring cell: attach it to the patient's
                if len(locations) > 1:
                    raise InputFileError(f"{path} holds {len(locations)} locations; "
                                         f"--patient needs a single one")
                lat, lon = _home_coordinates(_home_of(db, pid), "import the answer without --patient")
            ids, clat, clon = cell_ids([lat], [lon], grid)
            cell = ids[0]
            _ensure_cells(db, pd.DataFrame({"cell_id": [cell], "lat": clat, "lon": clon}), grid)
            if not pid and not (_located_patients(db, grid)["cell_id"] == cell).any():
                result.messages.append(f"no patient lives in grid cell {cell} ({lat:g}, {lon:g}); "
                                       f"import with --patient ID to attach this weather to a patient's home")
            for block in ("hourly", "daily"):
                frame, notes, problems = read_block(obj, block, HOURLY_VARS if block == "hourly" else _DAILY_NAMES)
                result.messages.extend(notes)
                if frame.empty:
                    continue
                if block == "hourly":
                    _note_unused(frame, set(HOURLY_VARS) | {"time_utc"}, result)
                    if not set(HOURLY_VARS) & set(frame.columns):
                        continue
                    frame = _quarantine_bad(db, path, block, frame, _join(problems, _check_limits(frame)),
                                            result, frame["time_utc"].dt.strftime("%Y-%m-%dT%H:%MZ"))
                    merged += len(frame) - frame["time_utc"].nunique()
                    counts = store_hourly(db, cell, frame, "import", today)
                else:
                    counts, n = _store_daily_block(db, path, cell, frame, result, problems)
                    merged += n
                _count(result, counts, cell, touched)
        _mark_cells_changed(db, touched, grid, result)
    _note_merged(merged, result)


def _home_coordinates(home: tuple, otherwise: str) -> tuple[float, float]:
    """``home``'s latitude and longitude (:func:`_home_of`); a patient without them is one error for the
    file, whose remedy (``otherwise``) depends on what the file can say itself."""
    if home[1] is None or home[2] is None:
        raise InputFileError(f"patient {home[0]!r} has no home latitude and longitude: add them to the patients "
                             f"file, or {otherwise}")
    return float(home[1]), float(home[2])


def _note_unused(frame: pd.DataFrame, used: set[str], result: Any) -> None:
    unused = [c for c in frame.columns if c not in used and c not in ("date", "utc_offset_seconds")]
    if "surface_pressure" in unused:
        result.messages.append("surface_pressure is pressure at the ground, not at sea level: not used as "
                               "pressure_msl (ask Open-Meteo for pressure_msl)")
    rest = [c for c in unused if c != "surface_pressure"]
    if rest:
        result.messages.append(f"not used (trigger-watch has no factor for them): {', '.join(rest)}")


def _quarantine_bad(db: sqlite_utils.Database, path: Path, block: str, frame: pd.DataFrame,
                    reasons: pd.Series, result: Any, when: pd.Series) -> pd.DataFrame:
    from trigger_watch import importing

    bad = reasons.notna().to_numpy()
    if bad.any():
        sub = frame[bad]
        raw = [json.dumps({k: (None if pd.isna(v) else v) for k, v in r.items()}, default=str)
               for r in sub.drop(columns=[c for c in ("time_utc", "date") if c in sub]).to_dict("records")]
        rows = [(int(i) + 1, f"{block}[{int(i)}] {w}: {r}", x)
                for i, w, r, x in zip(np.flatnonzero(bad), when[bad].fillna("(no time)"), reasons[bad], raw)]
        result.quarantined += importing.quarantine(db, "weather", str(path), rows)
    return frame[~bad]


def _store_daily_block(db: sqlite_utils.Database, path: Path, cell: str, frame: pd.DataFrame, result: Any,
                       problems: pd.Series) -> tuple[tuple[int, int, int], int]:
    """Check and store an Open-Meteo daily block; returns the counts and how many rows shared a day."""
    frame = frame.rename(columns={k: v for k, v in _DAILY_NAMES.items() if k in frame and k != v})
    _note_unused(frame, set(DAILY_COLUMNS), result)
    if not set(DAILY_COLUMNS) & set(frame.columns):
        return (0, 0, 0), 0
    names = {c: k for c, k in _DAILY_LIMITS.items() if c in frame}
    reasons = _check_limits(frame, names)
    if "precipitation" in frame:
        neg = frame["precipitation"] < 0
        reasons[neg] = "precipitation is negative"
    frame = _quarantine_bad(db, path, "daily", frame, _join(problems, reasons), result,
                            frame["date"].dt.strftime("%Y-%m-%d"))
    return _upsert_daily(db, cell, frame), len(frame) - frame["date"].nunique()


def _upsert_daily(db: sqlite_utils.Database, cell: str, frame: pd.DataFrame) -> tuple[int, int, int]:
    """Store daily values of one cell, merged per column like :func:`store_hourly`: rows of one day are
    combined (per column the last value given) and a missing value never replaces a stored one."""
    f = pd.DataFrame({"date": frame["date"].dt.strftime("%Y-%m-%d"),
                      "utc_offset_seconds": frame.get("utc_offset_seconds")})
    for c in DAILY_COLUMNS:
        f[c] = frame[c].to_numpy(dtype=float) if c in frame else np.nan
    if f.empty:
        return 0, 0, 0
    if f["date"].duplicated().any():
        f = f.groupby("date", sort=False, as_index=False).last()
    keep = ["utc_offset_seconds", *DAILY_COLUMNS]
    old = pd.read_sql(f"SELECT date, {', '.join(keep)} FROM weather_daily WHERE cell_id = ? AND date BETWEEN ? AND ?",
                      db.conn, params=(cell, f["date"].min(), f["date"].max())).set_index("date")
    if not old.empty:
        f[keep] = f[keep].astype(float).fillna(old.reindex(f["date"])[keep].set_axis(f.index))
    f.insert(0, "cell_id", cell)
    f["source"], f["imported_at"] = "import", storage.utcnow_text()
    f = f.astype(object).where(f.notna(), None)
    rows = f.itertuples(index=False, name=None)
    new, replaced, unchanged, _ = storage.upsert_rows(db, "weather_daily", list(f.columns), rows,
                                                      ["cell_id", "date"])
    return new, replaced, unchanged


def _count(result: Any, counts: tuple[int, int, int], cell: str, touched: set[str]) -> None:
    new, replaced, unchanged = counts
    result.accepted += new
    result.replaced += replaced
    result.unchanged += unchanged
    if new + replaced:
        touched.add(cell)


def _join(a: pd.Series, b: pd.Series) -> pd.Series:
    """Per row, the reasons of ``a`` and ``b`` joined with ``; `` (None when neither has one)."""
    both = a.notna() & b.notna()
    out = a.where(a.notna(), b)
    out[both] = a[both] + "; " + b[both]
    return out


def _note_merged(merged: int, result: Any) -> None:
    if merged:
        result.messages.append(
            f"{merged} {'row' if merged == 1 else 'rows'} fell in an hour (or, for daily values, on a day) "
            f"that another row of the file gives too: merged into it, per variable the last value given wins")


def _mark_cells_changed(db: sqlite_utils.Database, cells: set[str], grid: float, result: Any) -> None:
    if not cells:
        return
    p = _located_patients(db, grid)
    changed = sorted(p.loc[p["cell_id"].isin(cells), "patient_id"])
    storage.mark_changed(db, changed)
    result.patients.update(changed)


#: NOAA LCD (FORMATS.md 2): our variable, its column and the conversion of its unit.
_LCD_VARS = {
    "pressure_msl": ("hourlysealevelpressure", lambda x: x * 33.8639),  # inHg -> hPa
    "temperature_2m": ("hourlydrybulbtemperature", lambda x: (x - 32) * 5 / 9),  # F -> C
    "relative_humidity_2m": ("hourlyrelativehumidity", lambda x: x),
    "precipitation": ("hourlyprecipitation", lambda x: x * 25.4),  # inches -> mm
}


def looks_like_noaa_lcd(path: Path) -> bool:
    """Whether a CSV file is a NOAA Local Climatological Data export (its header names REPORT_TYPE and the
    Hourly* columns)."""
    with path.open("r", encoding="utf-8-sig") as fh:
        head = fh.readline().lower()
    return "report_type" in head and any(col in head for col, _ in _LCD_VARS.values())


def _lcd_numbers(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """An LCD column's values as numbers, and the cells left for the checks to name. ``T`` (a trace of
    rain) is 0; a value with the suspect flag ``s`` (``29.00s``), ``M`` and ``*`` are not used (missing)."""
    t = text.astype("string").str.strip()
    t = t.mask(t.str.endswith("s", na=False) | t.isin(["M", "*", ""])).mask(t == "T", "0")
    num = pd.to_numeric(t, errors="coerce")
    return num, t.where(num.isna())


def _from_lcd(batch: Any, grid: float, zone_of: dict[str, str], default_tz: str, home: tuple | None) -> Counter:
    """A NOAA LCD batch as our weather rows, in place: daily and monthly summary rows (``SOD``/``SOM``)
    dropped; times, given in the station's local standard time all year, given the zone's standard offset
    (read as local clock time they were an hour off in summer, and the hour of each clock change was
    quarantined); inHg, F and inches converted; suspect values not used. With ``home`` (``--patient``) the
    station's weather is placed at that patient's home and read in their zone: a station is rarely in a
    patient's grid cell. Returns counts for :func:`_note_lcd`."""
    notes: Counter = Counter()
    f = batch.frame
    if "report_type" not in f.columns:
        raise InputFileError("a NOAA LCD file needs its REPORT_TYPE column")
    when_col = next((c for c in ("date", "datetime", "time") if c in f.columns), None)
    if when_col is None:
        raise InputFileError("a NOAA LCD file needs its DATE column (or rnoaa's datetime)")
    hourly = ~f["report_type"].astype("string").str.strip().str.upper().isin(["SOD", "SOM"]).fillna(False)
    hourly = hourly.to_numpy(dtype=bool)
    notes["summary rows"] += int((~hourly).sum())
    f = f[hourly].reset_index(drop=True)
    batch.lines, batch.raw = batch.lines[hourly], [r for r, k in zip(batch.raw, hourly) if k]
    if home is not None:
        lat, lon = _home_coordinates(home, "import the station's file without --patient")
        lat_text = pd.Series(str(lat), index=f.index, dtype=object)
        lon_text = pd.Series(str(lon), index=f.index, dtype=object)
    else:
        lat_text, lon_text = f.get("latitude"), f.get("longitude")
    out = pd.DataFrame({"latitude": lat_text, "longitude": lon_text}, index=f.index)
    when = pd.to_datetime(f[when_col], format="ISO8601", errors="coerce")
    out["time"] = f[when_col]  # unreadable: the checks name it
    lat, lon = pd.to_numeric(lat_text, errors="coerce"), pd.to_numeric(lon_text, errors="coerce")
    ok = when.notna() & lat.notna() & lon.notna()
    if ok.any():
        cells = pd.Series(cell_ids(lat[ok], lon[ok], grid)[0], index=lat[ok].index)
        for cell, idx in cells.groupby(cells).groups.items():
            tz = home[3] if home is not None and home[3] else zone_of.get(cell)
            if tz is None:
                tz = default_tz
                notes[f"no patient:{cell}"] += len(idx)
            out.loc[idx, "time"] = when[idx].dt.strftime("%Y-%m-%dT%H:%M:%S") + _standard_offset(tz)
    for var, (col, convert) in _LCD_VARS.items():
        if col not in f.columns and var in f.columns:  # renamed to ours (--rename): taken as given
            out[var] = f[var]
        elif col in f.columns:
            num, unread = _lcd_numbers(f[col])
            value = convert(num).round(2).astype(object).where(num.notna(), unread.astype(object))
            out[var] = [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)
                        for v in value]
    batch.frame = out
    return notes


def _note_lcd(notes: Counter, default_tz: str, result: Any) -> None:
    if notes["summary rows"]:
        n = notes["summary rows"]
        result.messages.append(f"{n} daily or monthly summary row{'s' if n != 1 else ''} (SOD, SOM) not used")
    alone = sorted(k.split(":", 1)[1] for k in notes if k.startswith("no patient:"))
    if alone:
        result.messages.append(f"no patient lives in the station's cell ({', '.join(alone)}): its times were read "
                               f"as standard time of {default_tz}; to use the station for a patient's home, "
                               f"import it with --patient ID")


def _standard_offset(tz: str) -> str:
    """The zone's standard (winter) UTC offset as ``-05:00``: the smaller of its January and July offsets."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    z = ZoneInfo(tz)
    off = min(datetime(2022, m, 1, tzinfo=z).utcoffset() for m in (1, 7))
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _home_of(db: sqlite_utils.Database, patient: str | None) -> tuple[str, float, float, str | None] | None:
    """``(patient, latitude, longitude, timezone)`` of ``--patient``'s home, for a weather file without
    coordinates or a station's file meant for that patient."""
    if not patient:
        return None
    row = db.execute("SELECT latitude, longitude, timezone FROM patients WHERE patient_id = ?",
                     (patient,)).fetchone()
    if row is None:
        raise InputFileError(f"no patient {patient!r}: import the patient first (trigger-watch import patients)")
    return patient, row[0], row[1], row[2]


def _placed(frame: pd.DataFrame, path: Path, home: tuple | None, result: Any) -> pd.DataFrame:
    """A weather CSV's rows with their place: the file's own ``latitude, longitude``, else ``--patient``'s
    home (a station's or a home sensor's file often has none). Neither: one error for the file, not a reject
    for each row."""
    has = [c for c in ("latitude", "longitude") if c in frame.columns]
    if len(has) == 2:
        if home and not any("is not used" in m for m in result.messages):
            result.messages.append(f"--patient {home[0]} is not used: the file gives each row's latitude and "
                                   f"longitude")
        return frame
    if has:
        raise InputFileError(f"{path} has {has[0]} but not {'longitude' if has[0] == 'latitude' else 'latitude'}")
    if home is None:
        raise InputFileError(f"{path} has no latitude and longitude columns: add them, or say whose home the "
                             f"weather is at with --patient ID")
    lat, lon = _home_coordinates(home, f"give them as columns of {path.name}")
    return frame.assign(latitude=str(lat), longitude=str(lon))


def _import_rows(db: sqlite_utils.Database, path: Path, fmt: str, options: Any, result: Any,
                 lcd: bool = False) -> None:
    """Our weather CSV/JSON rows: ``latitude, longitude, time`` and any of the hourly variables (``lcd``: a
    NOAA LCD file, read by :func:`_from_lcd` first)."""
    from trigger_watch import importing

    cfg = _config(options)
    grid = float(cfg["weather.grid_degrees"])
    today = options.today if options is not None else date.today()
    default_tz = getattr(options, "default_timezone", None) or cfg["patients.default_timezone"]
    patients = _located_patients(db, grid)
    zone_of = (patients.dropna(subset=["timezone"]).groupby("cell_id")["timezone"]
               .agg(lambda s: s.mode().iloc[0]).to_dict())
    touched: set[str] = set()
    assumed: set[str] = set()
    merged = 0
    home = _home_of(db, getattr(options, "patient", None))
    lcd_notes: Counter = Counter()
    with storage.transaction(db):
        for batch in importing.iter_batches(path, fmt, batch_rows=getattr(options, "batch_rows", 50000),
                                            renames=getattr(options, "renames", None),
                                            skips=getattr(options, "skips", None),
                                            header=getattr(options, "header", None)):
            result.quarantined += importing.quarantine(db, "weather", str(path), batch.problems)
            if batch.frame.empty:
                continue
            if lcd:
                lcd_notes.update(_from_lcd(batch, grid, zone_of, default_tz, home))
                if batch.frame.empty:
                    continue
            else:
                batch.frame = _placed(batch.frame, path, home, result)
            chk = importing.Checker(batch.frame)
            lat = chk.number("latitude", -90, 90)
            lon = chk.number("longitude", -180, 180)
            chk.add((lat.isna() | lon.isna()).to_numpy(), "latitude and longitude are needed")
            when = chk.required("time", "ISO date or date-time")
            values = {v: chk.number(v, *LIMITS[v][:2]) for v in HOURLY_VARS}
            if not any(v in batch.frame for v in HOURLY_VARS):
                raise InputFileError(f"{path} has none of the columns {', '.join(HOURLY_VARS)}")
            f = pd.DataFrame({"lat": lat, "lon": lon, "when": when, **values})
            f["cell_id"] = None
            ok = f["lat"].notna() & f["lon"].notna()
            f.loc[ok, "cell_id"] = cell_ids(f.loc[ok, "lat"], f.loc[ok, "lon"], grid)[0]
            is_day = f["when"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").fillna(False).astype(bool)
            day = pd.to_datetime(f["when"].where(is_day), format="%Y-%m-%d", errors="coerce")
            has_off = f["when"].str.contains(_OFFSET_RE, regex=True).fillna(False).astype(bool)
            t = pd.Series(pd.NaT, index=f.index, dtype="datetime64[ns, UTC]")
            if has_off.any():
                t[has_off] = pd.to_datetime(f.loc[has_off, "when"], format="ISO8601", utc=True,
                                            errors="coerce")
            local = ~has_off & ~is_day & f["when"].notna()
            naive = pd.to_datetime(f["when"].where(local), format="ISO8601", errors="coerce")
            for cell, g in f[local & ok].groupby("cell_id"):
                tz = zone_of.get(cell, default_tz)
                if cell not in zone_of:
                    assumed.add(tz)
                t[g.index] = (naive[g.index].dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
                              .dt.tz_convert("UTC"))
            # a local time that parses but has no UTC instant is a clock-change problem, told apart below
            unreadable = f["when"].notna() & (is_day & day.isna() | ~is_day & t.isna() & (has_off | naive.isna()))
            chk.flag("time", unreadable, " is not a date-time such as 2026-03-28T14:00+01:00 (or 2026-03-28T14:00 "
                     "in the cell's local time), nor a date YYYY-MM-DD for a daily value")
            at_change = local & ok & naive.notna() & t.isna()
            chk.flag("time", at_change, " is a local time that does not exist or is ambiguous at a clock change "
                     "(give an offset such as +01:00)")
            keep = ~chk.bad
            rows = list(zip(batch.lines[~keep], chk.reasons[~keep], importing.raw_rows(batch.frame, ~keep)))
            result.quarantined += importing.quarantine(db, "weather", str(path), rows)
            f["time_utc"] = t.dt.floor("h")
            f = f[keep]
            for cell, g in f.groupby("cell_id"):
                ids, clat, clon = cell_ids([g["lat"].iloc[0]], [g["lon"].iloc[0]], grid)
                _ensure_cells(db, pd.DataFrame({"cell_id": ids, "lat": clat, "lon": clon}), grid)
                hours = g[~is_day[g.index]]
                if not hours.empty:
                    merged += len(hours) - hours["time_utc"].nunique()
                    _count(result, store_hourly(db, cell, hours, "import", today), cell, touched)
                days = g[is_day[g.index]].rename(columns=_DAILY_NAMES)
                if not days.empty:
                    days = days.assign(date=day[days.index])
                    merged += len(days) - days["date"].nunique()
                    _count(result, _upsert_daily(db, cell, days), cell, touched)
        _mark_cells_changed(db, touched, grid, result)
    _note_merged(merged, result)
    _note_lcd(lcd_notes, default_tz, result)
    if assumed:
        result.messages.append(f"local times of cells with no patient were read in "
                               f"{', '.join(sorted(assumed))}; give times with an offset to be exact")
    if fmt == "csv" and result.accepted + result.replaced + result.unchanged == 0 and not result.quarantined:
        result.messages.append("no weather rows found")


def _register() -> None:
    try:
        from trigger_watch import importing
    except ImportError:     # importing.py not there yet (development)
        return
    importing.IMPORTERS["weather"] = import_weather_file


_register()
