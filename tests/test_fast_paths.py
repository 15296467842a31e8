"""The fast paths give exactly what the plain versions they replaced gave.

Each test keeps the plain version (a pandas group-by, the template's own loop, the uncached chart cell,
pandas' SQL reader, the whole-block design) as the reference and compares on inputs chosen for their edge
cases: missing keys, None, NaN, -0.0, numpy scalars, HTML in names, gaps of logging at a patient's first and
last day, every type of value SQLite may hold in a column of any affinity, infinite values and patients too
short to fit. Floats are compared bit for bit.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import sqlite3
import xml.etree.ElementTree as ET
from contextlib import closing
from datetime import date
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from trigger_watch import analysis, charts, config, features, models, reports, simulate, sleep, storage

# ------------------------------------------------------------------------------------------ charts


def _charts_reference(panel: pd.DataFrame) -> dict[str, dict]:
    """analysis.build_charts as it was: group-by and to_dict per patient."""
    p = panel[["patient_id", "date", "observed", "diary_kept", "onset", "in_episode", "migraine_day",
               "headache_day", "intensity"]].copy()
    status = np.select([p["onset"].to_numpy() == 1, p["in_episode"].to_numpy(dtype=bool),
                        p["observed"].to_numpy(dtype=bool)], ["onset", "attack", "free"], "missing")
    p["status"] = status
    p["day"] = p["date"].dt.strftime("%Y-%m-%d")
    p["month"] = p["date"].dt.strftime("%Y-%m")
    monthly = p.groupby(["patient_id", "month"], sort=True).agg(
        migraine_days=("migraine_day", "sum"), headache_days=("headache_day", "sum"),
        days_logged=("diary_kept", "sum")).reset_index()
    miss = status == "missing"
    pid = p["patient_id"].to_numpy()
    new_run = np.r_[True, (miss[1:] != miss[:-1]) | (pid[1:] != pid[:-1])]
    runs = pd.DataFrame({"patient_id": pid, "run": np.cumsum(new_run), "miss": miss, "day": p["day"].to_numpy()})
    runs = runs[runs["miss"]].groupby(["patient_id", "run"]).agg(start=("day", "first"), end=("day", "last"),
                                                                  days=("day", "size")).reset_index()
    runs = runs[runs["days"] >= 7]
    intensity = p["intensity"].astype(float).round(1)
    cal = pd.DataFrame({"patient_id": pid, "date": p["day"].to_numpy(), "status": status,
                        "intensity": intensity.where(intensity.notna(), None).to_numpy(dtype=object)})
    cal_groups = {k: g.drop(columns="patient_id").to_dict("records") for k, g in cal.groupby("patient_id")}
    mon_groups = {k: [analysis._clean(r) for r in g.drop(columns="patient_id").to_dict("records")]
                  for k, g in monthly.groupby("patient_id")}
    gap_groups = {k: [analysis._clean(r) for r in g[["start", "end", "days"]].to_dict("records")]
                  for k, g in runs.groupby("patient_id")}
    return {k: {"calendar": cal_groups[k], "monthly": mon_groups.get(k, []), "gaps": gap_groups.get(k, [])}
            for k in cal_groups}


def _panel() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    parts = []
    for pid, start, days, missing in (("b2", "2026-01-20", 75, [range(0, 9), range(30, 36), range(66, 75)]),
                                      ("a1", "2025-12-25", 40, [range(10, 17)]),
                                      ("c3", "2026-02-27", 12, [range(0, 12)])):
        n = days
        observed = np.ones(n, dtype=bool)
        for r in missing:
            observed[list(r)] = False
        onset = (rng.random(n) < 0.15).astype("int8") * observed
        in_episode = (onset.astype(bool) | (rng.random(n) < 0.1)) & observed
        intensity = np.where(in_episode, np.round(rng.uniform(0, 10, n), 2), 0.0)
        intensity[rng.random(n) < 0.1] = np.nan
        intensity[~observed] = np.nan
        parts.append(pd.DataFrame({
            "patient_id": pid, "date": pd.date_range(start, periods=n), "observed": observed,
            "diary_kept": observed & (rng.random(n) < 0.9), "onset": onset, "in_episode": in_episode,
            "migraine_day": in_episode & (rng.random(n) < 0.8), "headache_day": in_episode, "intensity": intensity}))
    panel = pd.concat(parts, ignore_index=True)
    panel["patient_id"] = panel["patient_id"].astype("str")
    return panel


def _same(a, b) -> bool:
    """Equal values of equal types, NaN equal to itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_build_charts_gives_what_the_group_by_gave():
    panel = _panel()
    got, want = analysis.build_charts(panel), _charts_reference(panel)
    assert list(got) == list(want) == ["a1", "b2", "c3"]
    assert _same(got, want)
    assert [g["days"] for g in got["b2"]["gaps"]] == [9, 9] and got["c3"]["gaps"][0]["days"] == 12
    assert analysis.build_charts(panel.iloc[:0]) == {}


def test_the_history_stores_the_charts_as_encoding_the_cleaned_charts_gave():
    panel = _panel()
    intensity = panel["intensity"].to_numpy(copy=True)
    intensity[[3, 4, 5, 6]] = [-0.0, 0.0, np.inf, -np.inf]  # told apart by sign; infinities are null
    panel["intensity"] = intensity
    for pid, chart in analysis.build_charts(panel).items():
        row = reports.history_row({"patient_id": pid, "generated_at": "2026-11-21T02:30:00Z"}, chart)
        stored = reports.unpack_json(row[6]).decode()
        assert _same(json.loads(stored), json.loads(reports._dump(reports._clean(chart))))
        if pid == "b2":
            assert '"intensity":-0.0}' in stored and '"intensity":0.0}' in stored
            assert stored.count('"intensity":null}') >= 2


# ---------------------------------------------------------------------------------- build_triggers


def test_records_give_what_replace_and_to_dict_gave():
    frame = pd.DataFrame({
        "factor": pd.Series(["a", None, "c"], dtype="str"),
        "lag_days": np.array([0, 1, 2]),
        "rank": pd.array([1, None, 3], dtype="Int64"),
        "odds_ratio": [1.234567891, np.nan, np.inf],
        "flag": [True, False, True],
        "maybe": pd.array([True, None, False], dtype="boolean"),
        "anything": pd.Series([None, pd.NA, np.float64(2.5)], dtype=object),
        "when": pd.to_datetime(["2026-01-02", None, "2026-03-04"]),
        "patient_id": ["p", "p", "p"],
    })
    for skip in (None, "patient_id", "not a column"):
        want = [analysis._clean({k: v for k, v in r.items() if k != skip})
                for r in frame.replace({np.nan: None}).to_dict("records")]
        assert _same(analysis._records(frame, skip=skip), want)
    assert analysis._records(frame.iloc[:0]) == []


def test_round4_floats_are_pythons_round_to_the_bit():
    """analysis.round4 rounds a column in numpy: the same doubles as round(v, 4), sign of zero included,
    also where the product v * 1e4 rounds across a half, past 2**52, for tiny and huge values."""
    rng = np.random.default_rng(7)
    k = rng.integers(-10**9, 10**9, 4000).astype(float)
    halves = (k + 0.5) / 1e4  # the doubles nearest to halves of the fourth decimal, and their neighbours
    values = np.concatenate([
        rng.normal(0, 1, 4000), rng.lognormal(0, 6, 4000), -rng.lognormal(0, 6, 2000),
        halves, np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf),
        [0.00015, 1.23455, 2.675, -2.675, 0.5, -0.5, 1e-4, 5e-5, -5e-5, 4.9999999e-5, -4.9999999e-5],
        [2.0**52 / 1e4, np.nextafter(2.0**52 / 1e4, 0), 2.0**52 / 1e4 + 0.5, 1e11, 1e15, 1e300, -1e300, 1.7e308],
        [0.0, -0.0, 1e-300, -1e-300, 5e-324, -5e-324, np.nan, np.inf, -np.inf],
    ])
    got = analysis.round4(values)
    want = [round(v, 4) if math.isfinite(v) else None for v in values.tolist()]
    assert len(got) == len(want)
    for g, w, v in zip(got, want, values.tolist()):
        if w is None:
            assert g is None, v
        else:
            assert type(g) is float and g == w and math.copysign(1, g) == math.copysign(1, w), (v, g, w)


# ------------------------------------------------------------------------------------------ reports

FACTORS = [
    {"factor": "alcohol_units", "label": "Alcohol", "lag_days": 1, "verdict": "trigger", "rank": 1,
     "odds_ratio": 2.4, "ci_low": 1.5, "ci_high": 3.9, "q_value": 0.01, "exposed_days": 31,
     "attacks_after_exposure": 14, "days_needed": None, "exposure": ">= 3 drinks"},
    {"factor": "custom:<script>x</script>", "label": 'he said "stop" & <b>', "verdict": "warning_sign",
     "exposure": "<i>yes</i>", "odds_ratio": float("nan"), "ci_low": -float("inf"), "q_value": np.float64(0.1234),
     "lag_days": np.int64(0), "exposed_days": True, "days_needed": 40.4},
    {"factor": None, "label": "", "verdict": None},
    {"label": None, "exposure": ""},
    {"factor": "x_y", "label": Markup("<b>safe</b>"), "verdict": "no_such_verdict", "rank": "7<",
     "days_needed": 3, "odds_ratio": -0.0},
    {},
]


