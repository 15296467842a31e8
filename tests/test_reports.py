"""Reports: the words of every verdict, odd patients, hostile text, atomic writes, history, the CLI."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigger_watch import charts, reports, storage
from trigger_watch.errors import StorageError, TriggerWatchError, UnknownPatient

HOSTILE = '<script>alert(1)</script>'
QUOTES = 'he said "stop" & it\'s <b>bold</b>'
LONG = "x" * 5000
CHINESE = "头痛"
GERMAN = "Kopfschmerz ü"


def factor(fid="alcohol_units", lag=1, verdict="trigger", **kw) -> dict:
    base = {"factor": fid, "label": f"{fid} label", "lag_days": lag, "verdict": verdict,
            "rank": 1 if verdict == "trigger" else None, "odds_ratio": 2.4, "ci_low": 1.5, "ci_high": 3.9,
            "q_value": 0.01, "exposed_days": 31, "attacks_after_exposure": 14, "days_needed": None,
            "unexposed_days": 160, "attacks_without_exposure": 20, "exposure": ">= 3 drinks", "group": "behaviour"}
    base.update(kw)
    return base


def triggers_doc(pid="p1", factors=None, **kw) -> dict:
    doc = {
        "schema_version": 1, "patient_id": pid, "generated_at": "2026-11-21T02:30:00Z", "as_of": "2026-11-20",
        "data": {"first_day": "2026-05-01", "last_day": "2026-11-20", "diary_days": 190, "missing_days": 14,
                 "at_risk_days": 151, "attacks": 23, "migraine_days_last_30": 5},
        "status": "ok",
        "factors": factors if factors is not None else [
            factor(),
            factor("symptom:yawning", 1, "warning_sign", exposure="yes", group="symptom"),
            factor("screen_hours", 0, "no_association", exposure=">= 6 h", odds_ratio=1.0, ci_low=0.9, ci_high=1.1),
            factor("sleep_short", 1, "insufficient_data", exposure="yes", days_needed=40, odds_ratio=1.4,
                   ci_low=0.7, ci_high=2.8),
            factor("exercise_minutes", 1, "protective", exposure=">= 30 min", odds_ratio=0.5, ci_low=0.3,
                   ci_high=0.8, attacks_after_exposure=2, exposed_days=30),
        ],
        "forecast": {"date": "2026-11-21", "attack_probability": 0.31, "baseline_probability": 0.15,
                     "drivers": [{"factor": "pressure_drop", "lag_days": 0, "contribution": 0.08}]},
        "flags": {"chronic_migraine": False, "medication_overuse": True, "details": ["triptans on 12 days"]},
        "treatments": [{"treatment": "erenumab", "date": "2026-08-02", "migraine_days_per_30_before": 9.1,
                        "migraine_days_per_30_after": 4.2, "responder": True, "caveat": None}],
        "model": {"method": "hazard", "model_id": "m1", "fitted_at": "2026-11-21T02:29:00Z", "cv_auc": 0.68,
                  "cv_brier": 0.12, "cv_days": 90, "base_rate_brier": 0.13,
                  "calibration": [{"bin_low": 0, "bin_high": 0.2, "predicted": 0.1, "observed": 0.12, "n": 40},
                                  {"bin_low": 0.2, "bin_high": 0.4, "predicted": 0.3, "observed": 0.25, "n": 12}]},
    }
    doc.update(kw)
    return doc


def charts_doc(days=60, start_month="2026-09") -> dict:
    y, m = map(int, start_month.split("-"))
    cal = []
    from datetime import date, timedelta
    d0 = date(y, m, 1)
    for k in range(days):
        d = d0 + timedelta(days=k)
        status = ["free", "onset", "attack", "missing"][k % 4]
        cal.append({"date": d.isoformat(), "status": status, "intensity": 6.0 if status in ("onset", "attack")
                    else None})
    months = sorted({c["date"][:7] for c in cal})
    return {"calendar": cal,
            "monthly": [{"month": mo, "migraine_days": 5, "headache_days": 7, "days_logged": 25} for mo in months],
            "gaps": [{"start": "2026-09-10", "end": "2026-09-20", "days": 11}]}


class TextOf(HTMLParser):
    """The visible text of a page (script and style excluded)."""

    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style", "title")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style", "title")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    p = TextOf()
    p.feed(html)
    return " ".join(" ".join(p.parts).split())


# ------------------------------------------------------------------------------------------- wording

@pytest.mark.parametrize("f, expected", [
    (factor(), "Alcohol seems to be one of your triggers. On 14 of the 31 days after 3 or more drinks you had an "
               "attack; on other days it was 1 in 8."),
    (factor(lag=0), "Alcohol seems to be one of your triggers. On 14 of the 31 days with 3 or more drinks you had "
                    "an attack; on other days it was 1 in 8."),
    (factor("symptom:yawning", verdict="warning_sign", exposure="yes"),
     "Yawning often comes before your attacks: it may be an early sign of the attack rather than its cause."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=45),
     "We can't tell yet whether caffeine matters; about 45 more days of logging would help."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=None),
     "We can't tell yet whether caffeine matters; keep logging it."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=None, exposed_days=262, unexposed_days=0),
     ("We can't tell whether caffeine matters: it was the same on every day you logged. It would show only "
      "by comparing days that differ.")),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=None, exposed_days=0, unexposed_days=0),
     ("We can't tell yet whether caffeine matters; keep logging it.")),  # an estimate: days were compared
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=None, exposed_days=0, unexposed_days=0,
            odds_ratio=None),
     "We have no record of caffeine for you, so we can't tell whether it matters."),
    (factor("temperature_change", verdict="insufficient_data", days_needed=20),
     "We can't tell yet whether changes in temperature matter; about 20 more days of logging would help."),
    # with days_to_answer (reports since eb-hazard-4): a number only where more logging will likely settle it
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=45, days_to_answer=90),
     "We can't tell yet whether caffeine matters; about 90 more days of logging may settle it."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=np.float64(45.2), days_to_answer=np.int64(90)),
     "We can't tell yet whether caffeine matters; about 90 more days of logging may settle it."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=45, days_to_answer=None),
     "We can't tell yet whether caffeine matters, and even a year more of logging may not settle it."),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=300, days_to_answer=None, odds_ratio=None),
     ("We can't tell yet whether caffeine matters: there are too few days to compare so far. About 300 more "
      "days of logging would give enough to begin.")),
    (factor("caffeine_mg", verdict="insufficient_data", days_needed=1640, days_to_answer=None, odds_ratio=None),
     ("We can't tell yet whether caffeine matters: there are too few days to compare so far. More than a year "
      "of logging would give enough to begin.")),
    (factor("caffeine_mg", verdict="insufficient_data", days_to_answer=None, odds_ratio=None, exposed_days=262,
            unexposed_days=0),
     ("We can't tell whether caffeine matters: it was the same on every day you logged. It would show only "
      "by comparing days that differ.")),
    (factor("screen_hours", verdict="no_association"), "Screen time did not make a difference for you."),
    (factor("exercise_minutes", verdict="protective", exposure=">= 30 min", attacks_after_exposure=2,
            exposed_days=30),
     "Exercise seemed to come with fewer attacks. That does not prove it prevents them. On 2 of the 30 days "
     "after 30 minutes or more of exercise you had an attack; on other days it was 1 in 8."),
    (factor("pressure_drop", exposure="yes", attacks_without_exposure=0),
     "A drop in air pressure seems to be one of your triggers. On 14 of the 31 days after a big drop in air "
     "pressure you had an attack; on other days you had none."),
    (factor("food:red_wine", lag=0, exposure="yes"),
     "Red wine seems to be one of your triggers. On 14 of the 31 days with having red wine you had an attack; "
     "on other days it was 1 in 8."),
    (factor("sleep_hours", exposure="> 8.5 h", exposed_days=None),
     "How long you sleep seems to be one of your triggers."),
    # a craved food may follow the attack's early phase instead of causing it: the patient is told so
    (factor("food:dark_chocolate", exposure="yes", exposed_days=None),
     ("Dark chocolate seems to be one of your triggers. Craving it can also be an early sign of an attack: if "
      "you ate it because you craved it, it may be a warning sign rather than the cause.")),
])
def test_every_verdict_has_its_sentence(f, expected):
    assert reports.factor_sentence(f) == expected


def test_what_we_cant_tell_yet_lists_what_more_logging_will_likely_settle_first():
    """The page shows six: the factors with a days_to_answer (fewest first), then those with too few days to
    compare, then the rest. By days_needed alone, a factor a year may not settle came first (40 days at its
    observed effect)."""
    unsure = [factor("alcohol_units", 1, "insufficient_data", days_needed=40, days_to_answer=None),
              factor("caffeine_mg", 1, "insufficient_data", days_needed=900, days_to_answer=180),
              factor("stress", 1, "insufficient_data", days_needed=300, days_to_answer=None, odds_ratio=None),
              factor("sleep_short", 1, "insufficient_data", days_needed=600, days_to_answer=60),
              factor("humidity", 1, "insufficient_data", days_needed=None, days_to_answer=None)]
    groups = reports.patient_factors(unsure)
    assert [f["factor"] for f in groups["insufficient_data"]] == [
        "sleep_short", "caffeine_mg", "stress", "alcohol_units", "humidity"]


def test_of_two_lags_we_cannot_tell_about_the_page_says_the_one_that_says_more():
    """The README's real diary: medication is logged on attack days, so the day before it is 0 on every day
    that could start one, and the page said it "was the same on every day you logged"."""
    same = factor("took_medication", 1, "insufficient_data", odds_ratio=None, days_needed=None,
                  days_to_answer=None, exposed_days=397, unexposed_days=0)
    estimated = factor("took_medication", 0, "insufficient_data", odds_ratio=26.3, days_needed=None,
                       days_to_answer=None, exposed_days=87, unexposed_days=316)
    for order in ([same, estimated], [estimated, same]):
        (shown,) = reports.patient_factors(order)["insufficient_data"]
        assert shown is estimated
    assert "the same on every day" not in reports.factor_sentence(estimated)


def test_the_factors_with_no_record_share_one_line_at_the_end():
    """A diary without stress or alcohol: every one of them said "keep logging it" (the README's real diary:
    five of the six places), though the patient never logged them. They are named together, last."""
    def unsure(fid, **kw):
        return factor(fid, 1, "insufficient_data", **{"days_needed": 500, "days_to_answer": None, **kw})

    never = ["stress", "alcohol_units", "caffeine_mg", "sleep_efficiency"]
    factors = ([unsure(f, odds_ratio=None, days_needed=None, exposed_days=0, unexposed_days=0) for f in never]
               + [unsure("humidity"), unsure("sleep_short", days_to_answer=60)])
    items, left = reports.unsure_items(reports.patient_factors(factors)["insufficient_data"])
    texts = [i["text"] for i in items]
    assert texts[0].startswith("We can't tell yet whether short sleep matters; about 60 more days")
    assert texts[1].startswith("We can't tell yet whether humidity matters, and even a year more")
    names = [reports._lower(reports.factor_name(factor(f))) for f in never]
    assert texts[2:] == [(f"We have no record of {', '.join(names[:-1])} or {names[-1]} for you, so we can't "
                          f"tell whether they matter.")]
    assert left == 0


def test_the_factors_a_year_will_likely_not_settle_share_one_line():
    """Most factors get no days_to_answer; a line each saying the same filled the six places (and pushed out
    the ones worth logging for). They are named together, after those with days, before the rest."""
    def unsure(fid, **kw):
        return factor(fid, 1, "insufficient_data", **{"days_needed": 500, "days_to_answer": None, **kw})

    year = ["humidity", "caffeine_mg", "screen_hours", "exercise_minutes", "water_l", "sleep_hours", "stress",
            "precipitation"]
    factors = ([unsure("alcohol_units", days_to_answer=90), unsure("sleep_short", odds_ratio=None, days_needed=40)]
               + [unsure(f) for f in year]
               + [unsure(f"food:f{k}", odds_ratio=None, days_needed=None, exposed_days=0, unexposed_days=200)
                  for k in range(3)])
    groups = reports.patient_factors(factors)
    items, left = reports.unsure_items(groups["insufficient_data"])
    texts = [i["text"] for i in items]
    assert texts[0].startswith("We can't tell yet whether alcohol matters; about 90 more days")
    assert texts[1].startswith("We can't tell yet whether short sleep matters: there are too few days")
    named = [reports._lower(reports.factor_name(factor(f))) for f in year[:6]]
    assert texts[2] == (f"We can't tell yet whether {', '.join(named[:-1])} or {named[-1]} matter, and even a "
                        f"year more of logging may not settle them.")
    assert all("the same on every day" in t for t in texts[3:]) and len(items) == 6
    assert left == len(factors) - 2 - 6 - 3 == 2
    page = reports.render_patient_md(triggers_doc(factors=factors))
    ctx = reports.patient_context(triggers_doc(factors=factors), None)
    assert [i["text"] for i in ctx["unsure"]] == texts and ctx["more_unsure"] == reports._more(2)
    assert f"- {texts[2]}" in page and "- And 2 more things we are still watching." in page


def test_a_patient_with_too_little_data_is_told_about_how_long_to_keep_logging():
    """The brief: "not enough data yet, keep logging ~N more days". Every factor of such a patient waits for
    the at-risk days and attacks the analysis needs, so the fewest days_needed is that wait (test_models)."""
    unsure = [factor(f, 1, "insufficient_data", days_needed=n) for f, n in
              (("stress", None), ("alcohol_units", 48), ("caffeine_mg", 31), ("sleep_short", 60))]
    doc = triggers_doc(factors=unsure, status="insufficient_data")
    lines = reports.data_sentences(doc)
    assert lines[-1] == ("That is not enough yet to name your triggers. Please keep logging every day, including "
                         "days without a headache: about 31 more days will give enough to start looking for them.")
    assert "about 31 more days" in reports.render_patient_md(doc)
    doc = triggers_doc(factors=[], status="insufficient_data")
    assert reports.data_sentences(doc)[-1].endswith("including days without a headache.")
    # the real bitmask diary: a headache on most days, 14 of 499 days could start an attack (test_models)
    doc = triggers_doc(factors=[factor("stress", 1, "insufficient_data", days_needed=1640)],
                       status="insufficient_data")
    assert reports.data_sentences(doc)[-1].endswith(
        "without a headache: at the rate of your days so far, it will take more than a year to have enough to "
        "start looking for them.")
    assert not any("more days" in x for x in reports.data_sentences(triggers_doc()))  # status ok: no such line


@pytest.mark.parametrize("at_risk, said", [
    (1, "Only 1 of your 80 days started without a headache carried over from the day before."),
    (0, "None of your 80 days started without a headache carried over from the day before."),
    (39, "Only 39 of your 80 days started"), (40, None)])
def test_a_patient_with_a_headache_on_most_days_is_told_why_the_wait_is_long(at_risk, said):
    """A headache on every day (one long episode) left a single day at risk: the page said "more than a
    year" (test_models) with no reason a patient could see; only days that begin headache-free are compared."""
    doc = triggers_doc(factors=[factor("stress", 1, "insufficient_data", days_needed=3650)],
                       status="insufficient_data", data={"first_day": "2026-09-01", "last_day": "2026-11-19",
                                                         "diary_days": 80, "missing_days": 0,
                                                         "at_risk_days": at_risk, "attacks": 1})
    lines = reports.data_sentences(doc)
    if said is None:
        assert "carried over" not in " ".join(lines)
    else:
        assert lines[-1].startswith(said) and lines[-1].endswith(
            "Triggers are looked for in what comes before a headache starts, so those are the only days we can "
            "compare.")
        assert "more than a year" in lines[-2]


