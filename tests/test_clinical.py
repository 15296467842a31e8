"""ICHD-3 flags, medication days and treatment response on constructed patients with known answers.

Days are placed by how many days before ``AS_OF`` they lie ("back" 0 is AS_OF itself); a 30-day window
w covers backs 30w .. 30w + 29, as docs/clinical.md defines.
"""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from trigger_watch import clinical
from trigger_watch.clinical import classify_drug, flags, medication_days, treatment_response

AS_OF = date(2026, 11, 20)


def day(back: int) -> str:
    return (AS_OF - timedelta(days=back)).isoformat()


def panel_of(pid: str, n_days: int, headache=(), migraine=(), logged=None, diary_kept=True) -> pd.DataFrame:
    """A patient's panel over the ``n_days`` ending AS_OF. ``logged``: backs observed (default all)."""
    backs = np.arange(n_days)[::-1]
    head = np.isin(backs, list(headache)) | np.isin(backs, list(migraine))
    obs = np.ones(n_days, bool) if logged is None else np.isin(backs, list(logged)) | head
    mig = np.isin(backs, list(migraine))
    return pd.DataFrame({
        "patient_id": pid,
        "date": pd.to_datetime([day(int(b)) for b in backs]).astype("datetime64[ns]"),
        "observed": obs, "diary_kept": obs & diary_kept, "onset": head.astype(np.int8),
        "in_episode": np.zeros(n_days, bool), "at_risk": obs, "headache_day": head, "migraine_day": mig,
        "intensity": np.where(head, 6.0, 0.0),
    })


def per_window(k: int, windows: int = 4, offset: int = 0) -> list[int]:
    """``k`` backs in each of the first ``windows`` 30-day windows."""
    return [30 * w + offset + i for w in range(windows) for i in range(k)]


def no_meds() -> pd.DataFrame:
    return medication_days(SimpleNamespace(diary=pd.DataFrame(), attacks=pd.DataFrame()))


def diary_meds(pid: str, backs_tags: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": pid, "date": [day(b) for b in backs_tags],
                         "medication": list(backs_tags.values())})


def one(frame: pd.DataFrame, pid: str) -> dict:
    return frame.set_index("patient_id").loc[pid].to_dict()


# ------------------------------------------------------------------------------------ drug classes

@pytest.mark.parametrize("tag, expected", [
    ("sumatriptan", ("sumatriptan", "triptans")), ("sumatriptan:50", ("sumatriptan", "triptans")),
    ("imitrex", ("sumatriptan", "triptans")), ("maxalt", ("rizatriptan", "triptans")),
    ("relpax_40mg", ("eletriptan", "triptans")), ("naratriptan_2.5mg", ("naratriptan", "triptans")),
    ("dhe", ("dihydroergotamine", "ergots")), ("ergotamine", ("ergotamine", "ergots")),
    ("tramadol", ("tramadol", "opioids")), ("tapentadol", ("tapentadol", "opioids")),
    ("excedrin", ("excedrin", "combination_analgesics")),
    ("aspirin_paracetamol_caffeine", ("aspirin+caffeine+paracetamol", "combination_analgesics")),
    ("paracetamol_codeine", ("codeine+paracetamol", "combination_analgesics")),
    ("fioricet", ("fioricet", "combination_analgesics")),
    ("acetaminophen", ("paracetamol", "simple_analgesics")), ("metamizole", ("metamizole", "simple_analgesics")),
    ("ibuprofen:400", ("ibuprofen", "simple_analgesics")), ("ubrogepant", ("ubrogepant", "gepants")),
    ("nurtec", ("rimegepant", "gepants")), ("lasmiditan", ("lasmiditan", "ditans")),
    ("metoclopramide", ("metoclopramide", "antiemetics")), ("caffeine", ("caffeine", "other")),
    ("zorbitol", ("zorbitol", "unknown")),
])
def test_drugs_are_classified_by_generic_and_brand_names(tag, expected):
    assert classify_drug(tag) == expected