def test_clinician_factor_rows_are_what_the_template_loop_writes():
    template = reports._HTML.get_template("clinician.html.j2")
    for factors in (FACTORS, FACTORS[:1], []):
        fast = reports.factor_table_rows(factors)
        assert fast is not None and fast.count("<tr>") == len(factors)
        kw = dict(t={"factors": factors}, charts={}, svg={"forest": "x"}, factors=factors,
                  verdicts=charts.VERDICT_ORDER, colours=charts.VERDICT_COLOURS)
        assert template.render(factor_rows=fast, **kw) == template.render(factor_rows=None, **kw)
    assert reports.factor_table_rows([{"factor": "a"}, ("not", "a", "dict")]) is None
    kw = dict(t={"factors": FACTORS}, charts={}, svg={"forest": "x"}, factors=FACTORS,
              verdicts=charts.VERDICT_ORDER, colours=charts.VERDICT_COLOURS)
    assert template.render(**kw) == template.render(factor_rows=reports.factor_table_rows(FACTORS), **kw)


FLAGS = [
    {"chronic_migraine": True, "medication_overuse": False, "details": ["x"], "trend": "stable",
     "Zeta": 1, "alpha_beta": 2.5, "days_logged_last_30": 27, "last_entry": None, "overuse_classes": [],
     "unknown_drugs": ["<b>pill</b>", 3, None, 1.5], "pair": ("a", True),
     "medication_days_last_30": {"triptans": 1, "Simple_analgesics": 2.25, "x<y": None, "ok": False},
     "empty": {}, "note": 'said "no" & <i>left</i>', "flag": True},
    {"chronic_migraine": False, "medication_overuse": None},
    {},
]


@pytest.mark.parametrize("flags", FLAGS)
def test_clinician_flag_rows_are_what_the_template_loop_writes(flags):
    template = reports._HTML.get_template("clinician.html.j2")
    kw = {"t": {"flags": flags}, "charts": {}, "svg": {}, "factors": [], "verdicts": charts.VERDICT_ORDER,
          "colours": charts.VERDICT_COLOURS, "flags_listed": reports._FLAGS_LISTED}
    fast = reports.flag_table_rows(flags)
    assert fast is not None and fast.count("<tr>") == len(set(flags) - set(reports._FLAGS_LISTED))
    assert template.render(flag_rows=fast, **kw) == template.render(flag_rows=None, **kw)
    assert reports.render_clinician_html({"flags": flags}, {}) == template.render(
        flag_rows=None, factor_rows=None, **kw | {"svg": reports._html_charts({"flags": flags}, {})})


@pytest.mark.parametrize("flags", [None, [("a", 1)], {1: "x"}, {"a": Markup("<b>")}, {"a": {2, 3}},
                                   {"a": [Markup("<b>")]}, {"a": {"b": [1]}}, {"a": {1: 2}},
                                   {"a": np.int64(3)}])
def test_flags_the_fast_rows_do_not_cover_go_to_the_template(flags):
    assert reports.flag_table_rows(flags) is None


def _forest_reference(factors: list[dict], *, width: int = 780) -> Markup:
    """charts.forest_svg as it was before its rows were written with fewer calls."""
    if not factors:
        return Markup("")
    rows = sorted(factors, key=charts.verdict_sort_key)
    finite = [v for f in rows for v in (f.get("ci_low"), f.get("ci_high"), f.get("odds_ratio"))
              if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
    span = max([abs(math.log(v)) for v in finite] + [math.log(2.5)])
    span = min(span * 1.05, math.log(20))
    lo_v, hi_v = math.exp(-span), math.exp(span)
    label_w, text_w, row_h, top = 290, 150, 17, 24
    pw = width - label_w - text_w
    heads = len({f.get("verdict") for f in rows})
    height = top + (len(rows) + heads) * row_h + 26

    def xv(v: float) -> float:
        v = min(max(v, lo_v), hi_v)
        return label_w + pw * (math.log(v) + span) / (2 * span)

    e = charts._e
    out = [(f'<rect x="{xv(0.8):.1f}" y="{top - 4}" width="{xv(1.25) - xv(0.8):.1f}" '
            f'height="{height - top - 18}" fill="#f2f3f4"/>')]
    for t in [t for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 10, 20) if lo_v <= t <= hi_v]:
        x = xv(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height - 22}" '
                   f'stroke="{"#333" if t == 1 else "#e0e0e0"}"/>'
                   f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#555">'
                   f'{charts._num(t)}</text>')
    out.append(f'<text x="{label_w + pw / 2:.1f}" y="12" text-anchor="middle" fill="#333">'
               f'odds ratio (log scale), 95% interval &#8592; fewer attacks | more attacks &#8594;</text>')
    y, current = top, None
    for f in rows:
        verdict = f.get("verdict")
        colour = charts.VERDICT_COLOURS.get(verdict, "#555")
        if verdict != current:
            current = verdict
            out.append(f'<text x="4" y="{y + 12}" font-weight="bold" fill="{colour}">'
                       f'{e(str(verdict).replace("_", " "))}</text>')
            y += row_h
        name = f.get("label") or f"{f.get('factor')} (lag {f.get('lag_days')})"
        cy = y + row_h / 2
        out.append(f'<text x="12" y="{cy + 4:.1f}" fill="#222"><title>{e(name)}</title>'
                   f'{e(name) if len(name) <= 44 else e(name[:43]) + "&#8230;"}</text>')
        orr, lo, hi = f.get("odds_ratio"), f.get("ci_low"), f.get("ci_high")
        if all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in (orr, lo, hi)):
            x1, x2, xc = xv(lo), xv(hi), xv(orr)
            out.append(f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{colour}" '
                       f'stroke-width="1.5"/>')
            if lo < lo_v:
                out.append(f'<path d="M{x1:.1f},{cy:.1f} l5,-3 l0,6 Z" fill="{colour}"/>')
            if hi > hi_v:
                out.append(f'<path d="M{x2:.1f},{cy:.1f} l-5,-3 l0,6 Z" fill="{colour}"/>')
            out.append(f'<rect x="{xc - 3.5:.1f}" y="{cy - 3.5:.1f}" width="7" height="7" fill="{colour}">'
                       f'<title>{e(name)}: OR {orr:.2f} ({lo:.2f}-{hi:.2f})</title></rect>')
            text = f"{e(f'{orr:.2f}')} ({e(f'{lo:.2f}')}&#8211;{e(f'{hi:.2f}')})"
        else:
            text = e("no estimate")
        out.append(f'<text x="{label_w + pw + 8}" y="{cy + 4:.1f}" fill="#333">{text}</text>')
        y += row_h
    return charts._svg(width, height, "Forest plot of every factor's odds ratio by verdict", out)


class _Loud(float):
    """A float that formats itself with HTML in it: the forest plot must escape its text."""

    def __format__(self, spec):
        return "<" + float.__format__(self, spec) + ">"


FOREST = FACTORS[:2] + [
    {"factor": "a", "verdict": "trigger", "rank": 2, "odds_ratio": 30.0, "ci_low": 0.01, "ci_high": 900.0},
    {"factor": "b", "verdict": "protective", "odds_ratio": 1, "ci_low": True, "ci_high": 3, "label": "ints"},
    {"factor": "c", "verdict": "protective", "odds_ratio": np.float64(0.5), "ci_low": 0.25, "ci_high": 0.9},
    {"factor": "d", "verdict": "no_association", "odds_ratio": 1.0, "ci_low": 0.0, "ci_high": 2.0},
    {"factor": "e", "verdict": "no_association", "odds_ratio": 1.0, "ci_low": -1.0, "ci_high": float("inf")},
    {"factor": "f", "verdict": "weird", "odds_ratio": "1.2", "ci_low": 0.5, "ci_high": 2.0, "lag_days": 3},
    {"factor": "g", "verdict": None, "odds_ratio": _Loud(1.5), "ci_low": _Loud(1.1), "ci_high": _Loud(2.2)},
    {"factor": "h", "verdict": "trigger", "rank": 1, "odds_ratio": 2.0, "ci_low": 1.0, "ci_high": 4.0,
     "label": "x" * 60},
]


@pytest.mark.parametrize("factors", [FOREST, FOREST[2:3], FOREST[5:6], [{}]])
def test_the_forest_plot_is_unchanged(factors):
    assert charts.forest_svg(factors) == _forest_reference(factors)
    assert charts.forest_svg(factors, width=500) == _forest_reference(factors, width=500)