def test_a_diary_that_never_says_headache_is_not_read_as_headache_free(tmp_path):
    """A diary of other things (or of bad days only) without a headache column, and no attacks: the patient
    read "You had 0 attacks ... about 325 more days will give enough" (clanceybarrington's file). Such days
    are not known to be headache-free; more of them settles nothing."""
    from datetime import date, timedelta

    from trigger_watch import analysis
    from trigger_watch import config as config_mod
    from trigger_watch.importing import ImportOptions, import_file

    today = date(2026, 11, 20)
    (tmp_path / "config.toml").write_text('[storage]\ndatabase = "tw.db"\nreports_dir = "reports"\n'
                                          'models_dir = "models"\n[weather]\nenabled = false\n')
    cfg = config_mod.load(tmp_path / "config.toml")
    db = storage.connect(cfg.database)
    days = [today - timedelta(days=90 - i) for i in range(90)]
    lines = ["patient_id,date,stress,headache"]
    lines += [f"silent,{d},{i % 7}," for i, d in enumerate(days)]  # never says
    lines += [f"told,{d},{i % 7},{'no' if i % 3 == 0 else ''}" for i, d in enumerate(days)]  # says on 30 days
    (tmp_path / "diary.csv").write_text("\n".join(lines) + "\n")
    options = ImportOptions(today=today, default_timezone="UTC", create_patients=True, config=cfg)
    assert import_file(db, "diary", tmp_path / "diary.csv", options).accepted == 180
    analysis.analyze(db, cfg, as_of=today)
    silent, told = (json.loads((cfg.reports_dir / p / "triggers.json").read_text()) for p in ("silent", "told"))
    assert (silent["data"]["headache_recorded_days"], told["data"]["headache_recorded_days"]) == (0, 30)
    assert silent["data"]["attacks"] == told["data"]["attacks"] == 0
    assert [f["days_needed"] for f in silent["factors"]] == [None] * len(silent["factors"])
    assert any(f["days_needed"] for f in told["factors"])  # days that say "no headache" do add up
    page = (cfg.reports_dir / "silent" / "summary.md").read_text()
    assert "none of them says whether you had a headache" in page and "0 attacks" not in page
    assert "What we can't tell yet" not in page and "more days" not in page
    assert "You had 0 attacks" in (cfg.reports_dir / "told" / "summary.md").read_text()
    clinician = (cfg.reports_dir / "silent" / "clinician.html").read_text()
    assert "No headache on record" in clinician
    assert "No headache on record" not in (cfg.reports_dir / "told" / "clinician.html").read_text()


