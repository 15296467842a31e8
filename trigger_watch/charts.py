"""Charts for the report pages: inline SVG written directly as strings.

No plotting library: a chart is a few hundred ``<rect>``/``<line>`` elements, built with f-strings in well
under a millisecond, so thousands of patients render in seconds and every page stays one self-contained
file that prints cleanly. Every function takes plain lists/dicts (the ``charts`` and ``triggers`` blocks of
``reports``), computes no statistics, escapes every piece of text it places in the SVG, and returns
:class:`markupsafe.Markup` (an empty one when there is nothing to draw).
"""

from __future__ import annotations

import calendar as _calendar
import math
from datetime import date
from functools import cache, lru_cache

from markupsafe import Markup, escape

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

#: Colour of each verdict (forest plot, legends, badges).
VERDICT_COLOURS = {
    "trigger": "#c0392b",
    "protective": "#1f6fb2",
    "warning_sign": "#b9770e",
    "insufficient_data": "#8e9aa6",
    "no_association": "#4d5656",
}
VERDICT_ORDER = ("trigger", "protective", "warning_sign", "insufficient_data", "no_association")

CAL_COLOURS = {"free": "#dcefd6", "missing": "#ffffff", "attack": "#fb8a6a", "onset": "#e0442f"}
_LOW, _HIGH = (252, 200, 175), (140, 10, 20)   # attack days: mild -> severe


def _e(text) -> str:
    return str(escape("" if text is None else text))


def _e_short(text, n: int) -> str:
    """``text`` escaped, cut to ``n`` characters with an ellipsis (as a character reference: the pages are
    ASCII, see ``reports.DASH``)."""
    text = "" if text is None else str(text)
    return _e(text) if len(text) <= n else _e(text[: n - 1]) + "&#8230;"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(width: float, height: float, label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{_e(label)}" '
        f'viewBox="0 0 {_num(width)} {_num(height)}" width="{_num(width)}" height="{_num(height)}" '
        f'font-family="system-ui, sans-serif" font-size="11">{"".join(body)}</svg>'
    )


def intensity_colour(intensity: float | None, status: str) -> str:
    """Fill of an attack day: light for mild, dark red for severe (intensity 0-10); fixed when unknown."""
    if intensity is None or (isinstance(intensity, float) and math.isnan(intensity)):
        return CAL_COLOURS[status]
    t = min(max(float(intensity) / 10.0, 0.0), 1.0)
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(_LOW, _HIGH))
    return f"#{r:02x}{g:02x}{b:02x}"


# ------------------------------------------------------------------------------------ attack calendar

def calendar_svg(days: list[dict], *, cell: int = 15) -> Markup:
    """Heat map of days: one row per month, one cell per day of the month.

    ``days``: ``[{"date": "YYYY-MM-DD", "status": "onset"|"attack"|"free"|"missing", "intensity": 0-10 or
    None}]``. Onset days are outlined; attack days are coloured by intensity; missing days are blank.

    Each month's cells are one group (``<g>``) placed at the row's corner, carrying what most cells share
    (a free day's fill, the thin grey outline); a cell says only what differs from it (:data:`CAL_CELL`).
    A cell's markup then depends on the day alone, not on where the patient's calendar starts, and is kept
    from patient to patient (:func:`_cell`).
    """
    if not days:
        return Markup("")
    cells = _CELLS.setdefault(cell, {})
    get = cells.get
    by_month: dict[int, list[str]] = {}  # months counted from year 0
    for d in days:
        try:
            got = get((d["date"], d["status"], d["intensity"]))
        except (KeyError, TypeError):  # a key left out, or an unhashable value
            got = None
        month, text = _new_cell(cells, (d["date"], d.get("status"), d.get("intensity")), cell) \
            if got is None else got
        pieces = by_month.get(month)
        if pieces is None:
            by_month[month] = [text]
        else:
            pieces.append(text)
    first = min(by_month)
    left, top = 62, 16
    n_months = max(by_month) - first + 1
    width, height = left + 31 * cell + 4, top + n_months * cell + 4
    out = [_cal_head(cell)]
    for row in range(n_months):
        yy = top + row * cell
        y, m = divmod(first + row, 12)
        out.append(f'<text x="{left - 6}" y="{yy + cell - 3}" text-anchor="end" fill="#333">'
                   f'{MONTHS[m]} {y}</text>')
        pieces = by_month.get(first + row)
        if pieces:
            out.append(f'<g transform="translate({left + 0.5} {yy + 0.5})"{_CAL_GROUP}>')
            out.append("".join(pieces))
            out.append("</g>")
    return _svg(width, height, "Attack calendar: one row per month, one square per day", out)