def test_triggers_json_and_its_history_copy_come_from_the_same_pieces():
    def file_reference(obj) -> str:  # reports.to_json as it was, with the standard encoder
        obj = reports._clean(obj)
        dump = reports._JSON_STRICT.encode

        def block(value, pad):
            if isinstance(value, list) and value:
                return "[\n" + ",\n".join(pad + "  " + dump(v) for v in value) + "\n" + pad + "]"
            return dump(value)

        if isinstance(obj, dict):
            body = ",\n".join(f"  {dump(k)}: {block(v, '  ')}" for k, v in obj.items())
            return "{\n" + body + "\n}\n" if obj else "{}\n"
        return block(obj, "") + "\n"

    def pieces(text: str) -> list:
        """Each line of the file: its key and its value, decoded (orjson writes ``[1,2]`` where the standard
        encoder writes ``[1, 2]``, ``1e-05`` as ``0.00001``), or the bracket it is."""
        out = []
        for line in text.rstrip("\n").split("\n"):
            body = line.strip().removesuffix(",")
            key, sep, rest = body.partition('": ') if body.startswith('"') else ("", "", body)
            value = rest if sep else body
            out.append((key, value if value in "{}[]" else json.loads(value)))
        return out

    doc = {"patient_id": "p<1>", "text": 'ü "q" \\ \n\u2028', "factors": FACTORS, "empty": [], "none": None,
           "tuple": (1, np.int64(2)), 3: {"nested": [float("nan"), {"x": np.float32(0.5)}]},
           "nan": float("nan"), "when": date(2026, 1, 2), "flags": {}, "m": Markup("<b>"), "small": 1e-05,
           "big": 2**70, "loud": _Loud(1.5), "inf": [float("-inf"), np.float64("inf"), -0.0]}
    for value in (doc, {}, {"a": [1]}, [doc, 1], [], "x", 1.5, None, 2**70):
        text = reports.to_json(value)
        assert text.count("\n") == file_reference(value).count("\n")
        assert _same(pieces(text), pieces(file_reference(value)))
    text, line = reports._json_texts(doc)
    assert text.decode() == reports.to_json(doc)
    standard = json.loads(reports._dump(reports._clean(doc)))
    assert _same(json.loads(line), standard) and "\n" not in line.decode()
    row = reports.history_row(doc, None, triggers_json=line)
    assert row[:7] == reports.history_row(doc, None)[:7] and reports.unpack_json(row[5]) == line
    del doc["big"], doc[3]  # orjson's path (an integer past 64 bits or a key not text goes the standard way)
    assert not reports._json_texts(doc)[1].startswith(b'{"patient_id": ')
    assert _same(json.loads(reports._json_texts(doc)[1]), json.loads(reports._dump(reports._clean(doc))))
    assert reports._json_texts({}) == (b"{}\n", b"{}")


def test_patient_pages_word_only_the_factors_they_show():
    doc = {"factors": [{"factor": f"{v}{k}", "verdict": v, "rank": k, "days_needed": k, "exposed_days": 10,
                        "attacks_after_exposure": 2} for k in range(12)
                       for v in ("trigger", "insufficient_data", "warning_sign")]}
    got = reports.patient_context(doc, None)
    groups = reports.patient_factors(doc["factors"])
    said = {v: [{"name": reports.factor_name(f), "text": reports.factor_sentence(f), "f": f}
                for f in groups[v]] for v in groups}
    assert got["triggers"] == said["trigger"][:5] and got["more_triggers"] == 7
    assert got["unsure"] == said["insufficient_data"][:6] and got["more_unsure"] == reports._more(6)
    assert got["warning_signs"] == said["warning_sign"] and len(got["warning_signs"]) == 12


def test_cleaning_for_json_is_unchanged():
    class D(dict):
        pass

    value = {"a": [1, 2.5, float("nan"), (np.int64(3), np.float64(np.inf))], 1: D(x=np.bool_(True)),
             "s": Markup("m"), "n": None, "d": date(2026, 1, 2), "f": np.float32(0.5), "t": True}
    assert _same(reports._clean(value), reports._clean_other(value))
    assert reports._clean(value) == {"a": [1, 2.5, None, [3, None]], "1": {"x": True}, "s": "m", "n": None,
                                     "d": "2026-01-02", "f": 0.5, "t": True}


def _cell_reference(y: int, m: int, dom: int, d: dict, left=62, top=16, row=0, cell=15) -> dict:
    """One calendar cell as calendar_svg drew it when each cell carried its own attributes: its tooltip,
    place, size, fill and outline."""
    yy = top + row * cell
    status = d.get("status")
    if status not in charts.CAL_COLOURS:
        status = "missing"
    fill = charts.intensity_colour(d.get("intensity"), status) if status in ("onset", "attack") \
        else charts.CAL_COLOURS.get(status, "#ffffff")
    stroke, stroke_width = ("#222", 1.5) if status == "onset" else ("#ccc", 0.5)
    tip = f'{y:04d}-{m:02d}-{dom:02d}: {status}'
    if d.get("intensity") is not None and status in ("onset", "attack"):
        tip += f", intensity {charts._num(float(d['intensity']))}"
    return {"title": tip, "x": left + (dom - 1) * cell + 0.5, "y": yy + 0.5, "width": cell - 2.0,
            "height": cell - 2.0, "fill": fill, "stroke": stroke, "stroke-width": stroke_width}


_SVG = "{http://www.w3.org/2000/svg}"
_LOOK = ("fill", "stroke", "stroke-width")


def drawn_rects(svg: str) -> list[dict]:
    """Every ``<rect>`` of an SVG as drawn: its place with its groups' ``translate`` added, its size, and
    its fill and outline, its own or inherited from its groups (SVG's defaults where none is given)."""
    out = []

    def walk(element, look: dict, dx: float, dy: float) -> None:
        for child in element:
            own = {k: child.get(k) for k in _LOOK if child.get(k) is not None}
            if child.tag == _SVG + "g":
                move = re.fullmatch(r"translate\(([-\d.]+)[ ,]+([-\d.]+)\)", child.get("transform", "translate(0 0)"))
                assert move, child.get("transform")
                walk(child, {**look, **own}, dx + float(move[1]), dy + float(move[2]))
            elif child.tag == _SVG + "rect":
                title = child.find(_SVG + "title")
                drawn = {**look, **own}
                out.append({"title": None if title is None else title.text,
                            "x": dx + float(child.get("x", 0)), "y": dy + float(child.get("y", 0)),
                            "width": float(child.get("width")), "height": float(child.get("height")),
                            "fill": drawn.get("fill", "black"), "stroke": drawn.get("stroke", "none"),
                            "stroke-width": float(drawn.get("stroke-width", 1))})

    root = ET.fromstring(str(svg))
    assert root.find(f".//{_SVG}style") is None and root.find(f".//{_SVG}script") is None
    walk(root, {}, 0.0, 0.0)
    return out


@pytest.mark.parametrize("cell", [15, 9])
def test_calendar_cells_look_as_they_did(cell):
    kinds = [("onset", 7.0), ("onset", 7), ("attack", -0.0), ("attack", 0.0), ("attack", 0), ("attack", None),
             ("attack", float("nan")), ("free", 0.0), ("missing", None), ("weird", 3.0), (None, 2.0),
             ("onset", np.float64(4.5)), ("attack", 10.0), ("attack", 12.5), ("missing", float("nan")),
             ("free", None), ("free", -0.0)]
    days = [{"date": f"2026-03-{k + 1:02d}", "status": s, "intensity": i} for k, (s, i) in enumerate(kinds)]
    days += [{"date": "2026-05-02", "status": "free", "intensity": 0.0}, {"date": "2026-01-31"}]  # a month between
    for _ in range(2):  # drawn, then from the cells kept
        drawn = drawn_rects(charts.calendar_svg(days, cell=cell))
        want = [_cell_reference(2026, 3, k + 1, d, cell=cell, row=2) for k, d in enumerate(days[:-2])]
        want += [_cell_reference(2026, 5, 2, days[-2], cell=cell, row=4),
                 _cell_reference(2026, 1, 31, days[-1], cell=cell, row=0)]
        assert sorted(drawn, key=lambda r: r["title"]) == sorted(want, key=lambda r: r["title"])


def test_calendar_legend_shows_the_colours_the_calendar_draws():
    statuses = ("free", "missing", "attack", "onset")
    days = [{"date": f"2026-03-{k + 1:02d}", "status": s, "intensity": None} for k, s in enumerate(statuses)]
    cells = {r["title"].split(": ")[1]: r for r in drawn_rects(charts.calendar_svg(days))}
    legend = drawn_rects(charts.calendar_legend())
    assert [r["fill"] for r in legend] == [cells[s]["fill"] for s in statuses]
    assert cells["free"]["fill"] != cells["missing"]["fill"] != cells["attack"]["fill"] != cells["onset"]["fill"]
    assert cells["missing"]["fill"] == "#ffffff"  # blank
    # onsets outlined, darker and thicker than the other days, as the legend's says
    assert cells["onset"]["stroke"] == legend[3]["stroke"] == "#222"
    assert cells["onset"]["stroke-width"] > max(cells[s]["stroke-width"] for s in statuses[:3])
    # attack days darker the worse they were
    shades = [drawn_rects(charts.calendar_svg([{"date": "2026-03-01", "status": "attack", "intensity": i}]))[0]
              ["fill"] for i in (2, 5, 9)]
    assert [sum(int(f[k:k + 2], 16) for k in (1, 3, 5)) for f in shades] == sorted(
        (sum(int(f[k:k + 2], 16) for k in (1, 3, 5)) for f in shades), reverse=True)


