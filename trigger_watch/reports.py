"""Reports people read: the patient summary, the clinician page, the cohort ranking; atomic writes; history.

Rendering only. Every number on a page comes from the ``triggers`` dict (``../shared/spec/reports.md``) or
the ``charts`` dict the analysis hands over; nothing here computes a statistic. What it adds is words:
each verdict has one plain sentence (:func:`factor_sentence`), written for a reader of about twelve, that
never claims more than the verdict promises.

Inputs
    triggers : dict, triggers.json exactly as the contract shows; ``factors`` entries may also carry
        ``unexposed_days``, ``attacks_without_exposure``, ``exposure`` (``">= 3 drinks"``, ``"yes"``) and
        ``group``. Optional blocks (``forecast``, ``flags``, ``treatments``, ``model``) may be missing/None.
    charts : dict, ``{"calendar": [{"date", "status": onset|attack|free|missing, "intensity": 0-10|None}],
        "monthly": [{"month": "YYYY-MM", "migraine_days", "headache_days", "days_logged"}],
        "gaps": [{"start", "end", "days"}]}``; any key may be missing.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``): a reader never sees
half a report and a failure leaves the previous one in place. Each analysis is also kept in the ``reports``
table (migration 40) so we can say what we told a patient last month; its JSON is stored compressed
(:func:`pack_json`).
"""

from __future__ import annotations

import csv
import ctypes
import errno
import functools
import io
import itertools
import json
import math
import numbers
import os
import re
import secrets
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup, escape

from trigger_watch import charts as ch
from trigger_watch import compute
from trigger_watch import storage
from trigger_watch.clinical import response_words
from trigger_watch.ranking import ENTRY_KEYS, ranking_path, read_ranking
from trigger_watch.errors import ConfigError, StorageError, TriggerWatchError, UnknownPatient

# ------------------------------------------------------------------------------------------- history

storage.register_migration(40, "report history", [
    """CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        patient_id TEXT NOT NULL,
        generated_at TEXT NOT NULL,
        as_of TEXT,
        model_id TEXT,
        status TEXT,
        triggers_json TEXT NOT NULL,
        charts_json TEXT,
        recorded_at TEXT NOT NULL,
        UNIQUE (patient_id, generated_at)
    )""",
    "CREATE INDEX reports_patient ON reports (patient_id, generated_at)",
])
storage.register_migration(41, "the cohort ranking's row of each patient's newest report", [
    # ~1 KB per patient in a small table of its own, instead of the whole triggers.json (~25 KB, in the
    # history's overflow pages): a ranking of 10,000 patients reads 10 MB, not 250 MB
    """CREATE TABLE report_rankings (
        patient_id TEXT PRIMARY KEY,
        generated_at TEXT NOT NULL,
        ranking_json TEXT NOT NULL
    )""",
])
storage.register_migration(42, "the newest report's charts in a table of their own", [
    # One row per patient, replaced each run. Kept in the history's rows, every run rewrote the previous row
    # (its ~25 KB triggers.json with it) to drop its charts, and looked at every older row of the patient.
    """CREATE TABLE report_charts (
        patient_id TEXT PRIMARY KEY,
        generated_at TEXT NOT NULL,
        charts_json TEXT NOT NULL
    )""",
    """INSERT OR REPLACE INTO report_charts (patient_id, generated_at, charts_json)
       SELECT patient_id, generated_at, charts_json FROM reports AS r WHERE charts_json IS NOT NULL
       AND generated_at = (SELECT max(generated_at) FROM reports
                           WHERE patient_id = r.patient_id AND charts_json IS NOT NULL)""",
    "UPDATE reports SET charts_json = NULL WHERE charts_json IS NOT NULL",
])
storage.register_patient_table("reports")
storage.register_patient_table("report_rankings")
storage.register_patient_table("report_charts")

PATIENT_FILES = ("triggers.json", "summary.md", "summary.html", "clinician.html")
COHORT_FILES = ("ranking.json", "ranking.csv", "ranking.html")

# ------------------------------------------------------------------------------------ plain language

#: Patient-facing names of the standard factors (factors.md); anything else is named from its id.
NAMES = {
    "stress": "Stress", "stress_letdown": "Relaxing after stress", "alcohol_units": "Alcohol",
    "caffeine_mg": "Caffeine", "caffeine_withdrawal": "Having less caffeine than usual",
    "menstrual_window": "Your period", "skipped_meal": "Skipping a meal", "exercise_minutes": "Exercise",
    "water_l": "How much water you drink", "screen_hours": "Screen time", "sleep_quality": "Sleep quality",
    "sleep_hours": "How long you sleep", "sleep_short": "Short sleep", "sleep_long": "Sleeping longer than usual",
    "sleep_efficiency": "Restless sleep", "awakenings": "Waking up in the night",
    "bedtime_shift": "Going to bed at an unusual time", "pressure_change": "Changes in air pressure",
    "pressure_drop": "A drop in air pressure", "temperature_max": "Hot days",
    "temperature_change": "Changes in temperature", "humidity": "Humidity", "precipitation": "Rain",
    "weekend": "Weekends",
}
#: What a yes/no factor's exposed day had, to fit "days with ..." / "days after ...".
THINGS = {
    "stress_letdown": "a big drop in stress", "caffeine_withdrawal": "much less caffeine than usual",
    "menstrual_window": "the start of your period", "skipped_meal": "a skipped meal",
    "sleep_short": "a short night's sleep", "sleep_long": "a long night's sleep",
    "pressure_drop": "a big drop in air pressure", "weekend": "a weekend day",
}
#: Measurement units of ``exposure`` texts (models.UNITS), in words; other units are counted nouns ("drinks").
MEASURES = {"h": "{} hours", "min": "{} minutes", "l": "{} litres", "mg": "{} mg", "%": "{}%", "C": "{} °C",
            "hPa": "{} hPa", "mm": "{} mm", "/10": "{} out of 10"}
#: How an amount of a measured factor reads: ``"{}"`` is ``"0.7 hours or more"``.
AMOUNT_OF = {"caffeine_mg": "{} of caffeine", "exercise_minutes": "{} of exercise", "water_l": "{} of water",
             "screen_hours": "{} of screen time", "sleep_hours": "{} of sleep",
             "bedtime_shift": "going to bed {} away from your usual time", "stress": "stress of {}",
             "sleep_quality": "sleep quality of {}", "sleep_efficiency": "sleep efficiency of {}",
             "pressure_change": "an air pressure change of {}", "temperature_max": "a top temperature of {}",
             "temperature_change": "a temperature change of {}", "humidity": "humidity of {}",
             "precipitation": "{} of rain"}
PLURAL = {"Changes in air pressure", "Changes in temperature", "Hot days", "Weekends"}
_EXPOSED_DAYS = {("weekend", 0): "weekend days", ("menstrual_window", 0): "days around the start of your period",
                 ("menstrual_window", 1): "days just after the start of your period"}
_OPS = {">=": "{} or more", "<=": "{} or less", ">": "more than {}", "<": "less than {}", "=": "{}"}
_EXPOSURE = re.compile(r"^\s*(>=|<=|>|<|=|≥|≤)\s*(-?\d+(?:\.\d+)?)\s*(.*)$")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

#: One verdict per factor on the patient page, the strongest of its lags, in this order of precedence.
_PRECEDENCE = ("trigger", "warning_sign", "protective", "insufficient_data", "no_association")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lower(text: str) -> str:
    """Lower-case the first letter unless the word is an acronym (``"REM sleep"`` stays)."""
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


def _humanise(factor_id: str) -> str:
    return str(factor_id).split(":", 1)[-1].replace("_", " ").strip()


def factor_name(f: dict) -> str:
    """The factor as a patient says it, capitalised: ``"Alcohol"``, ``"Yawning"``, ``"Red wine"``."""
    fid = str(f.get("factor", ""))
    if fid in NAMES:
        return NAMES[fid]
    return _cap(_humanise(fid)) or "This factor"


def _number(text: str) -> str:
    """``"0.675"`` -> ``"0.7"``, ``"3.0"`` -> ``"3"``: at most one decimal, as people say amounts."""
    try:
        v = float(text)
    except ValueError:
        return text
    if abs(v) >= 10 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.1f}"


def _matters(name: str) -> str:
    return "matter" if name in PLURAL else "matters"


def _amount(op: str, number: str, unit: str) -> str:
    """``(">=", "3", "drinks")`` -> ``"3 or more drinks"``; ``(">=", "0.7", "h")`` -> ``"0.7 hours or more"``."""
    if unit in MEASURES:
        value = MEASURES[unit].format(number)
        return {">=": "{} or more", "<=": "{} or less", ">": "more than {}", "<": "less than {}"}.get(
            op, "{}").format(value)
    return (_OPS[op].format(number) + (f" {unit}" if unit else "")).strip()


