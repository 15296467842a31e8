"""How long ``models.analyse`` takes for a large simulated cohort.

    python benchmarks/fit_speed.py [--patients 10000] [--days 365] [--seed 20261121]

Simulates the cohort (not timed), builds the panel with the simulator's test adapter (not timed), then times
``models.analyse`` (all fits, pooling, q-values, verdicts and summaries) without and with the model store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trigger_watch import config as tw_config
from trigger_watch import models, simulate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=20261121)
    args = ap.parse_args(argv)
    print(f"seed {args.seed}; {args.patients} patients x {args.days} days; {os.cpu_count()} cores")
    t0 = time.perf_counter()
    cohort = simulate.simulate_cohort(args.patients, args.days, args.seed)
    t1 = time.perf_counter()
    panel = simulate.panel_from_cohort(cohort)
    t2 = time.perf_counter()
    print(f"simulate {t1 - t0:.1f} s, panel {t2 - t1:.1f} s ({len(panel):,} patient-days, "
          f"{int(panel['at_risk'].sum()):,} at risk, {len(panel.attrs['factors'])} factor columns)")
    cfg = tw_config.defaults()
    t3 = time.perf_counter()
    res = models.analyse(panel, cfg, store=False)
    t4 = time.perf_counter()
    n_trig = sum(int((a.summary["verdict"] == "trigger").sum()) for a in res.values())
    print(f"analyse (no store): {t4 - t3:.1f} s for {len(res)} patients; {n_trig} triggers called")
    with tempfile.TemporaryDirectory() as tmp:
        store = models.ModelStore(tmp)
        t5 = time.perf_counter()
        models.analyse(panel, cfg, store=store)
        t6 = time.perf_counter()
        models.analyse(panel, cfg, store=store)
        t7 = time.perf_counter()
    print(f"analyse with the model store: first run {t6 - t5:.1f} s, unchanged rerun {t7 - t6:.1f} s")


if __name__ == "__main__":
    main()
