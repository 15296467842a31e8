"""Benchmark: fetch a year of weather for 10,000 patients in 300 grid cells from a loopback Open-Meteo.

    python benchmarks/weather_fetch.py [--patients 10000] [--cells 300] [--days 365] [--db PATH]

A local HTTP server answers exactly like Open-Meteo (columnar JSON, a list for several locations). The
rate budget runs on a simulated clock, so the run does not wait for real; the waiting a real run would do
for the free tier's per-minute budget is reported as "simulated wait". Prints the request count, the
Open-Meteo calls (weighted), the time of the first run, of a second run (which must fetch nothing) and of
``daily_for_patients`` for every patient over the year.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trigger_watch import config as config_mod
from trigger_watch import storage, weather

TODAY = date(2026, 11, 20)


class OpenMeteoHandler(BaseHTTPRequestHandler):
    """Answers /v1/archive and /v1/forecast like Open-Meteo with smooth synthetic hourly series."""

    requests_seen = 0

    def do_GET(self) -> None:
        type(self).requests_seen += 1
        q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        start = np.datetime64(q["start_date"] + "T00:00")
        n = (np.datetime64(q["end_date"]) - np.datetime64(q["start_date"])).astype(int) * 24 + 24
        t = start + np.arange(n).astype("timedelta64[h]")
        times = [s[:16] for s in np.datetime_as_string(t, unit="m")]
        hour = np.arange(n)
        out = []
        for lat, lon in zip(q["latitude"].split(","), q["longitude"].split(",")):
            la = float(lat)
            out.append({
                "latitude": la, "longitude": float(lon), "generationtime_ms": 1.0, "utc_offset_seconds": 0,
                "timezone": "GMT", "timezone_abbreviation": "GMT", "elevation": 100.0,
                "hourly_units": {"time": "iso8601", "pressure_msl": "hPa", "temperature_2m": "°C",
                                 "relative_humidity_2m": "%", "precipitation": "mm"},
                "hourly": {"time": times,
                           "pressure_msl": np.round(1013 + 8 * np.sin(hour / 40 + la), 1).tolist(),
                           "temperature_2m": np.round(12 + 8 * np.sin(hour / 24 * 2 * np.pi), 1).tolist(),
                           "relative_humidity_2m": (60 + (hour % 30)).tolist(),
                           "precipitation": np.where(hour % 17 == 0, 0.4, 0.0).tolist()}})
        body = json.dumps(out if len(out) > 1 else out[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


class SimClock:
    def __init__(self) -> None:
        self.now = time.time()
        self.waited = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.waited += s


def build_cohort(db, n_patients: int, n_cells: int, days: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    zones = ["Europe/Vienna", "Europe/London", "America/New_York", "America/Chicago", "Asia/Tokyo", "UTC"]
    centres = np.column_stack([rng.uniform(-50, 60, n_cells).round(1),
                               rng.uniform(-120, 140, n_cells).round(1)])
    cell = rng.integers(0, n_cells, n_patients)
    cell[:n_cells] = np.arange(n_cells)                        # every cell has patients
    jitter = rng.uniform(-0.04, 0.04, (n_patients, 2))
    p = pd.DataFrame({"patient_id": [f"p{i:05d}" for i in range(n_patients)],
                      "timezone": np.array(zones)[cell % len(zones)],
                      "latitude": centres[cell, 0] + jitter[:, 0],
                      "longitude": centres[cell, 1] + jitter[:, 1]})
    first = [(TODAY - timedelta(days=days - int(k))).isoformat() for k in rng.integers(0, 20, n_patients)]
    with storage.transaction(db):
        db.conn.executemany(
            "INSERT INTO patients (patient_id, timezone, latitude, longitude) VALUES (?, ?, ?, ?)",
            p.itertuples(index=False, name=None))
        db.conn.executemany("INSERT INTO diary (patient_id, date, stress) VALUES (?, ?, 3)",
                            zip(p["patient_id"], first))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--db", type=Path, default=None, help="database file (default: a temporary one)")
    args = ap.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), OpenMeteoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        db = storage.connect(args.db or Path(tmp) / "bench.db")
        cfg = config_mod.defaults().with_values(weather__archive_url=base + "/v1/archive",
                                                weather__forecast_url=base + "/v1/forecast")
        patients = build_cohort(db, args.patients, args.cells, args.days)
        clock = SimClock()
        with requests.Session() as session:
            t0 = time.perf_counter()
            first = weather.fetch_weather(db, cfg, session, today=TODAY, clock=clock, sleep=clock.sleep)
            t1 = time.perf_counter()
            second = weather.fetch_weather(db, cfg, session, today=TODAY, clock=clock, sleep=clock.sleep)
            t2 = time.perf_counter()
        start = TODAY - timedelta(days=args.days - 1)
        t3 = time.perf_counter()
        daily = weather.daily_for_patients(db, patients, start, TODAY)
        t4 = time.perf_counter()
        stale = db.execute("SELECT count(*) FROM weather_local_days").fetchone()[0]
        weather.daily_for_patients(db, patients, start, TODAY)
        t5 = time.perf_counter()
        server.shutdown()
        hours = db.execute("SELECT count(*) FROM weather_hourly").fetchone()[0]
        print(f"cohort: {args.patients} patients in {first.cells} cells, {args.days} days of diary")
        print(f"first run : {first.requests} HTTP requests "
              f"({OpenMeteoHandler.requests_seen} seen by the server), "
              f"{first.calls_weighted:.0f} Open-Meteo calls weighted, {first.hours_stored} hours stored "
              f"({hours} rows), {t1 - t0:.1f} s; simulated wait for the per-minute budget "
              f"{clock.waited / 60:.1f} min; failed cells: {len(first.failed)}")
        print(f"second run: {second.requests} HTTP requests, {second.cells_up_to_date} cells up to date, "
              f"{t2 - t1:.2f} s")
        print(f"daily_for_patients: {len(daily)} patient-days for {daily['patient_id'].nunique()} patients "
              f"in {t4 - t3:.1f} s (again: {t5 - t4:.1f} s; {stale} cached local cell-days)")
        db.conn.close()


if __name__ == "__main__":
    main()
