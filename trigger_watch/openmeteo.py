"""The Open-Meteo HTTP client: the call budget, polite retries, and reading its JSON answers.

Open-Meteo's free tier allows fewer than 600 calls a minute, 5,000 an hour and 10,000 a day, and a long
request counts as several calls (:func:`call_weight`). :class:`RateLimiter` keeps the calls made in the
database (``weather_budget``), so separate runs in the same hour or day share one budget, and it sleeps
through a full minute window but refuses (``WeatherRateLimited``) when the hour or day budget is spent.

:class:`OpenMeteoClient` sends one GET through the ``requests.Session`` it is given, with a timeout and a
descriptive User-Agent, retries 429, 5xx, timeouts and dropped connections with exponential backoff and
jitter (or the server's ``Retry-After``), and raises a :class:`WeatherError` naming the last problem
after the last try. A 400 is not retried: the request itself is wrong (:class:`WeatherRequestRejected`).

:func:`block_frame` turns one location's ``hourly`` or ``daily`` block into a DataFrame in our units
(hPa, degC, %, mm) with times in UTC, converting through the response's single ``utc_offset_seconds``
(:func:`read_block` also names the rows whose time or values cannot be read);
:func:`read_open_meteo_csv` turns the website's CSV download into the same JSON objects.
"""

from __future__ import annotations

import io
import math
import random
import re
import time
from collections.abc import Callable, Collection
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
import sqlite_utils

from trigger_watch import storage
from trigger_watch.errors import InputFileError, WeatherError, WeatherRateLimited

#: Hourly variables we request and store, in hPa, degC, % and mm (sum over the preceding hour).
HOURLY_VARS = ("pressure_msl", "temperature_2m", "relative_humidity_2m", "precipitation")
#: Names seen in older captures -> current names (the API echoes whatever name was requested).
ALIASES = {"relativehumidity_2m": "relative_humidity_2m",
           "relativehumidity_2m_mean": "relative_humidity_2m_mean"}


class WeatherRequestRejected(WeatherError, ValueError):
    """Open-Meteo answered 4xx (400: a bad parameter); retrying the same request cannot help."""


class WeatherUnavailable(WeatherError, ConnectionError):
    """Open-Meteo did not answer usefully after every retry (429, 5xx, timeout, connection error)."""


class WeatherOffline(WeatherUnavailable):
    """Every try of a request failed to connect (no route, no name resolution, refused): most likely this
    machine has no network, and the requests after it would each wait out their retries the same way."""


def call_weight(n_vars: int, n_days: int, n_locations: int) -> float:
    """Calls one request counts as on the free tier (FORMATS.md 1.4, the website's calculator).

    ``max(1, max(nVars/10, nDays/14 * nVars/10)) * nLocations``; 1 year of 4 hourly variables for one
    location weighs 10.4 calls.
    """
    return max(1.0, max(n_vars / 10, (n_days / 14) * (n_vars / 10))) * n_locations


# ------------------------------------------------------------------------------------- the budget