def test_protective_and_no_association_never_claim_a_cause():
    protective = reports.factor_sentence(factor("exercise_minutes", verdict="protective"))
    assert "trigger" not in protective and "prevents" in protective and "does not prove" in protective
    warning = reports.factor_sentence(factor("symptom:yawning", verdict="warning_sign"))
    assert "trigger" not in warning and "early sign" in warning


@pytest.mark.parametrize("events, days, words", [(20, 160, "1 in 8"), (0, 50, "none"), (3, 4, "3 of 4"),
                                                 (None, 10, None), (3, 0, None), (1, 1, "1 of 1")])
def test_rates_read_as_people_say_them(events, days, words):
    assert reports.one_in(events, days) == words


def test_a_factor_is_told_once_under_its_strongest_verdict():
    doc = triggers_doc(factors=[factor("alcohol_units", 0, "no_association"), factor("alcohol_units", 1),
                                factor("stress", 0, "no_association"), factor("stress", 1, "no_association")])
    md = reports.render_patient_md(doc, {})
    assert "Alcohol seems to be one of your triggers" in md
    assert "Alcohol did not make a difference" not in md
    assert "Stress did not make a difference for you." in md


def test_forecast_in_words_and_percent():
    lines = reports.forecast_sentences(triggers_doc())
    text = " ".join(lines)
    # made at 02:30 on the 21st from data through the 20th: the forecast is for the day now starting
    assert "Your chance of an attack today (Saturday 21 November 2026) is about 31% (about 1 in 3)." in text
    evening = dict(triggers_doc(), generated_at="2026-11-20T19:00:00Z")
    assert "an attack tomorrow (Saturday 21 November 2026)" in " ".join(reports.forecast_sentences(evening))
    assert "higher than usual for you (usually 15%)" in text
    assert "a big drop in air pressure" in text
    assert reports.forecast_sentences(triggers_doc(forecast=None)) == []


@pytest.mark.parametrize("p,base,phrase", [
    (0.31, 0.15, "That is higher than usual for you (usually 15%)."),
    (0.20, 0.15, "That is a little higher than usual for you (usually 15%)."),
    (0.16, 0.15, "That is about usual for you (15%)."),
    (0.12, 0.15, "That is a little lower than usual for you (usually 15%)."),
    (0.08, 0.15, "That is lower than usual for you (usually 15%)."),
])
def test_forecast_compares_with_the_usual_day(p, base, phrase):
    doc = triggers_doc()
    doc["forecast"] = dict(doc["forecast"], attack_probability=p, baseline_probability=base)
    assert phrase in reports.forecast_sentences(doc)


def test_patient_summary_has_every_section_and_the_disclaimer():
    md = reports.render_patient_md(triggers_doc(), charts_doc())
    for heading in ("## What seems to set off your attacks", "## Early warning signs",
                    "## What seemed to come with fewer attacks", "## What we can't tell yet",
                    "## What did not seem to matter", "## The day ahead"):
        assert heading in md
    assert "1. Alcohol seems to be one of your triggers." in md
    assert "not medical advice" in md and "clinician" in md
    assert "190 days you logged between 1 May 2026 and 20 November 2026" in md
    html = visible_text(reports.render_patient_html(triggers_doc(), charts_doc()))
    assert "Yawning often comes before your attacks" in html and "not medical advice" in html


def test_triggers_are_listed_in_rank_order_and_capped():
    fs = [factor(f"custom_{i}", rank=r, exposure="yes") for i, r in enumerate([3, 1, 2, 4, 5, 6, 7])]
    md = reports.render_patient_md(triggers_doc(factors=fs), {})
    order = [md.index(f"Custom {i} seems") for i in (1, 2, 0, 3, 4)]
    assert order == sorted(order)
    assert "Custom 5 seems" not in md and "We found 2 more" in md


def test_clinician_page_shows_every_verdict_flags_model_and_charts():
    html = reports.render_clinician_html(triggers_doc(), charts_doc())
    text = visible_text(html)
    for v in ("trigger", "protective", "warning sign", "insufficient data", "no association"):
        assert v in text
    assert "Medication overuse: yes" in text and "hazard" in text and "m1" in text
    assert html.count("<svg") == 5  # calendar, legend, monthly, forest, calibration
    assert "erenumab" in text and "2026-09-10" in text


def test_pages_credit_open_meteo_as_its_licence_requires():
    for html in (reports.render_clinician_html(triggers_doc(), charts_doc()),
                 reports.render_patient_html(triggers_doc(), charts_doc())):
        assert "Weather data by Open-Meteo.com (CC BY 4.0)" in visible_text(html)


# ------------------------------------------------------------------------------------- odd patients