# ------------------------------------------------------------------------------------------ ranking

RANKING_ROWS = [
    {"rank": 1, "patient_id": "p<1>&\"x\"", "clinician_id": "dr <b>a</b>", "risk_next_day": 0.3124,
     "baseline_probability": 0.1, "risk_band": "high", "migraine_days_last_30": 16, "migraine_days_prev_90_per_30": 12.5,
     "trend": "worse", "chronic_migraine": True, "medication_overuse": True,
     "top_triggers": ["pressure_drop", "food:<cheese>"], "days_logged_last_30": 30, "last_entry": "2026-11-20",
     "latest_treatment_response": "responder <50%>", "reasons": ["risk <high>", "chronic & overuse"]},
    {"rank": 2, "patient_id": "p 2/ü", "clinician_id": None, "risk_next_day": None, "risk_band": None,
     "migraine_days_last_30": None, "migraine_days_prev_90_per_30": None, "trend": None,
     "chronic_migraine": False, "medication_overuse": None, "top_triggers": None, "days_logged_last_30": 0,
     "last_entry": None, "latest_treatment_response": None, "reasons": []},
    {"rank": 3, "patient_id": "p3", "clinician_id": "", "risk_next_day": 0.0, "risk_band": "low",
     "migraine_days_last_30": np.int64(3), "migraine_days_prev_90_per_30": float("nan"), "trend": "stable",
     "chronic_migraine": np.bool_(False), "medication_overuse": False, "top_triggers": [],
     "days_logged_last_30": 2.0, "last_entry": "", "latest_treatment_response": {"treatment": "x"},
     "reasons": None},
    {"rank": 4, "patient_id": "p4", "clinician_id": "dr_b", "risk_next_day": 0.004, "risk_band": "moderate",
     "migraine_days_last_30": 7, "migraine_days_prev_90_per_30": 6, "trend": "better",
     "chronic_migraine": 1, "medication_overuse": 0, "top_triggers": ["stress"], "days_logged_last_30": 29,
     "last_entry": "2026-11-19", "latest_treatment_response": "", "reasons": ["one"]},
]


def test_ranking_rows_are_what_the_template_loop_writes():
    rows = [{**dict.fromkeys(reports.CSV_COLUMNS), **r} for r in RANKING_ROWS]
    fast = reports.ranking_table_rows(rows)
    assert fast is not None
    template = reports._HTML.get_template("ranking.html.j2")
    assert template.render(rows=rows, table_rows=fast) == template.render(rows=rows, table_rows=None)
    # a row that is not a plain dict with every key: the template writes the table
    assert reports.ranking_table_rows(rows + [{"rank": 5}]) is None
    assert reports.render_ranking_html(RANKING_ROWS) == template.render(rows=rows, table_rows=None)


def summary_frame(n: int, shift: int) -> pd.DataFrame:
    """A small summary frame of the kinds of columns a real one has (text, nullable ints, floats, ints)."""
    return pd.DataFrame({"factor": pd.array([f"f{j}" for j in range(n)], dtype="str"),
                         "rank": pd.array([pd.NA if j % 2 else j + shift for j in range(n)], dtype="Int64"),
                         "odds_ratio": np.linspace(0.5, 2, n) + shift, "exposed_days": np.arange(n) * shift})


def test_text_columns_are_what_a_frame_makes_of_the_strings():
    """models._text_column gives the column (dtype and values) a frame makes of texts[codes] str by str."""
    from trigger_watch import models

    texts = np.array(["insufficient_data", ">= 6.8/10", "Käse (yes/no) the day before", ""], dtype=object)
    codes = np.random.default_rng(3).integers(0, len(texts), 500)
    frame = pd.DataFrame({"made": models._text_column(texts, codes), "inferred": texts[codes]})
    assert frame["made"].dtype == frame["inferred"].dtype
    assert frame["made"].tolist() == frame["inferred"].tolist()


def test_fitted_and_unfitted_patients_summaries_have_the_same_columns_and_dtypes():
    """A chunk's summaries are taken from the fit's frame in one piece only when their dtypes are the
    frame's (analysis._pack_summaries): a patient with nothing to fit gets a summary of the same dtypes."""
    from trigger_watch import config, models, simulate

    c = simulate.simulate_cohort(6, 200, 5, premonitory=1.0)
    panel = simulate.panel_from_cohort(c)
    last = panel["patient_id"].iloc[-1]
    panel.loc[panel["patient_id"] == last, "at_risk"] = False  # nothing to fit for this one
    res = models.analyse(panel, config.defaults(), store=False)
    fitted = [a.summary for a in res.values() if a.status == "ok"]
    empty = res[last].summary
    assert fitted and res[last].status != "ok"
    for s in fitted:
        assert list(s.columns) == list(empty.columns) and s.dtypes.equals(empty.dtypes)
    assert set(fitted[0]["verdict"]) <= set(models._VERDICTS)


def test_summaries_travel_to_the_report_workers_as_one_frame_and_give_each_patient_their_factors():
    """A chunk's summaries go to its worker as one frame (analysis._pack_summaries); the worker turns it
    into records at once (analysis._factor_records) and each patient gets the records of their own summary,
    what build_triggers made of it alone. A summary of other dtypes, or none, travels as it was."""
    import dataclasses
    import pickle

    from trigger_watch import models

    odd = summary_frame(3, 9).astype({"exposed_days": float})  # float counts: must not turn the others' into floats
    results = [models.PatientAnalysis("ok", {}, summary_frame(4, 1), {}), None,
               models.PatientAnalysis("ok", {}, odd, {}), models.PatientAnalysis("ok", {}, summary_frame(2, 5), {})]
    items = [(f"p{i}", {"result": r, "as_of": date(2026, 1, 1)}) for i, r in enumerate(results)]
    packed_items, packed = analysis._pack_summaries(items)
    assert packed[0] is not None and len(packed[0]) == 6  # the two of the first kind in one frame
    sent_items, sent = pickle.loads(pickle.dumps((packed_items, packed)))
    factors = analysis._factor_records(sent_items, sent)
    assert [p for p, _ in sent_items] == [p for p, _ in items] and len(factors) == len(items)
    for (_, before), (_, after), made in zip(items, sent_items, factors):
        result = before["result"]
        if result is None:
            assert after["result"] is None and made is None
        elif result.summary is odd:  # travelled with its result, made into records by build_triggers
            pd.testing.assert_frame_equal(after["result"].summary, odd)
            assert made is None
        else:
            assert after["result"].summary is None
            assert dataclasses.replace(after["result"], summary=None) == dataclasses.replace(result, summary=None)
            assert _same(made, analysis._records(result.summary))
            doc = analysis.build_triggers("p", result, as_of=date(2026, 1, 1), generated_at="t")
            assert _same(analysis.build_triggers("p", after["result"], as_of=date(2026, 1, 1), generated_at="t",
                                                 factors=made), doc)


def test_summaries_sliced_from_the_fits_frame_are_taken_from_it_as_the_joined_slices_were(monkeypatch):
    """The fit's summaries are slices of one frame (models.Analyses.summaries): a chunk's are taken out of it
    at once, in the chunk's order, whatever that order, mixed with summaries from elsewhere (a patient's
    copy, a frame of other dtypes, none); the worker gets what joining them one by one gave."""

    fitted = {f"p{i}": summary_frame(3, i) for i in range(5)}
    source = models._Summaries()
    source.body = pd.concat(fitted.values(), ignore_index=True)
    source.rows = {p: (3 * i, 3 * i + 3) for i, p in enumerate(fitted)}
    for p, (start, stop) in source.rows.items():
        source[p] = models.summary_rows(source.body, start, stop)
    of = {**{p: source[p] for p in fitted}, "copy": source["p2"].copy(), "none": None, "other": summary_frame(4, 9),
          "odd": summary_frame(2, 7).astype({"exposed_days": float})}
    chunks = [["p3", "p1", "p2"],  # all of them from the fit's frame, not in its order
              ["p4", "copy", "p0", "odd", "none", "other"]]
    found = []
    span = source.span
    monkeypatch.setattr(source, "span", lambda *a: found.append(span(*a)) or found[-1])
    taken = []
    for chunk in chunks:
        items = [(p, {"result": None if of[p] is None else models.PatientAnalysis("ok", {}, of[p], {})})
                 for p in chunk]
        fast = analysis._pack_summaries(items, source)
        slow = analysis._pack_summaries(items)
        assert fast[1][1] == slow[1][1]  # rows per item
        pd.testing.assert_frame_equal(fast[1][0], slow[1][0], check_exact=True)
        sent_items, sent = pickle.loads(pickle.dumps(fast))
        assert _same(analysis._factor_records(sent_items, sent), analysis._factor_records(*slow))
        taken.append(sum(r is not None for r in found))
        found.clear()
    assert taken == [3, 2]  # the copy is not the fit's slice, though its rows are the same