class RateLimiter:
    """Sliding-window call budget persisted in ``weather_budget`` (epoch seconds, weight).

    ``acquire(weight)`` records the calls before a request is sent. It sleeps (``sleep``, injectable) when
    the wait is at most ``max_wait`` seconds (the minute window) and raises ``WeatherRateLimited`` when it
    would be longer (the hour or day budget is spent: the rest waits for the next run).
    """

    def __init__(self, db: sqlite_utils.Database, *, per_minute: float, per_hour: float, per_day: float,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 max_wait: float = 65.0):
        self.db = db
        self.limits = ((60.0, float(per_minute), "minute"), (3600.0, float(per_hour), "hour"),
                       (86400.0, float(per_day), "day"))
        self.clock = clock
        self.sleep = sleep
        self.max_wait = max_wait
        self.waited = 0.0  # seconds slept for the budget, for the summary

    def used(self, window: float, now: float | None = None) -> float:
        """Calls (weighted) recorded in the last ``window`` seconds."""
        now = self.clock() if now is None else now
        row = self.db.execute("SELECT coalesce(sum(weight), 0) FROM weather_budget WHERE at > ?",
                              (now - window,)).fetchone()
        return float(row[0])

    def _wait_needed(self, weight: float, now: float) -> tuple[float, str, float, float]:
        entries = self.db.execute("SELECT at, weight FROM weather_budget WHERE at > ? ORDER BY at",
                                  (now - 86400.0,)).fetchall()
        at = np.array([e[0] for e in entries], dtype=float)
        w = np.array([e[1] for e in entries], dtype=float)
        worst = (0.0, "", 0.0, 0.0)
        for window, limit, name in self.limits:
            inside = at > now - window
            used = float(w[inside].sum())
            if used + weight <= limit:
                continue
            # the earliest moment enough of the oldest calls have left the window
            freed = np.cumsum(w[inside])
            k = int(np.searchsorted(freed, used + weight - limit - 1e-9))
            wait = float(at[inside][min(k, len(freed) - 1)] + window - now) + 1e-3 if len(freed) else math.inf
            if wait > worst[0]:
                worst = (wait, name, used, limit)
        return worst

    def acquire(self, weight: float) -> None:
        for window, limit, name in self.limits:
            if weight > limit:
                raise WeatherRateLimited(
                    f"one request weighs {weight:.1f} calls, more than the whole {name} budget "
                    f"of {limit:.0f}; "
                    f"lower weather.cells_per_request or raise weather.calls_per_{name}")
        while True:
            now = self.clock()
            wait, name, used, limit = self._wait_needed(weight, now)
            if wait <= 0:
                with storage.transaction(self.db):
                    self.db.conn.execute("DELETE FROM weather_budget WHERE at < ?", (now - 86400.0,))
                    self.db.conn.execute("INSERT INTO weather_budget (at, weight) VALUES (?, ?)",
                                         (now, weight))
                return
            if wait > self.max_wait:
                raise WeatherRateLimited(
                    f"the Open-Meteo {name} budget is spent ({used:.0f} of {limit:.0f} calls used); "
                    f"the rest is fetched on a run in about {wait / 60:.0f} min")
            self.sleep(wait)
            self.waited += wait


# ------------------------------------------------------------------------------------- the client