def exposure_words(f: dict) -> str:
    """What an exposed day had: ``"3 or more drinks"``, ``"0.7 hours or more of sleep"``, ``"a skipped meal"``,
    ``"having chocolate"``; built from the ``exposure`` text the analysis gives (``">= 3 drinks"``, ``"yes"``)."""
    fid = str(f.get("factor", ""))
    raw = f.get("exposure")
    m = _EXPOSURE.match(str(raw)) if raw not in (None, "", "yes", True) else None
    if m:
        op = {"≥": ">=", "≤": "<="}.get(m.group(1), m.group(1))
        number, unit = _number(m.group(2)), m.group(3).strip()
        amount = _amount(op, number, unit)
        if unit in MEASURES or not unit:
            return AMOUNT_OF.get(fid, _lower(factor_name(f)) + " of {}").format(amount)
        return amount
    if fid in THINGS:
        return THINGS[fid]
    if fid.startswith("food:"):
        return f"having {_humanise(fid)}"
    if raw not in (None, "", "yes", True):
        return f"{_lower(factor_name(f))} {raw}"
    return _lower(factor_name(f))


def exposed_days_phrase(f: dict) -> str:
    """``"days after 3 or more drinks"`` (lag 1) or ``"days with 3 or more drinks"`` (lag 0)."""
    lag = f.get("lag_days") or 0
    special = _EXPOSED_DAYS.get((f.get("factor"), lag))
    if special:
        return special
    return f"days {'after' if lag else 'with'} {exposure_words(f)}"


def one_in(events: int | None, days: int | None) -> str | None:
    """A rate as people say it: ``"1 in 8"``, ``"3 of 4"``, ``"none"``; None when unknown."""
    if events is None or not days:
        return None
    if events <= 0:
        return "none"
    ratio = days / events
    return f"1 in {round(ratio)}" if ratio >= 1.5 else f"{events} of {days}"


def evidence_sentence(f: dict) -> str | None:
    """``"On 14 of the 31 days after 3 or more drinks you had an attack; on other days it was 1 in 8."``"""
    n, a = f.get("exposed_days"), f.get("attacks_after_exposure")
    if not n or a is None:
        return None
    text = f"On {a} of the {n} {exposed_days_phrase(f)} you had an attack"
    other = one_in(f.get("attacks_without_exposure"), f.get("unexposed_days"))
    if other is not None:
        text += "; on other days you had none" if other == "none" else f"; on other days it was {other}"
    return text + "."


#: Foods eaten because of a craving that is itself an early sign of the attack (the premonitory phase; the
#: classic case is chocolate): such a food follows the attack's start instead of causing it, and a diary
#: cannot tell the two apart unless the craving is logged too. Words of the ``food:`` tag.
CRAVED_FOODS = ("chocolate", "sweet", "sugar", "candy", "cake", "dessert", "ice_cream", "biscuit", "cookie",
                "carb", "pastr", "crisps", "chips")
CRAVING_CAVEAT = ("Craving it can also be an early sign of an attack: if you ate it because you craved it, it may "
                  "be a warning sign rather than the cause.")


def _craved(f: dict) -> bool:
    fid = str(f.get("factor") or "")
    return fid.startswith("food:") and any(w in fid[5:].lower() for w in CRAVED_FOODS)


def factor_sentence(f: dict) -> str:
    """The one plain sentence (or two) a patient reads about a factor, by verdict."""
    name, verdict = factor_name(f), f.get("verdict")
    evidence = evidence_sentence(f)
    if verdict == "trigger":
        head = f"{name} {'seem' if name in PLURAL else 'seems'} to be one of your triggers."
        if _craved(f):
            evidence = " ".join(filter(None, (evidence, CRAVING_CAVEAT)))
    elif verdict == "protective":
        head = f"{name} seemed to come with fewer attacks. That does not prove it prevents them."
    elif verdict == "warning_sign":
        return (f"{name} often comes before your attacks: it may be an early sign of the attack rather "
                f"than its cause.")
    elif verdict == "no_association":
        return f"{name} did not make a difference for you."
    else:
        needed, answer = _days(f.get("days_needed")), _days(f.get("days_to_answer"))
        if answer:
            return (f"We can't tell yet whether {_lower(name)} {_matters(name)}; about {answer} more days of "
                    f"logging may settle it.")
        if _open_a_year_on(f):
            # more likely than not, a year more of logging still leaves it open (docs/models.md)
            return (f"We can't tell yet whether {_lower(name)} {_matters(name)}, and even a year more of logging "
                    f"may not settle it.")
        if needed and "days_to_answer" in f:
            more = f"About {needed} more days" if needed <= 365 else "More than a year"
            return (f"We can't tell yet whether {_lower(name)} {_matters(name)}: there are too few days to "
                    f"compare so far. {more} of logging would give enough to begin.")
        if needed:  # a report of an earlier version, without days_to_answer
            return (f"We can't tell yet whether {_lower(name)} {_matters(name)}; about {needed} more days "
                    f"of logging would help.")
        if _no_record(f):
            return f"We have no record of {_lower(name)} for you, so we can't tell whether it {_matters(name)}."
        seen = (f.get("exposed_days") or 0, f.get("unexposed_days") or 0)
        if min(seen) == 0 < max(seen):  # logged, but never once different
            return (f"We can't tell whether {_lower(name)} {_matters(name)}: it was the same on every day you "
                    f"logged. It would show only by comparing days that differ.")
        return f"We can't tell yet whether {_lower(name)} {_matters(name)}; keep logging it."
    return f"{head} {evidence}" if evidence else head