#: How a calendar cell of each status is drawn: its fill (attack days: :func:`intensity_colour`, unless the
#: intensity is unknown) and outline. The legend (:func:`calendar_legend`) shows the same fills.
CAL_CELL = {status: {"fill": colour, "stroke": "#222" if status == "onset" else "#ccc",
                     "stroke-width": "1.5" if status == "onset" else "0.5"}
            for status, colour in CAL_COLOURS.items()}
#: What a month's group gives every cell in it (a free day's look); a cell writes what differs.
_CAL_GROUP = ''.join(f' {k}="{v}"' for k, v in CAL_CELL["free"].items())
_CELLS: dict[int, dict[tuple, tuple[int, str]]] = {}  # per cell size: (date, status, intensity)


@cache
def _cal_head(cell: int) -> str:
    """The calendar's day-of-month scale along its top."""
    return "".join(f'<text x="{62 + (d - 1) * cell + cell / 2:.1f}" y="11" text-anchor="middle" fill="#555">{d}</text>'
                   for d in (1, 5, 10, 15, 20, 25, 30))


def _new_cell(cells: dict, key: tuple, cell: int) -> tuple[int, str]:
    """:func:`_cell` of a day not found in ``cells``, kept there (under ``key`` and, where the intensity
    does not show, under an intensity of None) when it may be."""
    text, status, intensity = key
    keys = [key]
    if status not in ("onset", "attack"):  # the intensity does not show (free days' is 0, missing days' NaN)
        keys.append((text, status, None))
        try:
            got = cells.get(keys[-1])
        except TypeError:
            got = None
    else:
        got = None
    if got is None:
        got = _cell(text, status, intensity, cell)
    if len(cells) >= 20000:  # dates move on night after night: start again rather than grow
        cells.clear()
    for k in keys:
        if _keeps(k):
            cells[k] = got
    return got


def _keeps(key: tuple) -> bool:
    """Whether a cell's markup may be kept under ``key``: a date text, and an intensity that no other
    value equal to it would print differently (not -0.0 next to 0.0, not NaN, which equals nothing)."""
    text, status, intensity = key
    if type(text) is not str:
        return False
    if intensity is None or type(intensity) is int:
        return True
    return type(intensity) is float and intensity == intensity and (
        intensity != 0 or status not in ("onset", "attack"))


def _cell(text, status, intensity, cell: int) -> tuple[int, str]:
    """A day's month (``12 * year + month - 1``) and its cell, placed in its month's group: ``<rect x=".." width height
    [fill stroke stroke-width]><title>DATE: STATUS[, intensity N]</title></rect>``."""
    day = date.fromisoformat(text)
    if status not in CAL_COLOURS:
        status = "missing"
    look = dict(CAL_CELL[status])
    if status in ("onset", "attack"):
        look["fill"] = intensity_colour(intensity, status)
    attrs = "".join(f' {k}="{v}"' for k, v in look.items() if CAL_CELL["free"][k] != v)
    # Safe without escaping: the date was parsed, the status is one of CAL_COLOURS.
    tip = f"{day.isoformat()}: {status}"
    if intensity is not None and status in ("onset", "attack"):
        tip += f", intensity {_num(float(intensity))}"
    size = cell - 2
    return 12 * day.year + day.month - 1, (f'<rect x="{(day.day - 1) * cell}" width="{size}" height="{size}"{attrs}>'
                                   f'<title>{tip}</title></rect>')


@cache
def calendar_legend() -> Markup:
    """The calendar's key: a square of each status's fill (:data:`CAL_CELL`) and what it means."""
    items = [("free", "no attack"), ("missing", "nothing logged"), ("attack", "attack day (darker = worse)"),
             ("onset", "attack started (outlined)")]
    out, x = [], 2
    for status, text in items:
        stroke = "#222" if status == "onset" else "#999"
        out.append(f'<rect x="{x}" y="3" width="11" height="11" fill="{CAL_CELL[status]["fill"]}" stroke="{stroke}"/>'
                   f'<text x="{x + 15}" y="12" fill="#333">{text}</text>')
        x += 22 + len(text) * 6
    return _svg(x, 18, "Legend of the attack calendar", out)