class OpenMeteoClient:
    """GET Open-Meteo JSON with timeouts, budget, retries and clear errors. All I/O objects are injected."""

    def __init__(self, session: requests.Session, limiter: RateLimiter, *, user_agent: str,
                 timeout: float = 30.0, max_retries: int = 5, backoff: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 max_retry_after: float = 300.0):
        self.session = session
        self.limiter = limiter
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_retry_after = max_retry_after
        self.requests = 0          # HTTP requests sent, retries included
        self.calls = 0.0           # weighted calls spent
        self.slept = 0.0           # seconds of backoff

    def get(self, url: str, params: dict[str, Any], weight: float) -> list[dict]:
        """One Open-Meteo request; returns one JSON object per requested location, in request order."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        last = "no attempt made"
        tries = self.max_retries + 1
        unreachable = 0  # tries that could not connect at all
        for attempt in range(tries):
            self.limiter.acquire(weight)
            self.requests += 1
            self.calls += weight
            retry_after: float | None = None
            try:
                resp = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
            except requests.Timeout:
                last = f"no answer within {self.timeout:g} s (timeout)"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                last = f"connection failed ({type(exc).__name__})"
                unreachable += not isinstance(exc, requests.exceptions.ChunkedEncodingError)
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        last = "the answer was not JSON (cut off?)"
                    else:
                        if isinstance(data, dict) and data.get("error"):
                            raise WeatherRequestRejected(
                                f"Open-Meteo refused the request: {data.get('reason')}")
                        return data if isinstance(data, list) else [data]
                elif resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code} {_reason(resp)}".rstrip()
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                else:
                    raise WeatherRequestRejected(
                        f"Open-Meteo refused the request (HTTP {resp.status_code}): {_reason(resp)}")
            if attempt == tries - 1:
                break
            delay = retry_after if retry_after is not None else (
                self.backoff * 2 ** attempt * self.rng.uniform(0.5, 1.5))
            if delay > self.max_retry_after:
                raise WeatherUnavailable(
                    f"Open-Meteo asked to wait {delay:.0f} s ({last}); retried on the next run")
            self.sleep(delay)
            self.slept += delay
        error = WeatherOffline if unreachable == tries else WeatherUnavailable
        raise error(f"Open-Meteo failed after {tries} tries; last: {last}; retried on the next run")


def _reason(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("reason"):
            return str(body["reason"])
    except ValueError:
        pass
    return (resp.text or "").strip()[:200]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------- answers

_F_UNITS = {"°F", "F", "fahrenheit"}
_INCH_UNITS = {"inch", "in", "inches"}


def convert_units(values: pd.Series, unit: str | None, name: str) -> tuple[pd.Series | None, str | None]:
    """Values in our units (degC, mm, hPa, %); ``(None, why)`` when the unit is not one we know."""
    unit = (unit or "").strip()
    if name.startswith(("temperature", "apparent_temperature", "dew_point")):
        if unit in _F_UNITS:
            return (values - 32.0) * 5.0 / 9.0, None
        if unit in {"°C", "C", "celsius", ""}:
            return values, None
    elif name.startswith(("precipitation", "rain", "snowfall", "showers")):
        if unit in _INCH_UNITS:
            return values * 25.4, None
        if unit in {"mm", ""}:
            return values, None
    elif name.startswith(("pressure", "surface_pressure")):
        if unit in {"hPa", "mbar", ""}:
            return values, None
    elif name.startswith("relative_humidity"):
        if unit in {"%", ""}:
            return values, None
    else:
        return values, None
    return None, f"{name} is in unit {unit!r}, which trigger-watch cannot convert"


def block_frame(obj: dict, block: str) -> tuple[pd.DataFrame, list[str]]:
    """One location's ``hourly`` or ``daily`` block as a DataFrame in our units, plus notes.

    Hourly: column ``time_utc`` (datetime64, UTC) = local time minus the response's single
    ``utc_offset_seconds`` (Open-Meteo applies one fixed offset to the whole answer, even across DST).
    Daily: column ``date`` (the day at that fixed offset) and ``utc_offset_seconds``. Variables keep their
    Open-Meteo names (aliases renamed), as float, converted from the ``<block>_units`` units. An unreadable
    time is NaT and an unreadable value NaN; :func:`read_block` also says which and why.
    """
    frame, notes, _ = read_block(obj, block)
    return frame, notes


def read_block(obj: dict, block: str, checked: Collection[str] = HOURLY_VARS,
               ) -> tuple[pd.DataFrame, list[str], pd.Series]:
    """:func:`block_frame` plus, per row, why it is unreadable (None when it is fine).

    A row is unreadable when its time is not ``YYYY-MM-DDTHH:MM`` (daily ``YYYY-MM-DD``) or unixtime, or
    when a variable named in ``checked`` (names after aliases) holds something other than a number or
    null, such as ``"abc"``. Other variables (``sunrise``) are not checked.
    """
    data = obj.get(block)
    if not isinstance(data, dict) or "time" not in data:
        return pd.DataFrame(), [], pd.Series([], dtype=object)
    units = obj.get(f"{block}_units") or {}
    notes: list[str] = []
    n = len(data["time"])
    offset = int(float(obj.get("utc_offset_seconds") or 0))
    times = pd.Series(data["time"], dtype=object)
    out = pd.DataFrame(index=range(n))
    unix = units.get("time") == "unixtime" or pd.api.types.is_numeric_dtype(pd.Series(data["time"]))
    secs = pd.to_numeric(times, errors="coerce") if unix else None
    if block == "hourly":
        if secs is not None:
            out["time_utc"] = pd.to_datetime(secs, unit="s", utc=True)
        else:
            local = pd.to_datetime(times, format="%Y-%m-%dT%H:%M", errors="coerce")
            out["time_utc"] = (local - pd.Timedelta(seconds=offset)).dt.tz_localize("UTC")
        when, expected = out["time_utc"], "a local time like 2026-07-01T13:00 (YYYY-MM-DDTHH:MM)"
    else:
        if secs is not None:
            # unixtime daily values are midnight GMT+0; the docs say to add the offset again
            out["date"] = pd.to_datetime(secs + offset, unit="s").dt.normalize()
        else:
            out["date"] = pd.to_datetime(times, format="%Y-%m-%d", errors="coerce")
        when, expected = out["date"], "a date like 2026-07-01 (YYYY-MM-DD)"
        out["utc_offset_seconds"] = offset
    if secs is not None:
        expected = "a unixtime (whole seconds since 1970-01-01 UTC)"
    problems = pd.Series(np.full(n, None, dtype=object), index=out.index)
    bad = when.isna()
    problems[bad] = "time=" + times[bad].map(lambda v: repr(v)[:60]) + f" is not {expected}"
    for raw_name, values in data.items():
        if raw_name == "time":
            continue
        name = ALIASES.get(raw_name, raw_name)
        if len(values) != n:
            notes.append(f"{block}.{raw_name} has {len(values)} values for {n} times; not used")
            continue
        raw = pd.Series(values, dtype=object)
        series = pd.to_numeric(raw, errors="coerce").astype(float)
        conv, why = convert_units(series, units.get(raw_name), name)
        if conv is None:
            notes.append(why or f"{name}: unknown unit")
            continue
        # null, "" and "NaN" are unknown values; anything else that is no number makes the row unreadable
        bad = series.isna() & raw.notna()
        if name in checked and bad.any():
            bad[bad] = ~raw[bad].astype(str).str.strip().str.lower().isin(["", "nan", "null", "none"])
            text = f"{name}=" + raw[bad].map(lambda v: repr(v)[:60]) + " is not a number"
            problems[bad] = [t if pd.isna(p) else f"{p}; {t}" for p, t in zip(problems[bad], text)]
        out[name] = conv.to_numpy()
    return out, notes, problems


def looks_like_open_meteo_json(path: Path) -> bool:
    """Whether a JSON file starts like an Open-Meteo answer (a block or the offset key near the top)."""
    with path.open("r", encoding="utf-8-sig") as fh:
        head = fh.read(4096)
    return bool(re.search(r'"(hourly|daily)(_units)?"\s*:', head)) or '"utc_offset_seconds"' in head


def looks_like_open_meteo_csv(path: Path) -> bool:
    """Whether a CSV file is Open-Meteo's download format (a coordinates table first)."""
    with path.open("r", encoding="utf-8-sig") as fh:
        first = fh.readline().strip().lower()
    return first.startswith(("latitude,longitude,elevation", "location_id,latitude,longitude,elevation"))