def test_a_patient_with_no_data_renders_everything():
    doc = {"schema_version": 1, "patient_id": "p0", "generated_at": "2026-11-21T02:30:00Z", "as_of": "2026-11-20",
           "data": {"diary_days": 0, "attacks": 0}, "status": "insufficient_data", "factors": []}
    texts = reports.patient_texts(doc, {})
    assert "nothing logged from you yet" in texts["summary.md"]
    assert "## The day ahead" not in texts["summary.md"]
    # a diary that ended before the days looked at (analysis.max_history_days): logged, but not "yet"
    doc["data"] |= {"first_day": "2024-11-22", "last_day": "2026-11-20"}
    assert reports.data_sentences(doc)[0].startswith(
        "We have nothing logged from you between 22 November 2024 and 20 November 2026. When you log")
    assert "No factors were tested: too little data so far" in visible_text(texts["clinician.html"])
    assert "No model was fitted" in visible_text(texts["clinician.html"])
    bare = reports.patient_texts({"patient_id": "p0"}, None)  # every optional block missing
    assert "nothing logged" in bare["summary.md"] and "Patient p0" in bare["clinician.html"]


def test_a_patient_with_only_attacks():
    doc = triggers_doc(factors=[], forecast=None, model=None, status="insufficient_data",
                       data={"first_day": "2026-10-01", "last_day": "2026-11-20", "diary_days": 0, "attacks": 4})
    cal = [{"date": f"2026-10-{d:02d}", "status": "onset", "intensity": None} for d in (3, 9, 20, 27)]
    md = reports.render_patient_md(doc, {"calendar": cal})
    assert "We have 4 attacks from you between 1 October 2026 and 20 November 2026, but no diary days yet." in md
    html = reports.render_clinician_html(doc, {"calendar": cal})
    assert html.count("<title>2026-10-") == 4


def test_a_patient_with_one_month():
    ch_ = charts_doc(days=30, start_month="2026-11")
    doc = triggers_doc(data={"first_day": "2026-11-01", "last_day": "2026-11-30", "diary_days": 1, "attacks": 1})
    html = reports.render_clinician_html(doc, ch_)
    assert html.count("<title>2026-11-") == 30
    md = reports.render_patient_md(doc, ch_)
    assert "the 1 day you logged" in md and "You had 1 attack in that time." in md


# --------------------------------------------------------------------------------------- hostile text

def hostile_doc():
    fs = [factor(f"custom:{HOSTILE}", label=HOSTILE, exposure="yes"),
          factor(f"custom:{QUOTES}", 0, "no_association", label=QUOTES, exposure=QUOTES),
          factor(f"custom:{LONG}", 1, "insufficient_data", label=LONG, days_needed=30),
          factor(f"custom:{CHINESE}", 1, "warning_sign", label=CHINESE, exposure="yes"),
          factor(f"food:{GERMAN}", 1, "protective", label=GERMAN, exposure="yes")]
    doc = triggers_doc(factors=fs)
    doc["flags"]["details"] = [HOSTILE, QUOTES]
    doc["treatments"][0]["treatment"] = HOSTILE
    doc["treatments"][0]["caveat"] = QUOTES
    doc["model"]["method"] = HOSTILE
    return doc


def test_hostile_text_is_escaped_in_html_and_round_trips():
    doc = hostile_doc()
    for html in (reports.render_patient_html(doc, charts_doc()), reports.render_clinician_html(doc, charts_doc())):
        assert "<script" not in html
        assert "alert(1)" in html and "&lt;script&gt;" in html
        assert "<b>bold</b>" not in html
        text = visible_text(html)  # the browser shows exactly what was typed
        assert HOSTILE in text and CHINESE in text and GERMAN in text
    clinician = visible_text(reports.render_clinician_html(doc, charts_doc()))
    assert QUOTES in clinician and LONG in clinician
    assert "&#8230;" in reports.render_clinician_html(doc, {})  # the forest plot label is shortened


def test_hostile_text_in_markdown_is_shown_not_run():
    md = reports.render_patient_md(hostile_doc(), {})
    assert "<script>" not in md and r"\<script\>alert(1)\</script\>" in md
    assert CHINESE in md and GERMAN in md
    assert "<b>" not in md


def test_json_keeps_non_latin_text_and_round_trips():
    doc = hostile_doc()
    text = reports.to_json(doc)
    assert CHINESE in text and GERMAN in text
    assert json.loads(text) == doc


def test_ranking_page_escapes_and_links(tmp_path):
    rows = [{"patient_id": 'p"1<x>', "clinician_id": HOSTILE, "rank": 1, "risk_next_day": 0.4, "risk_band": "high",
             "migraine_days_last_30": 14, "migraine_days_prev_90_per_30": 6.0, "trend": "worse",
             "chronic_migraine": True, "medication_overuse": False, "top_triggers": ["alcohol_units"],
             "days_logged_last_30": 28, "last_entry": "2026-11-20", "latest_treatment_response": None,
             "reasons": ["14 migraine days in the last 30, up from 6", CHINESE]},
            {"patient_id": "p2", "clinician_id": "dr_b", "rank": 2, "risk_next_day": None, "reasons": []}]
    html = reports.render_ranking_html(rows)
    assert html.count("<script") == 1  # our own sorter only
    assert 'href="../p2/clinician.html"' in html
    assert 'href="../p%221%3Cx%3E/clinician.html"' in html
    assert "14 migraine days in the last 30, up from 6" in visible_text(html) and CHINESE in html


def test_ranking_page_says_the_treatment_response_in_words():
    """The column printed the response's dict ({'treatment': 'ketamine_infusion', ... 'responder': True})."""
    helped = {"treatment": "ketamine_infusion", "date": "2026-07-11", "migraine_days_per_30_before": 7.2,
              "migraine_days_per_30_after": 0.3, "responder": True, "caveat": None, "sessions": 1}
    not_yet = {**helped, "migraine_days_per_30_after": None, "responder": None, "caveat": "only 12 days since"}
    short = {**helped, "migraine_days_per_30_before": 5.8, "migraine_days_per_30_after": 3.2, "responder": False}
    worse = {**helped, "migraine_days_per_30_after": 9.0, "responder": False}
    rows = [{"patient_id": "p1", "rank": 1, "latest_treatment_response": helped, "reasons": []},
            {"patient_id": "p2", "rank": 2, "latest_treatment_response": not_yet, "reasons": []},
            {"patient_id": "p3", "rank": 3, "latest_treatment_response": short, "reasons": []},
            {"patient_id": "p4", "rank": 4, "latest_treatment_response": worse, "reasons": []}]
    full = [{**dict.fromkeys(reports.CSV_COLUMNS), **r} for r in rows]
    for html in (reports.render_ranking_html(rows), reports.render_ranking_html(full)):  # template, fast path
        text = visible_text(html)
        assert "ketamine infusion from 2026-07-11: 7.2 to 0.3 migraine days per 30, helped" in text
        assert "ketamine infusion from 2026-07-11: 7.2 to ? migraine days per 30, too early to tell " \
               "(only 12 days since)" in text
        assert "5.8 to 3.2 migraine days per 30, 45 % fewer migraine days, short of the 50 % of a responder" in text
        assert "7.2 to 9 migraine days per 30, has not helped" in text
        assert "'responder'" not in text and "{" not in text