def _days(value: Any) -> int | None:
    """A count of days to show (a positive finite number, rounded; numpy's too), else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return round(value) if math.isfinite(value) and value > 0 else None


def _no_record(f: dict) -> bool:
    """A factor with no day to compare, either way: never logged (stress in a diary without it), or never
    recorded for the patient (a wearable's sleep efficiency without a wearable, weather without a home)."""
    return (f.get("odds_ratio") is None and not _days(f.get("days_needed")) and not _days(f.get("days_to_answer"))
            and f.get("exposed_days") == 0 and f.get("unexposed_days") == 0)


def _open_a_year_on(f: dict) -> bool:
    """An estimated factor that more logging will likely not settle within a year (no ``days_to_answer``)."""
    return _unsure_order(f)[0] == 2


def _unsure_order(f: dict) -> tuple:
    """What we can't tell yet, most useful first: (0) the factors more logging will likely settle within a
    year (fewest days first), (1) those with too few days to compare, (2) those a year will likely not settle
    and (3) the rest (each by ``days_needed``, unknown last); (4) last, those with no record at all."""
    if _no_record(f):
        return (4,)
    answer = _days(f.get("days_to_answer"))
    if answer:
        return 0, answer
    needed = _days(f.get("days_needed"))
    if f.get("odds_ratio") is None:
        return (1, needed) if needed else (3, 1, 0)
    if "days_to_answer" in f:
        return 2, needed is None, needed or 0
    return 3, needed is None, needed or 0


def said_item(f: dict) -> dict:
    """A factor as the patient pages list it: its name, its sentence and the factor itself."""
    return {"name": factor_name(f), "text": factor_sentence(f), "f": f}


def unsure_items(factors: list[dict], shown: int = 6) -> tuple[list[dict], int]:
    """What we can't tell yet, as the page lists it: up to ``shown`` items, and how many factors are left out.
    ``factors`` in :func:`_unsure_order`: first the factors more logging will likely settle within a year,
    and those with too few days to compare; then the ones a year more will likely not settle, most of them,
    in one item ("whether rain, humidity or caffeine matter ...") instead of a line each saying the same;
    then the rest (the same on every day logged, reports without ``days_to_answer``); last, in one item too,
    those with no record at all (a diary without stress: "keep logging it" was wrong there)."""
    tiers = [_unsure_order(f)[0] for f in factors]
    lead = [f for f, t in zip(factors, tiers) if t < 2]
    year = [f for f, t in zip(factors, tiers) if t == 2]
    tail = [f for f, t in zip(factors, tiers) if t == 3]
    none = [f for f, t in zip(factors, tiers) if t == 4]
    items = [said_item(f) for f in lead[:shown]]
    told = len(items)
    if year and len(items) < shown:
        items.append(_together(year[:shown], "We can't tell yet whether {} matter, and even a year more of "
                                             "logging may not settle them."))
        told += len(year[:shown])
    rest = tail[:max(shown - len(items), 0)]
    items += [said_item(f) for f in rest]
    told += len(rest)
    if none and len(items) < shown:
        items.append(_together(none[:shown], "We have no record of {} for you, so we can't tell whether they "
                                             "matter."))
        told += len(none[:shown])
    return items, len(factors) - told


def _together(named: list[dict], text: str) -> dict:
    """One item of the list for several factors, ``text`` with their names ("a, b or c") in its ``{}``; one
    factor is its own item."""
    if len(named) == 1:
        return said_item(named[0])
    names = [_lower(factor_name(f)) for f in named]
    return {"name": ", ".join(names), "f": None, "text": text.format(f"{', '.join(names[:-1])} or {names[-1]}")}


def patient_factors(factors: list[dict] | None) -> dict[str, list[dict]]:
    """Each factor once, under the strongest verdict of its lags; triggers in rank order. Between two lags
    we can't tell about yet, the one that says more (:func:`_unsure_order`): medication logged on attack
    days, constant the day before on the days that could start one, was "the same on every day you
    logged" though its same-day row was estimated."""
    best: dict[str, dict] = {}
    for f in factors or []:
        key = str(f.get("factor"))
        v = f.get("verdict")
        if v not in _PRECEDENCE:
            continue
        old = best.get(key)
        if old is None or _PRECEDENCE.index(v) < _PRECEDENCE.index(old["verdict"]) or (
                v == old["verdict"] == "trigger" and (f.get("rank") or 10**9) < (old.get("rank") or 10**9)) or (
                v == old["verdict"] == "insufficient_data" and _unsure_order(f) < _unsure_order(old)):
            best[key] = f
    groups: dict[str, list[dict]] = {v: [] for v in _PRECEDENCE}
    for f in best.values():
        groups[f["verdict"]].append(f)
    groups["trigger"].sort(key=lambda f: (f.get("rank") or 10**9, f.get("q_value") or 1.0))
    groups["insufficient_data"].sort(key=_unsure_order)
    for v in ("warning_sign", "protective", "no_association"):
        groups[v].sort(key=lambda f: factor_name(f).lower())
    return groups


def long_date(text: str | None, *, weekday: bool = False) -> str:
    """``"20 November 2026"`` (English whatever the locale); the text itself if it is not a date."""
    if not text:
        return ""
    try:
        d = date.fromisoformat(str(text)[:10])
    except ValueError:
        return str(text)
    out = f"{d.day} {MONTH_NAMES[d.month - 1]} {d.year}"
    return f"{WEEKDAYS[d.weekday()]} {out}" if weekday else out


def percent(p: float | None) -> str:
    """``0.31`` -> ``"31%"``; tiny values -> ``"under 1%"``."""
    if p is None or isinstance(p, jinja2.Undefined):
        return "unknown"
    v = 100 * p
    return f"{v:.0f}%" if v >= 1 or v == 0 else "under 1%"


#: the clinician pages' note when :func:`no_headache_record`
NO_HEADACHE_RECORD = ("No headache on record: no diary day says whether there was a headache (the diary has no "
                      "headache or headache_intensity values) and no attack is on record in those days, so the 0 "
                      "attack onsets are unknown, not headache-free days. Import the attacks, or have the patient "
                      "log headache yes/no each day.")


def no_headache_record(triggers: dict) -> bool:
    """Diary days, but none says whether there was a headache and no attack was recorded: the days are not
    known to be headache-free (a diary of other things, or of bad days only, without a headache column). The
    rule of models._no_headache_record, on the report."""
    d = triggers.get("data") or {}
    return bool(d.get("diary_days")) and d.get("headache_recorded_days") == 0 and not d.get("attacks")


def data_sentences(triggers: dict) -> list[str]:
    """What the report is based on, or why there is nothing yet."""
    d = triggers.get("data") or {}
    diary, attacks = d.get("diary_days") or 0, d.get("attacks") or 0
    if not diary and not attacks:
        # a span: the days looked at (analysis.max_history_days); what was logged before them is not "yet"
        when = (f"between {long_date(d['first_day'])} and {long_date(d['last_day'])}"
                if d.get("first_day") and d.get("last_day") else "yet")
        return [(f"We have nothing logged from you {when}. When you log your days and your attacks, this "
                 "report will show what seems to set off your migraines.")]
    out = []
    span = ""
    if d.get("first_day") and d.get("last_day"):
        span = f" between {long_date(d['first_day'])} and {long_date(d['last_day'])}"
    if not diary:
        out.append(f"We have {attacks} attack{'s' if attacks != 1 else ''} from you{span}, but no diary days yet.")
        out.append("Logging your day (sleep, drinks, stress, food) is what lets us look for your triggers.")
    elif no_headache_record(triggers):
        # a diary that never says whether there was a headache, and no attacks: not 0 attacks, unknown
        return [(f"This report uses the {diary} day{'s' if diary != 1 else ''} you logged{span}, but none of "
                 "them says whether you had a headache, and we have no attacks from you in that time."),
                ("Triggers are found by comparing the days before a headache with the other days, so we can't "
                 "look for yours yet. Please log each day whether you had a headache (yes or no), including "
                 "good days, or ask your clinic to import your attack records.")]
    else:
        out.append(f"This report uses the {diary} day{'s' if diary != 1 else ''} you logged{span}. "
                   f"You had {attacks} attack{'s' if attacks != 1 else ''} in that time.")
    missing = d.get("missing_days")
    if missing:
        out.append(f"{missing} day{'s were' if missing != 1 else ' was'} not logged.")
    if d.get("migraine_days_last_30") is not None:
        n = d["migraine_days_last_30"]
        out.append(f"In the last 30 days you had {n} migraine day{'s' if n != 1 else ''}.")
    if triggers.get("status") == "insufficient_data" and diary:
        # every factor waits for the patient's at-risk days and attacks (analysis.min_at_risk_days and
        # min_attacks): the fewest days_needed of the factors is that wait
        waits = [n for n in (_days(f.get("days_needed")) for f in triggers.get("factors") or []) if n]
        wait = f": about {min(waits)} more days will give enough to start looking for them" if waits else ""
        if waits and min(waits) > 365:  # few days that could start an attack (a headache on most), or few attacks
            wait = (": at the rate of your days so far, it will take more than a year to have enough to start "
                    "looking for them")
        out.append(f"That is not enough yet to name your triggers. Please keep logging every day, including days "
                   f"without a headache{wait}.")
        at_risk = d.get("at_risk_days")
        if at_risk is not None and at_risk < diary / 2:  # why: few days began without a headache
            some = f"Only {at_risk} of your {diary} days" if at_risk else f"None of your {diary} days"
            out.append(f"{some} started without a headache carried over from the day before. Triggers are looked "
                       f"for in what comes before a headache starts, so those are the only days we can compare.")
    return out


def forecast_sentences(triggers: dict) -> list[str]:
    """The forecast day's risk in words and %, against the patient's usual; empty without a forecast."""
    fc = triggers.get("forecast")
    if not fc or fc.get("attack_probability") is None:
        return []
    p, base = fc["attack_probability"], fc.get("baseline_probability")
    when = long_date(fc.get("date"), weekday=True)
    # Named from when the report was made: the nightly run (data through yesterday) forecasts today.
    made = str(triggers.get("generated_at") or "")[:10] or str(triggers.get("as_of") or "")
    try:
        ahead = (date.fromisoformat(str(fc.get("date"))) - date.fromisoformat(made)).days
    except ValueError:
        ahead = None
    if ahead == 0:
        day = f"today ({when})"
    elif ahead == 1:
        day = f"tomorrow ({when})"
    else:
        day = f"on {when}" if when else "on the next day"
    rate = one_in(round(p * 100), 100) if p > 0 else None
    words = f" (about {rate})" if rate and rate != "none" and "of" not in rate else ""
    out = [f"Your chance of an attack {day} is about {percent(p)}{words}."]
    if base:
        if p >= 1.5 * base:
            out.append(f"That is higher than usual for you (usually {percent(base)}).")
        elif p <= base / 1.5:
            out.append(f"That is lower than usual for you (usually {percent(base)}).")
        elif p >= 1.2 * base:
            out.append(f"That is a little higher than usual for you (usually {percent(base)}).")
        elif p <= base / 1.2:
            out.append(f"That is a little lower than usual for you (usually {percent(base)}).")
        else:
            out.append(f"That is about usual for you ({percent(base)}).")
    drivers = [dr for dr in fc.get("drivers") or [] if (dr.get("contribution") or 0) > 0]
    if drivers:
        names = [exposure_words(dr) for dr in drivers[:3]]
        out.append("Mostly because of " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1
                                           else names[0]) + ".")
    out.append("This is an estimate, not a promise.")
    return out


def _more(n: int) -> str:
    """The closing line of a shortened list, or "" when nothing was left out."""
    if n <= 0:
        return ""
    return f"And {n} more thing{'s' if n != 1 else ''} we are still watching."


DISCLAIMER = ("This report is not medical advice. Talk to your clinician before you change your treatment "
              "or what you avoid.")


def patient_context(triggers: dict, charts: dict | None) -> dict[str, Any]:
    """Everything the patient templates show, as plain strings and lists."""
    groups = patient_factors(triggers.get("factors"))

    def said(verdict: str, shown: int | None = None) -> list[dict]:
        """The first ``shown`` factors of the verdict in words (only those: most patients have ~30 factors
        we can't tell about yet, and the page lists 6)."""
        return [said_item(f) for f in groups[verdict][:shown]]

    # with no headache on record, more logging of the same settles nothing: the data lines say what will
    unsure, left = ([], 0) if no_headache_record(triggers) else unsure_items(groups["insufficient_data"])
    return {
        "t": triggers, "charts": charts or {},
        "as_of": long_date(triggers.get("as_of")),
        "data_lines": data_sentences(triggers),
        "triggers": said("trigger", 5), "more_triggers": max(len(groups["trigger"]) - 5, 0),
        "warning_signs": said("warning_sign"), "protective": said("protective"),
        "unsure": unsure, "more_unsure": _more(left),
        "no_effect": said("no_association"),
        "forecast": forecast_sentences(triggers),
        "disclaimer": DISCLAIMER,
    }


# ------------------------------------------------------------------------------------------ rendering

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|!{}~])")


def md_escape(value: Any) -> str:
    """Backslash-escape Markdown and inline HTML, so patient text shows as typed and never runs."""
    return _MD_SPECIAL.sub(r"\\\1", "" if value is None else str(value))


