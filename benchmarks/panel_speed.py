"""How long ``features.build_panel`` takes for a large cohort, and how much memory it needs.

    python benchmarks/panel_speed.py [--patients 10000] [--days 365] [--seed 7]

Generates simple random frames in the stored shapes (diary with tags and custom factors, attack records,
wearable nights, weather days), then times ``build_panel`` alone. Peak memory is the process's maximum
resident set (``ru_maxrss``) before and after the build, so the figure includes the input frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import date, timedelta

import numpy as np
import pandas as pd

from trigger_watch.features import PanelInputs, build_panel

FOODS = ["cheese", "red_wine", "chocolate", "citrus", "coffee", "bread", "nuts", "pizza", "sushi", "beer"]
SYMPTOMS = ["yawning", "neck_stiffness", "fatigue", "craving", "light_sensitivity"]
ZONES = ["Europe/Vienna", "Europe/London", "America/New_York", "Asia/Tokyo", "UTC"]


def _tags(rng, vocab, n, p_null):
    k = rng.integers(0, 4, n)
    picks = rng.integers(0, len(vocab), (n, 3))
    words = np.array(vocab, dtype=object)[picks]
    out = np.where(k[:, None] > np.arange(3), words, "")
    cells = [";".join(sorted({w for w in row if w})) for row in out]
    cells = np.array(cells, dtype=object)
    cells[rng.random(n) < p_null] = None
    return cells


def make_inputs(patients: int, days: int, seed: int) -> tuple[PanelInputs, date]:
    rng = np.random.default_rng(seed)
    as_of = date(2026, 11, 20)
    first = as_of - timedelta(days=days - 1)
    ids = np.array([f"p{i:05d}" for i in range(patients)], dtype=object)
    pts = pd.DataFrame({"patient_id": ids, "timezone": rng.choice(ZONES, patients),
                        "latitude": rng.uniform(40, 60, patients),
                        "longitude": rng.uniform(-10, 30, patients)})
    # one row per patient-day, then 85% of the days kept as diary days
    pid = np.repeat(ids, days)
    dd = np.tile(pd.date_range(first, periods=days).strftime("%Y-%m-%d").to_numpy(dtype=object), patients)
    n = len(pid)
    keep = rng.random(n) < 0.85
    m = int(keep.sum())

    def num(lo, hi, p_null=0.1):
        v = rng.uniform(lo, hi, m).round(1)
        v[rng.random(m) < p_null] = np.nan
        return v

    headache = (rng.random(m) < 0.12).astype(float)
    diary = pd.DataFrame({
        "patient_id": pid[keep], "date": dd[keep], "stress": num(0, 10), "alcohol_units": num(0, 4),
        "caffeine_mg": num(0, 400), "menstruation": (rng.random(m) < 0.15).astype(float),
        "skipped_meal": (rng.random(m) < 0.1).astype(float), "exercise_minutes": num(0, 90),
        "water_l": num(0.5, 3), "screen_hours": num(0, 12), "sleep_hours": num(4, 10, 0.5),
        "sleep_quality": num(0, 10), "foods": _tags(rng, FOODS, m, 0.2),
        "symptoms": _tags(rng, SYMPTOMS, m, 0.3), "medication": None, "headache": headache,
        "headache_intensity": np.where(headache == 1, rng.integers(2, 10, m), np.nan), "notes": None,
        "custom": np.where(rng.random(m) < 0.5, json.dumps({"hours_outdoors": 2.5, "travel": 1.0}), None),
    })
    # attack records for a third of the patients, ~3 a month
    who = ids[: patients // 3]
    k = len(who) * days // 10
    s = (pd.Timestamp(first) + pd.to_timedelta(rng.integers(0, days * 24, k), unit="h")
         + pd.to_timedelta(rng.integers(0, 60, k), unit="m"))
    e = s + pd.to_timedelta(rng.integers(2, 48, k), unit="h")
    fmt = "%Y-%m-%dT%H:%M:%S"
    attacks = pd.DataFrame({
        "patient_id": rng.choice(who, k), "start": s.strftime(fmt + "Z"), "end": e.strftime(fmt + "Z"),
        "start_local": s.strftime(fmt), "end_local": e.strftime(fmt),
        "intensity": rng.integers(3, 10, k).astype(float), "kind": rng.choice(["migraine", "headache"], k),
    }).drop_duplicates(["patient_id", "start"])
    dates = pd.to_datetime(dd)
    w = rng.random(n) < 0.6
    sleep = pd.DataFrame({"patient_id": pid[w], "date": dates[w], "sleep_hours": rng.uniform(4, 10, w.sum()),
                          "efficiency": rng.uniform(70, 98, w.sum()),
                          "awakenings": rng.integers(0, 6, w.sum()),
                          "bedtime": rng.normal(-0.5, 1, w.sum())})
    weather = pd.DataFrame({"patient_id": pid, "date": dates, "pressure_change": rng.normal(0, 4, n),
                            "temperature_max": rng.normal(15, 8, n),
                            "temperature_change": rng.normal(0, 2, n),
                            "humidity": rng.uniform(30, 100, n), "precipitation": rng.exponential(2, n)})
    # custom factors unpacked as load_inputs does with SQLite's json_each
    has = diary[diary["custom"].notna()]
    custom = pd.DataFrame({"patient_id": np.repeat(has["patient_id"].to_numpy(), 2),
                           "date": np.repeat(has["date"].to_numpy(), 2),
                           "factor": np.tile(["hours_outdoors", "travel"], len(has)),
                           "value": np.tile([2.5, 1.0], len(has))})
    return PanelInputs(patients=pts, diary=diary, attacks=attacks, sleep_nightly=sleep,
                       weather_daily=weather, diary_custom=custom), as_of


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"seed {args.seed}: generating {args.patients} patients x {args.days} days ...", flush=True)
    inputs, as_of = make_inputs(args.patients, args.days, args.seed)
    before = _rss_gb()
    for run in ("first build (fresh memory)", "second build (memory reused)"):
        t, cpu = time.perf_counter(), time.process_time()
        panel = build_panel(inputs, as_of)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"{run}: {secs:.1f} s wall, {cpu:.1f} s CPU, "
              f"for {len(panel):,} rows x {panel.shape[1]} columns "
              f"({panel['onset'].sum():,} onsets, {panel['at_risk'].mean():.0%} at risk)", flush=True)
        if run.startswith("first"):
            after = _rss_gb()
            del panel
    print(f"peak resident memory: {before:.2f} GB with the inputs, {after:.2f} GB after the first build "
          f"(panel itself {panel.memory_usage(deep=False).sum() / 1024**3:.2f} GB)")


if __name__ == "__main__":
    sys.exit(main())