def test_medication_days_from_diary_and_attacks_one_row_per_day_and_drug():
    diary = pd.DataFrame({"patient_id": ["p1", "p1", "p2"], "date": [day(3), day(2), day(3)],
                          "medication": ["sumatriptan;ibuprofen", "imitrex", "zorbitol"]})
    attacks = pd.DataFrame({
        "patient_id": ["p1", "p1"], "start": ["2026-11-17T23:30:00Z", "2026-11-10T06:00:00Z"],
        # local date differs from the UTC one: the local one counts
        "start_local": ["2026-11-18T00:30:00", None],
        "medications": ["sumatriptan:50;naproxen", "rizatriptan:10"]})
    got = medication_days(SimpleNamespace(diary=diary, attacks=attacks))
    rows = {(p, d.date().isoformat(), drug, c) for p, d, drug, c in got.itertuples(index=False)}
    assert rows == {
        ("p1", day(3), "sumatriptan", "triptans"), ("p1", day(3), "ibuprofen", "simple_analgesics"),
        ("p1", day(2), "sumatriptan", "triptans"),  # diary imitrex and the 00:30 attack's sumatriptan: one row
        ("p1", day(2), "naproxen", "simple_analgesics"),
        ("p1", "2026-11-10", "rizatriptan", "triptans"),
        ("p2", day(3), "zorbitol", "unknown"),
    }
    assert list(clinical.unknown_drugs(got).itertuples(index=False)) == [("p2", "zorbitol", 1)]


# ---------------------------------------------------------------------------------- chronic migraine

def test_16_headache_days_with_9_migraine_days_for_4_months_is_chronic():
    panel = panel_of("cm", 120, headache=per_window(16), migraine=per_window(9))
    f = one(flags(panel, no_meds(), AS_OF), "cm")
    assert f["chronic_migraine"] is True
    assert f["headache_days_last_30"] == 16 and f["migraine_days_last_30"] == 9
    assert f["migraine_days_prev_90_per_30"] == 9.0 and f["trend"] == "stable"
    assert f["days_logged_last_30"] == 30 and f["last_entry"] == AS_OF.isoformat()
    assert any("chronic migraine (15+ headache days with 8+ migraine days in each of the last 4 months)" in d
               for d in f["details"])