#: The dash of a missing value on the HTML pages, as a character reference: with no character outside ASCII
#: in their own text (templates, charts, tables), the pages' strings stay one byte a character, and writing
#: them to UTF-8 is a copy (126-131 µs a patient's two pages, against 264-310 µs with "–", "·" and "…" in
#: them). A browser shows the same page.
_DASH = "&#8211;"
DASH = Markup(_DASH)


def _fmt(value: Any, digits: int = 2, dash: str = "\u2013") -> str:
    if value is None or isinstance(value, jinja2.Undefined) or (isinstance(value, float) and not math.isfinite(value)):
        return dash
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_html(value: Any, digits: int = 2) -> str:
    """:func:`_fmt` on an HTML page: the dash of a missing value is :data:`DASH`."""
    return _fmt(value, digits, DASH)


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(jinja2.Environment):
    """Looks up ``d.name`` of a plain dict by key straight away: what Jinja's ``getattr`` finds too (no dict
    attribute has that name), without raising and catching an AttributeError first, which on the clinician
    page's factor table (thousands of lookups per patient) took most of the rendering time."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _verdict_colour(v: Any) -> str:
    return ch.VERDICT_COLOURS.get(v, "#555")


def _words(v: Any) -> str:
    return str(v or "").replace("_", " ")


def treatment_response_text(t: dict | None) -> str | None:
    """A ranking row's latest treatment response in words: "ketamine infusion from 2026-07-11: 7.2 to 0.3
    migraine days per 30, helped" (the table printed the dict itself)."""
    if not t or not isinstance(t, dict):
        return t or None

    def num(x) -> str:
        return "?" if x is None else f"{x:g}"

    verdict = response_words(t)
    text = (f"{_words(str(t.get('treatment') or 'treatment'))} from {t.get('date')}: "
            f"{num(t.get('migraine_days_per_30_before'))} to {num(t.get('migraine_days_per_30_after'))} migraine "
            f"days per 30, {verdict}")
    return f"{text} ({t['caveat']})" if t.get("caveat") else text


def _env(autoescape: bool) -> jinja2.Environment:
    env = _Environment(
        loader=jinja2.PackageLoader("trigger_watch", "templates"),
        autoescape=autoescape, trim_blocks=True, keep_trailing_newline=True, auto_reload=False, lstrip_blocks=True, undefined=jinja2.ChainableUndefined,
        finalize=None if autoescape else md_escape,
    )
    env.filters.update(fmt=_fmt_html if autoescape else _fmt, pct=percent, long_date=long_date,
                       verdict_colour=_verdict_colour, words=_words, response=treatment_response_text,
                       # {{ low | interval(high) }}: the page's (and factor_table_rows') interval cell
                       interval=(lambda low, high: Markup(_interval(low, high))) if autoescape else (
                           lambda low, high: _interval(low, high, _fmt, "\u2013", "\u2013")))
    env.globals["DASH"] = DASH if autoescape else "\u2013"
    env.globals.update(no_headache_record=no_headache_record, NO_HEADACHE_RECORD=NO_HEADACHE_RECORD)
    return env


_HTML = _env(True)
_MD = _env(False)


def _html_charts(triggers: dict, charts: dict | None, factors: list | None = None) -> dict[str, Markup]:
    """The charts of both pages; ``factors``: ``triggers["factors"]`` already in the clinician page's order
    (:func:`_ordered_factors`), when the caller has them."""
    charts = charts or {}
    model = triggers.get("model") or {}
    return {
        "calendar": ch.calendar_svg(charts.get("calendar") or []),
        "legend": ch.calendar_legend(),
        "monthly": ch.monthly_svg(charts.get("monthly") or [], triggers.get("treatments") or []),
        "forest": ch.forest_svg(_ordered_factors(triggers) if factors is None else factors, ordered=True),
        "calibration": ch.calibration_svg(model.get("calibration")),
    }


def _ordered_factors(triggers: dict) -> list:
    """The factors as the clinician page lists them (its table and forest plot): by verdict, then rank."""
    return sorted(triggers.get("factors") or [], key=ch.verdict_sort_key)


def render_patient_md(triggers: dict, charts: dict | None = None) -> str:
    """summary.md: the patient summary as Markdown (patient text backslash-escaped)."""
    return _MD.get_template("summary.md.j2").render(**patient_context(triggers, charts))


def render_patient_html(triggers: dict, charts: dict | None = None, *, svg: dict | None = None) -> str:
    """summary.html: the patient summary as a self-contained page with the calendar and monthly chart."""
    svg = svg or _html_charts(triggers, charts)
    return _HTML.get_template("summary.html.j2").render(svg=svg, **patient_context(triggers, charts))


def render_clinician_html(triggers: dict, charts: dict | None = None, *, svg: dict | None = None,
                          factors: list | None = None) -> str:
    """clinician.html: data quality, calendar, monthly migraine days with treatments, forest plot, flags,
    forecast validation and the model. ``svg`` and ``factors`` (:func:`_ordered_factors`): what the caller
    has made already."""
    if factors is None:
        factors = _ordered_factors(triggers)
    svg = svg or _html_charts(triggers, charts, factors)
    return _HTML.get_template("clinician.html.j2").render(
        t=triggers, charts=charts or {}, svg=svg, factors=factors, factor_rows=factor_table_rows(factors),
        flag_rows=flag_table_rows(triggers.get("flags")), flags_listed=_FLAGS_LISTED,
        verdicts=ch.VERDICT_ORDER, colours=ch.VERDICT_COLOURS)


def render_clinician_md(triggers: dict, charts: dict | None = None) -> str:
    """The clinician page's tables and text as Markdown, without its charts (``trigger-watch report --for
    clinician --format md``: for a note or a terminal; not one of the files written)."""
    return _MD.get_template("clinician.md.j2").render(t=triggers, charts=charts or {},
                                                        factors=_ordered_factors(triggers))


class _Missing:
    """A key the dict does not have: false, like Jinja's undefined."""

    def __bool__(self) -> bool:
        return False


_ABSENT = _Missing()
_ESCAPED: dict[str, str] = {}


def _html(value: Any) -> str:
    """``{{ value }}`` on an HTML page (escaped); a missing key prints nothing."""
    kind = type(value)
    if kind is str:
        text = _ESCAPED.get(value)
        if text is None:
            text = str(escape(value))
            if len(_ESCAPED) < 20000:  # factor names and labels repeat from patient to patient
                _ESCAPED[value] = text
        return text
    if kind is int or kind is float:  # digits, "-", ".", "e", "inf", "nan": nothing to escape
        return str(value)
    return "" if value is _ABSENT else str(escape(value))


def _interval(low: Any, high: Any, cell: Callable[[Any], str] | None = None, dash: str = _DASH,
              sep: str = "&#8211;") -> str:
    """A 95% interval's cell: "low&#8211;high", each end written by ``cell`` (default :func:`_cell`, the HTML
    page's), or one dash when neither end is known (not three)."""
    if all(v is None or isinstance(v, jinja2.Undefined) for v in (low, high)):
        return dash
    cell = cell or _cell
    return f"{cell(low)}{sep}{cell(high)}"


def _cell(value: Any, digits: int = 2) -> str:
    """``{{ value | fmt(digits) }}`` on an HTML page: :func:`_fmt` written out for the plain types, whose text
    (digits, "-", ".", "yes", "no" or :data:`DASH`) needs no escaping."""
    kind = type(value)
    if kind is float:
        return f"{value:.{digits}f}" if math.isfinite(value) else _DASH
    if kind is int:
        return str(value)
    if value is None:
        return _DASH
    if kind is bool:
        return "yes" if value else "no"
    return str(escape(_fmt_html(value, digits)))


def factor_table_rows(factors: list) -> Markup | None:
    """The rows of the clinician page's factor table, exactly as the loop in ``clinician.html.j2`` writes
    them (that loop took most of the page's rendering time: an escape and a filter call per cell). None
    when a factor is not a plain dict: the template's loop then writes them (it also does when no
    ``factor_rows`` are given). ``tests/test_fast_paths.py`` checks that the two agree."""
    if any(type(f) is not dict for f in factors):
        return None
    rows = []
    for f in factors:
        get = f.get
        verdict = get("verdict")  # a missing key: None colours and words as Jinja's undefined does
        label = f["label"] if "label" in f else _ABSENT
        factor = f["factor"] if "factor" in f else _ABSENT
        exposure = get("exposure")
        key = (verdict, label, factor, exposure)
        try:
            head = _ROW_HEADS.get(key)
        except TypeError:  # unhashable
            head = None
        if head is None:
            head = _row_head(*key)
        rows.append(
            f'{head}      <td class="num">{_cell(get("lag_days"))}</td><td class="num">{_cell(get("rank"))}</td>\n'
            f'      <td class="num">{_cell(get("odds_ratio"))}</td><td class="num">{_interval(get("ci_low"), get("ci_high"))}'
            f'</td>\n'
            f'      <td class="num">{_cell(get("q_value"), 3)}</td><td class="num">{_cell(get("exposed_days"))}</td>\n'
            f'      <td class="num">{_cell(get("attacks_after_exposure"))}</td>'
            f'<td class="num">{_cell(get("days_needed"), 0)}</td><td class="num">{_cell(get("days_to_answer"), 0)}</td>'
            f'</tr>\n')
    return Markup("".join(rows))


