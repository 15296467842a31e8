"""benchmarks/cycle.py's reading of what the machine's cores did during a cycle (/proc/stat)."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "cycle.py"


@pytest.fixture(scope="module")
def cycle():
    spec = importlib.util.spec_from_file_location("bench_cycle", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cores_time_is_split_into_user_kernel_disk_steal_and_idle(cycle):
    before = {"user": 1000, "nice": 10, "system": 200, "idle": 5000, "iowait": 40, "irq": 3, "softirq": 7,
              "steal": 100}
    # 2 cores x 10 s at 100 ticks a second: 2,000 ticks
    after = {"user": 1000 + 1190, "nice": 10 + 10, "system": 200 + 300, "idle": 5000 + 100, "iowait": 40 + 120,
             "irq": 3 + 10, "softirq": 7 + 10, "steal": 100 + 260}
    split = cycle._machine_split(before, after)
    assert split == pytest.approx({"user": 0.6, "kernel": 0.16, "iowait": 0.06, "steal": 0.13, "idle": 0.05})
    assert sum(split.values()) == pytest.approx(1.0)


def test_no_split_without_the_counters_or_without_time(cycle):
    ticks = {"user": 1, "nice": 0, "system": 0, "idle": 0, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0}
    assert cycle._machine_split(None, ticks) is None
    assert cycle._machine_split(ticks, dict(ticks)) is None


def test_the_counters_are_read_from_this_machine(cycle):
    ticks = cycle._machine_ticks()
    if not Path("/proc/stat").exists():
        assert ticks is None
        return
    assert set(ticks) == set(cycle._STAT_FIELDS) and ticks["user"] > 0 and ticks["idle"] >= 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_peak_memory_counts_the_workers_but_not_its_own_sampler(cycle):
    worker = ("import sys, time; block = bytearray(200 * 2**20); block[::4096] = b'x' * len(block[::4096]); "
              "print(flush=True); sys.stdin.readline()")
    with cycle.PeakMemory() as mem:
        proc = subprocess.Popen([sys.executable, "-c", worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdout.readline()  # the 200 MiB are touched
        time.sleep(0.3)  # several samples of it
        proc.communicate(b"\n")
    main_mb = cycle._usage(os.getpid())[0] / 1024
    assert mem.peak_mb >= main_mb + 195  # the worker's block, on top of this process
    assert mem.peak_main_kb / 1024 == pytest.approx(main_mb, abs=50)
    sampler = mem._proc.pid
    assert proc.pid in mem._cpu and sampler not in mem._cpu
    assert len(mem.series) >= 5 and mem.series == sorted(mem.series)


def test_the_incremental_cycle_analyses_the_changed_patients_with_their_new_day(tmp_path):
    """End to end, small: the full cycle analyses everyone through the last imported day, the incremental one
    only the 1 % who logged the held-back day, through that day (it analysed through the day before, so the
    new row was never used; with a later day pending, it re-analysed 8,893 of 10,000)."""
    import csv
    import json

    work, out = tmp_path / "bench", tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(_PATH), "--patients", "30", "--days", "60", "--workdir", str(work),
                          "--validation", "skip", "--probe", "0", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["full"]["analysed"] == 30
    assert result["incremental"]["analysed"] == result["generate"]["changed_patients"] == 1
    with open(work / "input" / "late_diary.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    doc = json.loads((work / "reports" / row["patient_id"] / "triggers.json").read_text())
    assert doc["as_of"] == doc["data"]["last_day"] == row["date"]