@pytest.mark.parametrize("n_days, head, mig, why", [
    (90, 16, 9, "only 3 months of data: not more than 3 months"),
    (120, 14, 9, "14 headache days a month"),
    (120, 16, 7, "7 migraine days a month"),
])
def test_not_chronic(n_days, head, mig, why):
    panel = panel_of("x", n_days, headache=per_window(head, n_days // 30), migraine=per_window(mig, n_days // 30))
    f = one(flags(panel, no_meds(), AS_OF), "x")
    assert f["chronic_migraine"] is False, why


def test_chronic_frequency_for_3_months_only_says_so():
    panel = panel_of("x", 120, headache=per_window(16, 3), migraine=per_window(9, 3))
    f = one(flags(panel, no_meds(), AS_OF), "x")
    assert f["chronic_migraine"] is False
    assert any("not yet for more than 3 months (met in 3 of the last 4)" in d for d in f["details"])


def test_one_short_month_in_the_middle_breaks_chronic():
    head = [b for b in per_window(16) if not (60 <= b < 90 and b - 60 >= 14)]  # window 2 has 14
    panel = panel_of("x", 120, headache=head, migraine=per_window(9))
    assert one(flags(panel, no_meds(), AS_OF), "x")["chronic_migraine"] is False


# --------------------------------------------------------------------------------- medication overuse

def _overuse(tag_days: dict[str, int], windows: int = 4) -> dict:
    tags: dict[int, list[str]] = {}
    offset = 0
    for tag, k in tag_days.items():  # each drug on its own days
        for b in per_window(k, windows, offset):
            tags.setdefault(b, []).append(tag)
        offset += k
    diary = diary_meds("m", {b: ";".join(t) for b, t in tags.items()})
    med = medication_days(SimpleNamespace(diary=diary, attacks=pd.DataFrame()))
    panel = panel_of("m", 120, headache=per_window(6), migraine=per_window(4))
    return one(flags(panel, med, AS_OF), "m")


def test_triptans_on_11_days_a_month_for_4_months_is_overuse():
    f = _overuse({"sumatriptan": 11})
    assert f["medication_overuse"] is True and f["overuse_classes"] == ["triptans"]
    assert f["medication_days_last_30"] == {"triptans": 11}
    assert ("triptans on 11 days in the last 30: medication overuse threshold (10), reached in each of the "
            "last 4 months") in f["details"]


def test_triptans_on_8_days_a_month_for_4_months_is_not_overuse():
    f = _overuse({"sumatriptan": 8})
    assert f["medication_overuse"] is False and f["overuse_classes"] == []


def test_brand_and_generic_names_of_one_class_add_up():
    f = _overuse({"imitrex": 6, "rizatriptan:10": 5})
    assert f["medication_overuse"] is True and f["overuse_classes"] == ["triptans"]


def test_triptans_for_3_months_only_is_not_overuse_yet():
    f = _overuse({"sumatriptan": 11}, windows=3)
    assert f["medication_overuse"] is False
    assert any("not yet for more than 3 months (reached in 3 of the last 4)" in d for d in f["details"])


def test_simple_analgesics_need_15_days():
    assert _overuse({"ibuprofen": 14})["medication_overuse"] is False
    f = _overuse({"ibuprofen": 15})
    assert f["medication_overuse"] is True and f["overuse_classes"] == ["simple_analgesics"]


def test_several_classes_on_10_days_combined_is_overuse_8_2_6():
    f = _overuse({"sumatriptan": 5, "ibuprofen": 6})
    assert f["medication_overuse"] is True and f["overuse_classes"] == ["multiple_classes"]
    assert _overuse({"sumatriptan": 4, "ibuprofen": 5})["medication_overuse"] is False


def test_gepants_and_unknown_drugs_do_not_count_but_are_reported():
    f = _overuse({"ubrogepant": 12, "zorbitol": 12})
    assert f["medication_overuse"] is False
    assert f["unknown_drugs"] == ["zorbitol"]
    assert any(d.startswith("unrecognised medication 'zorbitol' on 48 days") for d in f["details"])
    assert "gepants on 12 days in the last 30: not counted toward medication overuse" in f["details"]


# -------------------------------------------------------------------------------------------- trend

def test_trend_compares_last_30_with_the_90_before_per_logged_day():
    worse = panel_of("w", 120, migraine=list(range(14)) + [30 * w + i for w in (1, 2, 3) for i in range(6)])
    better = panel_of("b", 120, migraine=list(range(1)) + [30 * w + i for w in (1, 2, 3) for i in range(8)])
    stable = panel_of("s", 120, migraine=list(range(7)) + [30 * w + i for w in (1, 2, 3) for i in range(6)])
    # half the 90 days before unlogged: 3 migraine days in 45 logged = 2 per 30; 10 in the last 30 is worse
    half = panel_of("h", 120, migraine=list(range(10)) + [32, 62, 92],
                    logged=list(range(30)) + list(range(30, 120, 2)))
    f = flags(pd.concat([worse, better, stable, half]), no_meds(), AS_OF).set_index("patient_id")
    assert f.loc["w", "trend"] == "worse" and f.loc["w", "migraine_days_last_30"] == 14
    assert f.loc["w", "migraine_days_prev_90_per_30"] == 6.0
    assert f.loc["b", "trend"] == "better" and f.loc["s", "trend"] == "stable"
    assert f.loc["h", "migraine_days_prev_90_per_30"] == 2.0 and f.loc["h", "trend"] == "worse"


def test_a_drop_chance_could_explain_is_stable():
    # 3 migraine days against 8 per 30 before: past the margin, but with 27 attacks in all a split this
    # uneven happens by chance 8% of the time (binomial, 30 of 120 logged days) -> not called better
    maybe = panel_of("m", 120, migraine=list(range(3)) + [30 * w + i for w in (1, 2, 3) for i in range(8)])
    f = one(flags(maybe, no_meds(), AS_OF), "m")
    assert f["trend"] == "stable"
    assert ("3 migraine days per 30 in the last 30, down from 8 in the 90 before, but with this few attacks "
            "chance alone could do that: stable") in f["details"]


def test_a_cohort_whose_rate_never_changes_is_rarely_called_better_or_worse():
    seed = 31
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    panels = [panel_of(f"p{i}", 120, migraine=list(np.flatnonzero(rng.random(120) < 0.2)))
              for i in range(300)]
    trend = flags(pd.concat(panels), no_meds(), AS_OF)["trend"]
    changed = (trend != "stable").mean()
    assert changed <= 0.10, f"{changed:.0%} of a stationary cohort called better or worse"


def test_too_little_diary_gives_no_trend_and_lower_bound_warning():
    panel = panel_of("x", 120, migraine=[1, 2], logged=list(range(10)))
    f = one(flags(panel, no_meds(), AS_OF), "x")
    assert f["trend"] is None and f["migraine_days_prev_90_per_30"] is None
    assert f["days_logged_last_30"] == 10
    assert "only 10 of the last 30 days logged: counts are lower bounds" in f["details"]


def test_attack_log_only_patient_counts_every_day_as_logged():
    panel = panel_of("a", 120, migraine=[1, 40, 70, 100], logged=[], diary_kept=False)
    f = one(flags(panel, no_meds(), AS_OF), "a")
    assert f["days_logged_last_30"] == 1  # observed days
    assert f["migraine_days_prev_90_per_30"] == 1.0 and f["trend"] == "stable"


def test_silence_and_rows_after_as_of():
    panel = panel_of("q", 60, migraine=[12], logged=list(range(9, 60)))
    f = one(flags(panel, no_meds(), AS_OF), "q")
    assert f["last_entry"] == day(9) and f["days_since_last_entry"] == 9
    assert "no diary entry for 9 days" in f["details"]
    later = one(flags(panel, no_meds(), AS_OF - timedelta(days=20)), "q")
    assert later["last_entry"] == day(20) and later["migraine_days_last_30"] == 0


# ------------------------------------------------------------------------------ treatment response

def _treated(pid: str, before_per_30: int, after_per_30: int, t_back: int = 90) -> pd.DataFrame:
    """Migraine days at ``before_per_30`` a 30 before a treatment on day ``t_back``, ``after_per_30`` after."""
    mig = [t_back + 1 + 30 * w + i for w in range(3) for i in range(before_per_30)]
    mig += [t_back - 1 - 30 * w - i for w in range(3) for i in range(after_per_30) if t_back - 1 - 30 * w - i >= 0]
    return panel_of(pid, t_back + 91, migraine=mig)


def test_responder_and_non_responder_to_an_infusion():
    panel = pd.concat([_treated("yes", 9, 3), _treated("no", 9, 6)])
    treatments = pd.DataFrame({"patient_id": ["yes", "no"], "date": [day(90), day(90)],
                               "treatment": "ketamine_infusion"})
    r = treatment_response(panel, treatments, AS_OF).set_index("patient_id")
    assert r.loc["yes", "migraine_days_per_30_before"] == 9.0 and r.loc["yes", "migraine_days_per_30_after"] == 3.0
    assert r.loc["yes", "responder"] is True and r.loc["yes", "caveat"] is None
    assert r.loc["no", "migraine_days_per_30_before"] == 9.0 and r.loc["no", "migraine_days_per_30_after"] == 6.0
    assert r.loc["no", "responder"] is False
    assert r.loc["yes", "date"] == day(90) and r.loc["yes", "days_logged_after"] == 90


def test_exactly_half_is_a_responder():
    r = treatment_response(_treated("p", 8, 4), pd.DataFrame(
        {"patient_id": ["p"], "date": [day(90)], "treatment": ["botox"]}), AS_OF)
    assert r.loc[0, "responder"] is True and r.loc[0, "reduction"] == 0.5


def test_too_recent_treatment_has_no_verdict_and_says_why():
    panel = _treated("p", 9, 2, t_back=20)
    r = treatment_response(panel, pd.DataFrame({"patient_id": ["p"], "date": [day(20)],
                                                "treatment": ["ketamine_infusion"]}), AS_OF)
    assert r.loc[0, "responder"] is None
    assert "only 20 days since the treatment so far (28 logged days needed)" in r.loc[0, "caveat"]


def test_infusion_series_is_one_course_and_another_treatment_cuts_the_after_window():
    panel = _treated("p", 9, 3)
    treatments = pd.DataFrame({"patient_id": "p", "treatment": ["ketamine_infusion"] * 3 + ["erenumab"],
                               "date": [day(90), day(88), day(86), day(40)]})
    r = treatment_response(panel, treatments, AS_OF).set_index("treatment")
    k = r.loc["ketamine_infusion"]
    assert k["sessions"] == 3 and k["date"] == day(90) and k["course_end"] == day(86)
    assert k["days_logged_after"] == 45  # backs 85 .. 41
    assert "erenumab started 50 days after" in k["caveat"]
    assert k["responder"] is True
    assert "ketamine_infusion started 50 days before" in r.loc["erenumab", "caveat"]


def test_latest_treatment_response_per_patient():
    panel = _treated("p", 9, 3)
    treatments = pd.DataFrame({"patient_id": "p", "treatment": ["botox", "ketamine_infusion"],
                               "date": [day(170), day(90)]})
    latest = clinical.latest_treatment_response(treatment_response(panel, treatments, AS_OF))
    assert set(latest) == {"p"} and latest["p"]["treatment"] == "ketamine_infusion"
    assert latest["p"]["responder"] is True


# -------------------------------------------------------------------------------------------- speed

def test_flags_for_many_patients_match_one_at_a_time():
    rng = np.random.default_rng(7)
    panels = [panel_of(f"p{i:03d}", int(rng.integers(30, 200)), headache=rng.choice(200, 90).tolist(),
                       migraine=rng.choice(200, 40).tolist(), logged=rng.choice(200, 150).tolist())
              for i in range(40)]
    together = flags(pd.concat(panels[::-1]), no_meds(), AS_OF).set_index("patient_id").sort_index()
    for p in panels[:8]:
        alone = flags(p, no_meds(), AS_OF).set_index("patient_id")
        pid = alone.index[0]
        assert alone.loc[pid].to_dict() == together.loc[pid].to_dict()