_ROW_HEADS: dict[tuple, str] = {}


def _row_head(verdict: Any, label: Any, factor: Any, exposure: Any) -> str:
    """A factor table row's verdict and name cells, kept for the plain texts (they repeat from patient to
    patient)."""
    head = (f'    <tr><td><span class="badge" style="background: {_html(_verdict_colour(verdict))}">'
            f'{_html(_words(verdict))}</span></td>\n'
            f'      <td class="text">{_html(label or factor)}<br><span class="small muted">{_html(factor)}'
            f'{" &#183; exposed: " + _html(exposure) if exposure else ""}</span></td>\n')
    if all(type(v) is str or v is None for v in (verdict, label, factor, exposure)) and len(_ROW_HEADS) < 20000:
        _ROW_HEADS[(verdict, label, factor, exposure)] = head
    return head


#: The flags listed above the clinician page's table of the other flags (the template leaves them out of it
#: too), and the value types :func:`flag_table_rows` writes.
_FLAGS_LISTED = ("chronic_migraine", "medication_overuse", "details")
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _by_key(item: tuple) -> Any:
    return item[0].lower()  # Jinja's dictsort, for str keys


def flag_table_rows(flags: Any) -> Markup | None:
    """The rows of the clinician page's table of the other flags (days logged, trend, medication days, ...),
    exactly as the loop in ``clinician.html.j2`` writes them (its sort, filter and tests took about as long
    as the rest of the page's template). None unless ``flags`` is a plain dict with str keys whose values
    are scalars, lists or tuples of scalars, or such dicts: the template's loop then writes them.
    ``tests/test_fast_paths.py`` checks that the two agree."""
    if type(flags) is not dict or any(type(k) is not str for k in flags):
        return None
    rows = []
    for key, value in sorted(flags.items(), key=_by_key):
        if key in _FLAGS_LISTED:
            continue
        kind = type(value)
        if kind in _SCALARS:
            text = _html(_fmt_html(value))
        elif kind is dict:
            if any(type(k) is not str or type(v) not in _SCALARS for k, v in value.items()):
                return None
            text = "; ".join(f"{_html(_words(k))}: {_html(_fmt_html(v))}"
                             for k, v in sorted(value.items(), key=_by_key))
        elif kind is list or kind is tuple:
            if any(type(x) not in _SCALARS for x in value):
                return None
            text = _html(", ".join(map(str, value))) or _DASH
        else:
            return None
        rows.append(f'<tr><th>{_html(_words(key))}</th><td class="text">{text}</td></tr>')
    return Markup("".join(rows))


def render_ranking_html(ranking: list[dict]) -> str:
    """cohort/ranking.html: the ranking as a sortable table linking each row to its clinician page."""
    rows = [{**dict.fromkeys(CSV_COLUMNS), **r} for r in ranking or []]  # a missing key reads as None
    return _HTML.get_template("ranking.html.j2").render(rows=rows, table_rows=ranking_table_rows(rows))


_RANKING_KEYS = frozenset({"rank", "patient_id", "clinician_id", "risk_next_day", "risk_band",
                           "migraine_days_last_30", "migraine_days_prev_90_per_30", "trend", "chronic_migraine",
                           "medication_overuse", "top_triggers", "days_logged_last_30", "last_entry",
                           "latest_treatment_response", "reasons"})
_BANDS = {"low": 1, "moderate": 2, "high": 3}


def ranking_table_rows(rows: list[dict]) -> Markup | None:
    """The rows of ranking.html's table, exactly as the template's loop writes them (Jinja took ~1 s for
    10,000 patients, on every incremental cycle). None when a row is not a plain dict with every key: the
    template's loop then writes them. ``tests/test_fast_paths.py`` checks that the two agree."""
    if not rows or any(type(r) is not dict or not _RANKING_KEYS <= r.keys() for r in rows):
        return None
    dash, yes = _DASH, '<span class="flag-on">yes</span>'
    out = []
    for r in rows:
        risk, prev, band, pid = r["risk_next_day"], r["migraine_days_prev_90_per_30"], r["risk_band"], r["patient_id"]
        badge = f'<span class="badge band-{_html(band)}">{_html(band)}</span>' if band else dash
        reasons = "".join(f"<li>{_html(x)}</li>" for x in r["reasons"]) if r["reasons"] else None
        link = _html(jinja2.filters.do_urlencode(pid))
        out.append(
            "<tr>\n"
            f'  <td class="num" data-v="{_html(r["rank"])}">{_cell(r["rank"])}</td>\n'
            f'  <td class="text" data-v="{_html(pid)}"><a href="../{link}/clinician.html">{_html(pid)}</a></td>\n'
            f'  <td class="text">{_html(r["clinician_id"]) if r["clinician_id"] else dash}</td>\n'
            f'  <td class="num" data-v="{_html(risk if risk is not None else "")}">'
            f'{_html(percent(risk)) if risk is not None else dash}</td>\n'
            f'  <td data-v="{_html(_BANDS.get(band, 0))}">{badge}</td>\n'
            f'  <td class="num">{_cell(r["migraine_days_last_30"])}</td>\n'
            f'  <td class="num" data-v="{_html(prev if prev is not None else "")}">{_cell(prev, 1)}</td>\n'
            f'  <td>{_html(r["trend"]) if r["trend"] else dash}</td>\n'
            f'  <td data-v="{1 if r["chronic_migraine"] else 0}">{yes if r["chronic_migraine"] else "no"}</td>\n'
            f'  <td data-v="{1 if r["medication_overuse"] else 0}">{yes if r["medication_overuse"] else "no"}</td>\n'
            f'  <td class="text triggers">{"<br>".join(_html(x) for x in (r["top_triggers"] or []))}</td>\n'
            f'  <td class="num">{_cell(r["days_logged_last_30"])}</td>\n'
            f'  <td>{_html(r["last_entry"]) if r["last_entry"] else dash}</td>\n'
            f'  <td class="text">{_html(treatment_response_text(r["latest_treatment_response"]) or "") or dash}</td>\n'
            f'  <td class="text reasons">{"<ul>" + reasons + "</ul>" if reasons else ""}</td>\n'
            "</tr>\n")
    return Markup("".join(out))


#: ranking.csv columns: the ranking.json entry keys of reports.md, in the contract's order.
CSV_COLUMNS = tuple(ENTRY_KEYS)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(v: Any) -> Any:
    kind = type(v)  # the plain types first, as the general path below treats them
    if kind is str:
        return "'" + v if v[:1] in _FORMULA else v
    if kind is int or kind is float:
        return v
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        v = "; ".join(str(x) for x in v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, dict):  # the latest treatment response: JSON as ranking.json has it, not Python's repr
        v = _dumpb(v).decode("utf-8")
    # A spreadsheet must not run patient-entered text as a formula.
    if isinstance(v, str) and v[:1] in _FORMULA:
        return "'" + v
    return v


