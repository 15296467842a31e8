"""The join: diary, attacks, sleep and weather become one panel row per patient-day.

Every later result is only as right as this table, so each rule lives in one small function and is
documented in ``docs/features.md``. The panel is built for all patients at once on flat numpy arrays:
each patient owns a contiguous block of rows, one per local day from the day before its first record
(a padding day, so that lag 1 of the first day can see weather and sleep) to ``as_of``; a record lands on
its row by arithmetic (``block start + day - first day``), never by a Python loop over days.

``load_inputs`` reads the stored tables with a few set-based queries; ``build_panel`` is pure.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pandas.api.indexers import BaseIndexer

from trigger_watch import packs, storage
from trigger_watch.errors import UnknownPatient

# ------------------------------------------------------------------------------------- the registry

#: A day boundary or gap, in nanoseconds.
HOUR_NS = 3_600 * 10**9
DAY_NS = 24 * HOUR_NS
#: Attack records and diary headache days closer than this (headache-free time) are one episode.
MERGE_GAP_NS = 24 * HOUR_NS
#: A diary headache without an attack record counts as a migraine day from this peak pain (0-10) on:
#: "moderate or severe pain" (ICHD-3 1.1, criterion C) on a 0-10 scale starts at 4.
MIGRAINE_DIARY_INTENSITY = 4.0
#: Known earlier days a personal baseline (median sleep, caffeine, bedtime) needs before it is used.
BASELINE_MIN_DAYS = 7
#: A food or symptom tag eaten/felt on fewer days than this in the whole panel is left out.
MIN_TAG_DAYS = 3
#: Menstruation: a bleeding day at most this many days after the last recorded bleeding day continues
#: that period; the first recorded day of a period may be up to this many days after its real start.
PERIOD_CONTINUE_DAYS = 3
PERIOD_MAX_UNSEEN_DAYS = 5
#: A run of unknown days this long may hide a whole period (menstrual_window NaN around it). Shorter runs
#: are mostly attack days without a diary: blanking the window's zeros around them made the missingness
#: depend on attacks, and that alone produced false menstrual "triggers" (odds ratio about 1.15 in
#: cycling patients without the trigger). A 3-6 day period wholly inside a shorter gap is read as 0:
#: a rare misclassification, which can only hide an effect, never invent one.
PERIOD_HIDE_RUN_DAYS = 7

LAGS = (0, 1)
KINDS = ("continuous", "boolean")
GROUPS = ("behaviour", "diary", "sleep", "weather", "calendar", "symptom", "food", "custom", "season")


@dataclass(frozen=True)
class Factor:
    """One candidate trigger. ``behaviour``: its lag-0 value is changed by the attack itself (rated or logged in
    the evening of the onset day: behaviour, and stress), so lag 0 is estimated and shown but never called."""

    id: str
    label: str
    kind: str
    group: str
    behaviour: bool = False
    lags: tuple[int, ...] = (0, 1)


def _f(id, label, kind="continuous", group="diary", behaviour=False, lags=(0, 1)):
    return Factor(id, label, kind, group, behaviour, lags)


#: The standard factors of ``../shared/spec/factors.md``, in report order.
FACTORS: tuple[Factor, ...] = (
    # Stress is rated in the evening check-in, after the day's attack: pain raises it (an audit's +1 point on
    # attack days made 150 of 150 null patients' "stress the same day" a trigger), and the let-down is read
    # from it. So, like behaviour, its lag-0 value is a consequence as much as a cause; lag 1 is called.
    _f("stress", "Stress (0-10)", behaviour=True),
    _f("stress_letdown", "Stress let-down, fell by 3 or more (yes/no)", "boolean", behaviour=True),
    _f("alcohol_units", "Alcohol (drinks)", group="behaviour", behaviour=True),
    _f("caffeine_mg", "Caffeine (mg)", group="behaviour", behaviour=True),
    _f("caffeine_withdrawal", "Caffeine under half the usual (yes/no)", "boolean", "behaviour", True),
    # Lag 0 only: the window already spans six days, and its lag-1 copy shares five of them (correlation
    # 0.86 in simulated cycles), so testing both called lag-1 "triggers" that were the lag-0 effect.
    _f("menstrual_window", "Menstrual window, day -2 to +3 (yes/no)", "boolean", lags=(0,)),
    _f("skipped_meal", "Skipped meal (yes/no)", "boolean", "behaviour", True),
    _f("exercise_minutes", "Exercise (minutes)", group="behaviour", behaviour=True),
    _f("water_l", "Water (litres)", group="behaviour", behaviour=True),
    _f("screen_hours", "Screen time (hours)", group="behaviour", behaviour=True),
    _f("sleep_quality", "Sleep quality (0-10)"),
    _f("sleep_hours", "Sleep (hours)", group="sleep"),
    _f("sleep_short", "Short sleep (yes/no)", "boolean", "sleep"),
    _f("sleep_long", "Long sleep (yes/no)", "boolean", "sleep"),
    _f("sleep_efficiency", "Sleep efficiency (%)", group="sleep"),
    _f("awakenings", "Awakenings (count)", group="sleep"),
    _f("bedtime_shift", "Bedtime away from usual (hours)", group="sleep"),
    _f("pressure_change", "Pressure change (hPa)", group="weather"),
    _f("pressure_drop", "Pressure fall of 5 hPa or more (yes/no)", "boolean", "weather"),
    _f("temperature_max", "Maximum temperature (C)", group="weather"),
    _f("temperature_change", "Temperature change (C)", group="weather"),
    _f("humidity", "Humidity (%)", group="weather"),
    _f("precipitation", "Precipitation (mm)", group="weather"),
    _f("weekend", "Weekend (yes/no)", "boolean", "calendar"),
)
#: The time of year, two smooth columns (the sine and cosine of the day's angle in the year): the models adjust
#: every factor for it and never report or call it. Attacks come and go with the seasons for many reasons (the
#: light, the school year, allergies), and so do temperature and humidity: without it a cohort whose attacks
#: peak in summer, and nothing else, was told "temperature is one of your triggers" (a simulated cohort with
#: twice the rate in summer as in winter: 166 false calls for 300 patients). With it a weather factor counts
#: for what it does beyond the time of year: a hot day for the season, not summer.
SEASON: tuple[Factor, ...] = (
    _f("season_sin", "Time of year (sine)", group="season", lags=(0,)),
    _f("season_cos", "Time of year (cosine)", group="season", lags=(0,)),
)
FACTOR_BY_ID = {f.id: f for f in FACTORS}
_LAG_WORDS = {0: "the same day", 1: "the day before"}

META_COLUMNS = ["patient_id", "date", "observed", "diary_kept", "onset", "in_episode", "at_risk",
                "headache_day", "migraine_day", "intensity"]
_META_DTYPES = ["str", "datetime64[ns]", bool, bool, np.int8, bool, bool, bool, bool, float]


def column_name(factor: str, lag: int) -> str:
    """The panel column of a factor at a lag: ``"alcohol_units@1"``."""
    return f"{factor}@{lag}"


def tag_factor(prefix: str, tag: str) -> Factor:
    """The factor of a diary tag: ``food:red_wine`` (behaviour) or ``symptom:yawning`` (warning sign)."""
    words = tag.replace("_", " ")
    if prefix == "food":
        return Factor(f"food:{tag}", f"Ate {words} (yes/no)", "boolean", "food", True)
    return Factor(f"symptom:{tag}", f"{words.capitalize()} (yes/no)", "boolean", "symptom", False)


# -------------------------------------------------------------------------------------- the inputs

PATIENT_COLUMNS = ["patient_id", "timezone", "latitude", "longitude", "sex", "birth_year", "clinician_id"]
DIARY_COLUMNS = ["patient_id", "date", "stress", "alcohol_units", "caffeine_mg", "menstruation",
                 "skipped_meal", "exercise_minutes", "water_l", "screen_hours", "sleep_hours",
                 "sleep_quality", "foods", "symptoms", "medication", "headache", "headache_intensity",
                 "custom"]
ATTACK_COLUMNS = ["patient_id", "start", "end", "start_local", "end_local", "intensity", "kind", "aura",
                  "symptoms", "medications", "relief"]
TREATMENT_COLUMNS = ["patient_id", "date", "treatment", "dose_mg", "route"]
SLEEP_COLUMNS = ["patient_id", "date", "sleep_hours", "efficiency", "awakenings", "bedtime", "wake_time",
                 "time_in_bed_hours", "nap_hours", "source"]
WEATHER_COLUMNS = ["patient_id", "date", "pressure_mean", "pressure_min", "pressure_max", "pressure_change",
                   "temperature_max", "temperature_mean", "temperature_change", "humidity", "precipitation",
                   "source"]
CUSTOM_COLUMNS = ["patient_id", "date", "factor", "value"]


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


@dataclass
class PanelInputs:
    """Everything the panel is built from, as DataFrames in their stored shapes (``storage.py``).

    ``diary_custom`` optionally holds the custom diary factors already unpacked (``patient_id, date,
    factor, value``, as :func:`load_inputs` reads them with SQLite's ``json_each``); when it is None they
    are read from the JSON text of ``diary.custom``.
    """

    patients: pd.DataFrame = field(default_factory=lambda: _empty(PATIENT_COLUMNS))
    diary: pd.DataFrame = field(default_factory=lambda: _empty(DIARY_COLUMNS))
    attacks: pd.DataFrame = field(default_factory=lambda: _empty(ATTACK_COLUMNS))
    treatments: pd.DataFrame = field(default_factory=lambda: _empty(TREATMENT_COLUMNS))
    sleep_nightly: pd.DataFrame = field(default_factory=lambda: _empty(SLEEP_COLUMNS))
    weather_daily: pd.DataFrame = field(default_factory=lambda: _empty(WEATHER_COLUMNS))
    diary_custom: pd.DataFrame | None = None


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()


def load_inputs(db, patient_ids=None, as_of: date | None = None, *,
                weather_through: date | None = None) -> PanelInputs:
    """Read the stored inputs of some patients (all when None) up to ``as_of`` (everything when None).

    A few set-based queries, read by ``storage.read_table`` (pandas' frames, built faster); the patients go
    in as one JSON parameter, not a huge IN list. Sleep and weather come from ``sleep.nightly`` and
    ``weather.daily_for_patients``.
    """
    conn = db.conn
    cut = _as_date(as_of).isoformat() if as_of is not None else "9999-12-31"
    who, params = _who(patient_ids)

    def read(table: str, columns: list[str], where: str, extra: list) -> pd.DataFrame:
        return storage.read_table(conn, table, columns, f"{who}{where}", params + extra)

    patients = read("patients", PATIENT_COLUMNS, "", [])
    diary = None if patient_ids is None else packs.read_frame(conn, "diary", patient_ids, cut)
    if diary is None:
        diary = read("diary", DIARY_COLUMNS, " AND date <= ?", [cut])
    # The diary rows just read are the ones this query unpacks: when none has custom factors, its (empty)
    # answer is known without reading the diary a second time.
    if diary["custom"].notna().any():
        custom = pd.read_sql_query(
            "SELECT d.patient_id, d.date, j.key AS factor, CAST(j.value AS REAL) AS value FROM (SELECT "
            f"patient_id, date, custom FROM diary WHERE {who} AND custom IS NOT NULL AND date <= ?) d, "
            "json_each(d.custom) j WHERE j.type IN ('integer', 'real', 'true', 'false')", conn,
            params=params + [cut])
    else:
        custom = pd.DataFrame(columns=["patient_id", "date", "factor", "value"])
    attacks = read("attacks", ATTACK_COLUMNS, " AND substr(coalesce(start_local, start), 1, 10) <= ?", [cut])
    treatments = read("treatments", TREATMENT_COLUMNS, " AND date <= ?", [cut])

    pids = None if patient_ids is None else sorted({str(p) for p in patient_ids})
    sleep_nightly = _from_module("sleep", "nightly", SLEEP_COLUMNS, db, pids, as_of)
    attack_days = attacks["start_local"].fillna(attacks["start"]).astype(str).str.slice(0, 10)
    # The first and last day of each apart: on text columns min and max run in Arrow, not on Python objects.
    spans = [(days.min(), days.max()) for days in (diary["date"].dropna(), attack_days.dropna()) if len(days)]
    if spans:
        start = (pd.Timestamp(min(first for first, _ in spans)) - pd.Timedelta(days=1)).date()
        end = _as_date(as_of) if as_of is not None else pd.Timestamp(max(last for _, last in spans)).date()
        if weather_through is not None:  # e.g. tomorrow, for the forecast row
            end = max(end, _as_date(weather_through))
        located = patients[["patient_id", "timezone", "latitude", "longitude"]]
        weather_daily = _from_module("weather", "daily_for_patients", WEATHER_COLUMNS,
                                     db, located, start, end)
    else:
        weather_daily = _empty(WEATHER_COLUMNS)
    return PanelInputs(patients=patients, diary=diary, attacks=attacks, treatments=treatments,
                       sleep_nightly=sleep_nightly, weather_daily=weather_daily, diary_custom=custom)


def warm_weather(db, patient_ids, as_of: date, *, weather_through: date | None = None) -> None:
    """Fill the weather cache for what :func:`load_inputs` of these patients will read (``weather.warm_cache``
    over their whole span), so that loading them in blocks, even from several processes, only reads."""
    from trigger_watch import weather

    who, params = _who(patient_ids)
    cut = _as_date(as_of).isoformat()
    first = db.conn.execute(
        f"SELECT min(d) FROM (SELECT min(date) AS d FROM diary WHERE {who} AND date <= ? UNION ALL "
        f"SELECT min(substr(coalesce(start_local, start), 1, 10)) FROM attacks WHERE {who})",
        params + [cut] + params).fetchone()[0]
    if first is None:
        return
    patients = storage.read_table(db.conn, "patients", ["patient_id", "timezone", "latitude", "longitude"],
                                  who, params)
    end = max(_as_date(as_of), _as_date(weather_through)) if weather_through is not None else _as_date(as_of)
    weather.warm_cache(db, patients, _as_date(first) - timedelta(days=1), end)


def _who(patient_ids) -> tuple[str, list]:
    """A WHERE clause (and its parameters) selecting ``patient_ids`` (everyone when None): one JSON array
    parameter (:func:`storage.patients_in`)."""
    if patient_ids is None:
        return "1 = 1", []
    ids = sorted({str(p) for p in patient_ids})
    return storage.patients_in(), [json.dumps(ids)]


def _from_module(module: str, function: str, columns: list[str], *args) -> pd.DataFrame:
    """Call ``trigger_watch.<module>.<function>``; empty frame when that module is not there yet."""
    import importlib

    try:
        fn = getattr(importlib.import_module(f"trigger_watch.{module}"), function)
    except (ImportError, AttributeError):
        return _empty(columns)
    return fn(*args)


def panel_for_patient(db, patient_id: str, as_of: date | None = None) -> pd.DataFrame:
    """One patient's panel, exactly as the models see it (``trigger-watch panel PATIENT``).

    ``as_of`` None: up to the patient's last diary day or attack start.
    """
    row = db.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)).fetchone()
    if row is None:
        raise UnknownPatient(patient_id)
    if as_of is None:
        last = db.execute(
            "SELECT max(d) FROM (SELECT max(date) AS d FROM diary WHERE patient_id = ? UNION ALL "
            "SELECT max(substr(coalesce(start_local, start), 1, 10)) FROM attacks WHERE patient_id = ?)",
            (patient_id, patient_id)).fetchone()[0]
        if last is None:  # nothing recorded yet: an empty panel
            return build_panel(PanelInputs(), date(1970, 1, 1))
        as_of = date.fromisoformat(last)
    return build_panel(load_inputs(db, [patient_id], as_of), _as_date(as_of))


# --------------------------------------------------------------------------------- array helpers

_NAT = np.iinfo(np.int64).min


def _naive_ns(values) -> np.ndarray:
    """Local (naive) date or date-time text / datetime64 -> int64 ns; NaT -> ``_NAT``.

    Text is parsed once per distinct value: a block's diary repeats each date for every patient, and
    to_datetime's own cache does not start on text sorted by patient (its first rows are all distinct)."""
    s = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(s):
        return _as_ns(s)
    codes, distinct = pd.factorize(s)
    ns = _as_ns(pd.to_datetime(pd.Series(distinct, dtype=object), format="ISO8601"))
    return np.where(codes >= 0, ns[codes] if len(ns) else _NAT, _NAT)


def _as_ns(s: pd.Series) -> np.ndarray:
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_localize(None)
    return s.astype("datetime64[ns]").to_numpy().astype(np.int64)


def _utc_ns(values) -> np.ndarray:
    """UTC instants (text ``...Z`` or with an offset) -> int64 ns since the epoch; NaT -> ``_NAT``."""
    s = pd.to_datetime(pd.Series(values).astype(object), utc=True, format="ISO8601")
    return s.dt.tz_convert(None).astype("datetime64[ns]").to_numpy().astype(np.int64)


def _day_of(ns: np.ndarray) -> np.ndarray:
    out = np.floor_divide(ns, DAY_NS)
    out[ns == _NAT] = _NAT
    return out


def _zones(tz: np.ndarray):
    for zone in pd.unique(tz):
        yield zone, np.flatnonzero(tz == zone)


def _local_to_utc(local_ns: np.ndarray, tz: np.ndarray) -> np.ndarray:
    """Local wall-clock ns in each row's zone -> UTC ns (a gap moves forward; an overlap takes DST)."""
    out = np.empty_like(local_ns)
    for zone, idx in _zones(tz):
        ix = pd.DatetimeIndex(local_ns[idx].astype("datetime64[ns]"))
        loc = ix.tz_localize(zone, ambiguous=np.ones(len(idx), dtype=bool), nonexistent="shift_forward")
        out[idx] = loc.tz_convert("UTC").tz_localize(None).as_unit("ns").asi8
    return out


def _utc_to_local(utc_ns: np.ndarray, tz: np.ndarray) -> np.ndarray:
    out = np.empty_like(utc_ns)
    for zone, idx in _zones(tz):
        ix = pd.DatetimeIndex(utc_ns[idx].astype("datetime64[ns]")).tz_localize("UTC")
        out[idx] = ix.tz_convert(zone).tz_localize(None).as_unit("ns").asi8
    return out


def _num(frame: pd.DataFrame, col: str) -> np.ndarray:
    if col not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


class _SinceFirst(BaseIndexer):
    """Rolling windows from a per-row first index (the patient's first known value) to the row itself."""

    def get_window_bounds(self, num_values=0, min_periods=None, center=None, closed=None, step=None):
        return self.first.astype(np.int64), np.arange(1, num_values + 1, dtype=np.int64)


@dataclass
class _Grid:
    """Contiguous day blocks, one per patient: row = start[code] + day - first[code]."""

    ids: np.ndarray        # patient ids, sorted
    first: np.ndarray      # first day of each block (the padding day), days since epoch
    last: int              # as_of, days since epoch
    start: np.ndarray      # first row of each block
    n: int
    code: np.ndarray       # per row
    day: np.ndarray        # per row

    def rows(self, codes: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Row of each (code, day); -1 when outside the grid."""
        ok = (codes >= 0) & (days != _NAT)
        safe = np.where(ok, codes, 0)
        ok &= (days >= self.first[safe]) & (days <= self.last)
        return np.where(ok, self.start[safe] + days - self.first[safe], -1)

    def coverage(self, codes, lo, hi) -> np.ndarray:
        """How many of the day ranges [lo, hi] (inclusive, clipped to each block) cover each row."""
        safe = np.where(codes >= 0, codes, 0)
        lo = np.maximum(lo, self.first[safe])
        hi = np.minimum(hi, self.last)
        ok = (codes >= 0) & (lo <= hi)
        a = self.start[safe[ok]] + lo[ok] - self.first[safe[ok]]
        b = self.start[safe[ok]] + hi[ok] - self.first[safe[ok]] + 1
        diff = np.bincount(a, minlength=self.n + 1) - np.bincount(b, minlength=self.n + 1)
        return np.cumsum(diff[: self.n])

    def shift(self, values: np.ndarray) -> np.ndarray:
        """The previous calendar day's value (NaN on a block's first row)."""
        out = np.empty_like(values, dtype=float)
        out[1:] = values[:-1]
        out[self.start] = np.nan
        return out

    def baseline(self, values: np.ndarray) -> np.ndarray:
        """Median of the known values strictly before each day (at least BASELINE_MIN_DAYS of them)."""
        known = np.flatnonzero(~np.isnan(values))
        kc = self.code[known]
        # one rolling median whose window runs from the patient's first known value to the row
        first = np.searchsorted(kc, kc, side="left")
        med = (pd.Series(values[known]).rolling(_SinceFirst(first=first), min_periods=BASELINE_MIN_DAYS)
               .median().to_numpy())
        # for each day: the running median at the last known day before it, in the same patient
        at = np.full(self.n, -1)
        at[known] = np.arange(len(known))
        at = np.maximum.accumulate(at)
        prev = np.full(self.n, -1)
        prev[1:] = at[:-1]
        ok = prev >= 0
        ok[ok] = known[prev[ok]] >= self.start[self.code[ok]]
        return np.where(ok, med[np.maximum(prev, 0)] if len(med) else np.nan, np.nan)


# ------------------------------------------------------------------------------------ build_panel

def build_panel(inputs: PanelInputs, as_of: date, *, columns: CohortColumns | None = None) -> pd.DataFrame:
    """The panel of ``docs/internals.md``: one row per patient-day, first record to ``as_of``.

    Pure: reads only ``inputs``; rows after ``as_of`` are ignored, and input row order does not matter.
    ``columns``: the tag and custom factors of the whole cohort (:func:`cohort_columns`) when ``inputs``
    hold only some of its patients: the panel then has exactly the columns (and kinds) the cohort's panel
    would have, and the same rows for these patients.
    ``attrs``: ``factors`` (one row per factor column), ``missing`` (per patient and factor column, the
    share of at-risk days with no value), ``dropped`` (columns left out and why), ``as_of``.
    """
    as_of = _as_date(as_of)
    last = (as_of - date(1970, 1, 1)).days
    patients = inputs.patients
    diary = _cut(inputs.diary, "date", last)
    attacks = inputs.attacks
    a_start_local = _naive_ns(attacks["start_local"]) if len(attacks) else np.empty(0, np.int64)
    a_start_utc = _utc_ns(attacks["start"]) if len(attacks) else np.empty(0, np.int64)

    # Patients and their time zones; local start when the importer left it empty.
    ids = _ids(diary, attacks)
    tz_map = {} if patients.empty else dict(zip(patients["patient_id"].astype(str), patients["timezone"]))
    tz_by_code = np.array([_zone(tz_map.get(p)) for p in ids], dtype=object)
    a_code = _codes(ids, attacks["patient_id"]) if len(attacks) else np.empty(0, dtype=np.int64)
    a_tz = tz_by_code[a_code] if len(attacks) else np.empty(0, dtype=object)
    missing_local = a_start_local == _NAT
    if missing_local.any():
        a_start_local[missing_local] = _utc_to_local(a_start_utc[missing_local], a_tz[missing_local])
    a_keep = (a_start_local != _NAT) & (_day_of(a_start_local) <= last)
    attacks = attacks.loc[a_keep]
    a_code, a_tz = a_code[a_keep], a_tz[a_keep]
    a_start_local, a_start_utc = a_start_local[a_keep], a_start_utc[a_keep]
    ids_now = _ids(diary, attacks)
    if len(ids_now) != len(ids):  # attacks after as_of named patients with nothing before it
        keep = np.isin(ids, ids_now)
        remap = np.cumsum(keep) - 1
        ids, tz_by_code, a_code = ids[keep], tz_by_code[keep], remap[a_code]
    if len(ids) == 0:
        empty = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in zip(META_COLUMNS, _META_DTYPES)})
        return _finish(empty, {}, as_of, [])

    d_code = _codes(ids, diary["patient_id"])
    d_day = _day_of(_naive_ns(diary["date"]))
    a_day = _day_of(a_start_local)
    first = np.full(len(ids), last, dtype=np.int64)
    np.minimum.at(first, d_code, d_day)
    np.minimum.at(first, a_code, a_day)
    first -= 1  # the padding day
    sizes = last - first + 1
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    code = np.repeat(np.arange(len(ids)), sizes)
    day = np.arange(n) - np.repeat(start, sizes) + np.repeat(first, sizes)
    g = _Grid(ids, first, last, start, n, code, day)

    d_row = g.rows(d_code, d_day)
    diary_kept = np.zeros(n, dtype=bool)
    diary_kept[d_row] = True

    def dcol(col: str) -> np.ndarray:
        out = np.full(n, np.nan)
        out[d_row] = _num(diary, col)
        return out

    meta = _episodes(g, dcol, attacks, a_code, a_tz, a_start_local, a_start_utc, tz_by_code)
    values = _standard_factors(g, dcol, diary_kept, inputs, last)
    dropped: list[tuple[str, str]] = []
    tags = {}
    for prefix, col in (("food", "foods"), ("symptom", "symptoms")):
        tags.update(_tag_factors(g, diary, d_row, prefix, col, dropped, columns))
    custom = _custom_factors(g, inputs, diary, d_row, ids, last, columns)
    registry = (list(FACTORS) + list(SEASON) + [tag_factor(*k.split(":", 1)) for k in tags]
                + [c[0] for c in custom.values()])
    values.update(tags)
    values.update({k: v[1] for k, v in custom.items()})

    keep = g.day > g.first[g.code]  # drop the padding days
    rows = np.flatnonzero(keep)
    observed = (diary_kept | meta["touched"])[rows]
    in_episode = meta["in_episode"][rows]
    cols: dict[str, object] = {
        "patient_id": pd.array(ids, dtype="str").take(g.code[rows]),
        "date": (g.day[rows]).astype("datetime64[D]").astype("datetime64[ns]"),
        "observed": observed,
        "diary_kept": diary_kept[rows],
        "onset": meta["onset"][rows].astype(np.int8),
        "in_episode": in_episode,
        "at_risk": observed & ~in_episode,
        "headache_day": meta["headache_day"][rows],
        "migraine_day": meta["migraine_day"][rows],
        "intensity": meta["intensity"][rows],
    }
    # One float64 block, filled column by column (one allocation instead of one per column).
    names = [column_name(f.id, lag) for f in registry for lag in f.lags]
    block = np.empty((len(rows), len(names)), order="F")
    before = rows - 1  # the padding day keeps row - 1 inside the patient's block
    j = 0
    for f in registry:
        v = values.pop(f.id)  # freed as the block fills: a lower peak
        for lag in f.lags:  # indices are valid; clip: unbuffered
            np.take(v, rows if lag == 0 else before, out=block[:, j], mode="clip")
            j += 1
    del v
    panel = pd.concat([pd.DataFrame(cols), pd.DataFrame(block, columns=names, copy=False)], axis=1)
    return _finish(panel, {f.id: f for f in registry}, as_of, dropped)


def _ids(*frames: pd.DataFrame) -> np.ndarray:
    """The sorted distinct patient ids of some frames, as a numpy object array of str."""
    parts = [np.asarray(f["patient_id"].unique(), dtype=object) for f in frames if len(f)]
    if not parts:
        return np.empty(0, dtype=object)
    return np.sort(pd.unique(np.concatenate(parts)).astype(str).astype(object))


def _codes(ids: np.ndarray, patient_id: pd.Series) -> np.ndarray:
    """Each row's index in the sorted ``ids`` (-1: not there), looked up once per distinct id."""
    codes, distinct = pd.factorize(patient_id.astype(str))
    at = pd.Index(ids).get_indexer(distinct)
    return np.where(codes >= 0, at[codes] if len(at) else -1, -1)


def _zone(tz) -> str:
    """The patient's IANA zone; UTC (with a warning for a name that is not a zone) when unusable."""
    if tz is None or (isinstance(tz, float) and np.isnan(tz)) or tz == "":
        return "UTC"
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        warnings.warn(f"time zone {tz!r} is not an IANA zone name; the panel uses UTC for that patient",
                      stacklevel=3)
        return "UTC"
    return str(tz)


def _cut(frame: pd.DataFrame, col: str, last: int) -> pd.DataFrame:
    if frame.empty:
        return frame
    days = _day_of(_naive_ns(frame[col]))
    return frame.loc[(days != _NAT) & (days <= last)]


def _finish(panel: pd.DataFrame, registry: dict, as_of: date, dropped) -> pd.DataFrame:
    names = [c for c in panel.columns if "@" in c]
    meta = pd.DataFrame({
        "column": pd.Series(names, dtype=object),
        "factor": pd.Series([c.rsplit("@", 1)[0] for c in names], dtype=object),
        "lag": pd.Series([int(c.rsplit("@", 1)[1]) for c in names], dtype=np.int64),
    })
    meta["kind"] = pd.Series([registry[f].kind for f in meta["factor"]], dtype=object)
    meta["group"] = pd.Series([registry[f].group for f in meta["factor"]], dtype=object)
    meta["label"] = pd.Series([f"{registry[f].label} {_LAG_WORDS[lag]}"
                               for f, lag in zip(meta["factor"], meta["lag"])], dtype=object)
    meta["behaviour"] = np.array([registry[f].behaviour for f in meta["factor"]], dtype=bool)
    # Rows are sorted by patient: count each patient's at-risk NaNs with reduceat over whole columns.
    code, ids = pd.factorize(panel["patient_id"])  # the ids are build_panel's: text, never missing
    heads = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if len(code) else np.empty(0, dtype=np.int64)
    pid = np.asarray(ids, dtype=object)[code[heads]]
    risk = panel["at_risk"].to_numpy(dtype=bool)
    share = {}
    if len(code):
        days = np.add.reduceat(risk.astype(np.int64), heads)
        for c in names:
            nan = np.add.reduceat(np.isnan(panel[c].to_numpy()) & risk, heads, dtype=np.int64)
            share[c] = np.divide(nan, days, out=np.full(len(heads), np.nan), where=days > 0)
    missing = pd.DataFrame(share, index=pd.Index(pid, dtype=object), columns=names)
    missing.index.name = "patient_id"
    panel.attrs["factors"] = meta
    panel.attrs["missing"] = missing
    panel.attrs["dropped"] = pd.DataFrame(dropped, columns=["factor", "reason"])
    panel.attrs["as_of"] = as_of.isoformat()
    return panel


# ---------------------------------------------------------------------------------------- episodes

def _episodes(g: _Grid, dcol, attacks, a_code, a_tz, a_start_local, a_start_utc, tz_by_code):
    """Onset, in_episode, headache/migraine days and intensity, from attacks and diary headache days.

    Each attack record is an interval; an open one lasts to the end of its local start day. A diary
    headache day that no attack record touches is the interval of that whole local day. Intervals with
    less than 24 headache-free hours between them, both in elapsed time and on the local clock (they
    differ by an hour across a DST change), are one episode; its onset is the local date of its
    first moment, and the days after that up to and including the local date on which it ends are inside
    it (a day that starts exactly as an episode ends cannot hold a new onset either: see docs).
    """
    n = g.n
    # attack intervals
    a_day = _day_of(a_start_local)
    end_utc = _utc_ns(attacks["end"]) if len(attacks) else np.empty(0, np.int64)
    end_local = _naive_ns(attacks["end_local"]) if len(attacks) else np.empty(0, np.int64)
    open_ = end_utc == _NAT
    midnight = (a_day + 1) * DAY_NS
    if open_.any():
        end_utc[open_] = _local_to_utc(midnight[open_], a_tz[open_])
        end_local[open_] = midnight[open_]
    need = (end_local == _NAT) & ~open_
    if need.any():
        end_local[need] = _utc_to_local(end_utc[need], a_tz[need])
    end_utc = np.maximum(end_utc, a_start_utc)
    end_local = np.maximum(end_local, a_start_local)
    touch_last = np.maximum(a_day, _day_of(end_local - 1))
    # which days attack records touch (a multi-day attack touches each of its days)
    touched = g.coverage(a_code, a_day, touch_last) > 0
    kind = attacks["kind"].astype(object).fillna("migraine").to_numpy() if len(attacks) else np.empty(0)
    mig = kind == "migraine"
    migraine_touch = g.coverage(a_code[mig], a_day[mig], touch_last[mig]) > 0

    # peak intensity: the diary's, or any touching attack's, whichever is higher
    headache = dcol("headache")
    d_int = dcol("headache_intensity")
    headache = np.where(np.isnan(headache) & (d_int > 0), 1.0, headache)
    d_int = np.where((headache == 0) & np.isnan(d_int) & ~touched, 0.0, d_int)
    a_int = np.full(n, np.nan)
    if len(attacks):
        span = (np.minimum(touch_last, g.last) - a_day + 1).clip(min=0)
        rep = np.repeat(np.arange(len(a_day)), span)
        offs = np.arange(len(rep)) - np.repeat(np.cumsum(span) - span, span)
        rows = g.rows(a_code[rep], a_day[rep] + offs)
        vals = _num(attacks, "intensity")[rep]
        ok = (rows >= 0) & ~np.isnan(vals)
        if ok.any():
            peak = pd.Series(vals[ok]).groupby(rows[ok]).max()
            a_int[peak.index.to_numpy()] = peak.to_numpy()
    intensity = np.fmax(d_int, a_int)

    # diary headache days no attack record touches
    h_rows = np.flatnonzero((headache == 1) & ~touched)
    h_code, h_day = g.code[h_rows], g.day[h_rows]
    h_tz = tz_by_code[h_code]
    h_start = _local_to_utc(h_day * DAY_NS, h_tz) if len(h_rows) else np.empty(0, np.int64)
    h_end = _local_to_utc((h_day + 1) * DAY_NS, h_tz) if len(h_rows) else np.empty(0, np.int64)

    code = np.concatenate([a_code, h_code]).astype(np.int64)
    s = np.concatenate([a_start_utc, h_start])
    e = np.concatenate([end_utc, h_end])
    s_local = np.concatenate([a_start_local, h_day * DAY_NS])
    e_local = np.concatenate([end_local, (h_day + 1) * DAY_NS])
    onset_day = np.concatenate([a_day, h_day])
    last_day = np.concatenate([_day_of(end_local), h_day + 1])
    onset = np.zeros(n, dtype=bool)
    in_episode = np.zeros(n, dtype=bool)
    if len(code):
        order = np.lexsort((onset_day, e, s, code))
        code, s, e, onset_day, last_day = code[order], s[order], e[order], onset_day[order], last_day[order]
        s_local, e_local = s_local[order], e_local[order]
        # the gap to everything before: elapsed (UTC) and on the local clock; 24 h on either separates
        ends = pd.DataFrame({"utc": e, "local": e_local}).groupby(code, sort=False).cummax().to_numpy()
        new = np.ones(len(code), dtype=bool)
        new[1:] = ((code[1:] != code[:-1]) | (s[1:] - ends[:-1, 0] >= MERGE_GAP_NS)
                   | (s_local[1:] - ends[:-1, 1] >= MERGE_GAP_NS))
        heads = np.flatnonzero(new)
        ep_code = code[heads]
        ep_onset = np.minimum.reduceat(onset_day, heads)
        ep_last = np.maximum.reduceat(last_day, heads)
        r = g.rows(ep_code, ep_onset)
        onset[r[r >= 0]] = True
        in_episode = g.coverage(ep_code, ep_onset + 1, ep_last) > 0
    meta = {
        "touched": touched,
        "onset": onset,
        "in_episode": in_episode,
        "headache_day": touched | (headache == 1),
        "migraine_day": migraine_touch | (~touched & (headache == 1) & (d_int >= MIGRAINE_DIARY_INTENSITY)),
        "intensity": intensity,
    }
    return meta


# ---------------------------------------------------------------------------------------- factors

def _standard_factors(g: _Grid, dcol, kept: np.ndarray, inputs: PanelInputs, last: int) -> dict:
    v: dict[str, np.ndarray] = {}
    for name in ("stress", "alcohol_units", "caffeine_mg", "skipped_meal", "exercise_minutes", "water_l",
                 "screen_hours", "sleep_quality"):
        v[name] = dcol(name)
    drop = g.shift(v["stress"]) - v["stress"]
    v["stress_letdown"] = np.where(np.isnan(drop), np.nan, (drop >= 3).astype(float))
    usual = g.baseline(v["caffeine_mg"])
    caf = v["caffeine_mg"]
    v["caffeine_withdrawal"] = np.where(
        np.isnan(caf) | np.isnan(usual), np.nan, ((usual >= 100) & (caf < usual / 2)).astype(float))
    v["menstrual_window"] = _menstrual_window(g, _menstruation(g, dcol("menstruation"), kept))

    # sleep: the wearable's night, else the diary's sleep_hours
    sleep = _by_day(g, inputs.sleep_nightly, ["sleep_hours", "efficiency", "awakenings", "bedtime"], last)
    hours = np.where(np.isnan(sleep["sleep_hours"]), dcol("sleep_hours"), sleep["sleep_hours"])
    v["sleep_hours"] = hours
    usual = g.baseline(hours)
    short = np.where(np.isnan(usual), hours < 6, (hours < 6) | (hours <= usual - 1.5)).astype(float)
    v["sleep_short"] = np.where(np.isnan(hours) | (np.isnan(usual) & (hours >= 6)), np.nan, short)
    v["sleep_long"] = np.where(np.isnan(hours) | np.isnan(usual), np.nan,
                               (hours >= usual + 1.5).astype(float))
    v["sleep_efficiency"] = sleep["efficiency"]
    v["awakenings"] = sleep["awakenings"]
    v["bedtime_shift"] = np.abs(sleep["bedtime"] - g.baseline(sleep["bedtime"]))

    weather = ["pressure_change", "temperature_max", "temperature_change", "humidity", "precipitation"]
    w = _by_day(g, inputs.weather_daily, weather, last)
    v["pressure_change"] = w["pressure_change"]
    v["pressure_drop"] = np.where(np.isnan(w["pressure_change"]), np.nan,
                                  (w["pressure_change"] <= -5).astype(float))
    for name in ("temperature_max", "temperature_change", "humidity", "precipitation"):
        v[name] = w[name]
    v["weekend"] = (((g.day + 3) % 7) >= 5).astype(float)  # 1970-01-01 was a Thursday
    v.update(season_values(g.day))
    return v


def season_values(day: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`SEASON` columns of days counted from 1970-01-01: the day's angle in the mean Gregorian
    year. Their phase is arbitrary (a patient's model fits its own seasonal wave from the pair), so the
    hemisphere does not matter."""
    angle = np.asarray(day, dtype=float) * (2 * np.pi / 365.2425)
    return {"season_sin": np.sin(angle), "season_cos": np.cos(angle)}


def _by_day(g: _Grid, frame: pd.DataFrame, columns: list[str], last: int) -> dict[str, np.ndarray]:
    """Columns of a per-patient, per-local-day frame laid on the grid (NaN where it has no row)."""
    out = {c: np.full(g.n, np.nan) for c in columns}
    if frame is None or frame.empty:
        return out
    codes = _codes(g.ids, frame["patient_id"])
    rows = g.rows(codes, _day_of(_naive_ns(frame["date"])))
    ok = rows >= 0
    for c in columns:
        out[c][rows[ok]] = _num(frame, c)[ok]
    return out


def _menstruation(g: _Grid, m: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Bleeding per day (1/0/NaN). A patient who has ticked bleeding days but never once recorded "no"
    keeps a tick-box diary: on their kept diary days an empty cell means no bleeding."""
    n_ids = len(g.ids)
    ticked = np.bincount(g.code, weights=(m == 1), minlength=n_ids) > 0
    said_no = np.bincount(g.code, weights=(m == 0), minlength=n_ids) > 0
    tick_box = (ticked & ~said_no)[g.code]
    return np.where(tick_box & kept & np.isnan(m), 0.0, m)


def _menstrual_window(g: _Grid, m: np.ndarray) -> np.ndarray:
    """1 on days -2..+3 around the first bleeding day of a period, 0 outside, NaN when it cannot be told.

    ``m`` per row: 1 bleeding, 0 not, NaN unknown (no diary, or menstruation left empty). A bleeding day
    starts a period unless a recorded bleeding day lies at most PERIOD_CONTINUE_DAYS before it. When the
    day before it is unknown the real start may be any of the up to PERIOD_MAX_UNSEEN_DAYS unknown days
    before it: days inside the window of every possible start are 1, days inside only some are NaN. A run
    of PERIOD_HIDE_RUN_DAYS+ unknown days (or unknown days at either end of the data, including the days
    after as_of) may hide a whole period: the days it could reach are NaN unless a known window covers them.
    """
    n = g.n
    idx = np.arange(n)
    known = ~np.isnan(m)
    block_start = g.start[g.code]
    upto = np.maximum.accumulate(np.where(known, idx, -1))
    prev = np.full(n, -1)
    prev[1:] = upto[:-1]
    prev[(prev < block_start)] = -1
    has_prev = prev >= 0
    gap = np.where(has_prev, idx - 1 - prev, 10**6)  # unknown days right before
    prev_bleed = has_prev & (m[np.maximum(prev, 0)] == 1)
    bleed = m == 1
    starts = bleed & ~(prev_bleed & (idx - prev <= PERIOD_CONTINUE_DAYS))
    sr = np.flatnonzero(starts)
    unseen = np.minimum(gap[sr], PERIOD_MAX_UNSEEN_DAYS)
    sc, sd = g.code[sr], g.day[sr]
    certain = g.coverage(sc, sd - 2, sd - unseen + 3) > 0
    possible = g.coverage(sc, sd - unseen - 2, sd + 3) > 0

    # runs of unknown days that may hide a whole period
    unk = ~known
    run_head = unk & ((idx == block_start) | ~np.roll(unk, 1))
    block_end = block_start + (g.last - g.first[g.code])
    run_tail = unk & ((idx == block_end) | ~np.roll(unk, -1))
    a, b = np.flatnonzero(run_head), np.flatnonzero(run_tail)
    at_start, at_end = a == block_start[a], b == block_end[b]
    length = b - a + 1
    hide = (length >= PERIOD_HIDE_RUN_DAYS) | at_start | at_end
    lo = np.where(at_start, g.day[a] - PERIOD_MAX_UNSEEN_DAYS - 2, g.day[a] - 2)
    hi = np.where(at_end, g.day[b], g.day[b] + 1)
    possible |= g.coverage(g.code[a][hide], lo[hide], hi[hide]) > 0
    # the days after as_of are unknown too: a period may start tomorrow (unless one is going on)
    ends = g.start + (g.last - g.first)
    open_end = m[ends] != 1
    possible |= g.coverage(np.flatnonzero(open_end), g.day[ends][open_end] - 1, g.day[ends][open_end]) > 0

    out = np.where(certain, 1.0, np.where(possible, np.nan, 0.0))
    tracks = np.bincount(g.code, weights=known, minlength=len(g.ids)) > 0
    out[~tracks[g.code]] = np.nan
    return out


def split_tags(text) -> set[str]:
    """The tags of one stored ``;``-joined list (foods, symptoms, medication; the importers normalise them)."""
    return {t.strip() for t in str(text).split(";")} - {""}


def _tag_factors(g: _Grid, diary, d_row, prefix: str, col: str, dropped,
                 columns: CohortColumns | None = None) -> dict[str, np.ndarray]:
    """``food:<tag>`` / ``symptom:<tag>``: 1 on days the tag is listed, 0 on kept diary days whose list
    lacks it (an empty list counts from the patient's first use of the column), NaN otherwise. A tag is
    a factor when listed on MIN_TAG_DAYS days of the panel (of the cohort, with ``columns``)."""
    cohort = None if columns is None else {t.split(":", 1)[1]: n for t, n in columns.tags.items()
                                           if t.startswith(prefix + ":")}
    # each distinct list once (split below), not each day's; -1: nothing listed
    if col in diary.columns and not diary.empty:
        cell_code, cells = pd.factorize(diary[col])
    elif cohort:  # nothing listed in this block: the cohort's tags are still its columns (all unknown)
        cell_code, cells = np.full(len(diary), -1), []
    else:
        return {}
    listed = cell_code >= 0
    cell_code = cell_code[listed]
    # Tick-box reading: diaries leave the list empty on days with none of these, so from the first day a
    # patient lists anything in this column on, an empty list on a kept diary day means "none". Before
    # that day, and on days without a diary, it stays unknown (docs/features.md).
    code, day = g.code[d_row], g.day[d_row]
    first = np.full(len(g.ids), np.iinfo(np.int64).max)
    np.minimum.at(first, code[listed], day[listed])
    known_rows = d_row[listed | (day >= first[code])]
    rows = d_row[listed]
    tag_cells: dict[str, list[int]] = {}
    for i, text in enumerate(cells):
        for tag in split_tags(text):
            tag_cells.setdefault(tag, []).append(i)
    base = np.full(g.n, np.nan)
    base[known_rows] = 0.0
    out = {}
    member = np.zeros(len(cells), dtype=bool)
    for name in sorted(set(tag_cells) | set(cohort or ())):
        member[:] = False
        member[tag_cells.get(name, [])] = True
        r = rows[member[cell_code]]
        fid = f"{prefix}:{name}"
        listed_days = len(r) if cohort is None else cohort.get(name, 0)
        if listed_days < MIN_TAG_DAYS:
            dropped.append((fid, f"listed on {listed_days} day(s) in the whole panel, fewer than {MIN_TAG_DAYS}"))
            continue
        v = base.copy()
        v[r] = 1.0
        out[fid] = v
    return out


def _custom_factors(g: _Grid, inputs: PanelInputs, diary, d_row, ids, last,
                    columns: CohortColumns | None = None) -> dict:
    """Custom diary factors (``diary.custom``): as recorded; NaN on days that did not record them. Yes/no
    when every recorded value is 0 or 1 (in the whole cohort, with ``columns``)."""
    out = {}
    for name, boolean in (columns.custom.items() if columns is not None else ()):
        out[_custom_id(name)] = (_custom_factor(name, boolean), np.full(g.n, np.nan))
    long = inputs.diary_custom
    if long is None:
        recs = []
        if "custom" in diary.columns:
            has = diary[diary["custom"].notna()]
            recs = [(p, d, k, float(v)) for p, d, c in zip(has["patient_id"], has["date"], has["custom"])
                    for k, v in json.loads(c).items() if isinstance(v, (int, float))]
        long = pd.DataFrame(recs, columns=CUSTOM_COLUMNS)
    if long.empty:
        return dict(sorted(out.items(), key=lambda kv: kv[0].removeprefix("custom:")))
    long = _cut(long, "date", last)
    codes = _codes(ids, long["patient_id"])
    rows = g.rows(codes, _day_of(_naive_ns(long["date"])))
    vals = _num(long, "value")
    for name, idx in long.groupby(long["factor"].astype(str), sort=True).indices.items():
        r, x = rows[idx], vals[idx]
        ok = r >= 0
        fid = _custom_id(name)
        if not ok.any() or (columns is not None and fid not in out):
            continue
        v = np.full(g.n, np.nan)
        v[r[ok]] = x[ok]
        if columns is None:
            known = x[ok][~np.isnan(x[ok])]
            out[fid] = (_custom_factor(name, len(known) > 0 and np.isin(known, (0.0, 1.0)).all()), v)
        else:
            out[fid] = (out[fid][0], v)
    return dict(sorted(out.items(), key=lambda kv: kv[0].removeprefix("custom:")))


def _custom_id(name: str) -> str:
    reserved = set(FACTOR_BY_ID) | {f.id for f in SEASON} | set(META_COLUMNS)
    return f"custom:{name}" if (name in reserved or ":" in name or "@" in name) else name


def _custom_factor(name: str, boolean: bool) -> Factor:
    """A diary's own column. Logged for the day, like behaviour, so its lag-0 value may be the attack's
    doing (medication taken, plans cancelled, a low mood): estimated and shown, never called; lag 1 is."""
    label = name.replace("_", " ").capitalize() + (" (yes/no)" if boolean else "")
    return Factor(_custom_id(name), label, "boolean" if boolean else "continuous", "custom", behaviour=True)


@dataclass
class CohortColumns:
    """The columns a cohort's panel has beyond the standard factors: listing days per ``prefix:tag`` and
    ``{custom factor name: yes/no}`` (:func:`cohort_columns`), for panels built a block of patients at a time."""

    tags: dict[str, int] = field(default_factory=dict)
    custom: dict[str, bool] = field(default_factory=dict)


def cohort_columns(db, patient_ids=None, as_of: date | None = None) -> CohortColumns:
    """Two grouped queries over the stored diary: how many days list each tag, and which custom factors
    there are and whether all their values are 0/1 -- what :func:`build_panel` decides its columns by.

    The whole cohort's groups are read through the index ``diary_tag_groups`` (migration 4) in the order
    of the groups; a set of patients through the diary's key."""
    conn = db.conn
    cut = _as_date(as_of).isoformat() if as_of is not None else "9999-12-31"
    who, params = _who(patient_ids)
    # one pass over the diary: the distinct (foods, symptoms) pairs with their days, and whether any day
    # has custom factors (only then is the JSON read)
    groups = conn.execute(
        f"SELECT foods, symptoms, custom IS NOT NULL, COUNT(*) FROM diary WHERE {who} AND date <= ? "
        "GROUP BY 1, 2, 3", params + [cut]).fetchall()
    tags: dict[str, int] = {}
    any_custom = False
    for foods, symptoms, has_custom, n in groups:
        any_custom |= bool(has_custom)
        for prefix, text in (("food", foods), ("symptom", symptoms)):
            for tag in split_tags(text or ""):
                tags[f"{prefix}:{tag}"] = tags.get(f"{prefix}:{tag}", 0) + n
    custom = {str(k): bool(b) for k, b in conn.execute(
        "SELECT j.key, MIN(CAST(j.value AS REAL) IN (0.0, 1.0)) FROM "
        f"(SELECT custom FROM diary WHERE {who} AND custom IS NOT NULL AND date <= ?) d, json_each(d.custom) j "
        "WHERE j.type IN ('integer', 'real', 'true', 'false') GROUP BY j.key", params + [cut])} if any_custom else {}
    return CohortColumns(tags, custom)


__all__ = ["FACTORS", "FACTOR_BY_ID", "SEASON", "CohortColumns", "Factor", "PanelInputs", "build_panel", "cohort_columns",
           "column_name", "load_inputs", "split_tags",
           "panel_for_patient", "season_values", "tag_factor", "LAGS"]
