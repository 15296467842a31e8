"""Weather: Open-Meteo over real HTTP on loopback, the call budget, local-day aggregation, offline import.

The fake server answers like Open-Meteo (columnar JSON, one object per location or a list of them, nulls,
a 400 error body, 429 with Retry-After, 503 and a stalled answer). Nothing sleeps for real: the client's
and the budget's ``sleep`` advance a fake clock.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from trigger_watch import config as config_mod
from trigger_watch import storage, weather
from trigger_watch.errors import InputFileError, TriggerWatchError, WeatherRateLimited
from trigger_watch.importing import ImportOptions, import_file
from trigger_watch.openmeteo import OpenMeteoClient, RateLimiter, WeatherUnavailable, block_frame, call_weight

TODAY = date(2026, 11, 20)
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "weather" / "openmeteo"
NYC = "archive_daily_nyc_40.74_-74.04_2016-2026_fahrenheit.json"
BRAZIL = "historical_forecast_hourly_-21.75_-45.375_2022-2023.json"
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def fake_value(var: str, lat: float, t: datetime) -> float | None:
    """What the fake Open-Meteo answers for a location and UTC hour (the tests recompute it by hand)."""
    h = int((t - EPOCH).total_seconds() // 3600)
    if var == "pressure_msl":
        return round(1000 + (h % 48) / 4 + lat / 100, 2)
    if var == "temperature_2m":
        return None if t.hour == 3 and t.day == 15 else round(10 + t.hour / 2, 1)   # one null a month
    if var == "relative_humidity_2m":
        return 50 + t.hour
    return 0.5 if t.hour == 12 else 0.0


class FakeOpenMeteo:
    """Request handler: ``script`` lists what the next requests get ("ok", "400", "429", "503", "stall")."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict]] = []
        self.script: list[str] = []
        self.refuse_lat: str | None = None
        self.release = threading.Event()

    def __call__(self, request: Request) -> Response:
        args = request.args.to_dict()
        self.log.append((request.path, args))
        what = self.script.pop(0) if self.script else "ok"
        if what == "429":
            return Response(json.dumps({"error": True, "reason": "Too many concurrent requests"}), 429,
                            {"Retry-After": "7"}, content_type="application/json")
        if what == "503":
            return Response("<html>503 Service Unavailable</html>", 503)
        if what == "stall":
            self.release.wait(5.0)
        lats = args["latitude"].split(",")
        if what == "400" or (self.refuse_lat and self.refuse_lat in lats):
            reason = "Cannot initialize WeatherVariable from invalid String value tempeture_2m for key hourly"
            return Response(json.dumps({"error": True, "reason": reason}), 400,
                            content_type="application/json")
        start = datetime.fromisoformat(args["start_date"]).replace(tzinfo=UTC)
        end = datetime.fromisoformat(args["end_date"]).replace(tzinfo=UTC) + timedelta(hours=23)
        hours = [start + timedelta(hours=i) for i in range(int((end - start).total_seconds() // 3600) + 1)]
        variables = args["hourly"].split(",")
        answers = []
        for lat, lon in zip(lats, args["longitude"].split(",")):
            answers.append({
                "latitude": float(lat) + 0.02, "longitude": float(lon) - 0.01, "generationtime_ms": 0.5,
                "utc_offset_seconds": 0, "timezone": "GMT", "timezone_abbreviation": "GMT", "elevation": 38.0,
                "hourly_units": {"time": "iso8601", "pressure_msl": "hPa", "temperature_2m": "°C",
                                 "relative_humidity_2m": "%", "precipitation": "mm"},
                "hourly": {"time": [t.strftime("%Y-%m-%dT%H:%M") for t in hours],
                           **{v: [fake_value(v, float(lat), t) for t in hours] for v in variables}}})
        body = answers if len(answers) > 1 else answers[0]
        return Response(json.dumps(body), 200, content_type="application/json")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def server():
    srv = HTTPServer(host="127.0.0.1", threaded=True)
    srv.start()
    fake = FakeOpenMeteo()
    srv.expect_request("/v1/archive").respond_with_handler(fake)
    srv.expect_request("/v1/forecast").respond_with_handler(fake)
    srv.fake = fake
    yield srv
    fake.release.set()
    srv.clear()
    srv.stop()


@pytest.fixture
def cfg(server):
    return config_mod.defaults().with_values(
        weather__archive_url=server.url_for("/v1/archive"),
        weather__forecast_url=server.url_for("/v1/forecast"),
        weather__timeout_seconds=1.0, weather__max_retries=4, weather__backoff_seconds=1.0)


@pytest.fixture
def clock():
    return FakeClock()


def add_patients(db, rows, first_day: str = "2026-10-01") -> None:
    """rows: (patient_id, timezone, lat, lon); each patient gets one diary day on ``first_day``."""
    with storage.transaction(db):
        db.conn.executemany(
            "INSERT INTO patients (patient_id, timezone, latitude, longitude) VALUES (?, ?, ?, ?)", rows)
        db.conn.executemany("INSERT INTO diary (patient_id, date, stress) VALUES (?, ?, 3)",
                            [(r[0], first_day) for r in rows])


def fetch(db, cfg, clock, today=TODAY, **kw):
    with requests.Session() as session:
        return weather.fetch_weather(db, cfg, session, today=today, clock=clock, sleep=clock.sleep, **kw)


def hourly(db, cell):
    return pd.read_sql("SELECT * FROM weather_hourly WHERE cell_id = ? ORDER BY time_utc", db.conn,
                       params=(cell,))


# --------------------------------------------------------------------------------- pure parts

def test_call_weight_follows_the_free_tier_formula():
    assert call_weight(5, 730, 1) == pytest.approx(26.07, abs=0.01)    # FORMATS.md: "about 26 calls"
    assert call_weight(4, 365, 1) == pytest.approx(10.43, abs=0.01)
    assert call_weight(4, 7, 10) == 10.0                                 # short requests weigh 1 per location
    assert call_weight(20, 1, 1) == 2.0


def test_cells_round_homes_to_the_grid():
    ids, lat, lon = weather.cell_ids([48.21, 48.17, 40.74, -0.01], [16.37, 16.42, -74.04, -0.04], 0.1)
    assert list(ids) == ["48.2,16.4", "48.2,16.4", "40.7,-74", "0,0"]
    assert lat[2] == 40.7 and lon[2] == -74.0


def test_fixed_offset_answer_is_converted_to_utc_not_localised_with_the_zone_name():
    # Open-Meteo applies one offset to the whole answer: 2026-03-29T05:00 at +01:00 is 04:00 UTC, although
    # Vienna is at +02:00 by then.
    obj = {"utc_offset_seconds": 3600, "timezone": "Europe/Vienna",
           "hourly_units": {"temperature_2m": "°F", "precipitation": "inch", "relativehumidity_2m": "%"},
           "hourly": {"time": ["2026-03-29T00:00", "2026-03-29T05:00"], "temperature_2m": [50.0, None],
                      "precipitation": [0.1, 0.0], "relativehumidity_2m": [80, 81]}}
    frame, notes = block_frame(obj, "hourly")
    assert list(frame["time_utc"].dt.strftime("%Y-%m-%dT%H:%M")) == ["2026-03-28T23:00", "2026-03-29T04:00"]
    assert frame["temperature_2m"].iloc[0] == pytest.approx(10.0)
    assert math.isnan(frame["temperature_2m"].iloc[1])
    assert frame["precipitation"].iloc[0] == pytest.approx(2.54)
    assert list(frame["relative_humidity_2m"]) == [80.0, 81.0] and notes == []


def test_rate_limiter_waits_for_the_minute_and_refuses_when_the_day_is_spent(db, clock):
    lim = RateLimiter(db, per_minute=10, per_hour=100, per_day=25, clock=clock, sleep=clock.sleep)
    lim.acquire(4)
    clock.now += 10
    lim.acquire(4)
    lim.acquire(4)                       # 12 > 10: waits until the first call leaves the minute
    assert clock.slept == [pytest.approx(50.0, abs=0.01)]
    # a second run (new limiter, same database) sees the calls already made
    again = RateLimiter(db, per_minute=10, per_hour=100, per_day=25, clock=clock, sleep=clock.sleep)
    assert again.used(86400) == 12
    clock.now += 120
    again.acquire(8)
    clock.now += 120
    with pytest.raises(WeatherRateLimited, match="day budget is spent"):
        again.acquire(8)                 # 20 + 8 > 25 for the day: no waiting for hours
    with pytest.raises(WeatherRateLimited, match="more than the whole minute budget"):
        again.acquire(11)


# --------------------------------------------------------------------------------- fetching

CELLS = [("48.2,16.4", 48.2, 16.4), ("40.7,-74", 40.7, -74.0), ("51.5,-0.1", 51.5, -0.1)]


def three_cells_ten_patients_each(db):
    rows = []
    zones = {"48.2,16.4": "Europe/Vienna", "40.7,-74": "America/New_York", "51.5,-0.1": "Europe/London"}
    for cell, lat, lon in CELLS:
        for i in range(10):   # spread inside the cell
            rows.append((f"{cell}-{i}", zones[cell], lat + (i - 5) / 120, lon + (i - 5) / 120))
    add_patients(db, rows)


def test_one_request_per_cell_group_not_per_patient_and_nothing_refetched(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    progress = []
    result = fetch(db, cfg, clock, progress=lambda done, total: progress.append((done, total)))
    log = server.fake.log
    # 30 patients, 3 cells: one archive request and one forecast request, each for the 3 cells
    assert [p for p, _ in log] == ["/v1/archive", "/v1/forecast"]
    for _, args in log:
        assert len(args["latitude"].split(",")) == 3 and args["timezone"] == "GMT"
        assert args["hourly"] == "pressure_msl,temperature_2m,relative_humidity_2m,precipitation"
    archive, forecast = log[0][1], log[1][1]
    # first diary day 2026-10-01: the previous day, one more for UTC, aligned to the month start
    assert archive["start_date"] == "2026-09-01" and archive["end_date"] == "2026-11-15"
    assert forecast["start_date"] == "2026-11-16" and forecast["end_date"] == "2026-11-22"   # tomorrow + 1
    assert result.requests == 2 and result.cells == 3 and not result.failed
    assert result.hours_stored == 3 * ((date(2026, 11, 22) - date(2026, 9, 1)).days + 1) * 24
    assert result.calls_weighted == pytest.approx(call_weight(4, 76, 3) + call_weight(4, 7, 3))
    assert progress == [(1, 2), (2, 2)]
    assert len(result.patients) == 30
    assert db.execute("SELECT count(*) FROM changes").fetchone()[0] == 30
    h = hourly(db, "48.2,16.4")
    assert set(h.loc[h["time_utc"] < "2026-11-16", "source"]) == {"archive"}
    assert set(h.loc[h["time_utc"] >= "2026-11-16", "source"]) == {"forecast"}
    t = datetime(2026, 10, 15, 3, tzinfo=UTC)   # the fake's null hour is stored as NULL
    row = h[h["time_utc"] == "2026-10-15T03:00:00Z"].iloc[0]
    assert math.isnan(row["temperature_2m"]) and row["pressure_msl"] == fake_value("pressure_msl", 48.2, t)
    sql = "SELECT cell_id, grid_latitude, elevation, last_error FROM weather_cells"
    cells = {r[0]: r[1:] for r in db.execute(sql)}
    assert cells["48.2,16.4"] == (pytest.approx(48.22), 38.0, None)
    assert server.log[0][0].headers["User-Agent"] == cfg["weather.user_agent"]

    stored = db.execute("SELECT count(*), sum(pressure_msl) FROM weather_hourly").fetchone()
    again = fetch(db, cfg, clock)
    assert again.requests == 0 and again.cells_up_to_date == 3 and len(server.fake.log) == 2
    assert db.execute("SELECT count(*), sum(pressure_msl) FROM weather_hourly").fetchone() == stored
    assert "0 HTTP request(s)" in again.lines()[0]


def test_next_day_fetches_only_the_recent_days_and_archive_replaces_forecast(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    fetch(db, cfg, clock)
    pts = pd.read_sql("SELECT patient_id, timezone, latitude, longitude FROM patients "
                      "WHERE patient_id LIKE '40.7%'", db.conn)
    before = weather.daily_for_patients(db, pts, date(2026, 11, 14), date(2026, 11, 21))
    cached = weather.daily_for_patients(db, pts, date(2026, 11, 14), date(2026, 11, 21))
    assert before.equals(cached)
    src = before[before["patient_id"] == "40.7,-74-0"].set_index("date")["source"]
    # New York's 15 November (05:00 UTC .. 05:00 UTC on the 16th) reaches into forecast hours
    assert list(src[:3]) == ["archive", "forecast", "forecast"] and len(src) == 8
    server.fake.log.clear()
    result = fetch(db, cfg, clock, today=TODAY + timedelta(days=1))
    reqs = [(p, a["start_date"], a["end_date"]) for p, a in server.fake.log]
    # 2026-11-16 has passed the archive lag: that day alone comes from the archive; the forecast window
    # moves by a day and is refreshed.
    assert reqs == [("/v1/archive", "2026-11-16", "2026-11-16"), ("/v1/forecast", "2026-11-17", "2026-11-23")]
    assert not result.failed
    h = hourly(db, "40.7,-74")
    day = h[h["time_utc"].str.startswith("2026-11-16")]
    assert len(day) == 24 and set(day["source"]) == {"archive"}
    assert set(h.loc[h["time_utc"].str.startswith("2026-11-23"), "source"]) == {"forecast"}
    after = weather.daily_for_patients(db, pts, date(2026, 11, 14), date(2026, 11, 22))
    src = after[after["patient_id"] == "40.7,-74-0"].set_index("date")["source"]
    assert list(src[:3]) == ["archive", "archive", "forecast"] and len(src) == 9


def test_explicit_start_and_end_fetch_exactly_that_range(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    result = fetch(db, cfg, clock, start=date(2026, 6, 10), end=date(2026, 6, 20))
    # one UTC day either side of the local days asked for; all archive, nothing from the forecast
    assert [(p, a["start_date"], a["end_date"]) for p, a in server.fake.log] == [
        ("/v1/archive", "2026-06-09", "2026-06-21")]
    assert result.hours_stored == 3 * 13 * 24 and not result.failed


def test_recovers_from_503_429_and_a_stalled_answer_with_backoff_and_retry_after(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    server.fake.script = ["503", "429", "stall", "ok"]
    result = fetch(db, cfg, clock)
    assert not result.failed and result.requests == 5          # 4 tries for the archive, 1 for the forecast
    assert clock.slept[1] == 7.0                                # the server's Retry-After
    assert 0.5 <= clock.slept[0] <= 1.5 and 2.0 <= clock.slept[2] <= 6.0   # 1 s, 4 s with jitter
    n = db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0]
    assert n == 3 * 83 * 24


def test_a_failed_cell_does_not_stop_the_others_and_is_retried_next_run(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    server.fake.refuse_lat = "40.7"
    result = fetch(db, cfg, clock)
    assert set(result.failed) == {"40.7,-74"}
    assert "invalid String value tempeture_2m" in result.failed["40.7,-74"]
    assert "1 cell(s) failed" in str(result) and "40.7,-74: archive" in str(result)
    assert db.execute("SELECT last_error FROM weather_cells WHERE cell_id = '40.7,-74'").fetchone()[0]
    assert len(hourly(db, "48.2,16.4")) == 83 * 24 and len(hourly(db, "40.7,-74")) == 0
    kept = db.execute("SELECT count(*), sum(pressure_msl) FROM weather_hourly").fetchone()

    server.fake.refuse_lat = None
    server.fake.log.clear()
    again = fetch(db, cfg, clock)
    assert not again.failed
    assert {a["latitude"] for _, a in server.fake.log} == {"40.7"}     # only the failed cell
    assert len(hourly(db, "40.7,-74")) == 83 * 24
    assert db.execute("SELECT last_error FROM weather_cells WHERE cell_id = '40.7,-74'").fetchone()[0] is None
    other = db.execute("SELECT count(*), sum(pressure_msl) FROM weather_hourly WHERE cell_id != '40.7,-74'")
    assert other.fetchone() == kept


def test_giving_up_after_the_last_try_keeps_what_is_stored(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    server.fake.script = ["ok"] + ["503"] * 5       # archive fine, forecast never answers
    result = fetch(db, cfg, clock)
    assert set(result.failed) == {c for c, _, _ in CELLS}
    for why in result.failed.values():
        assert "forecast" in why and "failed after 5 tries; last: HTTP 503" in why
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0] == 3 * 76 * 24
    server.fake.log.clear()
    again = fetch(db, cfg, clock)
    assert [p for p, _ in server.fake.log] == ["/v1/forecast"] and not again.failed
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0] == 3 * 83 * 24


def test_when_nothing_can_be_fetched_the_run_fails_with_one_clear_error(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    server.fake.script = ["503"] * 10
    expected = (r"no weather could be fetched for any of 3 cell\(s\); nothing changed.*"
                r"archive 2026-09-01..2026-11-15: Open-Meteo failed after 5 tries")
    with pytest.raises(WeatherUnavailable, match=expected):
        fetch(db, cfg, clock)
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM weather_cells WHERE last_error IS NOT NULL").fetchone()[0] == 3
    with pytest.raises(WeatherRateLimited, match="no weather could be fetched"):
        fetch(db, cfg.with_values(weather__calls_per_day=11), clock)   # the 10 tries spent the day


def test_client_gives_a_clear_error_for_a_connection_refused(db, clock):
    lim = RateLimiter(db, per_minute=500, per_hour=4500, per_day=9000, clock=clock, sleep=clock.sleep)
    with requests.Session() as s:
        client = OpenMeteoClient(s, lim, user_agent="t", timeout=0.3, max_retries=2, sleep=clock.sleep)
        with pytest.raises(WeatherUnavailable, match=r"failed after 3 tries; last: connection failed"):
            client.get("http://127.0.0.1:9/v1/archive", {"latitude": "1"}, 1.0)
    assert len(clock.slept) == 2


def test_without_a_network_the_first_request_that_cannot_connect_ends_the_fetch(db, cfg, clock):
    """Offline, each planned request waited out all its retries: 2 min 14 s for one patient's cell (four
    requests) before one error that listed four problems. The first request's retries now decide it."""
    three_cells_ten_patients_each(db)
    cfg = cfg.with_values(weather__archive_url="http://127.0.0.1:9/v1/archive",  # nothing listens: refused
                          weather__forecast_url="http://127.0.0.1:9/v1/forecast", weather__cells_per_request=1)
    with pytest.raises(WeatherUnavailable) as err:
        fetch(db, cfg, clock)
    said = str(err.value)
    assert said.startswith("no weather could be fetched for any of 3 cell(s); nothing changed")
    first = said.split("First problem: ", 1)[1]
    assert first.startswith("archive ") and first.count("failed after 5 tries; last: connection failed") == 1
    assert "Check that this server can reach Open-Meteo" in first and "import weather FILE" in first
    assert len(clock.slept) == 4  # the first request's four waits between its five tries, and no more
    errors = [r[0] for r in db.execute("SELECT last_error FROM weather_cells ORDER BY cell_id")]
    assert len(errors) == 3 and all("not tried: the first request could not connect" in e for e in errors)
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0] == 0


def test_budget_is_never_exceeded_in_any_minute(db, cfg, server, clock):
    rows = [(f"p{i}", "UTC", 10 + i * 0.5, 20.0) for i in range(8)]   # 8 cells
    add_patients(db, rows, first_day="2026-08-01")
    cfg = cfg.with_values(weather__calls_per_minute=12, weather__cells_per_request=4)
    result = fetch(db, cfg, clock)
    assert not result.failed and result.waited_seconds > 0
    budget = np.array(db.execute("SELECT at, weight FROM weather_budget ORDER BY at").fetchall())
    for at, _ in budget:
        inside = budget[(budget[:, 0] > at - 60) & (budget[:, 0] <= at)]
        assert inside[:, 1].sum() <= 12


def test_hour_budget_spent_defers_the_rest_to_the_next_run(db, cfg, server, clock):
    three_cells_ten_patients_each(db)
    cfg = cfg.with_values(weather__calls_per_hour=5, weather__cells_per_request=1)
    result = fetch(db, cfg, clock)
    assert result.failed and all("hour budget is spent" in w for w in result.failed.values())
    clock.now += 3700
    later = fetch(db, cfg.with_values(weather__calls_per_hour=4500), clock)
    assert not later.failed
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0] == 3 * 83 * 24


# --------------------------------------------------------------------------------- local days

def test_local_day_across_dst_uses_each_patients_zone(db):
    # Vienna springs forward on 2026-03-29: its local day is 23 UTC hours, 28T23:00 .. 29T21:00.
    # New York falls back on 2026-11-01: 25 UTC hours, 01T04:00 .. 02T04:00 (exclusive: 02T05:00).
    times = pd.date_range("2026-03-27T00:00", "2026-03-31T23:00", freq="h", tz="UTC")
    p = np.arange(len(times), dtype=float)                    # pressure = hours since 27 March 00:00 UTC
    frame = pd.DataFrame({"time_utc": times, "pressure_msl": 1000 + p / 10, "temperature_2m": p % 24,
                          "relative_humidity_2m": 50.0,
                          "precipitation": np.where(times.hour == 22, 1.0, 0.0)})
    ny = pd.date_range("2026-10-30T00:00", "2026-11-03T23:00", freq="h", tz="UTC")
    frame_ny = pd.DataFrame({"time_utc": ny, "pressure_msl": 1010.0, "temperature_2m": 5.0,
                             "relative_humidity_2m": 60.0, "precipitation": 0.1})
    with storage.transaction(db):
        weather._ensure_cells(db, pd.DataFrame({"cell_id": ["48.2,16.4", "40.7,-74"], "lat": [48.2, 40.7],
                                                "lon": [16.4, -74.0]}), 0.1)
        weather.store_hourly(db, "48.2,16.4", frame, "archive", TODAY)
        weather.store_hourly(db, "40.7,-74", frame_ny, "archive", TODAY)
    pts = pd.DataFrame({"patient_id": ["vie", "utc", "nyc"],
                        "timezone": ["Europe/Vienna", "UTC", "America/New_York"],
                        "latitude": [48.21, 48.19, 40.74], "longitude": [16.37, 16.41, -74.04]})
    d = weather.daily_for_patients(db, pts, date(2026, 3, 28), date(2026, 3, 30))
    vie = d[d["patient_id"] == "vie"].set_index("date")
    # hours since 27T00:00 of the Vienna day 29 March: 28T23:00 = 47 .. 29T21:00 = 69 (23 values)
    assert vie.loc["2026-03-29", "pressure_mean"] == pytest.approx(1000 + np.mean(np.arange(47, 70)) / 10)
    assert vie.loc["2026-03-29", "pressure_max"] == pytest.approx(1006.9)
    # 28 March in Vienna (+01:00): 27T23:00 = 23 .. 28T22:00 = 46
    assert vie.loc["2026-03-28", "pressure_min"] == pytest.approx(1002.3)
    assert vie.loc["2026-03-29", "pressure_change"] == pytest.approx((58 - 34.5) / 10)
    # temperature: UTC hour of day; Vienna's 29 March holds 23 and 0..21 -> max 23
    assert vie.loc["2026-03-29", "temperature_max"] == 23.0
    assert vie.loc["2026-03-29", "precipitation"] == pytest.approx(0.0)   # 22:00 UTC is the 30th in Vienna
    assert vie.loc["2026-03-30", "precipitation"] == pytest.approx(1.0)
    utc = d[d["patient_id"] == "utc"].set_index("date")
    assert utc.loc["2026-03-29", "pressure_mean"] == pytest.approx(1000 + np.mean(np.arange(48, 72)) / 10)
    assert utc.loc["2026-03-29", "precipitation"] == pytest.approx(1.0)
    assert set(d["source"]) == {"archive"} and len(vie) == 3 and d["date"].dtype == "datetime64[ns]"
    nyc = weather.daily_for_patients(db, pts, date(2026, 11, 1), date(2026, 11, 1)).set_index("patient_id")
    assert nyc.loc["nyc", "precipitation"] == pytest.approx(2.5)     # 25 hours of 0.1 mm
    assert math.isnan(nyc.loc["nyc", "pressure_change"]) is False and nyc.loc["nyc", "pressure_change"] == 0.0


def test_forecast_never_overwrites_archive_and_source_is_the_worst_of_the_day(db):
    times = pd.date_range("2026-06-01", periods=48, freq="h", tz="UTC")
    base = pd.DataFrame({"time_utc": times, "pressure_msl": 1010.0, "temperature_2m": 20.0,
                         "relative_humidity_2m": 70.0, "precipitation": 0.0})
    with storage.transaction(db):
        weather._ensure_cells(db, pd.DataFrame({"cell_id": ["1,1"], "lat": [1.0], "lon": [1.0]}), 0.1)
        assert weather.store_hourly(db, "1,1", base[:30], "archive", TODAY) == (30, 0, 0)
        forecast = base.assign(pressure_msl=999.0)
        new, replaced, unchanged = weather.store_hourly(db, "1,1", forecast, "forecast", TODAY)
    assert (new, replaced, unchanged) == (18, 0, 30)
    h = hourly(db, "1,1")
    assert list(h["pressure_msl"][:30]) == [1010.0] * 30 and list(h["source"][30:]) == ["forecast"] * 18
    pts = pd.DataFrame({"patient_id": ["a"], "timezone": ["UTC"], "latitude": [1.0], "longitude": [1.0]})
    d = weather.daily_for_patients(db, pts, date(2026, 6, 1), date(2026, 6, 2)).set_index("date")
    assert list(d["source"]) == ["archive", "forecast"]
    assert d.loc["2026-06-02", "pressure_mean"] == pytest.approx((6 * 1010 + 18 * 999) / 24)


# --------------------------------------------------------------------------------- offline import

def options(**kw):
    return ImportOptions(today=TODAY, config=config_mod.defaults(), **kw)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Open-Meteo files not found at {REAL} (../shared absent)")
def test_real_open_meteo_files_import_and_give_the_right_daily_values(db):
    add_patients(db, [("nyc", "America/New_York", 40.7128, -74.006), ("br", "UTC", -21.72, -45.39),
                      ("br_local", "America/Sao_Paulo", -21.72, -45.39)])
    r1 = import_file(db, "weather", REAL / NYC, options())
    assert (r1.accepted, r1.quarantined) == (3653, 0)
    assert any("sunrise" in m for m in r1.messages)
    # the Brazil answer's grid point (-21.75) rounds to a neighbouring cell: attach it to the patient
    r2 = import_file(db, "weather", REAL / BRAZIL, options(patient="br"))
    assert (r2.accepted, r2.quarantined) == (17520, 0)
    assert any("surface_pressure" in m for m in r2.messages)
    pts = pd.read_sql("SELECT patient_id, timezone, latitude, longitude FROM patients", db.conn)
    d = weather.daily_for_patients(db, pts, date(2016, 2, 15), date(2022, 1, 2))
    nyc = d[d["patient_id"] == "nyc"].set_index("date")
    assert nyc.loc["2016-02-15", "temperature_max"] == pytest.approx((40.5 - 32) * 5 / 9)   # 40.5 F
    assert nyc.loc["2016-02-16", "temperature_max"] == pytest.approx((52.7 - 32) * 5 / 9)
    assert nyc.loc["2016-02-15", "source"] == "import" and math.isnan(nyc.loc["2016-02-15", "pressure_mean"])
    assert len(nyc) == 3653 - (date(2026, 2, 14) - date(2022, 1, 2)).days
    br = d[d["patient_id"] == "br"].set_index("date")
    rh = [96, 95, 96, 97, 98, 98, 98, 98, 99, 97, 97, 97, 97, 96, 96, 96, 92, 90, 90, 85, 87, 91, 95, 97]
    rain = [0.0, 0.1, 0.1, 0.3, 1.0, 0.9, 1.4, 2.1, 10.9, 3.8, 0.5, 1.2, 1.0, 0.5, 0.4, 0.4, 0.5, 0.9,
            0.7, 0.8, 1.7, 2.3, 2.6, 3.1]
    assert br.loc["2022-01-01", "humidity"] == pytest.approx(sum(rh) / 24)
    assert br.loc["2022-01-01", "precipitation"] == pytest.approx(sum(rain))
    assert br.loc["2022-01-01", "temperature_max"] == 21.5
    assert math.isnan(br.loc["2022-01-01", "pressure_mean"])       # surface pressure is not sea level
    # Sao Paulo is UTC-3: its 1 January is 03:00 .. 02:00 UTC of the next day; 01T02:00 (0.1 mm) is not in it
    local = d[d["patient_id"] == "br_local"].set_index("date")
    raw = json.loads((REAL / BRAZIL).read_text())["hourly"]
    assert local.loc["2022-01-01", "precipitation"] == pytest.approx(sum(raw["precipitation"][3:27]))
    assert local.loc["2022-01-01", "temperature_max"] == max(raw["temperature_2m"][3:27])
    again = import_file(db, "weather", REAL / NYC, options())
    assert (again.accepted, again.replaced, again.unchanged) == (0, 0, 3653)


def test_impossible_values_are_quarantined_and_change_nothing(db, tmp_path):
    add_patients(db, [("p1", "Europe/Vienna", 48.21, 16.37)])
    answer = {"latitude": 48.2, "longitude": 16.4, "utc_offset_seconds": 7200, "timezone": "Europe/Vienna",
              "hourly_units": {"time": "iso8601", "pressure_msl": "hPa", "relative_humidity_2m": "%"},
              "hourly": {"time": ["2026-07-01T00:00", "2026-07-01T01:00", "2026-07-01T02:00"],
                         "pressure_msl": [1012.5, 700.0, None], "relative_humidity_2m": [60, 55, 120]},
              "daily_units": {"time": "iso8601", "pressure_msl_mean": "hPa"},
              "daily": {"time": ["2026-07-01"], "pressure_msl_mean": [7679.0]}}
    path = tmp_path / "vienna.json"
    path.write_text(json.dumps(answer))
    r = import_file(db, "weather", path, options(), fmt="open-meteo")
    assert (r.accepted, r.quarantined) == (1, 3)
    reasons = [r[0] for r in db.execute("SELECT reason FROM rejects WHERE kind = 'weather' ORDER BY line")]
    assert any("pressure_msl=700.0 hPa is outside 850-1090" in x for x in reasons)
    assert any("relative_humidity_2m=120.0 % is outside 0-100" in x for x in reasons)
    assert any("pressure_mean=7679.0" in x for x in reasons)
    h = hourly(db, "48.2,16.4")
    assert list(h["time_utc"]) == ["2026-06-30T22:00:00Z"] and h["pressure_msl"][0] == 1012.5
    assert db.execute("SELECT patient_id FROM changes").fetchall() == [("p1",)]


def test_weather_csv_with_offsets_local_times_and_daily_rows(db, tmp_path):
    add_patients(db, [("p1", "Europe/Vienna", 48.21, 16.37)])
    path = tmp_path / "w.csv"
    path.write_text(
        "latitude,longitude,time,pressure_msl,temperature_2m,relative_humidity_2m,precipitation\n"
        "48.2,16.37,2026-03-28T12:00+00:00,1013.2,8.5,70,0.2\n"
        "48.2,16.37,2026-03-28T14:00,1012.0,9.0,65,\n"            # local Vienna (+01:00) -> 13:00 UTC
        "48.2,16.37,2026-03-29T02:30,1011.0,5.0,80,0\n"           # does not exist in Vienna (clocks jump)
        "48.2,16.37,2026-03-20,1020.0,7.0,75,3.5\n"               # a daily row
        "48.2,16.37,2026-03-28T15:00Z,820,9.0,65,0\n")            # impossible pressure
    r = import_file(db, "weather", path, options())
    assert (r.accepted, r.quarantined) == (3, 2)
    h = hourly(db, "48.2,16.4")
    assert list(h["time_utc"]) == ["2026-03-28T12:00:00Z", "2026-03-28T13:00:00Z"]
    assert h["precipitation"].isna().tolist() == [False, True]
    reasons = " | ".join(r[0] for r in db.execute("SELECT reason FROM rejects ORDER BY line"))
    assert "does not exist or is ambiguous" in reasons and "pressure_msl='820' is outside 850-1090" in reasons
    daily = db.execute("SELECT date, pressure_mean, temperature_mean, humidity, precipitation "
                       "FROM weather_daily")
    assert daily.fetchall() == [("2026-03-20", 1020.0, 7.0, 75.0, 3.5)]
    assert import_file(db, "weather", path, options()).accepted == 0           # idempotent


def test_open_meteo_csv_download_imports_like_its_json(db, tmp_path):
    add_patients(db, [("p1", "Europe/Berlin", 52.54, 13.41), ("p2", "Europe/Paris", 48.85, 2.35)])
    path = tmp_path / "open-meteo.csv"
    path.write_text(
        "location_id,latitude,longitude,elevation,utc_offset_seconds,timezone,timezone_abbreviation\n"
        "0,52.54833,13.407822,38.0,3600,Europe/Berlin,CET\n"
        "1,48.86,2.34,43.0,3600,Europe/Paris,CET\n"
        "\n"
        "location_id,time,temperature_2m (°F),pressure_msl (hPa),relative_humidity_2m (%)\n"
        "0,2026-01-10T00:00,32.0,1020.5,80\n"
        "0,2026-01-10T01:00,NaN,1020.1,81\n"
        "1,2026-01-10T00:00,41.0,1011.0,70\n"
        "\n"
        "location_id,time,precipitation_sum (mm)\n"
        "0,2026-01-10,1.5\n")
    r = import_file(db, "weather", path, options())
    assert (r.accepted, r.quarantined) == (4, 0)
    berlin = hourly(db, "52.5,13.4")
    assert list(berlin["time_utc"]) == ["2026-01-09T23:00:00Z", "2026-01-10T00:00:00Z"]
    assert berlin["temperature_2m"][0] == pytest.approx(0.0) and math.isnan(berlin["temperature_2m"][1])
    assert hourly(db, "48.9,2.3")["pressure_msl"].tolist() == [1011.0]
    assert db.execute("SELECT cell_id, date, precipitation FROM weather_daily").fetchall() == [
        ("52.5,13.4", "2026-01-10", 1.5)]


ZONES = ["UTC", "Europe/Vienna", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]


# a few days before DST changes: New York, Europe, Lord Howe and Chatham (both ways), none
BASES = ["2026-03-06", "2026-03-27", "2026-04-03", "2026-09-25", "2026-10-02", "2026-10-23", "2026-10-30",
         "2026-12-01"]


@settings(max_examples=20, deadline=None)
@given(zone=st.sampled_from(ZONES), base=st.sampled_from(BASES), first=st.integers(0, 96),
       n=st.integers(24, 24 * 6), seed=st.integers(0, 2**31 - 1))
@example(zone="Asia/Kolkata", base="2026-03-06", first=17, n=50, seed=2990)  # two equal days' means
def test_local_days_match_a_plain_pandas_reference(zone, base, first, n, seed):
    """Property: the SQL aggregation (offset CASE, MIN_HOURS, previous-day change) equals pandas."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(base, tz="UTC") + pd.Timedelta(hours=first)
    times = pd.date_range(start, periods=n, freq="h")
    frame = pd.DataFrame({"time_utc": times, "pressure_msl": rng.uniform(980, 1040, n).round(1),
                          "temperature_2m": rng.uniform(-10, 30, n).round(1),
                          "relative_humidity_2m": rng.integers(20, 100, n).astype(float),
                          "precipitation": rng.choice([0.0, 0.2, 1.5], n)})
    frame.loc[rng.random(n) < 0.1, "temperature_2m"] = np.nan
    db = storage.memory_db()
    with storage.transaction(db):
        weather.store_hourly(db, "1,1", frame, "archive", TODAY)
    pts = pd.DataFrame({"patient_id": ["x"], "timezone": [zone], "latitude": [1.0], "longitude": [1.0]})
    day0 = date.fromisoformat(base)
    got = weather.daily_for_patients(db, pts, day0 - timedelta(days=2), day0 + timedelta(days=14),
                                     grid_degrees=0.1)
    ref = frame.assign(date=frame["time_utc"].dt.tz_convert(zone).dt.tz_localize(None).dt.normalize())
    g = ref.groupby("date")
    exp = pd.DataFrame({"pressure_mean": g["pressure_msl"].mean(),
                        "temperature_max": g["temperature_2m"].max(),
                        "precipitation": g["precipitation"].sum(), "n": g["pressure_msl"].count(),
                        "n_t": g["temperature_2m"].count()})
    exp.loc[exp["n"] < weather.MIN_HOURS, ["pressure_mean", "precipitation"]] = np.nan
    exp.loc[exp["n_t"] < weather.MIN_HOURS, "temperature_max"] = np.nan
    exp = exp[exp["n"] >= weather.MIN_HOURS]
    prev = exp["pressure_mean"].shift(1).where(exp.index.to_series().diff() == pd.Timedelta(days=1))
    got = got.set_index("date")
    assert list(got.index) == list(exp.index)
    np.testing.assert_allclose(got["pressure_mean"], exp["pressure_mean"])
    np.testing.assert_allclose(got["temperature_max"], exp["temperature_max"])
    np.testing.assert_allclose(got["precipitation"], exp["precipitation"])
    # a day-to-day change is a difference of two means summed in different orders: where the means are equal
    # pandas gives 0 and SQL ~1e-13 hPa, which no relative tolerance accepts (found by hypothesis)
    np.testing.assert_allclose(got["pressure_change"], exp["pressure_mean"] - prev, atol=1e-9)
    db.conn.close()


def test_unknown_time_zone_is_a_clear_error(db):
    pts = pd.DataFrame({"patient_id": ["z"], "timezone": ["Mars/Olympus"], "latitude": [1.0],
                        "longitude": [1.0]})
    with pytest.raises(TriggerWatchError, match="patient 'z' has the unknown time zone 'Mars/Olympus'"):
        weather.daily_for_patients(db, pts, date(2026, 1, 1), date(2026, 1, 2))


# --------------------------------------------------------------------------------- merging, bad rows

FIXTURES = Path(__file__).parent / "fixtures"


def vienna_answer(hourly: dict, units: dict | None = None) -> dict:
    """An Open-Meteo answer for cell 48.2,16.4 at UTC (times are UTC hours of 2026-07-01)."""
    n = len(next(iter(hourly.values())))
    times = [f"2026-07-01T{h:02d}:00" for h in range(n)]
    return {"latitude": 48.2, "longitude": 16.4, "utc_offset_seconds": 0, "timezone": "GMT",
            "hourly_units": {"time": "iso8601", "pressure_msl": "hPa", "temperature_2m": "°C",
                             "relative_humidity_2m": "%", "precipitation": "mm", **(units or {})},
            "hourly": {"time": times, **hourly}}


def import_answer(db, tmp_path, answer: dict, name: str):
    path = tmp_path / name
    path.write_text(json.dumps(answer))
    return import_file(db, "weather", path, options(), fmt="open-meteo")


def stored(db, cell: str = "48.2,16.4") -> pd.DataFrame:
    return hourly(db, cell)[["time_utc", "pressure_msl", "temperature_2m", "relative_humidity_2m",
                             "precipitation", "source"]]


FULL = {"pressure_msl": [1010.0, 1011.0, 1012.0], "temperature_2m": [1.0, 2.0, 3.0],
        "relative_humidity_2m": [70, 71, 72], "precipitation": [0.0, 0.2, 0.4]}


def test_a_file_with_fewer_variables_keeps_the_stored_values_of_the_others(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    assert import_answer(db, tmp_path, vienna_answer(FULL), "full.json").accepted == 3
    r = import_answer(db, tmp_path, vienna_answer({"pressure_msl": [1000.0, 1011.0, None]}), "p.json")
    assert (r.accepted, r.replaced, r.unchanged, r.quarantined) == (0, 1, 2, 0)
    s = stored(db)
    assert list(s["pressure_msl"]) == [1000.0, 1011.0, 1012.0]
    assert list(s["temperature_2m"]) == [1.0, 2.0, 3.0]
    assert list(s["relative_humidity_2m"]) == [70.0, 71.0, 72.0]
    assert list(s["precipitation"]) == [0.0, 0.2, 0.4] and set(s["source"]) == {"import"}


def test_a_variable_in_an_unknown_unit_does_not_erase_stored_values(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    import_answer(db, tmp_path, vienna_answer(FULL), "full.json")
    kelvin = vienna_answer({"pressure_msl": FULL["pressure_msl"], "temperature_2m": [274.0, 275.0, 276.0]},
                           units={"temperature_2m": "K"})
    r = import_answer(db, tmp_path, kelvin, "kelvin.json")
    assert any("'K'" in m for m in r.messages)
    assert (r.accepted, r.replaced, r.unchanged) == (0, 0, 3)
    assert list(stored(db)["temperature_2m"]) == [1.0, 2.0, 3.0]


def test_a_null_keeps_the_stored_value_and_a_non_number_is_quarantined(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    import_answer(db, tmp_path, vienna_answer(FULL), "full.json")
    r = import_answer(db, tmp_path, vienna_answer({"temperature_2m": [None, "abc", 3.0]}), "abc.json")
    assert (r.accepted, r.replaced, r.unchanged, r.quarantined) == (0, 0, 2, 1)
    assert list(stored(db)["temperature_2m"]) == [1.0, 2.0, 3.0]
    rej = db.execute("SELECT file, reason FROM rejects WHERE kind = 'weather'").fetchall()
    assert len(rej) == 1 and rej[0][0] == str(tmp_path / "abc.json")
    assert "2026-07-01T01:00" in rej[0][1] and "temperature_2m='abc' is not a number" in rej[0][1]


def test_rows_of_one_hour_are_merged_per_variable_and_counted(db):
    # NOAA LCD: routine (:53) and special reports in one hour, and an empty daily summary row at 23:59
    add_patients(db, [("leb", "America/New_York", 43.63, -72.31)])
    renames = {"datetime": "time", "HourlyRelativeHumidity": "relative_humidity_2m"}
    r = import_file(db, "weather", FIXTURES / "weather_lcd_sample.csv", options(renames=renames))
    assert (r.accepted, r.quarantined) == (4, 0)
    assert any("1 row fell in an hour" in m for m in r.messages)  # the SOD row is a day's summary, not used
    assert any("1 daily or monthly summary row (SOD, SOM) not used" in m for m in r.messages)
    h = hourly(db, "43.6,-72.3").set_index("time_utc")["relative_humidity_2m"]
    # local New York (-05:00) hours 00, 01, 23 of 1 January and 00 of 2 January; the last value given wins
    assert h.to_dict() == {"2022-01-01T05:00:00Z": 93.0, "2022-01-01T06:00:00Z": 91.0,
                           "2022-01-02T04:00:00Z": 86.0, "2022-01-02T05:00:00Z": 84.0}


def test_rows_of_one_hour_each_giving_other_variables_are_combined(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    path = tmp_path / "split.csv"
    path.write_text("latitude,longitude,time,pressure_msl,temperature_2m\n"
                    "48.2,16.37,2026-07-01T00:10Z,1010,\n"
                    "48.2,16.37,2026-07-01T00:40Z,,21.5\n"
                    "48.2,16.37,2026-07-01T00:50Z,1011,\n")
    r = import_file(db, "weather", path, options())
    assert (r.accepted, r.quarantined) == (1, 0)
    s = stored(db)
    assert (s["pressure_msl"].tolist(), s["temperature_2m"].tolist()) == ([1011.0], [21.5])


def test_a_malformed_time_in_an_open_meteo_answer_quarantines_only_that_hour(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    answer = vienna_answer({"pressure_msl": [1010.0, 1011.0, 1012.0, 1013.0]})
    answer["hourly"]["time"] = ["2026-07-01T00:00", "2026-07-01 01:00", "garbage", "2026-07-01T03:00"]
    r = import_answer(db, tmp_path, answer, "bad_time.json")
    assert (r.accepted, r.quarantined) == (2, 2)
    s = stored(db)
    assert list(s["time_utc"]) == ["2026-07-01T00:00:00Z", "2026-07-01T03:00:00Z"]
    assert list(s["pressure_msl"]) == [1010.0, 1013.0]
    reasons = [x[0] for x in db.execute("SELECT reason FROM rejects WHERE kind = 'weather' ORDER BY line")]
    assert "'2026-07-01 01:00'" in reasons[0] and "'garbage'" in reasons[1]
    assert all("YYYY-MM-DDTHH:MM" in x for x in reasons)


def test_an_impossible_date_in_a_weather_csv_quarantines_only_that_row(db, tmp_path):
    add_patients(db, [("nyc", "America/New_York", 40.74, -74.04)])
    path = tmp_path / "days.csv"
    path.write_text("latitude,longitude,time,pressure_msl\n"
                    "40.74,-74.04,2013-02-28,1012\n"
                    "40.74,-74.04,2013-02-30,1012\n"
                    "40.74,-74.04,2013-03-01T12:00Z,1013\n")
    r = import_file(db, "weather", path, options())
    assert (r.accepted, r.quarantined) == (2, 1)
    assert db.execute("SELECT date, pressure_mean FROM weather_daily").fetchall() == [("2013-02-28", 1012.0)]
    assert hourly(db, "40.7,-74")["pressure_msl"].tolist() == [1013.0]
    (line, reason), = db.execute("SELECT line, reason FROM rejects WHERE kind = 'weather'").fetchall()
    assert line == 3 and "time='2013-02-30'" in reason and "YYYY-MM-DD" in reason


def test_an_import_of_one_variable_over_a_forecast_hour_keeps_the_rest_and_stays_forecast(db):
    times = pd.date_range("2026-11-19", periods=3, freq="h", tz="UTC")
    fc = pd.DataFrame({"time_utc": times, "pressure_msl": 1005.0, "temperature_2m": 4.0,
                       "relative_humidity_2m": 80.0, "precipitation": 0.1})
    with storage.transaction(db):
        weather.store_hourly(db, "1,1", fc, "forecast", TODAY)
        rh = pd.DataFrame({"time_utc": times, "relative_humidity_2m": [60.0, 80.0, np.nan]})
        assert weather.store_hourly(db, "1,1", rh, "import", TODAY + timedelta(days=1)) == (0, 1, 2)
    h = hourly(db, "1,1")
    assert list(h["relative_humidity_2m"]) == [60.0, 80.0, 80.0]
    assert list(h["pressure_msl"]) == [1005.0] * 3 and list(h["temperature_2m"]) == [4.0] * 3
    # the forecast values of the hour remain, so it is no final (import) hour and keeps its fetch day
    assert list(h["source"]) == ["forecast"] * 3 and list(h["fetched_on"]) == [TODAY.isoformat()] * 3


def test_a_daily_block_with_fewer_variables_keeps_the_stored_daily_values(db, tmp_path):
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    base = {"latitude": 48.2, "longitude": 16.4, "utc_offset_seconds": 0}
    import_answer(db, tmp_path, {**base, "daily_units": {"temperature_2m_max": "°C", "precipitation_sum": "mm"},
                                 "daily": {"time": ["2026-07-01", "2026-07-02"], "temperature_2m_max": [25.0, 27.0],
                                           "precipitation_sum": [0.0, 1.0]}}, "d1.json")
    r = import_answer(db, tmp_path, {**base, "daily": {"time": ["2026-07-01", "2026-07-02", "2026-02-30"],
                                                       "precipitation_sum": [2.5, None, 1.0]}}, "d2.json")
    assert (r.accepted, r.replaced, r.unchanged, r.quarantined) == (0, 1, 1, 1)
    rows = db.execute("SELECT date, temperature_max, precipitation FROM weather_daily ORDER BY date").fetchall()
    assert rows == [("2026-07-01", 25.0, 2.5), ("2026-07-02", 27.0, 1.0)]
    reason = db.execute("SELECT reason FROM rejects WHERE kind = 'weather'").fetchone()[0]
    assert "time='2026-02-30' is not a date" in reason


def test_a_weather_csv_without_coordinates_is_placed_at_the_patients_home(db, tmp_path):
    """A home sensor's or a station's file has times and values only: --patient says whose home it is (it was
    ignored, and every row was quarantined as 'latitude and longitude are needed')."""
    add_patients(db, [("ana", "Europe/Vienna", 48.21, 16.37), ("bob", "Europe/Vienna", None, None)])
    path = tmp_path / "sensor.csv"
    path.write_text("time,pressure_msl,temperature_2m\n2026-07-01T02:00,1010,20.5\n2026-07-01T03:00,1011,19\n")
    r = import_file(db, "weather", path, options(patient="ana"))
    assert (r.accepted, r.quarantined) == (2, 0)
    s = stored(db)  # Vienna's cell; local summer time, +02:00
    assert list(s["time_utc"]) == ["2026-07-01T00:00:00Z", "2026-07-01T01:00:00Z"]
    assert list(s["pressure_msl"]) == [1010.0, 1011.0] and list(s["temperature_2m"]) == [20.5, 19.0]
    before = db.execute("SELECT count(*) FROM weather_hourly").fetchone()
    with pytest.raises(InputFileError, match="--patient ID"):
        import_file(db, "weather", path, options())
    with pytest.raises(InputFileError, match="'bob' has no home latitude and longitude"):
        import_file(db, "weather", path, options(patient="bob"))
    with pytest.raises(InputFileError, match="no patient 'zed'"):
        import_file(db, "weather", path, options(patient="zed"))
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone() == before
    assert db.execute("SELECT count(*) FROM rejects").fetchone() == (0,)
    placed = tmp_path / "placed.csv"  # the file's own coordinates win, and the note says so
    placed.write_text("latitude,longitude,time,pressure_msl\n40.74,-74.04,2026-07-01T02:00Z,1012\n")
    r = import_file(db, "weather", placed, options(patient="ana"))
    assert r.accepted == 1 and any("--patient ana is not used" in m for m in r.messages)
    assert hourly(db, "40.7,-74")["pressure_msl"].tolist() == [1012.0]


def test_an_open_meteo_answer_for_a_patient_without_a_home_says_what_to_do(db, tmp_path):
    """--patient with an Open-Meteo answer: a patient with no coordinates, or none at all, is one error for
    the file saying what to do (an unknown one raised UnknownPatient, unlike a CSV's or a station's file)."""
    add_patients(db, [("bob", "Europe/Vienna", None, None)])
    answer = {"latitude": 48.2, "longitude": 16.4, "utc_offset_seconds": 7200, "timezone": "Europe/Vienna",
              "hourly": {"time": ["2026-07-01T00:00"], "pressure_msl": [1012.5]}}
    path = tmp_path / "vienna.json"
    path.write_text(json.dumps(answer))
    with pytest.raises(InputFileError, match="'bob' has no home latitude and longitude: add them to the patients "
                                             "file, or import the answer without --patient"):
        import_file(db, "weather", path, options(patient="bob"), fmt="open-meteo")
    with pytest.raises(InputFileError, match="no patient 'zed': import the patient first"):
        import_file(db, "weather", path, options(patient="zed"), fmt="open-meteo")
    assert db.execute("SELECT count(*) FROM weather_hourly").fetchone() == (0,)
    assert import_file(db, "weather", path, options(), fmt="open-meteo").accepted == 1


LCD_HEADER = ('"STATION","DATE","LATITUDE","LONGITUDE","REPORT_TYPE","HourlyDryBulbTemperature",'
              '"HourlyPrecipitation","HourlyRelativeHumidity","HourlySeaLevelPressure"\n')


def test_a_noaa_lcd_file_is_read_in_standard_time_and_its_units(db, tmp_path):
    """NOAA LCD (FORMATS.md 2): times in local standard time all year, inHg, F, inches, T for a trace, an s
    for a suspect value, daily summary rows. Read as our CSV, a July hour was an hour off (daylight saving)
    and the pressures (~30 inHg) were all outside 850-1090 hPa."""
    add_patients(db, [("leb", "America/New_York", 43.64, -72.25)])  # a cell east of the station's
    path = tmp_path / "lcd.csv"
    path.write_text(LCD_HEADER
                    + '72611694765,2022-07-01T05:53:00,43.62707,-72.30537,"FM-15","61","T",80,"30.01"\n'
                    + '72611694765,2022-07-01T06:53:00,43.62707,-72.30537,"FM-15","64","0.10",75,"29.99s"\n'
                    + '72611694765,2022-07-01T23:59:00,43.62707,-72.30537,"SOD  ","70","0.40",,""\n'
                    + '72611694765,2022-01-01T00:53:00,43.62707,-72.30537,"FM-15","35","0.00",93,"29.93"\n')
    r = import_file(db, "weather", path, options(patient="leb"))
    assert (r.accepted, r.quarantined) == (3, 0), r.messages
    assert any("1 daily or monthly summary row" in m for m in r.messages)
    h = hourly(db, "43.6,-72.2").set_index("time_utc")  # the patient's cell
    assert list(h.index) == ["2022-01-01T05:00:00Z", "2022-07-01T10:00:00Z", "2022-07-01T11:00:00Z"]  # EST
    assert h["pressure_msl"].tolist()[:2] == [pytest.approx(1013.55, abs=0.01), pytest.approx(1016.26, abs=0.01)]
    assert math.isnan(h["pressure_msl"].iloc[2])  # 29.99s: suspect, not used
    assert h["temperature_2m"].tolist() == [pytest.approx(1.67, abs=0.01), pytest.approx(16.11, abs=0.01),
                                            pytest.approx(17.78, abs=0.01)]
    assert h["precipitation"].tolist() == [0.0, 0.0, pytest.approx(2.54)]  # T: a trace
    assert hourly(db, "43.6,-72.3").empty  # not the station's cell
    other = tmp_path / "station.csv"  # without --patient: the station's own cell, and a note
    other.write_text(LCD_HEADER + '72611694765,2022-07-01T05:53:00,43.62707,-72.30537,"FM-15","61","T",80,"30.01"\n')
    r = import_file(db, "weather", other, options())
    assert r.accepted == 1 and any("no patient lives in the station's cell (43.6,-72.3)" in m for m in r.messages)
    add_patients(db, [("nowhere", "America/New_York", None, None)])
    with pytest.raises(InputFileError, match="'nowhere' has no home latitude and longitude"):
        import_file(db, "weather", other, options(patient="nowhere"))


def test_the_same_weather_file_imported_again_fixed_resolves_its_rejects(db, tmp_path):
    """An hour of weather has no row key: the rejects a file's new import no longer repeats were fixed in it
    (the list only grew for sleep and weather); those it repeats stay open; another file's stay open."""
    add_patients(db, [("p1", "UTC", 48.21, 16.37)])
    path, other = tmp_path / "w.csv", tmp_path / "other.csv"
    head = "latitude,longitude,time,pressure_msl,temperature_2m\n"
    other.write_text(head + "48.2,16.37,2026-07-02T00:00Z,9999,20\n")
    path.write_text(head + "48.2,16.37,2026-07-01T00:00Z,1010,20\n48.2,16.37,2026-07-01T01:00Z,9999,19\n"
                    "48.2,16.37,2026-07-01T02:00Z,1012,abc\n")
    assert import_file(db, "weather", other, options()).quarantined == 1
    assert import_file(db, "weather", path, options()).quarantined == 2
    path.write_text(head + "48.2,16.37,2026-07-01T00:00Z,1010,20\n48.2,16.37,2026-07-01T01:00Z,1011,19\n"
                    "48.2,16.37,2026-07-01T02:00Z,1012,abc\n")
    r = import_file(db, "weather", path, options())
    assert (r.accepted, r.quarantined, r.gone) == (1, 1, 1)
    rows = db.execute("SELECT file, line, resolved_by FROM rejects ORDER BY id").fetchall()
    assert rows == [(str(other), 2, None), (str(path), 3, str(path)), (str(path), 4, None)]
    assert import_file(db, "weather", path, options()).gone == 0  # nothing more to fix