def ranking_csv(ranking: list[dict]) -> str:
    """cohort/ranking.csv: one row per patient; lists joined with ``"; "``; booleans 0/1."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in ranking or []:
        w.writerow([_csv_cell(r.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def _clean(obj: Any) -> Any:
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    kind = type(obj)
    if kind is dict:  # the common case first, its plain values without a call each (same result)
        out = {}
        for k, v in obj.items():
            vk = type(v)
            if vk is float:
                if not math.isfinite(v):
                    v = None
            elif not (vk is str or vk is int or vk is bool or v is None):
                v = _clean(v)
            out[k if type(k) is str else str(k)] = v
        return out
    if kind is list:
        return [v if type(v) is str else _clean(v) for v in obj]
    return _clean_other(obj)


def _clean_other(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, str, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy scalar
        return _clean(obj.item())
    return str(obj)


#: ``json.dumps(v, ensure_ascii=False, allow_nan=False)`` without making an encoder per call (what dumps does
#: whenever it is given an option).
_JSON_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _c_encoder():
    """``_JSON_STRICT``'s C encoder, made once (``encode`` makes one per call, ~1.5 µs, and triggers.json is
    encoded in ~80 pieces); None where there is none. No check for cycles: a cleaned value has none."""
    try:
        return json.encoder.c_make_encoder(None, _JSON_STRICT.default, json.encoder.encode_basestring, None,
                                           ": ", ", ", False, False, False)
    except TypeError:  # no C accelerator (c_make_encoder is None), or another signature
        return None


_C_ENCODE = _c_encoder()


def _dump(obj: Any) -> str:
    """``_JSON_STRICT.encode(obj)`` of a value :func:`_clean` made (no NaN or infinity is left in it)."""
    return _JSON_STRICT.encode(obj) if _C_ENCODE is None else "".join(_C_ENCODE(obj, 0))


#: orjson's options for :func:`_dumpb`: numpy scalars as numbers; dates and dataclasses to
#: :func:`_json_default`, which writes them as :func:`_clean` does (``str``), not in orjson's own way.
_ORJSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _json_default(obj: Any) -> Any:
    """What orjson does not write itself, as :func:`_clean` makes it (a float subclass as its value)."""
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    return _clean_other(obj)


def _dumpb(obj: Any) -> bytes:
    """``obj`` as compact JSON in UTF-8, the value :func:`_clean` would make of it (NaN and infinities null,
    numpy scalars as numbers, tuples as lists, anything else as its ``str``), without walking it in Python:
    orjson writes a patient's triggers.json in a tenth of the time of ``_clean`` and the standard encoder.
    What orjson refuses (a key that is not text, an integer past 64 bits) goes the standard way."""
    try:
        return orjson.dumps(obj, default=_json_default, option=_ORJSON)
    except TypeError:  # orjson.JSONEncodeError
        return _dump(_clean(obj)).encode("utf-8")


def to_json(obj: Any) -> str:
    """Readable JSON, fast: one line per top-level key and per list item."""
    if isinstance(obj, dict):
        return _json_texts(obj)[0].decode("utf-8")
    if isinstance(obj, (list, tuple)) and obj:
        return "[\n" + ",\n".join("  " + _dumpb(v).decode("utf-8") for v in obj) + "\n]\n"
    return _dumpb(obj).decode("utf-8") + "\n"


def _json_texts(obj: dict) -> tuple[bytes, bytes]:
    """A dict as :func:`to_json` writes it (in UTF-8), and on one line (:func:`_dumpb`): triggers.json and
    the history's copy of it. The line is a second orjson call rather than a join of the file's pieces: the
    join in Python was no faster (~120 against ~110-116 µs a patient for both texts)."""
    if not obj:
        return b"{}\n", b"{}"
    lines = []
    for k, v in obj.items():
        key = _dumpb(k if type(k) is str else str(k))
        if (type(v) is list or type(v) is tuple) and v:
            lines.append(b"  " + key + b": [\n    " + b",\n    ".join([_dumpb(x) for x in v]) + b"\n  ]")
        else:
            lines.append(b"  " + key + b": " + _dumpb(v))
    return b"{\n" + b",\n".join(lines) + b"\n}\n", _dumpb(obj)


def render_report(triggers: dict, charts: dict | None, audience: str = "patient", fmt: str = "md") -> str:
    """One report as text, ``patient`` or ``clinician``, md|html|json (json: triggers.json for both)."""
    if fmt == "json":
        return to_json(triggers)
    if audience == "patient" and fmt == "md":
        return render_patient_md(triggers, charts)
    if audience == "patient" and fmt == "html":
        return render_patient_html(triggers, charts)
    if audience == "clinician" and fmt == "html":
        return render_clinician_html(triggers, charts)
    if audience == "clinician" and fmt == "md":
        return render_clinician_md(triggers, charts)
    raise TriggerWatchError(f"there is no {fmt} report for the {audience}")


# ------------------------------------------------------------------------------------------- writing

def _safe_folder(reports_dir: Path, name: str) -> Path:
    name = str(name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise TriggerWatchError(f"patient id {name!r} cannot be used as a report folder name")
    return Path(reports_dir) / name


def _utf8(text: str | bytes) -> bytes:
    """``text`` in UTF-8; bytes (triggers.json as orjson writes it) as they are."""
    return text if type(text) is bytes else text.encode("utf-8")


def atomic_write(path: Path, text: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8, or bytes as they are) to ``path`` via a temporary file in the same folder and
    ``os.replace``.

    A reader sees the old file or the new one, never a part; on any error the temporary file is removed
    and the old file is untouched.
    """
    path = Path(path)
    data = _utf8(text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(folder: Path, texts: dict[str, str | bytes], fsync: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write(folder / name, text, fsync=fsync) for name, text in texts.items()]
    if fsync:
        _fsync_dir(folder)
    return paths


def patient_texts(triggers: dict, charts: dict | None) -> dict[str, str]:
    """The four patient files as text, keyed by file name (charts drawn and words written once for both
    pages)."""
    return {name: text if type(text) is str else text.decode("utf-8")
            for name, text in _patient_files(triggers, charts)[0].items()}


def _patient_files(triggers: dict, charts: dict | None) -> tuple[dict[str, str | bytes], bytes | None]:
    """:func:`patient_texts` (triggers.json in UTF-8 bytes, as orjson writes it), and the history's JSON of
    ``triggers`` (``triggers_json`` of :func:`history_row`; None when ``triggers`` is not a dict)."""
    factors = _ordered_factors(triggers)  # once for the forest plot and the factor table
    svg = _html_charts(triggers, charts, factors)
    context = patient_context(triggers, charts)  # once for both patient pages
    file_json, line_json = _json_texts(triggers) if type(triggers) is dict else (to_json(triggers), None)
    return {
        "triggers.json": file_json,
        "summary.md": _MD.get_template("summary.md.j2").render(**context),
        "summary.html": _HTML.get_template("summary.html.j2").render(svg=svg, **context),
        "clinician.html": render_clinician_html(triggers, charts, svg=svg, factors=factors),
    }, line_json


def write_patient_reports(reports_dir: str | os.PathLike, triggers: dict, charts: dict | None = None, *,
                          fsync: bool = True) -> list[Path]:
    """Write ``<reports_dir>/<patient_id>/{triggers.json, summary.md, summary.html, clinician.html}``.

    Everything is rendered before anything is written, so a rendering error leaves every old file in place;
    each file is then replaced atomically. Returns the paths written.
    """
    folder = _safe_folder(Path(reports_dir), triggers.get("patient_id"))
    return _write_all(folder, _patient_files(triggers, charts)[0], fsync)



def write_many_patient_reports(reports_dir: str | os.PathLike, items: list[tuple[dict, dict | None]], *,
                               spares: bool = True
                               ) -> tuple[list[tuple[dict, dict | None, str | None]], dict[str, str]]:
    """:func:`write_patient_reports` for many patients, with two file-system syncs in all instead of five
    per patient: every file is rendered and written beside the one it replaces (:func:`stage_patient_reports`:
    over its spare, or to a temporary name), then the file system is synced, every file is put in place, and
    it is synced again (:func:`commit_staged`). The guarantee is the same (a reader sees old or new whole
    files; after a crash, a file in place has its content). ``spares``: see :data:`SPARE`. Returns the
    ``(triggers, charts, triggers_json)`` written, ``triggers_json`` being the history's copy of
    triggers.json for :func:`history_row`, and ``{patient_id: error}`` for the patients that could not be
    (their old files are untouched).
    """
    staged, errors = stage_patient_reports(reports_dir, items, spares=spares)
    done, failed = commit_staged(reports_dir, [(str(item[0].get("patient_id")), moves) for item, moves in staged])
    errors.update(failed)
    return [staged[i][0] for i in done], errors


def stage_patient_reports(reports_dir: str | os.PathLike, items: list[tuple[dict, dict | None]], *,
                          spares: bool = True
                          ) -> tuple[list[tuple[tuple[dict, dict | None, str | None], list[tuple[str, str]]]],
                                     dict[str, str]]:
    """The first half of :func:`write_many_patient_reports`: each patient's four files rendered and written
    beside the files they will replace, nothing synced or renamed: over each file's spare (``spares``, see
    :data:`SPARE`; made when there is none yet), else to a new temporary name. Returns ``((triggers, charts,
    triggers_json), [(staged, final path), ...])`` per patient staged, and ``{patient_id: error}`` for the
    others (nothing of theirs is left on disk but spares). :func:`commit_staged` puts the files in place;
    until then a reader sees the old ones."""
    staged: list[tuple[tuple[dict, dict | None, str | None], list[tuple[str, str]]]] = []
    errors: dict[str, str] = {}
    # temporary names: this process, one random tag per chunk and a count (not a random draw per file)
    tag, count = f"{os.getpid()}.{secrets.token_hex(4)}", itertools.count()
    for triggers, charts in items:
        pid = triggers.get("patient_id")
        moves: list[tuple[str, str]] = []
        try:
            folder = os.fspath(_safe_folder(Path(reports_dir), pid))
            texts, triggers_json = _patient_files(triggers, charts)
            for name, text in texts.items():
                fd = None
                if spares:
                    tmp = f"{folder}/.{name}{SPARE}"
                    fd, reused = _open_spare(tmp, folder)
                if fd is None:  # no spares, or this file's spare cannot be used
                    tmp, reused = f"{folder}/.{name}.{tag}.{next(count)}.tmp", False
                    fd = _new_file(tmp, folder)
                moves.append((tmp, f"{folder}/{name}"))
                _write_fd(fd, _utf8(text), over=reused)
            staged.append(((triggers, charts, triggers_json), moves))
        except Exception as exc:  # one patient's failure must not stop the others
            errors[str(pid)] = f"{type(exc).__name__}: {exc}"
            _remove(tmp for tmp, _ in moves)
    return staged, errors


def commit_staged(reports_dir: str | os.PathLike, staged: list[tuple[str, list[tuple[str, str]]]]
                  ) -> tuple[list[int], dict[str, str]]:
    """The second half of :func:`write_many_patient_reports`: ``staged`` is ``(patient_id, [(staged,
    final path), ...])`` per patient (:func:`stage_patient_reports`' moves). Syncs the file system (the
    contents are on disk before any name points at them), puts each patient's files in place (a spare's
    name swapped with the file's, :func:`_swap`; a temporary file renamed over it) and syncs again. Returns
    the positions in ``staged`` of the patients whose files are all in place, and ``{patient_id: error}``
    for the others (their staged files removed)."""
    if not staged:
        return [], {}
    _sync_file_system(Path(reports_dir))
    done, errors = [], {}
    for i, (pid, moves) in enumerate(staged):
        try:
            for tmp, path in moves:
                _swap(tmp, path) if tmp.endswith(SPARE) else os.replace(tmp, path)
            done.append(i)
        except OSError as exc:
            errors[pid] = f"{type(exc).__name__}: {exc}"
            _remove(tmp for tmp, _ in moves)
    _sync_file_system(Path(reports_dir))
    return done, errors


#: While a run writes reports, a file of this name in its models folder (:func:`begin_writing`; not in the
#: reports folder, which clinics read): found by the next run, it says the last one was killed or crashed
#: mid-way and may have left temporary files beside the reports.
WRITING = ".reports-writing"


#: In the reports folder's ``cohort`` folder (beside the ranking; a folder of its own at the top would be taken
#: for a patient's): the id of the database whose reports it holds (first line) and that database's path when
#: it was marked (second line, to name it). Written by the first run that writes reports there.
OWNER = ".trigger-watch-database"


def claim_folder(reports_dir: str | os.PathLike, database_id: str, database: str | os.PathLike) -> None:
    """Mark ``reports_dir`` as the reports folder of the database ``database_id`` (:func:`storage.database_id`),
    or raise :class:`ConfigError` when it is another database's. Two configurations with one reports folder
    wrote each other's cohort ranking over, and the patients of both into one folder, each run removing
    none of the other's; a forgotten patient of one could share an id with a patient of the other. A moved
    or copied database keeps its id: only a different database is refused."""
    mark = Path(reports_dir) / "cohort" / OWNER
    try:
        owner, _, where = mark.read_text(encoding="utf-8").partition("\n")
    except FileNotFoundError:
        mark.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(mark, f"{database_id}\n{os.fspath(database)}\n")
        return
    if owner.strip() != database_id:
        raise ConfigError(
            f"the reports folder {os.fspath(reports_dir)} holds the reports of another database "
            f"({where.strip() or 'unknown'}): give this one a [storage] reports_dir of its own, or, if that "
            f"database is gone for good, remove {mark} and run again")


def begin_writing(reports_dir: str | os.PathLike, mark_dir: str | os.PathLike) -> int:
    """Mark ``reports_dir`` as being written (a :data:`WRITING` file in ``mark_dir``, until
    :func:`end_writing`). When the last run left its mark (killed or crashed while writing), first remove the
    temporary files it left in the patients' folders and ``cohort`` (hidden ``.*.tmp`` files made before
    now; runs that write reports take the cycle's lock, so no other one is writing). Returns how many were
    removed."""
    mark = Path(mark_dir) / WRITING
    removed = remove_leftovers(reports_dir) if mark.exists() and Path(reports_dir).is_dir() else 0
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"{os.fspath(reports_dir)}\n")
    return removed