# ------------------------------------------------------------------------------------ monthly chart

def monthly_svg(monthly: list[dict], treatments: list[dict] | None = None, *, width: int = 720,
                height: int = 230) -> Markup:
    """Bars of migraine days per month over days logged, a line of headache days, treatments marked.

    ``monthly``: ``[{"month": "YYYY-MM", "migraine_days", "headache_days", "days_logged"}]``;
    ``treatments``: the ``treatments`` block of triggers.json (``treatment``, ``date``).
    """
    if not monthly:
        return Markup("")
    rows = sorted(monthly, key=lambda r: r["month"])
    left, right, top, bottom = 34, 10, 34, 26
    pw, ph = width - left - right, height - top - bottom
    band = pw / len(rows)
    ymax = 31

    def yv(v: float) -> float:
        return top + ph - ph * min(max(v, 0), ymax) / ymax

    out = []
    for tick in (0, 5, 10, 15, 20, 25, 30):
        y = yv(tick)
        dash = ' stroke-dasharray="4 3"' if tick == 15 else ""
        colour = "#999" if tick == 15 else "#e3e3e3"
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}"{dash}/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>')
    step = 1 if len(rows) <= 14 else 3 if len(rows) <= 40 else 6
    points = []
    for i, r in enumerate(rows):
        x = left + i * band
        bw = max(band * 0.7, 1)
        bx = x + (band - bw) / 2
        logged, mig, head = r.get("days_logged") or 0, r.get("migraine_days") or 0, r.get("headache_days")
        out.append(f'<rect x="{bx:.1f}" y="{yv(logged):.1f}" width="{bw:.1f}" height="{yv(0) - yv(logged):.1f}" '
                   f'fill="#eceff1"><title>{_e(r["month"])}: {logged} days logged</title></rect>')
        out.append(f'<rect x="{bx:.1f}" y="{yv(mig):.1f}" width="{bw:.1f}" height="{yv(0) - yv(mig):.1f}" '
                   f'fill="#c0392b"><title>{_e(r["month"])}: {mig} migraine days</title></rect>')
        if head is not None:
            points.append(f"{x + band / 2:.1f},{yv(head):.1f}")
        if i % step == 0:
            yy, mm = r["month"][:4], int(r["month"][5:7])
            text = f"{MONTHS[mm - 1]}" + (f" {yy}" if (i == 0 or mm == 1) else "")
            out.append(f'<text x="{x + band / 2:.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#333">'
                       f'{_e(text)}</text>')
    if len(points) > 1:
        out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#34495e" stroke-width="1.5"/>')
    for p in points:
        x, y = p.split(",")
        out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#34495e"/>')
    months = [r["month"] for r in rows]
    for k, t in enumerate(treatments or []):
        try:
            when = date.fromisoformat(str(t.get("date")))
        except ValueError:
            continue
        key = f"{when.year:04d}-{when.month:02d}"
        if key not in months:
            continue
        frac = (when.day - 1) / _calendar.monthrange(when.year, when.month)[1]
        x = left + (months.index(key) + frac) * band
        label = _e_short(t.get("treatment"), 22)
        ly = 10 + (k % 2) * 11
        out.append(f'<g class="treatment"><title>{_e(t.get("treatment"))} started {_e(t.get("date"))}</title>'
                   f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ly + 3}" y2="{top + ph}" stroke="#1f6fb2" '
                   f'stroke-width="1.5" stroke-dasharray="3 2"/>'
                   f'<path d="M{x - 4:.1f},{top - 6} L{x + 4:.1f},{top - 6} L{x:.1f},{top} Z" fill="#1f6fb2"/>'
                   f'<text x="{x + 3:.1f}" y="{ly}" fill="#1f6fb2">{label}</text></g>')
    return _svg(width, height, "Migraine days per month (bars), headache days (line), treatments (blue)", out)


# --------------------------------------------------------------------------------------- forest plot

_NAMES: dict[str, tuple[str, str]] = {}


def _names(name: str) -> tuple[str, str]:
    """A forest plot row's label escaped, whole and shortened (labels repeat from patient to patient)."""
    got = _NAMES.get(name)
    if got is None:
        got = (_e(name), _e_short(name, 44))
        if len(_NAMES) < 20000:
            _NAMES[name] = got
    return got