def read_open_meteo_csv(path: Path) -> list[dict]:
    """Open-Meteo's CSV download (FORMATS.md 1.6) as the equivalent JSON objects, one per location.

    Tables are separated by blank lines: the first holds each location's coordinates and UTC offset, the
    others one block each (``time,<name> (<unit>),...``; ``location_id`` first for several locations).
    """
    text = path.read_text(encoding="utf-8-sig")
    tables = [t for t in re.split(r"\r?\n\s*\r?\n", text.strip()) if t.strip()]
    meta = pd.read_csv(io.StringIO(tables[0]))
    if "location_id" not in meta:
        meta.insert(0, "location_id", 0)
    locations = {int(r.location_id): {"latitude": r.latitude, "longitude": r.longitude,
                                      "utc_offset_seconds": int(r.utc_offset_seconds)}
                 for r in meta.itertuples(index=False)}
    for table in tables[1:]:
        frame = pd.read_csv(io.StringIO(table), dtype=str, keep_default_na=False)
        if "time" not in frame:
            raise InputFileError(f"{path}: a table without a `time` column; "
                                 f"is this an Open-Meteo CSV download?")
        if "location_id" not in frame:
            frame.insert(0, "location_id", "0")
        block = "hourly" if frame["time"].str.contains("T").any() else "daily"
        names = {c: re.match(r"^(.*?)\s*(?:\((.*)\))?$", c)
                 for c in frame.columns if c not in ("location_id", "time")}
        for loc, g in frame.groupby("location_id"):
            obj = locations.setdefault(int(loc), {})
            units = {m.group(1): m.group(2) or "" for m in names.values()}
            obj[f"{block}_units"] = {"time": "iso8601", **units}
            obj[block] = {"time": list(g["time"]),
                          **{m.group(1): [None if v in ("", "NaN", "nan") else v for v in g[c]]
                             for c, m in names.items()}}
    return [locations[k] for k in sorted(locations)]