def test_the_spike_and_slab_split_by_columns_is_the_whole_fit():
    """models._spike_slab_by_columns fits column groups (on the workers when there are any): each column's
    prior is its own, so the pieces put together are the whole cohort's EM, with or without a starting
    point, and the same bits whether the groups ran here or elsewhere."""
    from trigger_watch import models

    rng = np.random.default_rng(11)
    P, J = 7000, 31
    b = rng.normal(0.1, 0.6, (P, J)) * (rng.random((P, J)) < 0.3)
    s, ok = rng.uniform(0.2, 1.2, (P, J)), rng.random((P, J)) > 0.2
    sent: list[int] = []

    def workers(fn, jobs):
        jobs = list(jobs)
        sent.append(len(jobs))
        return [fn(pickle.loads(pickle.dumps(job))) for job in jobs]

    for n_iter, init in ((40, None), (10, models._fit_spike_slab(b, s, ok, n_iter=40)[:3])):
        whole = models._fit_spike_slab(b, s, ok, n_iter=n_iter, init=init)[:3]
        here = models._spike_slab_by_columns(b, s, ok, n_iter, init, parts=3)
        there = models._spike_slab_by_columns(b, s, ok, n_iter, init, workers, parts=3)
        for x, y, z in zip(whole, here, there):
            np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-14)
            assert np.array_equal(y, z)
    assert sent == [3, 3]
    assert not np.allclose(here[0], models._fit_spike_slab(b, s, ok, n_iter=40)[0])  # the start was used


# ------------------------------------------------------------------------------------ reading tables


def _read_reference(conn, table: str, columns: list[str], where: str = "1 = 1", params=()) -> pd.DataFrame:
    """What storage.read_table stands in for: pandas' own reader."""
    cols = ", ".join(f'"{c}"' for c in columns)
    return pd.read_sql_query(f"SELECT {cols} FROM {table} WHERE {where}", conn, params=list(params))


def _assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal frames down to the dtypes, the index and which missing value sits in an object column."""
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_index_type=True, check_column_type=True)
    assert list(got.dtypes) == list(want.dtypes) and got.columns.dtype == want.columns.dtype
    for c in range(got.shape[1]):
        if got.dtypes.iloc[c] == object:  # assert_frame_equal takes None and NaN for the same
            assert [type(v) for v in got.iloc[:, c]] == [type(v) for v in want.iloc[:, c]]


#: Columns of every affinity, some declared the odd ways datatype3.html lists (FLOATING POINT has INTEGER
#: affinity, STRING NUMERIC, no type BLOB).
DECLARED = {"i": "INTEGER", "n": "NUMERIC", "r": "REAL", "t": "TEXT", "v": "VARCHAR(20)",
            "d": "DOUBLE PRECISION", "fp": "FLOATING POINT", "s": "STRING", "b": "BLOB", "x": ""}
_TEXT = st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["", "a,b", '"quoted"', "it's", "line\nbreak", "Grüße 🙂", "1", "2.5", " 3 ", "1e3", "-0", "Inf", "NaN"])
_FLOAT = st.floats() | st.sampled_from([0.0, -0.0, 2.0, 2.5, 1e20, 2.0**53, 2.0**53 + 2, 2.0**63, 9.3e18,
                                        5e-324, float("inf"), -float("inf")])
_INT = st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, -2**63])
_VALUES = {"none": st.none(), "int": _INT, "small int": st.integers(-3, 3), "float": _FLOAT, "text": _TEXT,
           "blob": st.binary(max_size=4), "mixed": st.none() | _INT | _FLOAT | _TEXT | st.binary(max_size=4)}


@st.composite
def _tables(draw) -> list[tuple]:
    """Rows for DECLARED: each column draws its values from one family, with or without NULLs among them."""
    n = draw(st.integers(0, 12))
    columns = []
    for _ in DECLARED:
        values = _VALUES[draw(st.sampled_from(sorted(_VALUES)))]
        if draw(st.booleans()):
            values = st.none() | values
        columns.append(draw(st.lists(values, min_size=n, max_size=n)))
    return list(zip(*columns))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_read_table_gives_what_pandas_read(rows):
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute(f"CREATE TABLE t ({', '.join(f'{c} {kind}' for c, kind in DECLARED.items())})")
        conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(DECLARED))})", rows)
        for columns, where in ((list(DECLARED), "1 = 1"), (["t", "r", "i", "n", "fp", "s"], "rowid % 2 = 0"),
                               (["i", "t"], "rowid > ?"), (["r"], "0")):
            params = [3] if "?" in where else []
            _assert_same_frame(storage.read_table(conn, "t", columns, where, params),
                               _read_reference(conn, "t", columns, where, params))


def test_read_table_on_the_schema_and_its_odd_values(db):
    """The stored tables with what the importers never write but SQLite keeps: text and blobs in numeric
    columns, blobs in text columns, whole floats beyond int64 in integer columns, integers past float64."""
    conn = db.conn
    conn.execute("INSERT INTO patients (patient_id, timezone, latitude, birth_year) VALUES "
                 "('a', 'Europe/Vienna', 48.2, 1980), ('b', NULL, 1, NULL), ('c', 'UTC', NULL, 1999)")
    conn.executemany("INSERT INTO diary (patient_id, date, stress, menstruation, headache, foods, custom) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [("a", "2026-01-01", 3, 1, 0, "red_wine;cheese", '{"travel": 1}'),
                      ("a", "2026-01-02", 2.5, None, 1, 'it\'s "x", 🙂', None),
                      ("b", "2026-01-01", None, 0, 1, None, None)])
    conn.commit()
    cases = [("patients", features.PATIENT_COLUMNS, "1 = 1", []),
             ("diary", features.DIARY_COLUMNS, "date <= ?", ["2026-01-01"]),
             ("diary", features.DIARY_COLUMNS, "patient_id = ?", ["a"]),
             ("diary", features.DIARY_COLUMNS, "date > ?", ["2027-01-01"]),
             ("attacks", features.ATTACK_COLUMNS, "1 = 1", [])]
    odd = [("UPDATE diary SET stress = 'lots' WHERE date = '2026-01-02'", "text in a REAL column"),
           ("UPDATE diary SET headache = 2.5 WHERE patient_id = 'b'", "a float in an INTEGER column"),
           ("UPDATE diary SET headache = 1e20 WHERE patient_id = 'b'", "a whole float beyond int64"),
           ("UPDATE diary SET headache = 9007199254740993 WHERE patient_id = 'b'", "an integer past float64"),
           ("UPDATE patients SET birth_year = x'00' WHERE patient_id = 'a'", "a blob in an INTEGER column"),
           ("UPDATE diary SET foods = x'616263' WHERE date = '2026-01-01'", "a blob in a TEXT column"),
           ("UPDATE patients SET clinician_id = x'ff' WHERE patient_id = 'c'", "a blob that is not UTF-8")]
    for sql, what in [(None, "as imported")] + odd:
        if sql:
            conn.execute(sql)
        for table, columns, where, params in cases:
            want = _read_reference(conn, table, columns, where, params)
            _assert_same_frame(storage.read_table(conn, table, columns, where, params), want)


def test_read_table_dtypes_follow_the_values_not_the_declared_types(db):
    db.conn.executemany("INSERT INTO diary (patient_id, date, headache, menstruation) VALUES (?, ?, ?, ?)",
                        [("a", "2026-01-01", 1, None), ("a", "2026-01-02", 0, None)])
    got = storage.read_table(db.conn, "diary", ["patient_id", "headache", "menstruation", "stress"])
    assert [str(t) for t in got.dtypes] == ["str", "int64", "object", "object"]
    assert got["menstruation"].tolist() == [None, None]


def _inputs_reference(db, patient_ids, as_of) -> dict[str, pd.DataFrame]:
    """The five queries of features.load_inputs as it was, each through pandas' reader."""
    conn = db.conn
    cut = as_of.isoformat()
    who, params = features._who(patient_ids)

    def read(sql, extra):
        return pd.read_sql_query(sql, conn, params=params + extra)

    return {
        "patients": read(f"SELECT {', '.join(features.PATIENT_COLUMNS)} FROM patients WHERE {who}", []),
        "diary": read(f"SELECT {', '.join(features.DIARY_COLUMNS)} FROM diary WHERE {who} AND date <= ?",
                      [cut]),
        "diary_custom": read(
            "SELECT d.patient_id, d.date, j.key AS factor, CAST(j.value AS REAL) AS value FROM (SELECT "
            f"patient_id, date, custom FROM diary WHERE {who} AND custom IS NOT NULL AND date <= ?) d, "
            "json_each(d.custom) j WHERE j.type IN ('integer', 'real', 'true', 'false')", [cut]),
        "attacks": read(f'SELECT {", ".join(chr(34) + c + chr(34) for c in features.ATTACK_COLUMNS)} '
                        f"FROM attacks WHERE {who} AND substr(coalesce(start_local, start), 1, 10) <= ?",
                        [cut]),
        "treatments": read(f"SELECT {', '.join(features.TREATMENT_COLUMNS)} FROM treatments WHERE {who} "
                           "AND date <= ?", [cut]),
    }