def test_ranking_csv_is_a_safe_spreadsheet():
    rows = [{"patient_id": "=HYPERLINK(1)", "rank": 1, "top_triggers": ["a", "b"], "chronic_migraine": True,
             "reasons": ["one", "two"], "risk_next_day": 0.25}]
    table = list(csv.DictReader(io.StringIO(reports.ranking_csv(rows))))
    assert table[0]["patient_id"] == "'=HYPERLINK(1)"
    assert table[0]["top_triggers"] == "a; b" and table[0]["reasons"] == "one; two"
    assert table[0]["chronic_migraine"] == "1" and table[0]["risk_next_day"] == "0.25"
    assert table[0]["clinician_id"] == ""
    # text that a spreadsheet would run, also when it is a list joined; numbers stay numbers
    rows = [{"patient_id": "-1+1", "clinician_id": "@dr", "top_triggers": ["=cmd", "b"],
             "migraine_days_prev_90_per_30": -0.5, "trend": "\tworse"}]
    row = next(csv.DictReader(io.StringIO(reports.ranking_csv(rows))))
    assert row["patient_id"] == "'-1+1" and row["clinician_id"] == "'@dr" and row["trend"] == "'\tworse"
    assert row["top_triggers"] == "'=cmd; b" and row["migraine_days_prev_90_per_30"] == "-0.5"
    # the latest treatment response, an object in ranking.json, is the same object as JSON in its cell
    response = {"treatment": "ketamine_infusion", "date": "2026-07-11", "migraine_days_per_30_before": 7.2,
                "migraine_days_per_30_after": 0.3, "responder": True, "caveat": None}
    row = next(csv.DictReader(io.StringIO(reports.ranking_csv([{"latest_treatment_response": response}]))))
    assert json.loads(row["latest_treatment_response"]) == response


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda s: s.strip() and "\x00" not in s and "\r" not in s))
def test_any_factor_name_shows_exactly_as_typed(name):
    f = factor(f"custom:{name}", exposure="yes")
    html = reports.render_patient_html(triggers_doc(factors=[f]), {})
    sentence = reports.factor_sentence(f)
    assert " ".join(sentence.split()) in visible_text(html)


# -------------------------------------------------------------------------------------------- charts

def test_charts_draw_what_they_are_given():
    cal = charts.calendar_svg(charts_doc(days=45)["calendar"])
    assert cal.count("<rect") == 45 and "stroke=\"#222\"" in cal  # onsets outlined
    forest = charts.forest_svg(triggers_doc()["factors"] + [factor("x", odds_ratio=None, ci_low=None, ci_high=None)])
    assert forest.count("<rect x=") == 1 + 5  # no-association band + one square per estimate
    assert "no estimate" in forest
    monthly = charts.monthly_svg(charts_doc()["monthly"], [{"treatment": "botox", "date": "2026-10-15"}])
    assert "botox" in monthly
    assert charts.calendar_svg([]) == "" and charts.forest_svg([]) == "" and charts.calibration_svg(None) == ""


def test_json_has_no_nan():
    doc = triggers_doc(factors=[factor(odds_ratio=math.nan, ci_high=math.inf)])
    out = json.loads(reports.to_json(doc))
    assert out["factors"][0]["odds_ratio"] is None and out["factors"][0]["ci_high"] is None


# ----------------------------------------------------------------------------------- atomic writing

def test_writes_the_four_files_and_the_cohort(tmp_path):
    paths = reports.write_patient_reports(tmp_path, triggers_doc(), charts_doc())
    assert sorted(p.name for p in paths) == sorted(reports.PATIENT_FILES)
    assert json.loads((tmp_path / "p1" / "triggers.json").read_text(encoding="utf-8")) == triggers_doc()
    cohort = reports.write_cohort_reports(tmp_path, [{"patient_id": "p1", "rank": 1, "reasons": []}])
    assert sorted(p.name for p in cohort) == sorted(reports.COHORT_FILES)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_render_failure_leaves_the_old_reports_and_other_patients_intact(tmp_path):
    reports.write_patient_reports(tmp_path, triggers_doc("p1"), charts_doc())
    reports.write_patient_reports(tmp_path, triggers_doc("p2"), charts_doc())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    broken = triggers_doc("p2", as_of="2026-12-01")
    broken["forecast"]["attack_probability"] = "high"  # not a number: rendering raises
    with pytest.raises(TypeError):
        reports.write_patient_reports(tmp_path, broken, charts_doc())
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_a_crash_during_the_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.md"
    reports.atomic_write(target, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        reports.atomic_write(target, "new" * 1000)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


@pytest.mark.parametrize("pid", ["../escape", "a/b", "", ".."])
def test_a_patient_id_cannot_escape_the_reports_folder(tmp_path, pid):
    with pytest.raises(TriggerWatchError):
        reports.write_patient_reports(tmp_path / "reports", triggers_doc(pid), {})
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------------------- history

def test_history_keeps_what_we_told_each_time(db):
    assert 40 in storage.applied_versions(db)
    first = triggers_doc(generated_at="2026-10-21T02:30:00Z", as_of="2026-10-20")
    second = triggers_doc(generated_at="2026-11-21T02:30:00Z", factors=[factor("stress")])
    reports.record_history(db, first, charts_doc())
    with storage.transaction(db):  # inside the caller's transaction too
        reports.record_history(db, second, charts_doc(days=10))
    rows = reports.history(db, "p1")
    assert [r["as_of"] for r in rows] == ["2026-11-20", "2026-10-20"]
    assert rows[1]["triggers"] == first and rows[1]["charts"] is None  # only the newest keeps its charts
    assert rows[0]["charts"] == charts_doc(days=10)
    assert reports.latest(db, "p1") == second and reports.latest(db, "nobody") is None
    reports.record_history(db, second, None)  # the same run again replaces, does not duplicate
    assert len(reports.history(db, "p1")) == 2



def test_only_the_newest_reports_charts_are_kept_in_one_row_per_patient(db):
    """The charts live in report_charts, one row per patient: recording a report rewrites no older history
    row, an older report recorded late does not take the newest one's place, and a newest report without
    charts leaves none."""
    old = triggers_doc(generated_at="2026-10-21T02:30:00Z", as_of="2026-10-20")
    new = triggers_doc(generated_at="2026-11-21T02:30:00Z")
    reports.record_history(db, new, charts_doc(days=10))
    reports.record_history(db, old, charts_doc(days=30))  # late: it is not the newest
    rows = reports.history(db, "p1")
    assert [r["as_of"] for r in rows] == ["2026-11-20", "2026-10-20"]
    assert rows[0]["charts"] == charts_doc(days=10) and rows[1]["charts"] is None
    assert db.execute("SELECT count(*) FROM reports WHERE charts_json IS NOT NULL").fetchone()[0] == 0
    assert db.execute("SELECT patient_id, generated_at FROM report_charts").fetchall() == [
        ("p1", "2026-11-21T02:30:00Z")]
    reports.record_history(db, triggers_doc(generated_at="2026-11-22T02:30:00Z", as_of="2026-11-21"), None)
    assert [r["charts"] for r in reports.history(db, "p1")] == [None, None, None]
    assert db.execute("SELECT count(*) FROM report_charts").fetchone()[0] == 0


def test_the_history_stores_its_json_compressed_and_still_reads_rows_stored_as_text(db):
    """What we told the patient is kept compressed (a history row per patient per night adds up at a clinic's
    scale); rows stored as text before that are read as they were, by the history and by the ranking."""
    from trigger_watch.analysis import ranking_row

    db["patients"].insert_all([{"patient_id": p, "timezone": "UTC"} for p in ("p1", "p2")])
    older = triggers_doc("p1", generated_at="2026-10-21T02:30:00Z", as_of="2026-10-20")
    with storage.transaction(db) as conn:  # as a history row was stored before, with no ranking row
        conn.executemany(
            "INSERT INTO reports (patient_id, generated_at, as_of, status, triggers_json, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [("p1", older["generated_at"], older["as_of"], "ok", json.dumps(older), "x"),
             ("p2", "2026-11-21T02:30:00Z", "2026-11-20", "ok", json.dumps(triggers_doc("p2")), "x")])
    newer, charts = triggers_doc("p1"), charts_doc(days=120)
    reports.record_history(db, newer, charts, ranking=ranking_row(newer))

    (t_stored, c_stored), = db.execute(
        "SELECT r.triggers_json, c.charts_json FROM reports AS r JOIN report_charts AS c USING (patient_id) "
        "WHERE r.generated_at = ?", (newer["generated_at"],)).fetchall()
    assert type(t_stored) is bytes and type(c_stored) is bytes
    assert len(t_stored) < len(json.dumps(newer)) / 2 and len(c_stored) < len(json.dumps(charts)) / 5
    assert [(r["triggers"], r["charts"]) for r in reports.history(db, "p1")] == [(newer, charts), (older, None)]
    assert reports.latest(db, "p2") == triggers_doc("p2")
    assert reports.latest_ranking_rows(db, ranking_row) == {"p1": ranking_row(newer),
                                                             "p2": ranking_row(triggers_doc("p2"))}
    assert reports.history_lines(db, "p1")[1].startswith("2026-10-21T02:30:00Z  as of 2026-10-20  ok")