def end_writing(mark_dir: str | os.PathLike) -> None:
    """The run that called :func:`begin_writing` has put every file it wrote in place."""
    (Path(mark_dir) / WRITING).unlink(missing_ok=True)


def remove_leftovers(reports_dir: str | os.PathLike, before: float | None = None) -> int:
    """Remove the temporary report files (``.<name>.<...>.tmp``, made before ``before``, default now) in
    the folders of ``reports_dir``. Returns how many."""
    import time

    before = time.time() if before is None else before
    removed = 0
    with os.scandir(reports_dir) as folders:
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            with os.scandir(folder.path) as files:
                removed += _remove(f.path for f in files
                                   if f.name.startswith(".") and f.name.endswith(".tmp")
                                   and f.is_file(follow_symlinks=False)
                                   and f.stat(follow_symlinks=False).st_mtime < before)
    return removed


#: ``open(path, "xb")`` as one system call (Python's open adds an fstat, an ioctl and an lseek).
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: A spare opened to be written over: never through a symbolic link.
_SPARE_FILE = os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)

#: The suffix of a report file's spare, ``<folder>/.<name>.spare``: with ``[storage] report_spares`` on (the
#: default), putting a new version of a file in place swaps its name with the spare's (:func:`_swap`), so
#: the old version becomes the spare that the next run writes over in place. After the first two runs no
#: file is created or freed: on ext4 (measured on this project's benchmark machine, ext4 without a journal,
#: mounted with ``discard``) creating a new file after many were freed cost ~0.4 ms and replacing one
#: (which frees the old file's blocks) ~0.25 ms of waiting, against ~0.01 ms to open a spare. Costs: each
#: patient's folder holds the previous version of its four files too (about twice the disk), and a program
#: that kept a report file open from one run to the next (the spare, by then) would read it being rewritten.
SPARE = ".spare"
#: Whole pages of zeros: a spare is written over in whole pages (then cut to its length), so the kernel
#: need not first read a page the write only partly covers when it is no longer in the page cache.
_PAGE = 4096
_ZEROS = bytes(_PAGE)


def _open_spare(path: str, folder: str) -> tuple[int | None, bool]:
    """Open the spare ``path`` to be written over, or make it (and ``folder``) when there is none. Returns
    ``(fd, reused)``; fd None when it cannot be used (a folder or a symbolic link in its place): the caller
    then writes a temporary file instead."""
    try:
        return os.open(path, _SPARE_FILE), True
    except FileNotFoundError:
        return _new_file(path, folder), False
    except OSError:
        return None, False


def _new_file(path: str, folder: str) -> int:
    """Create ``path`` for writing (it must not exist); ``folder`` is made when it is missing."""
    try:
        return os.open(path, _NEW_FILE, 0o666)
    except FileNotFoundError:  # the patient's first report: make the folder (not tried each time)
        os.makedirs(folder, exist_ok=True)
        return os.open(path, _NEW_FILE, 0o666)


def _write_fd(fd: int, data: bytes, *, over: bool = False) -> None:
    """Write all of ``data`` to the open file ``fd`` and close it. ``over``: the file has older contents:
    written over in whole pages (:data:`_PAGE`), then cut to the length of ``data``."""
    try:
        size, wrote = len(data), 0
        pad = -size % _PAGE if over and hasattr(os, "writev") else 0
        if pad:
            wrote = os.writev(fd, [data, _ZEROS[:pad]])
        view = memoryview(data)[wrote:]  # what a short write left (nothing once the data is written)
        while view:
            view = view[os.write(fd, view):]
        if over:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _swap(spare: str, path: str) -> None:
    """Put the staged ``spare`` in place at ``path`` and keep the old ``path`` as the spare: the two names
    exchanged in one step (Linux ``renameat2(RENAME_EXCHANGE)``). Where ``path`` does not exist yet, or the
    system or file system cannot exchange names, ``spare`` is renamed over ``path`` (there is no spare
    then until the next run makes one)."""
    exchange = _exchange()
    if exchange is not None:
        if exchange(_AT_FDCWD, os.fsencode(spare), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), path)
    os.replace(spare, path)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@functools.cache
def _exchange():
    """libc's ``renameat2`` (glibc 2.28 and later, musl 1.2.3), or None."""
    fn = compute.libc("renameat2")
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn if sys.platform.startswith("linux") else None


def _remove(paths) -> int:
    """Remove the files ``paths`` (those already gone are skipped). Returns how many were removed."""
    removed = 0
    for p in paths:
        try:
            os.unlink(p)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _sync_file_system(folder: Path) -> None:
    """Flush the file system holding ``folder`` (``syncfs``; ``os.sync`` where that is not available)."""
    syncfs = compute.libc("syncfs")
    try:
        if syncfs is not None:
            fd = os.open(folder, os.O_RDONLY)
            try:
                if syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
    except OSError:
        pass
    os.sync()

def write_cohort_reports(reports_dir: str | os.PathLike, ranking: list[dict], *, fsync: bool = True) -> list[Path]:
    """Write ``<reports_dir>/cohort/{ranking.json, ranking.csv, ranking.html}`` atomically."""
    texts = {"ranking.json": to_json(ranking or []), "ranking.csv": ranking_csv(ranking),
             "ranking.html": render_ranking_html(ranking)}
    return _write_all(Path(reports_dir) / "cohort", texts, fsync)


def remove_from_cohort_reports(reports_dir: str | os.PathLike, patient_id: str) -> bool:
    """Write the cohort files again without ``patient_id`` (``forget``): the others in the same order, ranked
    1..n again. Returns whether a file was written again. Raises :class:`TriggerWatchError` when
    ranking.json is there but cannot be read (the other two are then left as well)."""
    if not ranking_path(reports_dir).is_file():
        return False
    entries = read_ranking(reports_dir)
    kept = [dict(e) for e in entries if not (isinstance(e, dict) and e.get("patient_id") == patient_id)]
    # the csv or html may be older than the json when a run stopped between them
    others = [Path(reports_dir) / "cohort" / name for name in COHORT_FILES[1:]]
    if len(kept) == len(entries) and not any(
            f.is_file() and patient_id in f.read_text(encoding="utf-8", errors="replace") for f in others):
        return False
    for rank, e in enumerate(kept, start=1):
        if "rank" in e:
            e["rank"] = rank
    write_cohort_reports(reports_dir, kept)
    return True


# --------------------------------------------------------------------------------------- history API