def test_load_inputs_reads_what_pandas_read(db):
    conn = db.conn
    conn.executemany("INSERT INTO patients (patient_id, timezone, latitude, longitude, birth_year) "
                     "VALUES (?, ?, ?, ?, ?)",
                     [("a", "UTC", 48.2, 16.4, 1980), ("b", None, None, None, None)])
    conn.executemany(
        "INSERT INTO diary (patient_id, date, stress, caffeine_mg, headache, headache_intensity, foods, "
        "custom) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [("a", f"2026-01-0{i}", i, 95 * i, i % 2, None if i % 2 else 7.5, "cheese" if i == 2 else None,
          json.dumps({"travel": i % 2, "mood": "ok", "late": i == 3, "dose": 2.5}) if i in (2, 3) else None)
         for i in range(1, 6)] + [("b", "2026-01-02", None, None, 0, None, None, "{}")])
    conn.execute('INSERT INTO attacks (patient_id, start, "end", start_local, intensity, aura, medications) '
                 "VALUES ('a', '2026-01-03T05:00:00Z', NULL, '2026-01-03T06:00:00', 7, 1, 'sumatriptan:50')")
    conn.execute("INSERT INTO treatments (patient_id, date, treatment, dose_mg) "
                 "VALUES ('a', '2026-01-01', 'erenumab', 70)")
    conn.commit()
    for ids, as_of in ((["a", "b"], date(2026, 1, 5)), (["a"], date(2026, 1, 1)), (["b"], date(2026, 1, 5)),
                       (None, date(2026, 1, 5)), (["nobody"], date(2026, 1, 5))):
        got = features.load_inputs(db, ids, as_of)
        for name, want in _inputs_reference(db, ids, as_of).items():
            _assert_same_frame(getattr(got, name), want)


def _periods_reference(db, patient_ids, as_of, with_rowid=False) -> dict[str, np.ndarray]:
    """sleep._read_periods as it was: np.array over the fetched rows."""
    where, params = [], []
    if patient_ids is not None:
        where.append("s.patient_id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(dict.fromkeys(patient_ids))))
    if as_of is not None:
        where.append("s.local_date <= ?")
        params.append(pd.Timestamp(as_of).strftime("%Y-%m-%d"))
    sql = sleep._PERIOD_SQL.format(extra=", s.rowid, s.is_nap" if with_rowid else "")
    if where:
        sql += " WHERE " + " AND ".join(where)
    names = ["patient_id", "source", *sleep._NUMERIC] + (["rowid", "is_nap"] if with_rowid else [])
    rows = db.conn.execute(sql, params).fetchall()
    arr = np.array(rows, dtype=object).reshape(len(rows), len(names))
    numbers = arr[:, 2:].astype(float)
    out = {"patient_id": arr[:, 0], "source": arr[:, 1]}
    out.update((n, numbers[:, i]) for i, n in enumerate(names[2:]))
    return out


def test_sleep_periods_are_read_as_before(db):
    db.conn.executemany(
        "INSERT INTO sleep_periods (patient_id, source, period_key, start, \"end\", start_local, end_local, "
        "local_date, minutes_asleep, time_in_bed_minutes, efficiency, awakenings, device_format) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'x')",
        [("a", "oura", "2026-01-01T22:00:00Z", "2026-01-01T22:00:00Z", "2026-01-02T06:00:00Z",
          "2026-01-01T23:00:00", "2026-01-02T07:00:00", "2026-01-02", 420, 480.5, None, 2),
         ("a", "fitabase", "night:2026-01-02", None, None, None, None, "2026-01-02", 400.0, None, 91, None),
         ("b", "oura", "2026-01-03T01:00:00Z", "2026-01-03T01:00:00Z", "2026-01-03T02:00:00Z",
          "2026-01-03T02:00:00", "2026-01-03T03:00:00", "2026-01-03", None, None, None, None)])
    for ids, as_of, rowid in ((None, None, False), (["b", "a"], date(2026, 1, 2), True),
                              (["nobody"], None, False)):
        got = sleep._read_periods(db, ids, as_of, with_rowid=rowid)
        want = _periods_reference(db, ids, as_of, rowid)
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            np.testing.assert_array_equal(got[name], want[name])


# ------------------------------------------------------------------------------------ panel and model


def test_dates_parsed_once_per_text_are_what_to_datetime_gives():
    def plain(values):  # features._naive_ns as it was: every row through to_datetime
        s = pd.Series(values)
        if not pd.api.types.is_datetime64_any_dtype(s):
            s = pd.to_datetime(s.astype(object), format="ISO8601")
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_localize(None)
        return s.astype("datetime64[ns]").to_numpy().astype(np.int64)

    cases = [["2026-01-02", None, "2026-01-01", "2026-01-02", np.nan],
             pd.Series(["2026-03-29T02:30:00", "2026-03-29T02:30:00.123456789", None, "2026-03-29T02:30:00"],
                       dtype="str"),
             ["2026-03-29T02:30:00+02:00", "2026-03-29T03:30:00+02:00"], ["2026-01-01T00:00:00Z", None],
             [date(2026, 1, 2), date(2026, 1, 2), None], pd.Series(pd.to_datetime(["2026-01-01", None])),
             pd.Series([], dtype="str"), [None, None]]
    for values in cases:
        got, want = features._naive_ns(values), plain(values)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError):
        features._naive_ns(["2026-01-01", "not a date"])


def test_patient_codes_are_what_get_indexer_gives():
    ids = np.array(["a", "b", "nan", "p 2"], dtype=object)
    for col in (pd.Series(["b", "x", None, "a", "b", "p 2"], dtype="str"),
                pd.Series(["b", np.nan, None, "nan", 3], dtype=object), pd.Series([], dtype="str")):
        want = pd.Index(ids).get_indexer(col.astype(str))
        assert np.array_equal(features._codes(ids, col), want)


def test_up32_compares_as_the_float64_threshold():
    rng = np.random.default_rng(3)
    f32 = np.float32
    x = np.concatenate([rng.normal(0, 10, 500), rng.normal(0, 10, 500).astype(f32).astype(float),
                        [0.0, -0.0, 1e-50, -1e-50, np.inf, -np.inf, np.nan, 3.5e38, -3.5e38,
                         float(np.finfo(f32).max), float(np.nextafter(f32(1), f32(2))), 1 + 2.0 ** -30]])
    with np.errstate(over="ignore"):
        near = x.astype(f32)
        v = np.concatenate([near, np.nextafter(near, f32(np.inf)), np.nextafter(near, f32(-np.inf))])
    up = models._up32(x)
    assert up.dtype == f32
    assert np.array_equal(v[:, None] >= x[None], v[:, None] >= up[None])