def test_the_ranking_reads_stored_json_that_orjson_refuses(db):
    """A history row kept as text with a NaN in it (the standard encoder writes one; orjson does not read
    it) is still ranked, through the standard parser."""
    from trigger_watch.analysis import ranking_row

    db["patients"].insert_all([{"patient_id": "p1", "timezone": "UTC"}])
    doc = triggers_doc("p1")
    doc["forecast"] = {**(doc.get("forecast") or {}), "attack_probability": float("nan")}
    text = json.dumps(doc)
    assert "NaN" in text
    with storage.transaction(db) as conn:
        conn.execute("INSERT INTO reports (patient_id, generated_at, as_of, status, triggers_json, recorded_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", ("p1", doc["generated_at"], doc["as_of"], "ok", text, "x"))
    got = reports.latest_ranking_rows(db, ranking_row)["p1"]
    assert got["patient_id"] == "p1" and math.isnan(got["risk_next_day"])
    assert reports._loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}


def test_a_damaged_stored_report_is_one_clear_error_naming_it(db):
    """A history value that is not a whole zstd frame (or not JSON) is not a traceback: the error names the
    patient, the report and the row, and says how to get a readable one."""
    db["patients"].insert_all([{"patient_id": "p1", "timezone": "UTC"}])
    reports.record_history(db, triggers_doc("p1"), charts_doc())
    good = db.execute("SELECT triggers_json FROM reports").fetchone()[0]
    for damaged in (good[:-5], reports.pack_json("{not json")):
        with storage.transaction(db) as conn:
            conn.execute("UPDATE reports SET triggers_json = ?", (damaged,))
        for read in (lambda: reports.latest(db, "p1"), lambda: reports.history_lines(db, "p1")):
            with pytest.raises(StorageError, match=r"stored report of patient 'p1' made at "
                               r"2026-11-21T02:30:00Z \(reports row 1\) cannot be read: .*"
                               r"`trigger-watch analyze --patient p1` makes a new one"):
                read()


def test_migration_42_moves_the_newest_charts_out_of_the_history(tmp_path):
    """A database made before migration 42 kept the newest report's charts in its history row: after the
    upgrade they are read from report_charts, and the history rows no longer hold them."""
    old_db = storage.connect(tmp_path / "old.db", migrate=False)
    storage.migrate_db(old_db, up_to=41)
    charts_text = json.dumps(charts_doc(days=5))
    with storage.transaction(old_db) as conn:
        conn.executemany(
            "INSERT INTO reports (patient_id, generated_at, as_of, triggers_json, charts_json, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [("p1", "2026-10-21T02:30:00Z", "2026-10-20", json.dumps(triggers_doc()), None, "x"),
             ("p1", "2026-11-21T02:30:00Z", "2026-11-20", json.dumps(triggers_doc()), charts_text, "x"),
             ("p2", "2026-11-21T02:30:00Z", "2026-11-20", json.dumps(triggers_doc("p2")), None, "x")])
    assert 42 in storage.migrate_db(old_db)
    assert [r["charts"] for r in reports.history(old_db, "p1")] == [charts_doc(days=5), None]
    assert reports.latest_entry(old_db, "p2")["charts"] is None
    assert old_db.execute("SELECT count(*) FROM reports WHERE charts_json IS NOT NULL").fetchone()[0] == 0


def test_the_ranking_reads_the_row_kept_with_the_newest_report(db):
    """One query for the whole cohort; a report kept without its ranking row (before migration 41) has it made
    from its triggers.json."""
    from trigger_watch.analysis import ranking_row

    db["patients"].insert_all([{"patient_id": p, "timezone": "UTC"} for p in ("p1", "p2", "p3")])
    old = triggers_doc("p1", generated_at="2026-10-21T02:30:00Z", as_of="2026-10-20")
    new = triggers_doc("p1", generated_at="2026-11-21T02:30:00Z")
    reports.record_history(db, new, None, ranking=ranking_row(new))
    reports.record_history(db, old, None, ranking=ranking_row(old))  # recorded late: still not the newest
    reports.record_history(db, triggers_doc("p2"), None)  # no ranking row kept
    reports.record_history(db, triggers_doc("gone"), None)  # not a patient (any more): not ranked
    made = []
    rows = reports.latest_ranking_rows(db, lambda t: made.append(t["patient_id"]) or ranking_row(t))
    assert made == ["p2"]
    assert rows == {"p1": ranking_row(new), "p2": ranking_row(triggers_doc("p2"))}
    assert rows["p1"]["as_of"] == "2026-11-20"