def record_history(db, triggers: dict, charts: dict | None = None, *, ranking: dict | None = None) -> int:
    """Keep what we told the patient (triggers.json, and the charts to re-render it). Returns the row id.

    Runs inside the caller's transaction when there is one. Only the newest row of a patient keeps its
    charts (they are re-derivable and large); every row keeps its triggers.json. ``ranking``: the cohort
    ranking's row made from this report, kept so the ranking need not re-read every triggers.json.
    """
    row = history_row(triggers, charts, ranking=ranking)
    with storage.transaction(db) as conn:
        record_history_rows(db, [row])
        found = conn.execute("SELECT id FROM reports WHERE patient_id = ? AND generated_at = ?",
                             (row[0], triggers.get("generated_at") or "")).fetchone()
    return found[0] if found else conn.execute("SELECT last_insert_rowid()").fetchone()[0]


# The history's JSON is stored as zstd frames (BLOB values in the same TEXT columns; rows stored as text
# before that are read as they are). A triggers.json of ~25 KB is ~4 KB in the history, the charts ~23 KB ->
# ~1.4 KB: 10,000 patients' nightly history rows grow the database by ~40 MB a night, not ~260 MB, and the
# report workers hand the daemon a seventh of the bytes, for ~0.06 ms a patient.

def pack_json(text: str | bytes) -> bytes:
    """``text`` as the history stores it: a zstd frame of its UTF-8 bytes (:func:`unpack_json` reads it)."""
    return storage.compress(_utf8(text))


def unpack_json(value: str | bytes | None) -> str | bytes | None:
    """A stored JSON value as :func:`json.loads` takes it: a zstd frame (:func:`pack_json`) unpacked, text
    (rows stored before the history was compressed) or None as it is."""
    return storage.decompress(value) if isinstance(value, bytes) else value


def history_row(triggers: dict, charts: dict | None = None, *, ranking: dict | None = None,
                triggers_json: str | bytes | None = None) -> tuple:
    """The values :func:`record_history_rows` stores for one report (made where the report is rendered, so a
    worker can serialise its own documents). The caller may have ``triggers_json`` already
    (:func:`write_many_patient_reports` makes it with triggers.json)."""
    pid = triggers.get("patient_id")
    if not pid:
        raise TriggerWatchError("triggers has no patient_id; cannot record it in the report history")
    model = triggers.get("model") or {}
    return (pid, triggers.get("generated_at") or storage.utcnow_text(), triggers.get("as_of"),
            model.get("model_id"), triggers.get("status"),
            pack_json(_dumpb(triggers) if triggers_json is None else triggers_json),
            None if charts is None else pack_json(_dumpb(charts)), storage.utcnow_text(),
            None if ranking is None else _dumpb(ranking).decode("utf-8"))


def record_history_rows(db, rows: list[tuple]) -> None:
    """Store many :func:`history_row` rows in one transaction (the caller's, when there is one). A report's
    charts go to ``report_charts``, which keeps the newest report's only."""
    with storage.transaction(db) as conn:
        conn.executemany(
            "INSERT INTO reports (patient_id, generated_at, as_of, model_id, status, triggers_json, charts_json, "
            "recorded_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (patient_id, generated_at) "
            "DO UPDATE SET as_of = excluded.as_of, model_id = excluded.model_id, status = excluded.status, "
            "triggers_json = excluded.triggers_json, recorded_at = excluded.recorded_at",
            [(*r[:6], r[7]) for r in rows],
        )
        conn.executemany(
            "INSERT INTO report_charts (patient_id, generated_at, charts_json) VALUES (?, ?, ?) "
            "ON CONFLICT (patient_id) DO UPDATE SET generated_at = excluded.generated_at, "
            "charts_json = excluded.charts_json WHERE excluded.generated_at >= report_charts.generated_at",
            [(r[0], r[1], r[6]) for r in rows if r[6] is not None],
        )
        # a newer report without charts: the older one's are not the newest report's
        conn.executemany("DELETE FROM report_charts WHERE patient_id = ? AND generated_at <= ?",
                         [(r[0], r[1]) for r in rows if r[6] is None])
        conn.executemany(
            "INSERT INTO report_rankings (patient_id, generated_at, ranking_json) VALUES (?, ?, ?) "
            "ON CONFLICT (patient_id) DO UPDATE SET generated_at = excluded.generated_at, "
            "ranking_json = excluded.ranking_json WHERE excluded.generated_at >= report_rankings.generated_at",
            [(r[0], r[1], r[8]) for r in rows if r[8] is not None],
        )


def _row(r: tuple) -> dict:
    try:
        triggers = json.loads(unpack_json(r[6]))
        charts = json.loads(unpack_json(r[7])) if r[7] else None
    except (StorageError, ValueError) as exc:
        raise StorageError(f"the stored report of patient {r[1]!r} made at {r[2]} (reports row {r[0]}) cannot be "
                           f"read: {exc}; `trigger-watch analyze --patient {r[1]}` makes a new one") from None
    return {"id": r[0], "patient_id": r[1], "generated_at": r[2], "as_of": r[3], "model_id": r[4], "status": r[5],
            "triggers": triggers, "charts": charts}


#: a history row and, for the newest report, its charts (``report_charts``)
_COLS = ("r.id, r.patient_id, r.generated_at, r.as_of, r.model_id, r.status, r.triggers_json, c.charts_json "
         "FROM reports AS r LEFT JOIN report_charts AS c "
         "ON c.patient_id = r.patient_id AND c.generated_at = r.generated_at")


def history(db, patient_id: str) -> list[dict]:
    """Every report we made for the patient, newest first: ``id, generated_at, as_of, model_id, status,
    triggers`` (the dict we wrote) and ``charts`` (newest row only, else None)."""
    rows = db.execute(f"SELECT {_COLS} WHERE r.patient_id = ? ORDER BY r.generated_at DESC, r.id DESC",
                      (patient_id,)).fetchall()
    return [_row(r) for r in rows]


def latest_entry(db, patient_id: str) -> dict | None:
    """The newest history row of the patient (see :func:`history`, with ``charts``), or None."""
    r = db.execute(f"SELECT {_COLS} WHERE r.patient_id = ? ORDER BY r.generated_at DESC, r.id DESC LIMIT 1",
                   (patient_id,)).fetchone()
    return _row(r) if r else None


def latest(db, patient_id: str) -> dict | None:
    """The triggers.json dict we last wrote for the patient, or None if never analysed."""
    row = latest_entry(db, patient_id)
    return row["triggers"] if row else None


def latest_ranking_rows(db, make_row) -> dict[str, dict]:
    """Per patient (of ``patients``) with a report, the ranking row kept with the newest one (one query);
    ``make_row(triggers)`` makes it from the stored triggers.json for reports kept without one."""
    # each patient's newest report is one step down the (patient_id, generated_at) index, however long the
    # history: numbering every stored report to pick the first took seconds once it held months of nights
    rows = db.execute(
        "SELECT r.patient_id, k.ranking_json, CASE WHEN k.ranking_json IS NULL THEN r.triggers_json END "
        "FROM (SELECT (SELECT id FROM reports WHERE patient_id = p.patient_id "
        "ORDER BY generated_at DESC, id DESC LIMIT 1) AS id FROM patients AS p) AS l "
        "JOIN reports AS r ON r.id = l.id "
        "LEFT JOIN report_rankings k ON k.patient_id = r.patient_id AND k.generated_at = r.generated_at"
    ).fetchall()
    return {pid: _loads(row) if row is not None else make_row(_loads(unpack_json(text))) for pid, row, text in rows}


def _loads(text: str | bytes) -> Any:
    """``json.loads``, by orjson (the ranking reads 10,000 stored rows a night, ~3 times faster); the standard
    parser for what orjson refuses (NaN written by an older version, an integer past 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)

def stored_report(db, patient_id: str, audience: str = "patient", fmt: str = "md") -> str:
    """The patient's latest report re-rendered from the history (``trigger-watch report``)."""
    row = latest_entry(db, patient_id)
    if row is None:
        if not storage.patient_exists(db, patient_id):
            raise UnknownPatient(patient_id)
        raise TriggerWatchError(f"patient {patient_id!r} has not been analysed yet; run "
                                f"`trigger-watch analyze --patient {patient_id}` first")
    return render_report(row["triggers"], row["charts"], audience, fmt)


def history_lines(db, patient_id: str) -> list[str]:
    """One line per stored report, newest first: when, status, model and the triggers we named."""
    rows = history(db, patient_id)
    if not rows and not storage.patient_exists(db, patient_id):
        raise UnknownPatient(patient_id)
    if not rows:
        return [f"no reports stored yet for patient {patient_id!r}; run `trigger-watch analyze --patient "
                f"{patient_id}`"]
    out = []
    for r in rows:
        trig = [f for f in r["triggers"].get("factors") or [] if f.get("verdict") == "trigger"]
        trig.sort(key=lambda f: f.get("rank") or 10**9)
        names = ", ".join(f"{f.get('factor')}@{f.get('lag_days')}" for f in trig) or "no triggers"
        out.append(f"{r['generated_at']}  as of {r['as_of']}  {r['status']}  model {r['model_id'] or '-'}  "
                   f"triggers: {names}")
    return out
