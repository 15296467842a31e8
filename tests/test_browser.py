"""The pages in a real headless browser: they load with no console message, scripts run, charts are drawn.

Needs Chromium from Debian (``apt-get install -y chromium``); skipped without it. docs/reports.md shows the
same check by hand.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

from trigger_watch import reports

CHROMIUM = shutil.which("chromium") or (Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium (Debian)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]
RED = (0xc0, 0x39, 0x2b)  # migraine-day bars, trigger verdicts, the "high" band badge


def chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                              capture_output=True, text=True, timeout=60)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (as Chromium writes them) into rows of bytes; no imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def count_colour(path: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    width, bpp, rows = png_pixels(path)
    n = 0
    for row in rows[::2]:
        for x in range(0, width * bpp, bpp * 2):
            if all(abs(row[x + k] - rgb[k]) <= tol for k in range(3)):
                n += 1
    return n


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import render_reports
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("reports")
    for i in range(3):
        triggers, charts = render_reports.fake_patient(i, days=365 if i == 1 else 60)
        reports.write_patient_reports(out, triggers, charts, fsync=False)
    reports.write_cohort_reports(out, render_reports.fake_ranking(3), fsync=False)
    return out


@pytest.mark.parametrize("name, marker", [("p00001/summary.html", "<svg"), ("p00001/clinician.html", "<svg"),
                                          ("cohort/ranking.html", 'data-sortable="ready"')])
def test_page_loads_without_console_messages_and_scripts_run(pages, name, marker):
    r = chromium(pages / name, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert marker in r.stdout  # the DOM after scripts ran


@pytest.mark.parametrize("name", ["p00001/clinician.html", "p00001/summary.html", "cohort/ranking.html"])
def test_charts_are_visible_on_screen(pages, name, tmp_path):
    shot = tmp_path / "page.png"
    r = chromium(pages / name, f"--screenshot={shot}", "--window-size=1000,3000", "--hide-scrollbars",
                 "--force-device-scale-factor=0.5")
    assert shot.exists(), r.stderr[-2000:]
    assert count_colour(shot, RED) > 20  # red bars / badges were actually painted


def test_ranking_table_sorts_on_a_click(pages, tmp_path):
    """Click "risk next day" twice (ascending, then descending) and read the row order back from the DOM."""
    html = (pages / "cohort" / "ranking.html").read_text(encoding="utf-8")
    probe = """<script>
      var th = document.querySelectorAll("#ranking th")[3];
      th.querySelector("button").click();
      var asc = Array.prototype.map.call(document.querySelectorAll("#ranking tbody tr"),
                                         function (r) { return r.cells[3].getAttribute("data-v"); });
      th.querySelector("button").click();
      var desc = Array.prototype.map.call(document.querySelectorAll("#ranking tbody tr"),
                                          function (r) { return r.cells[3].getAttribute("data-v"); });
      document.body.setAttribute("data-asc", asc.join(","));
      document.body.setAttribute("data-desc", desc.join(","));
    </script></body>"""
    page = tmp_path / "ranking.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    r = chromium(page, "--dump-dom")
    assert [line for line in r.stderr.splitlines() if ":CONSOLE" in line] == []
    asc = [float(v) for v in r.stdout.split('data-asc="')[1].split('"')[0].split(",")]
    desc = [float(v) for v in r.stdout.split('data-desc="')[1].split('"')[0].split(",")]
    assert asc == sorted(asc) and desc == sorted(desc, reverse=True) and len(asc) == 3


def _old_calendar(days: list[dict], cell: int = 15) -> str:
    """The attack calendar as it was written when each day's cell carried its own fill and outline."""
    from datetime import date

    from trigger_watch import charts

    by_month: dict = {}
    for d in days:
        day = date.fromisoformat(d["date"])
        by_month.setdefault((day.year, day.month), []).append((day.day, d))
    months, (y, m) = [], min(by_month)
    while (y, m) <= max(by_month):
        months.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    left, top = 62, 16
    out = [f'<text x="{left + (d - 1) * cell + cell / 2:.1f}" y="11" text-anchor="middle" fill="#555">{d}</text>'
           for d in (1, 5, 10, 15, 20, 25, 30)]
    for row, (y, m) in enumerate(months):
        yy = top + row * cell
        out.append(f'<text x="{left - 6}" y="{yy + cell - 3}" text-anchor="end" fill="#333">'
                   f'{charts.MONTHS[m - 1]} {y}</text>')
        for dom, d in by_month.get((y, m), ()):
            status = d["status"] if d["status"] in charts.CAL_COLOURS else "missing"
            fill = charts.intensity_colour(d["intensity"], status) if status in ("onset", "attack") \
                else charts.CAL_COLOURS[status]
            stroke = ' stroke="#222" stroke-width="1.5"' if status == "onset" else ' stroke="#ccc" stroke-width="0.5"'
            out.append(f'<rect x="{left + (dom - 1) * cell + 0.5}" y="{yy + 0.5}" width="{cell - 2}" '
                       f'height="{cell - 2}" fill="{fill}"{stroke}><title>{d["date"]}: {status}</title></rect>')
    return charts._svg(left + 31 * cell + 4, top + len(months) * cell + 4, "old calendar", out)


def test_the_calendar_looks_as_it_did_when_each_cell_carried_its_own_colours(tmp_path):
    """Pixel for pixel: the month groups' shared fill and outline draw the picture the cells' own did."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import render_reports
    finally:
        sys.path.pop(0)
    from trigger_watch import charts

    days = render_reports.fake_patient(4, days=200)[1]["calendar"]
    days[3]["status"] = "unknown"
    shots = []
    for name, svg in (("old", _old_calendar(days)), ("new", charts.calendar_svg(days))):
        page = tmp_path / f"{name}.html"
        page.write_text(f'<!DOCTYPE html><html><body style="margin:0">{svg}</body></html>', encoding="utf-8")
        shot = tmp_path / f"{name}.png"
        r = chromium(page, f"--screenshot={shot}", "--window-size=600,300", "--hide-scrollbars")
        assert shot.exists(), r.stderr[-2000:]
        shots.append(png_pixels(shot))
    assert shots[0] == shots[1]
    free = tuple(int(charts.CAL_COLOURS["free"][k:k + 2], 16) for k in (1, 3, 5))
    assert count_colour(tmp_path / "new.png", free, tol=2) > 500  # the calendar was drawn