def test_writing_many_patients_at_once_writes_the_same_files(tmp_path):
    docs = [(triggers_doc(f"p{i}"), charts_doc()) for i in range(3)]
    for t, c in docs:
        reports.write_patient_reports(tmp_path / "one", t, c)
    bad = triggers_doc("..")  # not a usable folder name: that patient fails, the others are written
    reports.write_many_patient_reports(tmp_path / "many", docs[1:2])  # p1's folder is there, the others' not
    written, errors = reports.write_many_patient_reports(tmp_path / "many", [docs[0], (bad, None), *docs[1:]])
    assert [t["patient_id"] for t, _, _ in written] == ["p0", "p1", "p2"] and list(errors) == [".."]
    # each comes with the history's copy of its triggers.json, made with the file
    assert all(reports.pack_json(text) == reports.history_row(t, c)[5] for t, c, text in written)
    one = {str(p.relative_to(tmp_path / "one")): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    many = {str(p.relative_to(tmp_path / "many")): p.read_bytes() for p in (tmp_path / "many").rglob("*")
            if p.is_file() and not p.name.endswith(reports.SPARE)}
    assert one == many and len(many) == 3 * 4  # no temporary file left behind
    # p1, written twice, keeps its first version as the spares; the others, written once, have none yet
    spares = sorted(str(p.relative_to(tmp_path / "many")) for p in (tmp_path / "many").rglob(f"*{reports.SPARE}"))
    assert spares == sorted(f"p1/.{name}.spare" for name in reports.PATIENT_FILES)


def _report_files(folder):
    """``{name: (inode, bytes)}`` of the files in ``folder``."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in folder.iterdir()}


def test_the_spares_swap_with_the_reports_and_are_written_over_in_place(tmp_path):
    """With spares, a report's previous version stays as ``.<name>.spare``; each run writes the new version
    over the spare and swaps the two names, so after the first two runs no file is made or removed (same
    inodes), and a version shorter or longer than the spare's old one is cut to its own length."""
    names = sorted(reports.PATIENT_FILES)
    few = [factor()]
    many = triggers_doc()["factors"] * 3
    versions = [triggers_doc(generated_at=f"2026-11-2{i}T02:30:00Z", factors=f) for i, f in
                enumerate([triggers_doc()["factors"], many, few, many])]
    want = [reports.patient_texts(v, charts_doc()) for v in versions]
    seen = []
    for v in versions:
        written, errors = reports.write_many_patient_reports(tmp_path, [(v, charts_doc())])
        assert errors == {} and len(written) == 1
        seen.append(_report_files(tmp_path / "p1"))
    assert sorted(seen[0]) == names  # the first run: no spare yet
    for k in range(1, 4):
        assert sorted(seen[k]) == sorted(names + [f".{n}.spare" for n in names])
        for n in names:
            assert seen[k][n][1] == want[k][n].encode()  # the new version in place...
            assert seen[k][f".{n}.spare"][1] == want[k - 1][n].encode()  # ...the one before it the spare
    for k in (2, 3):  # the same two files each time, their names swapped
        for n in names:
            assert seen[k][n][0] == seen[k - 1][f".{n}.spare"][0]
            assert seen[k][f".{n}.spare"][0] == seen[k - 1][n][0]
    # version 2 (one factor) was written over version 0's longer files, version 3 over version 1's
    assert len(want[2]["clinician.html"]) < len(want[0]["clinician.html"])


def test_without_spares_or_where_names_cannot_be_swapped_reports_are_replaced(tmp_path, monkeypatch):
    names = sorted(reports.PATIENT_FILES)
    docs = [(triggers_doc(generated_at=f"2026-11-2{i}T02:30:00Z"), charts_doc()) for i in range(3)]
    reports.write_many_patient_reports(tmp_path / "off", docs[:1], spares=False)
    before = _report_files(tmp_path / "off" / "p1")
    reports.write_many_patient_reports(tmp_path / "off", docs[1:2], spares=False)
    after = _report_files(tmp_path / "off" / "p1")
    assert sorted(after) == names and all(after[n][0] != before[n][0] for n in names)  # new files, no spare
    assert all(after[n][1] == reports.patient_texts(*docs[1])[n].encode() for n in names)
    # a system or file system that cannot exchange two names: the spare is renamed over the report
    monkeypatch.setattr(reports, "_exchange", lambda: None)
    for doc in docs:
        reports.write_many_patient_reports(tmp_path / "plain", [doc])
    files = _report_files(tmp_path / "plain" / "p1")
    assert sorted(files) == names and all(files[n][1] == reports.patient_texts(*docs[2])[n].encode() for n in names)


def test_a_spare_that_cannot_be_written_over_is_left_and_the_report_still_written(tmp_path):
    docs = [(triggers_doc(generated_at=f"2026-11-2{i}T02:30:00Z"), charts_doc()) for i in range(2)]
    reports.write_many_patient_reports(tmp_path, docs[:1])
    (tmp_path / "p1" / ".summary.md.spare").mkdir()  # something else where the spare would be
    (tmp_path / "p1" / "elsewhere.txt").write_text("keep")
    (tmp_path / "p1" / ".triggers.json.spare").symlink_to(tmp_path / "p1" / "elsewhere.txt")
    written, errors = reports.write_many_patient_reports(tmp_path, docs[1:])
    assert errors == {} and len(written) == 1
    want = reports.patient_texts(*docs[1])
    assert all((tmp_path / "p1" / n).read_text() == text for n, text in want.items())
    assert (tmp_path / "p1" / ".summary.md.spare").is_dir()
    assert (tmp_path / "p1" / "elsewhere.txt").read_text() == "keep"  # nothing written through the link
    assert not list(tmp_path.rglob("*.tmp"))

def test_staged_reports_replace_the_old_ones_only_when_committed(tmp_path):
    old = [(triggers_doc(f"p{i}", generated_at="2026-10-21T02:30:00Z"), charts_doc()) for i in range(2)]
    new = [(triggers_doc(f"p{i}"), charts_doc()) for i in range(2)]
    for t, c in old:
        reports.write_patient_reports(tmp_path / "now", t, c)
    for t, c in new:
        reports.write_patient_reports(tmp_path / "want", t, c)

    def files(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    before = files(tmp_path / "now")
    staged, errors = reports.stage_patient_reports(tmp_path / "now", new)
    assert errors == {} and [item[0]["patient_id"] for item, _ in staged] == ["p0", "p1"]
    seen = files(tmp_path / "now")
    assert {k: v for k, v in seen.items() if "/." not in k} == before  # a reader still sees the old
    assert len(seen) == 2 * len(before)
    done, errors = reports.commit_staged(tmp_path / "now", [(item[0]["patient_id"], m) for item, m in staged])
    assert done == [0, 1] and errors == {}
    # and no temporary file left; the old versions are the spares
    now = files(tmp_path / "now")
    assert {k: v for k, v in now.items() if "/." not in k} == files(tmp_path / "want")
    assert {k.replace("/.", "/").removesuffix(reports.SPARE): v for k, v in now.items() if "/." in k} == before


@pytest.mark.parametrize("spares, spoil, error", [
    (False, "folder", "IsADirectoryError"),  # a folder where the file should go
    (False, "staged", "FileNotFoundError"),  # the staged file is gone
    (True, "staged", "FileNotFoundError"),
])
def test_a_staged_file_that_cannot_be_renamed_fails_its_patient_and_leaves_no_temporary_file(
        tmp_path, spares, spoil, error):
    docs = [(triggers_doc(f"p{i}"), charts_doc()) for i in range(2)]
    staged, _ = reports.stage_patient_reports(tmp_path, docs, spares=spares)
    staged_file, final = staged[0][1][1]
    if spoil == "folder":
        Path(final).mkdir()
    else:
        Path(staged_file).unlink()
    done, errors = reports.commit_staged(tmp_path, [(item[0]["patient_id"], m) for item, m in staged])
    assert done == [1] and list(errors) == ["p0"] and error in errors["p0"]
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(f"*{reports.SPARE}"))
    assert sorted(p.name for p in (tmp_path / "p1").iterdir()) == sorted(reports.PATIENT_FILES)


def test_a_run_cleans_up_the_temporary_files_an_interrupted_run_left(tmp_path):
    import os
    import time

    for t, c in [(triggers_doc("p1"), charts_doc())]:
        reports.write_patient_reports(tmp_path, t, c)
    reports.write_cohort_reports(tmp_path, [])
    old = time.time() - 60
    left = [tmp_path / "p1" / ".summary.md.123.0badcafe.4.tmp", tmp_path / "cohort" / ".ranking.csv.9.ab.tmp"]
    kept = [tmp_path / "p1" / ".notes", tmp_path / "p1" / "draft.tmp", tmp_path / ".x.tmp"]
    for f in left + kept:
        f.write_text("x")
        os.utime(f, (old, old))
    assert reports.begin_writing(tmp_path, tmp_path / "models") == 0  # the last run finished: nothing is looked for
    assert all(f.exists() for f in left + kept) and (tmp_path / "models" / reports.WRITING).exists()
    # this run is killed; the next one finds its mark and removes what it left (only hidden .tmp files in
    # the folders, made before it began)
    new = tmp_path / "p1" / ".triggers.json.77.cafe.0.tmp"
    new.write_text("x")
    os.utime(new, (time.time() + 60, time.time() + 60))
    assert reports.begin_writing(tmp_path, tmp_path / "models") == 2
    assert not any(f.exists() for f in left) and all(f.exists() for f in kept + [new])
    reports.end_writing(tmp_path / "models")
    assert not (tmp_path / "models" / reports.WRITING).exists()
    assert sorted(p.name for p in (tmp_path / "p1").iterdir() if not p.name.startswith(".") and p.suffix != ".tmp") == [
        "clinician.html", "summary.html", "summary.md", "triggers.json"]


def test_stored_report_and_errors(patients):
    db = patients
    with pytest.raises(UnknownPatient):
        reports.stored_report(db, "nobody")
    with pytest.raises(TriggerWatchError, match="has not been analysed yet"):
        reports.stored_report(db, "p1")
    reports.record_history(db, triggers_doc("p1"), charts_doc())
    assert "Alcohol seems to be one of your triggers" in reports.stored_report(db, "p1", "patient", "md")
    assert json.loads(reports.stored_report(db, "p1", "clinician", "json"))["patient_id"] == "p1"
    assert "<svg" in reports.stored_report(db, "p1", "clinician", "html")
    with pytest.raises(TriggerWatchError, match="no pdf report for the clinician"):
        reports.stored_report(db, "p1", "clinician", "pdf")


def test_the_clinician_report_in_markdown_has_the_pages_tables_without_charts(patients):
    """cli.md offers ``report PATIENT --for clinician --format md``; it was an error (exit 1)."""
    doc = triggers_doc("p1", factors=[
        *triggers_doc("p1")["factors"],
        factor("caffeine_mg", 0, "insufficient_data", odds_ratio=None, ci_low=None, ci_high=None, q_value=None,
               exposure=">= 0 mg", days_needed=None)])
    reports.record_history(patients, doc, charts_doc())
    md = reports.stored_report(patients, "p1", "clinician", "md")
    assert md.startswith("# Clinician report: patient p1\n") and "<svg" not in md and "<td" not in md
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("| ") and line.split(" | ")[0][2:] in (
        "trigger", "protective", "warning sign", "no association", "insufficient data")]
    # every factor once, in the clinician page's order (by verdict, then rank), as markdown-escaped text
    assert [r.split(" | ")[1].rpartition(" (")[2].split(";")[0] for r in rows] == [
        reports.md_escape(f["factor"]) for f in reports._ordered_factors(doc)]
    trigger = next(r for r in rows if "alcohol\\_units" in r)
    assert trigger.split(" | ")[2:8] == ["1", "1", "2.40", "1.50–3.90", "0.010", "31"]
    assert next(r for r in rows if "caffeine\\_mg" in r).split(" | ")[4:6] == ["–", "–"]  # no interval: one dash
    assert "- Medication overuse: **yes**" in lines and "- triptans on 12 days" in lines
    assert "| erenumab | 2026-08-02 | 9.1 | 4.2 | yes |  |" in lines
    assert "Attack probability for **2026-11-21**: **31%** (patient's baseline 15%)." in lines
    assert "| pressure\\_drop | 0 | 0.080 |" in lines and "| 0.68 | 0.120 | 0.130 | 90 |" in lines


