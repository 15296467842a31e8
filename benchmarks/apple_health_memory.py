"""Peak memory of importing a large Apple Health ``export.xml`` (issue 4: must stay under 300 MB at 1 GB).

Generates a realistic export in a temporary folder: mostly heart-rate and step records with metadata (what
makes real files big), workouts, and every night an iPhone "InBed" record plus Apple Watch stage records
(Core/Deep/REM/Awake) and a third-party app's overlapping "Asleep" record. Then imports it with
``trigger-watch``'s importer in a fresh child process and prints that process's peak RSS.

    python benchmarks/apple_health_memory.py               # ~1 GB (about a minute to write, a few to import)
    python benchmarks/apple_health_memory.py --size-mb 50  # quick look

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>
<!ATTLIST HealthData locale CDATA #REQUIRED>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record type CDATA #REQUIRED unit CDATA #IMPLIED value CDATA #IMPLIED sourceName CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED device CDATA #IMPLIED creationDate CDATA #IMPLIED startDate CDATA #REQUIRED
  endDate CDATA #REQUIRED>
<!ELEMENT MetadataEntry EMPTY>
<!ATTLIST MetadataEntry key CDATA #REQUIRED value CDATA #REQUIRED>
]>
<HealthData locale="en_US">
 <ExportDate value="2026-11-01 09:00:00 -0500"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="" HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexNotSet"/>
"""
WATCH = ('sourceName="Apple Watch" sourceVersion="10.1" device="&lt;&lt;HKDevice: 0x283fe1a40&gt;, name:Apple Watch, '
         'manufacturer:Apple Inc., model:Watch, hardware:Watch6,1, software:10.1&gt;"')
PHONE = 'sourceName="iPhone" sourceVersion="17.1"'
SLEEP = "HKCategoryTypeIdentifierSleepAnalysis"
STAGES = [("AsleepCore", 50), ("AsleepDeep", 35), ("AsleepCore", 40), ("AsleepREM", 25), ("Awake", 5),
          ("AsleepCore", 55), ("AsleepDeep", 20), ("AsleepREM", 30), ("AsleepCore", 45), ("Awake", 4),
          ("AsleepCore", 50), ("AsleepREM", 35)]  # 394 minutes, 385 asleep


def _t(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S -0500")


def _sleep(src: str, value: str, s: datetime, e: datetime) -> str:
    return (f' <Record type="{SLEEP}" {src} creationDate="{_t(e)}" startDate="{_t(s)}" endDate="{_t(e)}" '
            f'value="HKCategoryValueSleepAnalysis{value}">\n  <MetadataEntry key="HKTimeZone" '
            f'value="America/Chicago"/>\n </Record>\n')


def day_text(day: datetime) -> str:
    """One day of a heavy Apple Watch wearer: 300 heart-rate and 100 step records, a workout, a night."""
    out = []
    for i in range(300):
        t = day + timedelta(minutes=4.8 * i)
        out.append(f' <Record type="HKQuantityTypeIdentifierHeartRate" {WATCH} unit="count/min" '
                   f'creationDate="{_t(t)}" startDate="{_t(t)}" endDate="{_t(t)}" value="{60 + i % 40}">\n'
                   f'  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>\n </Record>\n')
    for i in range(100):
        t = day + timedelta(minutes=14.4 * i)
        out.append(f' <Record type="HKQuantityTypeIdentifierStepCount" {PHONE} unit="count" creationDate="{_t(t)}" '
                   f'startDate="{_t(t)}" endDate="{_t(t + timedelta(minutes=10))}" value="{i * 7 % 900}"/>\n')
    w = day + timedelta(hours=18)
    out.append(f' <Workout workoutActivityType="HKWorkoutActivityTypeRunning" duration="30" durationUnit="min" '
               f'{WATCH} creationDate="{_t(w)}" startDate="{_t(w)}" endDate="{_t(w + timedelta(minutes=30))}">\n'
               f'  <MetadataEntry key="HKIndoorWorkout" value="0"/>\n'
               f'  <WorkoutEvent type="HKWorkoutEventTypeSegment" date="{_t(w)}" duration="10" durationUnit="min"/>\n'
               f' </Workout>\n')
    bed = day + timedelta(hours=22, minutes=45)
    out.append(_sleep(PHONE, "InBed", bed, bed + timedelta(hours=8)))
    s = bed + timedelta(minutes=10)
    out.append(_sleep('sourceName="AutoSleep"', "Asleep", s, s + timedelta(minutes=200)))
    for value, minutes in STAGES:
        e = s + timedelta(minutes=minutes)
        out.append(_sleep(WATCH, value, s, e))
        s = e
    return "".join(out)


def generate(path: Path, size_mb: float) -> int:
    """Write the export; returns the number of nights."""
    target = size_mb * 1024 * 1024
    per_day = len(day_text(datetime(2020, 1, 1)))
    day = datetime(2026, 11, 1) - timedelta(days=int(target / per_day) + 1)  # every night in the past
    nights = 0
    with path.open("w", encoding="utf-8") as fh:
        fh.write(HEADER)
        written = len(HEADER)
        while written < target:
            text = day_text(day)
            fh.write(text)
            written += len(text)
            day += timedelta(days=1)
            nights += 1
        fh.write("</HealthData>\n")
    return nights


CHILD = """
import json, resource, sys, time
from datetime import date
from trigger_watch import storage, sleep
from trigger_watch.importing import ImportOptions, import_file
db = storage.connect(sys.argv[2])
db.conn.execute("INSERT INTO patients (patient_id, timezone) VALUES ('bench', 'America/Chicago')")
db.conn.commit()
t = time.perf_counter()
r = import_file(db, "sleep", sys.argv[1], ImportOptions(today=date(2026, 11, 21), patient="bench"), fmt="apple-health")
elapsed = time.perf_counter() - t
n = sleep.nightly(db, ["bench"])
print(json.dumps({"accepted": r.accepted, "quarantined": r.quarantined, "nights": len(n),
                  "median_sleep_hours": float(n["sleep_hours"].median()), "seconds": round(elapsed, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="size of the generated export.xml, MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "export.xml"
        t = time.perf_counter()
        nights = generate(xml, args.size_mb)
        size = xml.stat().st_size / 1024 / 1024
        print(f"generated {xml.name}: {size:.0f} MB, {nights} nights, in {time.perf_counter() - t:.0f} s")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = subprocess.run([sys.executable, "-c", CHILD, str(xml), str(Path(tmp) / "bench.db")],
                             capture_output=True, text=True, env=env, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"imported {result['accepted']} sleep periods ({result['nights']} nights, median "
              f"{result['median_sleep_hours']:.2f} h asleep, {result['quarantined']} quarantined) "
              f"in {result['seconds']} s")
        print(f"peak RSS of the importing process: {result['peak_rss_mb']} MB "
              f"({'under' if result['peak_rss_mb'] < 300 else 'OVER'} the 300 MB budget)")
        if result["nights"] != nights:
            sys.exit(f"expected {nights} nights, got {result['nights']}")


if __name__ == "__main__":
    main()
