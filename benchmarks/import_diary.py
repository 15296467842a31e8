"""Import a generated diary of N rows (default 1,000,000) through the public import path.

    python benchmarks/import_diary.py [--rows 1000000] [--keep DIR]

Prints rows per second, wall time and the peak resident memory of this process. The file is streamed in
batches (``[import] batch_rows``), so memory stays bounded however large the file is.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from trigger_watch import storage
from trigger_watch.importing import ImportOptions, import_file


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(folder: Path, rows: int, days: int = 365, seed: int = 1) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    n_patients = max(1, rows // days)
    patients = folder / "patients.csv"
    with patients.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "timezone", "latitude", "longitude"])
        for i in range(n_patients):
            w.writerow([f"p{i:06d}", "Europe/Vienna", f"{47 + rng.random():.3f}", f"{15 + rng.random():.3f}"])
    diary = folder / "diary.csv"
    start = date(2025, 1, 1)
    dates = [(start + timedelta(days=d)).isoformat() for d in range(days)]
    foods = np.array(["", "cheese", "red_wine;chocolate", "coffee", "aged cheese;citrus"])
    with diary.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "date", "stress", "alcohol_units", "caffeine_mg", "menstruation",
                    "sleep_hours", "foods", "headache", "headache_intensity", "mood"])
        written = 0
        for i in range(n_patients):
            k = min(days, rows - written)
            if k <= 0:
                break
            stress = rng.integers(0, 11, k)
            alcohol = rng.poisson(0.5, k)
            caffeine = rng.integers(0, 400, k)
            sleep = np.round(rng.normal(7, 1, k).clip(2, 12), 1)
            food = foods[rng.integers(0, len(foods), k)]
            head = rng.random(k) < 0.12
            pid = f"p{i:06d}"
            w.writerows(
                (pid, dates[d], stress[d], alcohol[d], caffeine[d], "no", sleep[d], food[d], int(head[d]),
                 int(rng.integers(3, 9)) if head[d] else "", int(stress[d]) % 5)
                for d in range(k)
            )
            written += k
    return patients, diary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    args = ap.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tw-import-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    patients, diary = generate(folder, args.rows)
    gen_s = time.perf_counter() - t0
    size_mb = diary.stat().st_size / 1e6
    db = storage.connect(folder / "bench.db")
    options = ImportOptions(today=date(2026, 11, 20))
    import_file(db, "patients", patients, options)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    result = import_file(db, "diary", diary, options)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = import_file(db, "diary", diary, options)
    again_s = time.perf_counter() - t0
    print(f"generated {args.rows:,} diary rows ({size_mb:.0f} MB) in {gen_s:.1f} s")
    print(f"first import : {import_s:6.1f} s  ({args.rows / import_s:,.0f} rows/s) "
          f"new={result.accepted:,} quarantined={result.quarantined:,}")
    print(f"re-import    : {again_s:6.1f} s  unchanged={again.unchanged:,} (idempotent: nothing written)")
    print(f"peak RSS     : {peak_rss_mb():6.0f} MB (before the diary import: {rss_before:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