def test_forget_erases_the_history(patients):
    from trigger_watch.diary import forget

    reports.record_history(patients, triggers_doc("p1"), {})
    deleted = forget(patients, "p1")
    assert deleted.get("reports") == 1 and reports.history(patients, "p1") == []


def test_cli_report_prints_the_stored_report(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\ndatabase = "tw.db"\n')
    db = storage.connect(tmp_path / "tw.db")
    db.conn.execute("INSERT INTO patients (patient_id) VALUES ('p1')")
    db.conn.commit()
    reports.record_history(db, triggers_doc("p1", factors=[factor(label=CHINESE)]), charts_doc())
    db.conn.close()
    from click.testing import CliRunner

    from trigger_watch.cli import cli

    def tw(*args):
        return CliRunner().invoke(cli, ["--config", str(tmp_path / "config.toml"), *args])

    r = tw("report", "p1")
    assert r.exit_code == 0 and "Alcohol seems to be one of your triggers" in r.output
    r = tw("report", "p1", "--for", "clinician", "--format", "html")
    assert r.exit_code == 0 and r.output.startswith("<!DOCTYPE html>") and CHINESE in r.output
    r = tw("report", "p1", "--for", "clinician", "--format", "md")
    assert r.exit_code == 0 and r.output.startswith("# Clinician report: patient p1") and CHINESE in r.output
    r = tw("report", "p1", "--history")
    assert r.exit_code == 0 and "as of 2026-11-20  ok  model m1  triggers: alcohol_units@1" in r.output
    r = tw("report", "ghost")  # main() turns this into one line on stderr and exit 1
    assert isinstance(r.exception, UnknownPatient)


def test_benchmark_builder_output_renders(tmp_path):
    """The fake cohort of the benchmark and screenshots is a valid input (guards the demo pages)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import render_reports
    finally:
        sys.path.pop(0)
    doc, ch_ = render_reports.fake_patient(1, days=60)
    texts = reports.patient_texts(copy.deepcopy(doc), ch_)
    assert "Your migraine report" in texts["summary.html"]
    assert "rank" in reports.render_ranking_html(render_reports.fake_ranking(5))


@pytest.mark.parametrize("short", [None, 100, 5000 + 10])
def test_writing_over_an_old_file_leaves_exactly_the_new_bytes(tmp_path, monkeypatch, short):
    """``_write_fd(over=True)`` pads the write to whole pages and cuts the file to the new length, also when
    a write call stops short (``short`` bytes: within the data, or within the padding)."""
    real = os.writev

    def writev(fd, buffers):
        if short is None:
            return real(fd, buffers)
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:short])

    monkeypatch.setattr(os, "writev", writev)
    path = tmp_path / "f"
    for old, new in [(b"o" * 9000, b"n" * 5000), (b"o" * 10, b"n" * 5000), (b"o" * 5000, b"")]:
        path.write_bytes(old)
        reports._write_fd(os.open(path, os.O_WRONLY), new, over=True)
        assert path.read_bytes() == new


def test_the_html_pages_are_ascii_and_show_the_same_dashes_and_ellipses():
    """The pages' own text writes its dashes, dots and ellipses as character references (``reports.DASH``):
    a page with nothing outside ASCII stays one byte a character in Python (its UTF-8 is a copy). A browser
    shows the characters: the visible text has them where they were."""
    from trigger_watch.analysis import ranking_row

    long = "a factor whose label is much longer than the forest plot's label column"
    factors = [factor(), factor("screen_hours", 0, "no_association", exposure=">= 6 h"),
               factor("sleep_short", 1, "insufficient_data", odds_ratio=None, ci_low=None, ci_high=None,
                      days_needed=40, label=long)]
    doc = triggers_doc(factors=factors, model={"method": "eb", "model_id": None, "fitted_at": None})
    doc["treatments"][0]["responder"] = None
    doc["treatments"][0]["treatment"] = "a treatment with a long name"
    charts = charts_doc()
    clinician = reports.render_clinician_html(doc, charts)
    patient = reports.render_patient_html(doc, charts)
    ranking = reports.render_ranking_html([ranking_row(doc), {**ranking_row(doc), "risk_next_day": None,
                                                             "clinician_id": None, "trend": None}])
    for page in (clinician, patient, ranking):
        assert page.isascii()
    shown = visible_text(clinician)
    assert "no-association zone 0.8\u20131.25" in shown
    assert "1.50\u20133.90" in shown  # a factor's interval in the table
    assert "2.40 (1.50\u20133.90)" in shown  # and beside the forest plot
    assert "alcohol_units \u00b7 exposed: >= 3 drinks" in shown
    assert long[:43] + "\u2026" in shown  # cut in the forest plot
    # missing values; a missing interval is one dash, not the three it was
    assert "fitted at \u2013" in shown and "\u2013\u2013" not in shown
    assert "Clinician report \u2013 p1" in unescape(clinician) and "Your migraine report \u2013" in unescape(patient)
    assert "\u2013" in visible_text(ranking)
    # the Markdown summary keeps its characters as they are
    assert "&#" not in reports.render_patient_md(doc, charts)