_VERDICT_RANKS = {v: k for k, v in enumerate(VERDICT_ORDER)}


def verdict_sort_key(f: dict) -> tuple:
    """Order of factors on the clinician page: by verdict, then rank, q-value, id and lag."""
    verdict = f.get("verdict")
    try:
        order = _VERDICT_RANKS.get(verdict, len(VERDICT_ORDER))
    except TypeError:  # unhashable: not a verdict
        order = len(VERDICT_ORDER)
    rank = f.get("rank")
    q = f.get("q_value")
    return (order, rank if rank is not None else 10**9, q if q is not None else 2.0, str(f.get("factor")),
            f.get("lag_days") or 0)


def _positive(v) -> bool:
    """A finite number above 0 (what can go on the log axis)."""
    if type(v) is float:
        return 0 < v < math.inf  # the common case, without the calls (same result)
    return isinstance(v, (int, float)) and v > 0 and math.isfinite(v)


_NO_ESTIMATE = _e("no estimate")
_ROW_H, _TOP = 17, 24


@lru_cache(maxsize=4096)
def _row_y(y: int) -> tuple[str, str, str]:
    """A forest plot row's texts' y, its whisker's y and its square's y, from the row's top ``y``."""
    cy = y + _ROW_H / 2
    return f"{cy + 4:.1f}", f"{cy:.1f}", f"{cy - 3.5:.1f}"


def forest_svg(factors: list[dict], *, width: int = 780, ordered: bool = False) -> Markup:
    """Every factor's odds ratio and 95% interval on a log axis, grouped and coloured by verdict.

    A vertical line marks OR = 1 and a grey band the no-association zone 0.8-1.25; whiskers running off
    the axis end in an arrow; a factor with no estimate says so. ``ordered``: ``factors`` are already in
    :func:`verdict_sort_key` order (the clinician page sorts them once for its table and this plot).
    """
    if not factors:
        return Markup("")
    rows = factors if ordered else sorted(factors, key=verdict_sort_key)
    # each row's estimate (odds ratio, low, high, and their logs) when all three can go on the axis
    log = math.log
    span = math.log(2.5)
    estimates = []
    for f in rows:
        get = f.get
        orr, lo, hi = get("odds_ratio"), get("ci_low"), get("ci_high")
        if _positive(orr) and _positive(lo) and _positive(hi):
            logs = (log(orr), log(lo), log(hi))
            span = max(span, abs(logs[0]), abs(logs[1]), abs(logs[2]))
            estimates.append((orr, lo, hi, logs))
        else:  # what can go on the axis still sets its range
            span = max([span, *(abs(log(v)) for v in (orr, lo, hi) if _positive(v))])
            estimates.append(None)
    span = min(span * 1.05, math.log(20))
    lo_v, hi_v = math.exp(-span), math.exp(span)
    log_lo, log_hi = math.log(lo_v), math.log(hi_v)
    label_w, text_w, row_h, top = 290, 150, _ROW_H, _TOP
    pw = width - label_w - text_w
    heads = len({f.get("verdict") for f in rows})
    height = top + (len(rows) + heads) * row_h + 26

    def xv(v: float, log_v: float | None = None) -> float:
        """x of ``v``, clamped to the axis; ``log_v``: its log, when taken already."""
        log = log_lo if v < lo_v else log_hi if v > hi_v else math.log(v) if log_v is None else log_v
        return label_w + pw * (log + span) / (2 * span)

    band = (f'<rect x="{xv(0.8):.1f}" y="{top - 4}" width="{xv(1.25) - xv(0.8):.1f}" '
            f'height="{height - top - 18}" fill="#f2f3f4"/>')
    out = [band]
    ticks = [t for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 10, 20) if lo_v <= t <= hi_v]
    for t in ticks:
        x = xv(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height - 22}" '
                   f'stroke="{"#333" if t == 1 else "#e0e0e0"}"/>'
                   f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#555">{_num(t)}</text>')
    out.append(f'<text x="{label_w + pw / 2:.1f}" y="12" text-anchor="middle" fill="#333">'
               f'odds ratio (log scale), 95% interval &#8592; fewer attacks | more attacks &#8594;</text>')
    value_text = f'<text x="{label_w + pw + 8}" y="'
    y = top
    current = None
    for f, estimate in zip(rows, estimates):
        get = f.get
        verdict = get("verdict")
        colour = VERDICT_COLOURS.get(verdict, "#555")
        if verdict != current:
            current = verdict
            out.append(f'<text x="4" y="{y + 12}" font-weight="bold" fill="{colour}">'
                       f'{_e(str(verdict).replace("_", " "))}</text>')
            y += row_h
        name = get("label") or f"{get('factor')} (lag {get('lag_days')})"
        cy_text, cy_1, square_y = _row_y(y)
        e_name, e_short = _names(name) if type(name) is str else (_e(name), _e_short(name, 44))
        out.append(f'<text x="12" y="{cy_text}" fill="#222"><title>{e_name}</title>{e_short}</text>')
        if estimate is not None:
            orr, lo, hi, (g_o, g_lo, g_hi) = estimate
            x1, x2, xc = xv(lo, g_lo), xv(hi, g_hi), xv(orr, g_o)
            arrows = ""
            if lo < lo_v:
                arrows += f'<path d="M{x1:.1f},{cy_1} l5,-3 l0,6 Z" fill="{colour}"/>'
            if hi > hi_v:
                arrows += f'<path d="M{x2:.1f},{cy_1} l-5,-3 l0,6 Z" fill="{colour}"/>'
            o, a, b = f"{orr:.2f}", f"{lo:.2f}", f"{hi:.2f}"
            out.append(f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{cy_1}" y2="{cy_1}" stroke="{colour}" '
                       f'stroke-width="1.5"/>{arrows}'
                       f'<rect x="{xc - 3.5:.1f}" y="{square_y}" width="7" height="7" fill="{colour}">'
                       f'<title>{e_name}: OR {o} ({a}-{b})</title></rect>')
            # numbers: nothing to escape, unless a subclass formats itself otherwise
            if not (type(orr) is float and type(lo) is float and type(hi) is float):
                o, a, b = _e(o), _e(a), _e(b)
            text = f"{o} ({a}&#8211;{b})"
        else:
            text = _NO_ESTIMATE
        out.append(f'{value_text}{cy_text}" fill="#333">{text}</text>')
        y += row_h
    return _svg(width, height, "Forest plot of every factor's odds ratio by verdict", out)


