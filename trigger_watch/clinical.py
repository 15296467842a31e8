"""ICHD-3 clinical flags, acute-medication days and treatment response, for all patients at once.

The rules (windows, thresholds, how unlogged days count, the drug dictionary, the responder rule) are
written out in ``docs/clinical.md``; the constants below are those rules. Everything works on the panel
of ``features.build_panel`` (``patient_id, date, observed, diary_kept, headache_day, migraine_day``) and
counts days in fixed 30-day windows ending on ``as_of``: window 0 is ``as_of - 29 .. as_of``, window 1 the
30 days before it, and so on. Window sums come from per-patient cumulative sums and ``searchsorted``, so
10,000 patients x 365 days take well under a second.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import binom

from trigger_watch.features import split_tags

# ------------------------------------------------------------------------------------------ the rules

#: One "month" of ICHD-3 is a 30-day window.
MONTH_DAYS = 30
#: "For more than 3 months": the criterion must hold in each of the last 4 consecutive 30-day windows.
MONTHS_REQUIRED = 4
CHRONIC_HEADACHE_DAYS = 15
CHRONIC_MIGRAINE_DAYS = 8
#: Days a month of each class from which ICHD-3 8.2 speaks of overuse; classes not listed never count.
OVERUSE_DAYS = {"triptans": 10, "ergots": 10, "opioids": 10, "combination_analgesics": 10, "ditans": 10,
                "simple_analgesics": 15}
#: ICHD-3 8.2.6: several of the classes above, none overused alone, on this many days a month in total.
COMBINED_OVERUSE_DAYS = 10
#: Trend: worse when the last 30 days' rate is at least the earlier rate plus max(2, 30%) (better: minus).
TREND_MIN_CHANGE = 2.0
TREND_MIN_FRACTION = 0.3
#: ... and only when chance alone is unlikely to explain it: under "no change", a patient's attack onsets
#: fall into the last 30 days and the 90 before in proportion to their logged days (binomial), and the
#: split seen must be this unlikely (one-sided). Without it, a cohort whose rates never change shows
#: most patients as better or worse by noise.
TREND_ALPHA = 0.05
#: Logged days needed before a rate is compared: in the last 30 days, and in the 90 before them.
TREND_MIN_LOGGED_LAST = 14
TREND_MIN_LOGGED_PREV = 28
#: Fewer logged days than this in the last 30 makes the counts lower bounds (said in the details).
LOW_LOGGING_DAYS = 20
#: No diary entry or attack record for this many days is said in the details (and the ranking).
SILENT_DAYS = 7
#: Treatment response: days compared before and after a course, logged days needed on each side, and
#: the reduction of migraine days per 30 that makes a responder.
RESPONSE_WINDOW_DAYS = 90
RESPONSE_MIN_LOGGED = 28
RESPONDER_REDUCTION = 0.5
#: Sessions of the same treatment less than this many days apart are one course (a ketamine series).
COURSE_GAP_DAYS = 14

CLASS_LABELS = {
    "triptans": "triptans", "ergots": "ergots", "opioids": "opioids",
    "combination_analgesics": "combination analgesics", "simple_analgesics": "simple analgesics",
    "gepants": "gepants", "ditans": "ditans", "antiemetics": "antiemetics", "other": "other medication",
    "unknown": "unrecognised medication", "multiple_classes": "several acute medication classes combined",
}

# --------------------------------------------------------------------------------- drug dictionary

_TRIPTANS = {
    "sumatriptan": ["imitrex", "imigran", "zembrace", "tosymra", "onzetra", "sumavel", "alsuma", "treximet"],
    "rizatriptan": ["maxalt", "rizalt"],
    "zolmitriptan": ["zomig", "zomigon", "ascomp"],
    "eletriptan": ["relpax"],
    "naratriptan": ["amerge", "naramig"],
    "almotriptan": ["axert", "almogran"],
    "frovatriptan": ["frova", "migard"],
}
_ERGOTS = {
    "ergotamine": ["cafergot", "ergomar", "migergot", "ergotamine_tartrate"],
    "dihydroergotamine": ["dhe", "dhe_45", "migranal", "trudhesa", "d_h_e"],
}
_OPIOIDS = {
    "codeine": [], "tramadol": ["ultram", "tramal", "conzip"], "oxycodone": ["oxycontin", "roxicodone"],
    "hydrocodone": [], "morphine": ["ms_contin"], "tapentadol": ["nucynta", "palexia"],
    "hydromorphone": ["dilaudid"], "fentanyl": [], "buprenorphine": [], "butorphanol": [],
    "pethidine": ["meperidine", "demerol"], "methadone": [], "dihydrocodeine": [],
}
_SIMPLE = {
    "ibuprofen": ["advil", "motrin", "nurofen", "brufen"],
    "naproxen": ["aleve", "naprosyn", "anaprox"],
    "aspirin": ["asa", "acetylsalicylic_acid", "aspro", "bayer"],
    "paracetamol": ["acetaminophen", "tylenol", "panadol", "apap", "calpol", "ben_u_ron"],
    "diclofenac": ["voltaren", "cambia", "cataflam", "zipsor"],
    "metamizole": ["dipyrone", "novalgin", "analgin", "novaminsulfon"],
    "ketoprofen": [], "ketorolac": ["toradol"], "dexketoprofen": [], "celecoxib": ["celebrex"],
    "indomethacin": ["indometacin", "indocin"], "mefenamic_acid": ["ponstan"], "tolfenamic_acid": [],
    "meloxicam": [], "etoricoxib": [], "phenazone": [], "propyphenazone": [],
}
#: Brand-name combination analgesics (ICHD-3 8.2.5: two or more drugs with analgesic or adjuvant effect).
_COMBINATIONS = ["excedrin", "excedrin_migraine", "fioricet", "fiorinal", "esgic", "co_codamol", "tylenol_3",
                 "tylenol_with_codeine", "percocet", "vicodin", "norco", "lortab", "ultracet", "thomapyrin",
                 "migraleve", "solpadeine", "syndol", "anadin_extra", "panadol_extra", "goody_s", "goodys",
                 "bc_powder", "saridon", "co_dydramol", "zapain", "tylex", "butalbital"]
_GEPANTS = {"ubrogepant": ["ubrelvy"], "rimegepant": ["nurtec", "nurtec_odt", "vydura"],
            "zavegepant": ["zavzpret"], "atogepant": ["qulipta", "aquipta"]}
_DITANS = {"lasmiditan": ["reyvow", "rayvow"]}
_ANTIEMETICS = {"metoclopramide": ["reglan", "maxolon", "paspertin"], "domperidone": ["motilium"],
                "prochlorperazine": ["compazine", "stemetil"], "ondansetron": ["zofran"],
                "promethazine": ["phenergan"]}
#: Known drugs that are not acute headache medication classes of ICHD-3 8.2 (caffeine alone, preventives).
_OTHER = {"caffeine": [], "topiramate": ["topamax"], "propranolol": [], "amitriptyline": [],
          "candesartan": [], "flunarizine": [], "valproate": ["depakote"], "prednisone": [],
          "dexamethasone": [], "erenumab": ["aimovig"], "fremanezumab": ["ajovy"],
          "galcanezumab": ["emgality"], "eptinezumab": ["vyepti"]}


def _dictionary() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for cls, table in (("triptans", _TRIPTANS), ("ergots", _ERGOTS), ("opioids", _OPIOIDS),
                       ("simple_analgesics", _SIMPLE), ("gepants", _GEPANTS), ("ditans", _DITANS),
                       ("antiemetics", _ANTIEMETICS), ("other", _OTHER)):
        for generic, brands in table.items():
            for name in [generic, *brands]:
                out[name] = (generic, cls)
    for name in _COMBINATIONS:
        out[name] = (name, "combination_analgesics")
    return out


#: Every known name (generic or brand, normalised snake case) -> (generic name, class).
DRUGS: dict[str, tuple[str, str]] = _dictionary()
#: Ingredients that make a multi-ingredient tag a combination analgesic.
_PAIN = {"simple_analgesics", "opioids"}
_ADJUVANTS = {"caffeine", "butalbital"}
_DOSE = re.compile(r"(?:_?\d+(?:\.\d+)?(?:_?(?:mg|mcg|ug|g|ml))?)+$")


def _normal(tag: str) -> str:
    s = re.sub(r"[^\w:.+]+", "_", str(tag).strip().lower())
    s = s.split(":", 1)[0].replace("+", "_").replace(".", "_")
    return re.sub(r"_+", "_", s).strip("_")


@lru_cache(maxsize=65536)
def classify_drug(tag: str) -> tuple[str, str]:
    """A medication tag -> ``(drug, drug_class)``.

    ``sumatriptan:50``, ``Imitrex``, ``sumatriptan_nasal_spray`` -> ``("sumatriptan", "triptans")``;
    ``paracetamol_codeine`` -> ``("codeine+paracetamol", "combination_analgesics")``; a name not in
    :data:`DRUGS` -> ``(name, "unknown")``. Classes: triptans, ergots, opioids, combination_analgesics,
    simple_analgesics, gepants, ditans, antiemetics, other, unknown.
    """
    name = _normal(tag)
    if name in DRUGS:
        return DRUGS[name]
    bare = _DOSE.sub("", name).strip("_")
    if bare in DRUGS:
        return DRUGS[bare]
    tokens = [t for t in bare.split("_") if t and not re.fullmatch(r"\d+(?:mg|mcg|ug|g|ml)?", t)]
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):  # longest known run of tokens first (acetylsalicylic_acid, dhe_45)
        for j in range(min(len(tokens), i + 3), i, -1):
            key = "_".join(tokens[i:j])
            if key in DRUGS:
                generic, cls = DRUGS[key]
                found[generic] = cls
                i = j
                break
        else:
            i += 1
    if not found:
        return (bare or name, "unknown")
    classes = set(found.values())
    for cls in ("triptans", "ergots", "ditans", "gepants", "combination_analgesics"):
        if cls in classes:  # a triptan with naproxen counts as the triptan; cafergot as the ergot
            return (next(g for g, c in found.items() if c == cls), cls)
    pain = sorted(g for g, c in found.items() if c in _PAIN or g in _ADJUVANTS)
    analgesics = [g for g in pain if found[g] in _PAIN]
    if len(pain) >= 2 and analgesics:
        return ("+".join(pain), "combination_analgesics")
    if len(analgesics) == 1:  # with an antiemetic, say: the analgesic is what counts
        return (analgesics[0], found[analgesics[0]])
    if len(found) == 1:
        generic = next(iter(found))
        return (generic, found[generic])
    return ("+".join(sorted(found)), min(classes))


# ----------------------------------------------------------------------------------- medication days

MED_COLUMNS = ["patient_id", "date", "drug", "drug_class"]


def medication_days(inputs) -> pd.DataFrame:
    """Acute medication per patient and local day: ``DataFrame[patient_id, date, drug, drug_class]``.

    From ``inputs.diary.medication`` (``;``-joined tags, on the diary's date) and
    ``inputs.attacks.medications`` (``name`` or ``name:dose``, on the local date of the attack's start,
    ``start_local``; the UTC ``start`` date when that is missing). One row per patient, date and drug;
    ``date`` is datetime64. Unrecognised names are kept with class ``unknown`` (see :func:`unknown_drugs`).
    """
    pieces = []
    diary = getattr(inputs, "diary", None)
    if diary is not None and len(diary) and "medication" in diary.columns:
        d = diary.loc[diary["medication"].notna(), ["patient_id", "date", "medication"]]
        pieces.append(pd.DataFrame({"patient_id": d["patient_id"].astype(str).to_numpy(),
                                    "day": d["date"].astype(str).str.slice(0, 10).to_numpy(),
                                    "tags": d["medication"].astype(str).to_numpy()}))
    attacks = getattr(inputs, "attacks", None)
    if attacks is not None and len(attacks) and "medications" in attacks.columns:
        a = attacks.loc[attacks["medications"].notna()]
        start = a["start_local"] if "start_local" in a.columns else pd.Series(None, index=a.index, dtype=object)
        day = start.astype(object).where(start.notna(), a["start"].astype(object))
        pieces.append(pd.DataFrame({"patient_id": a["patient_id"].astype(str).to_numpy(),
                                    "day": day.astype(str).str.slice(0, 10).to_numpy(),
                                    "tags": a["medications"].astype(str).to_numpy()}))
    if not pieces:
        return pd.DataFrame({"patient_id": pd.Series([], dtype=object),
                             "date": pd.Series([], dtype="datetime64[ns]"),
                             "drug": pd.Series([], dtype=object), "drug_class": pd.Series([], dtype=object)})
    long = pd.concat(pieces, ignore_index=True)
    # split and classify each distinct tag list once, then expand by integer codes (no per-row Python)
    list_code, lists = pd.factorize(long["tags"])
    drug_code: dict[tuple[str, str], int] = {}
    per_list: list[list[int]] = []
    for text in lists:
        items = []
        for tag in split_tags(text):
            items.append(drug_code.setdefault(classify_drug(tag), len(drug_code)))
        per_list.append(sorted(set(items)))
    sizes = np.array([len(x) for x in per_list], dtype=np.int64)
    flat = np.array([d for x in per_list for d in x], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    reps = sizes[list_code]
    row = np.repeat(np.arange(len(long)), reps)
    within = np.arange(len(row)) - np.repeat(np.cumsum(reps) - reps, reps)
    drug = flat[offsets[list_code][row] + within] if len(row) else np.empty(0, dtype=np.int64)
    day_code, day_text = pd.factorize(long["day"])
    day_num = _days(pd.Series(day_text, dtype=object))
    pid_code, pids = pd.factorize(long["patient_id"], sort=True)
    key = pd.DataFrame({"p": pid_code[row], "d": day_num[day_code[row]], "g": drug})
    key = key.drop_duplicates().sort_values(["p", "d", "g"], kind="stable")
    names = np.array([k[0] for k in drug_code], dtype=object)
    classes = np.array([k[1] for k in drug_code], dtype=object)
    return pd.DataFrame({
        "patient_id": np.asarray(pids, dtype=object)[key["p"].to_numpy()],
        "date": key["d"].to_numpy().astype("datetime64[D]").astype("datetime64[ns]"),
        "drug": names[key["g"].to_numpy()] if len(key) else np.empty(0, dtype=object),
        "drug_class": classes[key["g"].to_numpy()] if len(key) else np.empty(0, dtype=object),
    })


def unknown_drugs(med_days: pd.DataFrame) -> pd.DataFrame:
    """Unrecognised medication names per patient: ``DataFrame[patient_id, drug, days]`` (days used)."""
    unk = med_days[med_days["drug_class"] == "unknown"]
    out = unk.groupby(["patient_id", "drug"], sort=True).size().rename("days").reset_index()
    return out


# ------------------------------------------------------------------------------------------ windows

_BIG = np.int64(1 << 32)


def _day_number(value) -> int:
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        value = pd.Timestamp(value).date()
    return (value - date(1970, 1, 1)).days


def _days(series: pd.Series) -> np.ndarray:
    return pd.to_datetime(series).to_numpy().astype("datetime64[D]").astype(np.int64)


class _Counts:
    """Per-patient day counts over any inclusive day range, from cumulative sums on sorted keys."""

    def __init__(self, ids: np.ndarray, code: np.ndarray, day: np.ndarray, values: dict[str, np.ndarray]):
        self.ids = ids
        key = code.astype(np.int64) * _BIG + day
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        self.cum = {k: np.concatenate([[0], np.cumsum(v[order].astype(np.int64))]) for k, v in values.items()}

    def sum(self, name: str, code: np.ndarray, lo, hi) -> np.ndarray:
        """Sum of ``name`` over days ``lo..hi`` (inclusive) of each patient ``code``."""
        code = np.asarray(code, dtype=np.int64)
        a = np.searchsorted(self.key, code * _BIG + np.asarray(lo, dtype=np.int64), side="left")
        b = np.searchsorted(self.key, code * _BIG + np.asarray(hi, dtype=np.int64), side="right")
        c = self.cum[name]
        return np.where(b > a, c[b] - c[a], 0)


def _panel_counts(panel: pd.DataFrame, asof: int) -> tuple[_Counts, np.ndarray]:
    """Window counts of the panel's days up to ``asof``, and each patient's last observed day (NaN: none).

    Logged days are the observed ones; for a patient who never kept a diary (an attack log only) every
    panel day counts as logged, since a day without an attack record is then taken as attack-free.
    Only the few columns needed are read: the panel itself is never copied.
    """
    day = _days(panel["date"])
    keep = day <= asof
    day = day[keep]
    # factorised as stored (Arrow strings: no Python object per row), patients in order of appearance
    pid = panel["patient_id"]
    code, ids = pd.factorize(pid if keep.all() else pid[keep], sort=False)
    n = len(ids)
    observed = panel["observed"].to_numpy(dtype=bool)[keep]
    kept = panel["diary_kept"].to_numpy(dtype=bool)[keep] if "diary_kept" in panel.columns else observed
    keeps = np.bincount(code, weights=kept, minlength=n) > 0
    values = {
        "headache": panel["headache_day"].to_numpy(dtype=bool)[keep],
        "migraine": panel["migraine_day"].to_numpy(dtype=bool)[keep],
        "observed": observed,
        "logged": observed | ~keeps[code],
        "onset": np.nan_to_num(panel["onset"].to_numpy(dtype=float, na_value=0.0))[keep] > 0,
    }
    last = np.full(n, -np.inf)
    if observed.any():
        by = pd.Series(day[observed]).groupby(code[observed]).max()
        last[by.index.to_numpy()] = by.to_numpy()
    last[np.isinf(last)] = np.nan
    return _Counts(np.asarray(ids, dtype=str).astype(object), code, day, values), last


def _window_matrix(counts: _Counts, name: str, asof: int, n_windows: int) -> np.ndarray:
    """(patients x windows) sums; column w is the window ``asof - 30w - 29 .. asof - 30w``."""
    code = np.arange(len(counts.ids))
    cols = [counts.sum(name, code, asof - MONTH_DAYS * (w + 1) + 1, asof - MONTH_DAYS * w)
            for w in range(n_windows)]
    return np.column_stack(cols) if cols else np.zeros((len(code), 0), dtype=np.int64)


def _med_windows(med_days: pd.DataFrame, ids: np.ndarray, asof: int):
    """Distinct medication days per class and window, days with any counted class, classes per window."""
    n = len(ids)
    span = MONTH_DAYS * MONTHS_REQUIRED
    per_class: dict[str, np.ndarray] = {}
    combined = np.zeros((n, MONTHS_REQUIRED), dtype=np.int64)
    n_classes = np.zeros((n, MONTHS_REQUIRED), dtype=np.int64)
    if med_days is None or med_days.empty:
        return per_class, combined, n_classes
    code = pd.Index(ids).get_indexer(med_days["patient_id"].astype(str))
    back = asof - _days(med_days["date"])
    keep = (code >= 0) & (back >= 0) & (back < span)
    m = pd.DataFrame({"code": code[keep], "w": back[keep] // MONTH_DAYS, "back": back[keep],
                      "cls": med_days["drug_class"].to_numpy(dtype=object)[keep]})
    m = m.drop_duplicates(["code", "back", "cls"])
    for cls, part in m.groupby("cls", sort=True):
        arr = np.zeros((n, MONTHS_REQUIRED), dtype=np.int64)
        np.add.at(arr, (part["code"].to_numpy(), part["w"].to_numpy()), 1)
        per_class[str(cls)] = arr
    counted = m[m["cls"].isin(list(OVERUSE_DAYS))]
    days = counted.drop_duplicates(["code", "back"])
    np.add.at(combined, (days["code"].to_numpy(), days["w"].to_numpy()), 1)
    kinds = counted.drop_duplicates(["code", "w", "cls"])
    np.add.at(n_classes, (kinds["code"].to_numpy(), kinds["w"].to_numpy()), 1)
    return per_class, combined, n_classes


def _frame(rows: list[dict], columns: list[str], nullable: set[str]) -> pd.DataFrame:
    """Rows -> DataFrame; ``nullable`` columns stay object so None stays None (not NaN) for JSON."""
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object if c in nullable else None)
                         for c in columns}, columns=columns)


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


# -------------------------------------------------------------------------------------------- flags

FLAG_COLUMNS = ["patient_id", "chronic_migraine", "medication_overuse", "overuse_classes",
                "migraine_days_last_30", "migraine_days_prev_90_per_30", "headache_days_last_30", "trend",
                "days_logged_last_30", "last_entry", "details",
                "migraine_days_last_30_per_30", "days_since_last_entry", "medication_days_last_30",
                "unknown_drugs"]


def trend_margin(rate_prev):
    """The change in migraine days per 30 a trend needs before its test of chance: TREND_MIN_CHANGE, or
    TREND_MIN_FRACTION of the rate before when that is more (an unknown rate before: the first)."""
    return np.maximum(TREND_MIN_CHANGE, TREND_MIN_FRACTION * np.nan_to_num(rate_prev))


def flags(panel: pd.DataFrame, med_days: pd.DataFrame, as_of) -> pd.DataFrame:
    """ICHD-3 flags and the frequency trend, one row per patient of the panel.

    Columns: ``chronic_migraine``, ``medication_overuse`` (bool); ``overuse_classes`` (list of class ids,
    ``multiple_classes`` for ICHD-3 8.2.6); ``migraine_days_last_30``, ``headache_days_last_30`` (recorded
    days in ``as_of - 29 .. as_of``); ``migraine_days_prev_90_per_30`` (migraine days per 30 logged days
    in the 90 days before those, None with fewer than 28 logged); ``trend`` (better|stable|worse, None when
    either side has too few logged days); ``days_logged_last_30``; ``last_entry`` (ISO date of the last
    observed day); ``details`` (plain sentences). Extras: ``migraine_days_last_30_per_30``,
    ``days_since_last_entry``, ``medication_days_last_30`` ({class: days}), ``unknown_drugs`` (names).
    Rows after ``as_of`` are ignored. Rules: ``docs/clinical.md``.
    """
    asof = _day_number(as_of)
    counts, last_day = _panel_counts(panel, asof)
    ids = counts.ids
    n = len(ids)
    code = np.arange(n)
    H = _window_matrix(counts, "headache", asof, MONTHS_REQUIRED)
    M = _window_matrix(counts, "migraine", asof, MONTHS_REQUIRED)
    L = _window_matrix(counts, "logged", asof, MONTHS_REQUIRED)
    seen_last = counts.sum("observed", code, asof - MONTH_DAYS + 1, asof)

    # chronic migraine: every one of the last 4 windows
    month_ok = (H >= CHRONIC_HEADACHE_DAYS) & (M >= CHRONIC_MIGRAINE_DAYS)
    chronic = month_ok.all(axis=1)

    # medication overuse
    per_class, combined, n_classes = _med_windows(med_days, ids, asof)
    zeros = np.zeros((n, MONTHS_REQUIRED), dtype=np.int64)
    over = {c: (per_class.get(c, zeros) >= t).all(axis=1) for c, t in OVERUSE_DAYS.items()}
    any_single = np.logical_or.reduce(list(over.values())) if over else np.zeros(n, dtype=bool)
    multi = (~any_single & ((combined >= COMBINED_OVERUSE_DAYS) & (n_classes >= 2)).all(axis=1))
    overuse = any_single | multi

    # trend: rate per 30 logged days, last 30 vs the 90 before
    last_logged = L[:, 0]
    prev_m, prev_l = M[:, 1:].sum(axis=1), L[:, 1:].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_last = np.where(last_logged > 0, M[:, 0] * MONTH_DAYS / np.maximum(last_logged, 1), np.nan)
        rate_prev = np.where(prev_l > 0, prev_m * MONTH_DAYS / np.maximum(prev_l, 1), np.nan)
    comparable = (last_logged >= TREND_MIN_LOGGED_LAST) & (prev_l >= TREND_MIN_LOGGED_PREV)
    margin = trend_margin(rate_prev)
    O = _window_matrix(counts, "onset", asof, MONTHS_REQUIRED)
    k_last, k_all = O[:, 0], O.sum(axis=1)
    share = last_logged / np.maximum(last_logged + prev_l, 1)
    p_up = binom.sf(k_last - 1, k_all, share)     # P(this many or more onsets in the last 30 | no change)
    p_down = binom.cdf(k_last, k_all, share)      # P(this few or fewer | no change)
    trend = np.where((rate_last >= rate_prev + margin) & (p_up < TREND_ALPHA), "worse",
                     np.where((rate_last <= rate_prev - margin) & (p_down < TREND_ALPHA), "better",
                              "stable")).astype(object)
    trend[~comparable] = None

    since = asof - last_day

    unknown = unknown_drugs(med_days[_days(med_days["date"]) <= asof]) if med_days is not None and len(
        med_days) else pd.DataFrame(columns=["patient_id", "drug", "days"])
    unk_by: dict[str, list] = {}
    for p, drug, n_days in zip(unknown["patient_id"], unknown["drug"], unknown["days"]):
        unk_by.setdefault(p, []).append((drug, int(n_days)))

    # the sentences: plain Python over lists (numpy scalar indexing per patient would dominate)
    classes = sorted(per_class)
    last30 = {c: per_class[c][:, 0].tolist() for c in classes}
    windows = {c: per_class.get(c, zeros).tolist() for c in OVERUSE_DAYS}
    over_l = {c: over[c].tolist() for c in OVERUSE_DAYS}
    gepants = per_class.get("gepants", zeros)[:, 0].tolist()
    met_chronic = month_ok.sum(axis=1).tolist()
    H0, M0, month0 = H[:, 0].tolist(), M[:, 0].tolist(), month_ok[:, 0].tolist()
    lastlog, prevlog, comb0 = last_logged.tolist(), prev_l.tolist(), combined[:, 0].tolist()
    r_last = np.round(rate_last, 1).tolist()
    r_prev = np.round(rate_prev, 1).tolist()
    since_l = since.tolist()
    chronic_l, multi_l, overuse_l, seen_l = chronic.tolist(), multi.tolist(), overuse.tolist(), seen_last.tolist()
    trend_l = trend.tolist()
    past_margin = (np.abs(np.nan_to_num(rate_last) - np.nan_to_num(rate_prev)) >= margin).tolist()
    trend_words = {"worse": "up from", "better": "down from", "stable": "about the same as"}
    rows = []
    for i, pid in enumerate(ids):
        med_last = {c: last30[c][i] for c in classes if last30[c][i] > 0}
        over_cls = [c for c in OVERUSE_DAYS if over_l[c][i]] + (["multiple_classes"] if multi_l[i] else [])
        details: list[str] = []
        for c, t in OVERUSE_DAYS.items():
            days_c = windows[c][i]
            if over_l[c][i]:
                details.append(f"{CLASS_LABELS[c]} on {days_c[0]} days in the last 30: medication overuse "
                               f"threshold ({t}), reached in each of the last {MONTHS_REQUIRED} months")
            elif days_c[0] >= t:
                met = sum(d >= t for d in days_c)
                details.append(f"{CLASS_LABELS[c]} on {days_c[0]} days in the last 30: at the medication "
                               f"overuse threshold ({t}) but not yet for more than 3 months "
                               f"(reached in {met} of the last {MONTHS_REQUIRED})")
        if multi_l[i]:
            details.append(f"acute medication of several classes on {comb0[i]} days in the last 30: "
                           f"medication overuse threshold for combined classes ({COMBINED_OVERUSE_DAYS}, "
                           f"ICHD-3 8.2.6), reached in each of the last {MONTHS_REQUIRED} months")
        if gepants[i] >= 10:
            details.append(f"gepants on {gepants[i]} days in the last 30: not counted toward medication overuse")
        for drug, days_u in unk_by.get(pid, []):
            details.append(f"unrecognised medication {drug!r} on {days_u} days: not counted toward medication "
                           "overuse; check the spelling or its class")
        h0, m0 = H0[i], M0[i]
        if chronic_l[i]:
            details.append(f"{h0} headache days with {m0} migraine days in the last 30: chronic migraine "
                           f"({CHRONIC_HEADACHE_DAYS}+ headache days with {CHRONIC_MIGRAINE_DAYS}+ migraine days "
                           f"in each of the last {MONTHS_REQUIRED} months)")
        elif month0[i]:
            details.append(f"{h0} headache days with {m0} migraine days in the last 30: chronic migraine "
                           f"frequency, but not yet for more than 3 months "
                           f"(met in {met_chronic[i]} of the last {MONTHS_REQUIRED})")
        if trend_l[i] is None:
            details.append(f"too little diary to tell the trend ({lastlog[i]} logged days in the last 30, "
                           f"{prevlog[i]} in the 90 before; {TREND_MIN_LOGGED_LAST} and "
                           f"{TREND_MIN_LOGGED_PREV} needed)")
        elif trend_l[i] == "stable" and past_margin[i]:
            way = "up from" if r_last[i] > r_prev[i] else "down from"
            details.append(f"{_fmt(r_last[i])} migraine days per 30 in the last 30, {way} {_fmt(r_prev[i])} in "
                           f"the 90 before, but with this few attacks chance alone could do that: stable")
        else:
            details.append(f"{_fmt(r_last[i])} migraine days per 30 in the last 30, {trend_words[trend_l[i]]} "
                           f"{_fmt(r_prev[i])} in the 90 before: {trend_l[i]}")
        if lastlog[i] < LOW_LOGGING_DAYS:
            details.append(f"only {lastlog[i]} of the last 30 days logged: counts are lower bounds")
        gap = since_l[i]
        silent = math.isnan(gap)  # nothing observed at all
        if silent:
            details.append("no diary entry or attack record yet")
        elif gap >= SILENT_DAYS:
            details.append(f"no diary entry for {int(gap)} days")
        rows.append({
            "patient_id": pid,
            "chronic_migraine": chronic_l[i],
            "medication_overuse": overuse_l[i],
            "overuse_classes": over_cls,
            "migraine_days_last_30": m0,
            "migraine_days_prev_90_per_30": r_prev[i] if prevlog[i] >= TREND_MIN_LOGGED_PREV else None,
            "headache_days_last_30": h0,
            "trend": trend_l[i],
            "days_logged_last_30": seen_l[i],
            "last_entry": None if silent else _iso(asof - int(gap)),
            "details": details,
            "migraine_days_last_30_per_30": None if r_last[i] != r_last[i] else r_last[i],
            "days_since_last_entry": None if silent else int(gap),
            "medication_days_last_30": med_last,
            "unknown_drugs": [d for d, _ in unk_by.get(pid, [])],
        })
    return _frame(rows, FLAG_COLUMNS, {"overuse_classes", "migraine_days_prev_90_per_30", "trend",
                                       "last_entry", "details", "migraine_days_last_30_per_30",
                                       "days_since_last_entry", "medication_days_last_30", "unknown_drugs"})


# ------------------------------------------------------------------------------- treatment response

RESPONSE_COLUMNS = ["patient_id", "treatment", "date", "migraine_days_per_30_before",
                    "migraine_days_per_30_after", "responder", "caveat",
                    "course_end", "sessions", "days_logged_before", "days_logged_after", "reduction"]


_EPOCH = date(1970, 1, 1).toordinal()


def _iso(day: int) -> str:
    return date.fromordinal(_EPOCH + int(day)).isoformat()


def treatment_response(panel: pd.DataFrame, treatments: pd.DataFrame, as_of) -> pd.DataFrame:
    """Migraine days per 30 logged days before and after each treatment course.

    A course is one or more sessions of the same treatment less than ``COURSE_GAP_DAYS`` apart; ``date``
    is its first day (ISO text), ``course_end`` its last. Before: the 90 days up to the day before the
    course; after: the day after its last session up to 90 days later, ``as_of``, or the day before the
    patient's next course, whichever comes first. ``responder``: migraine days per 30 fell by at least
    50%; None when either side has fewer than 28 logged days or there were no migraine days before.
    ``caveat``: why the comparison is weak (short data, other treatments nearby), else None.
    """
    asof = _day_number(as_of)
    empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in RESPONSE_COLUMNS})
    if treatments is None or treatments.empty:
        return empty
    t = pd.DataFrame({"patient_id": treatments["patient_id"].astype(str).to_numpy(),
                      "treatment": treatments["treatment"].astype(str).to_numpy(),
                      "day": _days(treatments["date"].astype(str).str.slice(0, 10))})
    t = t[t["day"] <= asof].drop_duplicates().sort_values(["patient_id", "treatment", "day"], kind="stable")
    if t.empty:
        return empty
    same = (t["patient_id"].eq(t["patient_id"].shift()) & t["treatment"].eq(t["treatment"].shift())
            & (t["day"] - t["day"].shift() < COURSE_GAP_DAYS))
    t["course"] = (~same).cumsum()
    c = (t.groupby("course", sort=False)
         .agg(patient_id=("patient_id", "first"), treatment=("treatment", "first"),
              start=("day", "min"), end=("day", "max"), sessions=("day", "size"))
         .sort_values(["patient_id", "start", "treatment"], kind="stable").reset_index(drop=True))

    counts, _ = _panel_counts(panel, asof)
    code = pd.Index(counts.ids).get_indexer(c["patient_id"])
    start, end = c["start"].to_numpy(np.int64), c["end"].to_numpy(np.int64)
    # the patient's next course that starts after this one
    key = pd.Series(c["patient_id"]).factorize(sort=False)[0].astype(np.int64) * _BIG + start
    nxt = np.searchsorted(key, key, side="right")
    has_next = nxt < len(c)
    nxt_c = np.minimum(nxt, len(c) - 1)
    next_start = np.where(has_next & (key[nxt_c] // _BIG == key // _BIG), start[nxt_c], np.iinfo(np.int64).max)

    b_lo, b_hi = start - RESPONSE_WINDOW_DAYS, start - 1
    a_lo = end + 1
    a_hi = np.minimum.reduce([end + RESPONSE_WINDOW_DAYS, np.full(len(c), asof), next_start - 1])
    ok = code >= 0
    cc = np.where(ok, code, 0)

    def window(name, lo, hi):
        return np.where(ok & (hi >= lo), counts.sum(name, cc, lo, hi), 0)

    mb, lb = window("migraine", b_lo, b_hi), window("logged", b_lo, b_hi)
    ma, la = window("migraine", a_lo, a_hi), window("logged", a_lo, a_hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        before = np.where(lb > 0, mb * MONTH_DAYS / np.maximum(lb, 1), np.nan)
        after = np.where(la > 0, ma * MONTH_DAYS / np.maximum(la, 1), np.nan)
        reduction = np.where(before > 0, (before - after) / before, np.nan)
    enough = (lb >= RESPONSE_MIN_LOGGED) & (la >= RESPONSE_MIN_LOGGED) & (before > 0)

    # other courses of the same patient near this one
    pairs = c.reset_index().merge(c.reset_index(), on="patient_id", suffixes=("", "_o"))
    pairs = pairs[(pairs["index"] != pairs["index_o"])
                  & (pairs["start_o"] >= pairs["start"] - RESPONSE_WINDOW_DAYS)
                  & (pairs["start_o"] <= pairs["end"] + RESPONSE_WINDOW_DAYS)]
    near: dict[int, list[str]] = {}
    for i, name, s_o, s in zip(pairs["index"], pairs["treatment_o"], pairs["start_o"], pairs["start"]):
        if s_o == s:
            text = f"{name} started the same day"
        elif s_o < s:
            text = f"{name} started {s - s_o} days before ({_iso(s_o)}), inside the before window"
        else:
            text = f"{name} started {s_o - s} days after ({_iso(s_o)}): the after window stops the day before"
        near.setdefault(int(i), []).append(text)

    out = []
    c_pid, c_treat, c_sessions = c["patient_id"].tolist(), c["treatment"].tolist(), c["sessions"].tolist()
    for i in range(len(c)):
        cav = []
        if lb[i] < RESPONSE_MIN_LOGGED:
            cav.append(f"only {lb[i]} logged days in the {RESPONSE_WINDOW_DAYS} days before "
                       f"({RESPONSE_MIN_LOGGED} needed)")
        span = a_hi[i] - a_lo[i] + 1
        if la[i] < RESPONSE_MIN_LOGGED:
            if a_hi[i] == asof and span < RESPONSE_MIN_LOGGED:
                cav.append(f"only {max(span, 0)} days since the treatment so far ({RESPONSE_MIN_LOGGED} logged "
                           "days needed)")
            else:
                cav.append(f"only {la[i]} logged days after ({RESPONSE_MIN_LOGGED} needed)")
        if lb[i] >= RESPONSE_MIN_LOGGED and before[i] == 0:
            cav.append("no migraine days before: a 50% reduction cannot be judged")
        cav.extend(near.get(i, []))
        out.append({
            "patient_id": c_pid[i], "treatment": c_treat[i], "date": _iso(start[i]),
            "migraine_days_per_30_before": None if np.isnan(before[i]) else round(float(before[i]), 1),
            "migraine_days_per_30_after": None if np.isnan(after[i]) else round(float(after[i]), 1),
            "responder": bool(reduction[i] >= RESPONDER_REDUCTION) if enough[i] else None,
            "caveat": "; ".join(cav) if cav else None,
            "course_end": _iso(end[i]), "sessions": int(c_sessions[i]),
            "days_logged_before": int(lb[i]), "days_logged_after": int(la[i]),
            "reduction": None if np.isnan(reduction[i]) else round(float(reduction[i]), 3),
        })
    return _frame(out, RESPONSE_COLUMNS, {"treatment", "date", "migraine_days_per_30_before",
                                          "migraine_days_per_30_after", "responder", "caveat", "course_end",
                                          "reduction"})


def latest_treatment_response(response: pd.DataFrame) -> dict[str, dict]:
    """Each patient's most recent course (by ``date``, then treatment name) as a JSON-ready dict."""
    if response is None or response.empty:
        return {}
    last = response.sort_values(["patient_id", "date", "treatment"]).groupby("patient_id", sort=False).tail(1)
    keys = ["treatment", "date", "migraine_days_per_30_before", "migraine_days_per_30_after", "responder",
            "caveat"]
    return {r["patient_id"]: {k: r[k] for k in keys} for r in last.to_dict("records")}


def response_words(response: dict) -> str:
    """A treatment response's verdict in words: "helped" (a responder), "too early to tell", "has not
    helped" (no fewer migraine days), or, for fewer days short of a responder's reduction, how many fewer
    ("45 % fewer migraine days, short of the 50 % of a responder": "has not helped" said of that was wrong)."""
    responder = response.get("responder")
    if responder is None:
        return "too early to tell"
    if responder:
        return "helped"
    before, after = response.get("migraine_days_per_30_before"), response.get("migraine_days_per_30_after")
    if before and after is not None and after < before:
        return (f"{round(100 * (1 - after / before))} % fewer migraine days, short of the "
                f"{round(100 * RESPONDER_REDUCTION)} % of a responder")
    return "has not helped"


__all__ = ["CLASS_LABELS", "DRUGS", "OVERUSE_DAYS", "classify_drug", "flags", "latest_treatment_response",
           "medication_days", "response_words", "treatment_response", "unknown_drugs"]
