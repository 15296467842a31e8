"""Screenshots of the report pages for docs/screenshots/, taken with headless Chromium (Debian's package).

    python docs/make_screenshots.py [--out docs/screenshots] [--keep DIR]
    python docs/make_screenshots.py --from-demo demo-workspace     # after `trigger-watch demo`

With --from-demo, photographs the real reports of a demo workspace (its top-ranked patient); otherwise
renders the realistic fake patient p00001 (a year of diary) and a 40-patient cohort with
benchmarks/render_reports.py. Takes the patient summary, the clinician page and the cohort page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import render_reports  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
SHOTS = [("patient_summary.png", "p00001/summary.html", "1000,2300"),
         ("clinician.png", "p00001/clinician.html", "1100,2500"),
         ("cohort.png", "cohort/ranking.html", "1500,1100")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--keep", type=Path, help="write the demo pages here instead of a temporary folder")
    ap.add_argument("--from-demo", type=Path, metavar="WORKSPACE",
                    help="photograph the reports of this `trigger-watch demo` workspace")
    args = ap.parse_args()
    browser = shutil.which("chromium")
    if not browser:
        sys.exit("needs Chromium: apt-get install -y chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shots = SHOTS
        if args.from_demo:
            import json

            pages = args.from_demo / "reports"
            top = json.loads((pages / "cohort" / "ranking.json").read_text())[0]["patient_id"]
            shots = [(name, page.replace("p00001", top), size) for name, page, size in SHOTS]
        else:
            pages = args.keep or Path(tmp)
            render_reports.demo(pages)
        for name, page, size in shots:
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={args.out / name}",
                                f"--window-size={size}", (pages / page).as_uri()],
                               check=True, capture_output=True, timeout=120)
            print(args.out / name)


if __name__ == "__main__":
    main()