def _chunks_reference(rows: pd.DataFrame, design, chunk_cells: int = 8_000_000) -> list:
    """models._chunks as it was: each block whole, row-major, scattered into place by (patient, day)."""
    cols = design.columns
    Km, S = len(design.main), len(design.side)
    groups = list(design.miss_groups().values())
    G = len(groups)
    meta = design.meta.set_index("column")
    where = {(f, int(lag)): i for i, (f, lag) in enumerate(meta.loc[design.main, ["factor", "lag"]].itertuples(
        index=False))}
    pairs = [(i, where[(f, 1)]) for (f, lag), i in where.items() if lag == 0 and (f, 1) in where]
    is_bool = meta.loc[cols, "kind"].to_numpy() == "boolean"
    K = Km + G + 1
    pid_all = rows["patient_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, pid_all[1:] != pid_all[:-1], True])
    starts, ends = bounds[:-1], bounds[1:]
    V_all = rows[cols].to_numpy(dtype=np.float32)
    y_all = rows["onset"].to_numpy(dtype=float)
    per = max(1, int(chunk_cells // max(1, int((ends - starts).max(initial=1)) * (K + S))))
    count = models._count
    out = []
    for c0 in range(0, len(starts), per):
        cs, ce = starts[c0:c0 + per], ends[c0:c0 + per]
        r0, r1 = cs[0], ce[-1]
        V, y2 = V_all[r0:r1], y_all[r0:r1]
        seg, lens = cs - r0, ce - cs
        Pc, T = len(cs), int(lens.max())
        pidx = np.repeat(np.arange(Pc), lens)
        ridx = np.arange(r1 - r0) - np.repeat(seg, lens)
        obs = np.isfinite(V)
        Vo = np.where(obs, V, 0.0).astype(float)
        nobs = count(obs, seg)
        n1 = np.maximum(nobs, 1)
        mean = np.add.reduceat(Vo, seg, axis=0) / n1
        sd = np.sqrt(np.maximum(np.add.reduceat(Vo * Vo, seg, axis=0) / n1 - mean ** 2, 0.0))
        n_exp = count(obs & (V > 0.5), seg)
        usable = (nobs >= models._MIN_OBS) & (sd > 1e-6 * np.maximum(np.abs(mean), 1))
        usable &= ~is_bool[None] | ((n_exp >= models._MIN_EXPOSED) & (nobs - n_exp >= models._MIN_EXPOSED))
        sd_safe = np.where(usable, sd, 1.0)
        Z = np.where(obs & usable[pidx], (Vo - mean[pidx]) / sd_safe[pidx], 0.0)
        for j0, j1 in pairs:
            both = obs[:, j0] & obs[:, j1]
            nb = np.add.reduceat(both.astype(np.int32), seg)
            rho = np.add.reduceat(Z[:, j0] * Z[:, j1] * both, seg) / np.maximum(nb, 1)
            rho = np.where(nb >= 10, np.clip(rho, -0.95, 0.95), 0.0)[pidx]
            z0, z1 = Z[:, j0].copy(), Z[:, j1].copy()
            Z[:, j0] = np.where(~obs[:, j0] & obs[:, j1], rho * z1, z0)
            Z[:, j1] = np.where(~obs[:, j1] & obs[:, j0], rho * z0, z1)
        Z = np.where(is_bool[None], Z, np.clip(Z, -models._WINSOR, models._WINSOR))
        X = np.zeros((Pc, T, K), dtype=np.float32)
        X[pidx, ridx, :Km] = Z[:, :Km]
        miss_use = np.zeros((Pc, G), dtype=bool)
        for gi, ix in enumerate(groups):
            ind = (~obs[:, ix]).all(1)
            n_ind = np.add.reduceat(ind.astype(np.int32), seg)
            miss_use[:, gi] = (n_ind >= 3) & (n_ind <= lens - 3)
            X[pidx, ridx, Km + gi] = ind & miss_use[pidx, gi]
        X[pidx, ridx, -1] = 1.0
        Zs = np.zeros((Pc, T, S), dtype=np.float32)
        Zs[pidx, ridx] = Z[:, Km:]
        y = np.zeros((Pc, T))
        w = np.zeros((Pc, T))
        y[pidx, ridx] = y2
        w[pidx, ridx] = 1.0
        mx = np.maximum.reduceat(np.where(obs, V, -np.inf), seg, axis=0)
        thr = np.minimum(models._nice(mean + 0.6745 * sd), mx)
        thr = np.where(is_bool[None], 1.0, thr)
        with np.errstate(invalid="ignore"):
            expo = obs & (V >= thr[pidx])
        unexp = obs & ~expo
        att = (y2 > 0)[:, None]
        counts = {"exposed_days": count(expo, seg), "attacks_after_exposure": count(expo & att, seg),
                  "unexposed_days": count(unexp, seg), "attacks_without_exposure": count(unexp & att, seg),
                  "threshold": thr, "nobs": nobs}
        out.append(models._Chunk(pid_all[cs], X, Zs, y, w, usable, mean, sd, miss_use, counts))
    return out


def _prepare_reference(panel: pd.DataFrame, cfg) -> tuple:
    """models.prepare's data blocks, fingerprints and design blocks as they were (group-bys, a copy of the
    at-risk rows, the whole-block design)."""
    meta = panel.attrs["factors"]
    panel = panel.sort_values(["patient_id", "date"], kind="stable")
    panel.attrs["factors"] = meta
    design = models._Design.from_panel(panel)
    pid = panel["patient_id"]
    g = panel.groupby("patient_id", sort=False)
    recent = panel["date"] > g["date"].transform("max") - pd.Timedelta(days=30)
    at = panel["at_risk"].astype(bool)
    agg = pd.DataFrame({
        "first_day": g["date"].min(), "last_day": g["date"].max(), "diary_days": g["diary_kept"].sum(),
        "missing_days": (~panel["observed"].astype(bool)).groupby(pid, sort=False).sum(),
        "at_risk_days": at.groupby(pid, sort=False).sum(),
        "attacks": (panel["onset"].fillna(0).astype(int) * at).groupby(pid, sort=False).sum(),
        "migraine_days_last_30": (panel["migraine_day"].astype(bool) & recent).groupby(pid, sort=False).sum(),
        "headache_recorded_days": (panel["headache_day"].astype(bool) | panel["intensity"].notna())
        .groupby(pid, sort=False).sum(),
    })
    first = agg["first_day"].dt.strftime("%Y-%m-%d").to_numpy()
    last = agg["last_day"].dt.strftime("%Y-%m-%d").to_numpy()
    ints = agg[["diary_days", "missing_days", "at_risk_days", "attacks", "migraine_days_last_30",
                "headache_recorded_days"]].astype(int)
    data = {str(p): {"first_day": first[i], "last_day": last[i], **r}
            for i, (p, r) in enumerate(zip(agg.index, ints.to_dict("records")))}
    h = pd.util.hash_pandas_object(panel[["patient_id", "date", "at_risk", "onset"] + design.columns],
                                   index=False).to_numpy()
    head = models.hashlib.sha256(("|".join(design.columns) + models.MODEL_VERSION).encode()).digest()
    p = pid.to_numpy()
    bounds = np.flatnonzero(np.r_[True, p[1:] != p[:-1], True])
    fps = {str(p[a]): models.hashlib.sha256(head + h[a:b].tobytes()).hexdigest()[:20]
           for a, b in pairwise(bounds)}
    rows = panel[panel["at_risk"].astype(bool) & panel["onset"].notna()]
    rows = rows[rows.groupby("patient_id")["onset"].transform("size") >= 2]
    return data, fps, _chunks_reference(rows, design)


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(f"u{a.itemsize}") if a.dtype.kind == "f" else a


def _same_chunks(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g.pids.astype(str), w.pids.astype(str))
        for k in ("X", "Zs", "y", "w", "usable", "mean", "sd", "miss_use"):
            a, b = getattr(g, k), getattr(w, k)
            assert (a.dtype, a.shape, a.flags.c_contiguous) == (b.dtype, b.shape, b.flags.c_contiguous), k
            assert np.array_equal(_bits(a), _bits(b)), k
        assert list(g.counts) == list(w.counts)
        for k in g.counts:
            a, b = g.counts[k], w.counts[k]
            assert a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b)), k


@pytest.fixture(scope="module")
def design_panel() -> pd.DataFrame:
    """A simulated panel with what the design must survive: a patient too short to fit, one with a single
    and one with two at-risk days, a factor never recorded by one patient, infinite and -0.0 values, a yes/no
    column holding other numbers, rows out of order."""
    panel = simulate.panel_from_cohort(simulate.simulate_cohort(14, 150, 41, premonitory=1.0))
    rng = np.random.default_rng(41)
    pid = panel["patient_id"].to_numpy(dtype=object)
    day = panel.groupby("patient_id").cumcount().to_numpy()
    short = (pid == "p00001") & (day >= 12)
    one = (pid == "p00002") & (day >= 1)
    two = (pid == "p00003") & (day >= 2)
    panel = panel[~(short | one | two)].reset_index(drop=True)
    panel.loc[panel["patient_id"] == "p00002", "at_risk"] = True
    panel.loc[panel["patient_id"] == "p00003", "at_risk"] = True
    panel.loc[panel["patient_id"] == "p00004", "stress@0"] = np.nan
    cont = [c for c in panel.columns if "@" in c and panel[c].nunique() > 2]
    for c in cont[:6]:
        hit = rng.random(len(panel)) < 0.01
        panel.loc[hit, c] = rng.choice([np.inf, -np.inf, -0.0, 1e30], hit.sum())
    panel.loc[rng.random(len(panel)) < 0.05, "pressure_drop@0"] = 0.7
    meta = panel.attrs["factors"]
    panel = panel.sample(frac=1.0, random_state=3)
    panel.attrs["factors"] = meta
    return panel


def test_prepare_gives_what_the_whole_block_version_gave(design_panel):
    cfg = config.defaults()
    got = models.prepare(design_panel, cfg)
    data, fps, chunks = _prepare_reference(design_panel, cfg)
    assert list(got.data) == list(data) and got.data == data
    assert all([type(v) for v in got.data[p].values()] == [type(v) for v in data[p].values()] for p in data)
    assert got.fingerprints == fps
    _same_chunks(got.chunks, chunks)
    assert {"p00002", "p00003"} <= set(data) and "p00002" not in set(chunks[0].pids)


def test_each_block_brings_its_score_statistics_so_the_fit_need_not_read_it_back(design_panel, tmp_path):
    """The fit's first look at the cohort (one-step score statistics of each main column) is made with each
    design block, in the worker that prepared it: the same numbers, bit for bit, as made from the block's
    arrays read back from its file, and close to a float64 sum of the definition."""
    part = models.prepare(design_panel, config.defaults(), spill_dir=tmp_path)
    Km = len(part.design.main)
    assert part.chunks and all(ch.path is not None and ch.X is None for ch in part.chunks)
    b, s = models._score_stats(part.chunks)
    again = []  # made again from the spilled arrays
    for chunk in part.chunks:
        with chunk.loaded() as ch:
            again.append(models._score_of(ch.X, ch.y, ch.w, Km))
    b2, s2 = (np.concatenate([a[k] for a in again]) for k in (0, 1))
    assert np.array_equal(_bits(b), _bits(b2)) and np.array_equal(_bits(s), _bits(s2))
    want_b, want_s = [], []
    for chunk in part.chunks:
        with chunk.loaded() as ch:
            X, y, w = ch.X[..., :Km].astype(float), ch.y, ch.w
            p0 = (y * w).sum(1) / np.maximum(w.sum(1), 1)
            U = (X * (w * (y - p0[:, None]))[..., None]).sum(1)
            info = np.maximum(p0[:, None] * (1 - p0[:, None]) * (X * X).sum(1), 1e-9)
        want_b.append(U / info)
        want_s.append(1 / np.sqrt(info))
    np.testing.assert_allclose(b, np.concatenate(want_b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s, np.concatenate(want_s), rtol=1e-4)
    assert (np.abs(b) > 0.01).any()


@pytest.mark.parametrize(("chunk_cells", "tile_rows"), [(60_000, 100), (8_000_000, 1), (8_000_000, 10**6)])
def test_design_blocks_are_what_the_whole_block_version_gave(design_panel, chunk_cells, tile_rows):
    panel = design_panel.sort_values(["patient_id", "date"], kind="stable")
    panel.attrs["factors"] = design_panel.attrs["factors"]
    design = models._Design.from_panel(panel)
    rows = panel[panel["at_risk"].astype(bool) & panel["onset"].notna()]
    rows = rows[rows.groupby("patient_id")["onset"].transform("size") >= 2]
    got = models._chunks(rows, design, chunk_cells=chunk_cells, tile_rows=tile_rows)
    want = _chunks_reference(rows, design, chunk_cells=chunk_cells)
    assert len(want) > 1 or chunk_cells > 60_000
    _same_chunks(got, want)


# ------------------------------------------------------------------------------------------ forecast

def _next_day_reference(ahead, results: dict, tomorrow: date) -> dict[str, dict]:
    """forecast.next_day as it was: one patient at a time through TriggerModel's own methods."""
    from trigger_watch import forecast

    rows = ahead.rows
    history = forecast._History(ahead.recent, ahead.meta)
    out: dict[str, dict] = {}
    in_order = forecast._InOrder(rows)
    for i, pid in enumerate(rows["patient_id"]):
        est = forecast._fitted_model(results, pid)
        if est is None:
            continue
        key = tuple(est.columns_)
        masks = history.layout(key)[1]
        values = in_order(key)[i:i + 1]
        past = history.of(pid, key)
        p = float(forecast._marginal(est, values, past, masks)[0])
        usual = np.where(masks[0][None, :] & ~np.isfinite(values), np.nan, np.asarray(est.mean_, dtype=float))
        # the usual day at tomorrow's time of year, which is no driver (features.SEASON)
        season = np.array([c.startswith("season_") for c in key])
        usual[:, season] = values[:, season]
        base = float(forecast._marginal(est, usual, past, masks)[0])
        x = forecast._as_forecast(values.copy(), est.mean_, (np.zeros(len(key), dtype=bool), masks[1]))
        c_all = est.contributions(x)[0]
        keep = (np.abs(c_all) > 1e-6) & ~season
        drivers = []
        for col, c in zip(np.asarray(key, dtype=object)[keep], c_all[keep]):
            factor, lag = forecast._split(col)
            p_without = 1 / (1 + np.exp(-(np.log(p / (1 - p)) - c)))
            drivers.append({"factor": factor, "lag_days": lag, "contribution": round(p - p_without, 4)})
        drivers = [d for d in drivers if d["contribution"] != 0]  # no push that shows: no driver
        drivers = sorted(drivers, key=lambda d: -abs(d["contribution"]))[:forecast.MAX_DRIVERS]
        out[pid] = {"date": tomorrow.isoformat(), "attack_probability": round(p, 4),
                    "baseline_probability": round(base, 4), "drivers": drivers}
    return out


def test_next_day_for_many_patients_at_once_is_what_one_at_a_time_gave():
    """forecast.next_day computes every patient of a column layout together; the same forecasts as one
    patient at a time, for patients with a full history, none, a short one, and without a fitted model."""
    from trigger_watch import forecast

    cfg = config.defaults()
    panel = simulate.panel_from_cohort(simulate.simulate_cohort(30, 200, 17, premonitory=1.0))
    last = panel["date"].max()
    tomorrow = (last + pd.Timedelta(days=1)).date()
    body = panel[panel["date"] < last]
    body.attrs = panel.attrs
    results = models.analyse(body, cfg, store=False)
    ahead_rows = panel[panel["date"] == last].copy()
    ahead_rows["date"] = pd.Timestamp(tomorrow)
    meta = panel.attrs["factors"].set_index("column")
    for c in meta.index:
        if c.endswith("@0") and meta.at[c, "group"] not in forecast.KNOWN_AHEAD:
            ahead_rows.loc[ahead_rows["patient_id"] != "p00003", c] = np.nan  # p00003 logged ahead
    plain = body.copy()
    plain.attrs, ahead_rows.attrs = {}, {}  # pandas compares attrs on concat
    full = pd.concat([plain, ahead_rows], ignore_index=True)
    full.attrs = panel.attrs
    ahead = forecast.Ahead.of(full, tomorrow)
    recent = ahead.recent
    short = recent["patient_id"] == "p00001"
    ahead = forecast.Ahead(ahead.rows, recent[~short | (recent["date"] > recent["date"].max() - pd.Timedelta(
        days=3))].reset_index(drop=True), ahead.meta)  # p00001: 3 recent days
    ahead = forecast.Ahead(ahead.rows, ahead.recent[ahead.recent["patient_id"] != "p00002"], ahead.meta)  # none
    results.pop("p00004")
    got = forecast.next_day(ahead, results, tomorrow)
    want = _next_day_reference(ahead, results, tomorrow)
    assert list(got) == list(want) and len(want) > 20 and "p00004" not in got
    assert got == want


def test_the_forecast_days_kept_per_block_are_those_of_the_whole_panel():
    """Ahead.of keeps each patient's last at-risk days before the forecast day, of the same-day columns
    only; taken from those columns alone they are the days and values the whole panel gave."""
    from trigger_watch import forecast

    panel = simulate.panel_from_cohort(simulate.simulate_cohort(12, 150, 5, premonitory=1.0))
    last = panel["date"].max()
    ahead = forecast.Ahead.of(panel, last.date())
    same = forecast._same_day_columns(panel.attrs["factors"], [c for c in panel.columns if "@" in c])
    assert same and "at_risk" in panel
    whole = forecast._recent(panel, last)  # every column masked and sorted, as before
    want = pd.concat([whole[["patient_id", "date"]], whole[same].astype(np.float32)], axis=1)
    assert len(want) > 12 * 30 and (want["date"] < last).all()
    pd.testing.assert_frame_equal(ahead.recent, want)
    pd.testing.assert_frame_equal(ahead.rows, panel[panel["date"] == last])


# ---------------------------------------------------------------------------------------- report chunks

@pytest.mark.parametrize("collecting", [True, False])
def test_a_report_chunk_is_written_without_cyclic_collection_and_leaves_it_as_it_was(tmp_path, monkeypatch,
                                                                                    collecting):
    import gc

    seen = []
    build = analysis.build_triggers

    def spy(*args, **kw):
        seen.append(gc.isenabled())
        return build(*args, **kw)

    monkeypatch.setattr(analysis, "build_triggers", spy)
    items, packed = analysis._pack_summaries(
        [(pid, {"result": None, "as_of": date(2026, 11, 20), "generated_at": "2026-11-21T02:30:00Z"})
         for pid in ("p1", "p2")])
    was = gc.isenabled()
    try:
        gc.enable() if collecting else gc.disable()
        rows, errors = analysis.write_report_chunk((str(tmp_path), items, packed,
                                                   pd.DataFrame(columns=analysis.CHART_COLUMNS), True))
        assert gc.isenabled() is collecting
    finally:
        gc.enable() if was else gc.disable()
    assert seen == [False, False] and errors == {}
    assert [r[0] for r in rows] == ["p1", "p2"] and (tmp_path / "p2" / "clinician.html").exists()