# ---------------------------------------------------------------------------------- calibration plot

def calibration_svg(bins: list[dict] | None, *, size: int = 260) -> Markup:
    """Predicted against observed attack rate per bin; points sized by days; the diagonal is perfect."""
    pts = [b for b in (bins or []) if b.get("predicted") is not None and b.get("observed") is not None]
    if not pts:
        return Markup("")
    top_v = max([b["predicted"] for b in pts] + [b["observed"] for b in pts] + [0.1])
    top_v = min(math.ceil(top_v * 10) / 10, 1.0)
    pad = 36
    plot = size - pad - 10

    def xy(p: float, o: float) -> tuple[float, float]:
        return pad + plot * p / top_v, 10 + plot - plot * o / top_v

    out = []
    for i in range(6):
        v = top_v * i / 5
        x, y = xy(v, v)
        out.append(f'<line x1="{pad}" x2="{pad + plot}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{v:.0%}</text>'
                   f'<text x="{x:.1f}" y="{size - 12}" text-anchor="middle" fill="#555">{v:.0%}</text>')
    (x0, y0), (x1, y1) = xy(0, 0), xy(top_v, top_v)
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>')
    nmax = max((b.get("n") or 1) for b in pts)
    for b in pts:
        x, y = xy(min(b["predicted"], top_v), min(b["observed"], top_v))
        r = 2.5 + 6 * math.sqrt((b.get("n") or 1) / nmax)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#1f6fb2" fill-opacity="0.7">'
                   f'<title>predicted {b["predicted"]:.0%}, observed {b["observed"]:.0%}, {b.get("n")} days'
                   f'</title></circle>')
    out.append(f'<text x="{pad + plot / 2:.1f}" y="{size}" text-anchor="middle" fill="#333">predicted</text>'
               f'<text x="10" y="{10 + plot / 2:.1f}" transform="rotate(-90 10 {10 + plot / 2:.1f})" '
               f'text-anchor="middle" fill="#333">observed</text>')
    return _svg(size, size + 4, "Calibration of the forecast: predicted against observed attack rate", out)
