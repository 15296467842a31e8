"""The simulator: shapes of its frames (the import contract) and the realism the models are tested against."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigger_watch import simulate

SEED = 20261121
ISO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")


@pytest.fixture(scope="module")
def cohort():
    print(f"simulate seed {SEED}")
    return simulate.simulate_cohort(40, 240, SEED)


@pytest.fixture(scope="module")
def panel(cohort):
    return simulate.panel_from_cohort(cohort)


def test_frames_have_the_import_shapes(cohort):
    assert list(cohort.patients.columns) == ["patient_id", "timezone", "latitude", "longitude", "sex",
                                             "birth_year", "clinician_id"]
    for c in ("patient_id", "date", "stress", "alcohol_units", "caffeine_mg", "menstruation", "skipped_meal",
              "exercise_minutes", "water_l", "screen_hours", "sleep_hours", "sleep_quality", "foods",
              "symptoms", "medication", "headache", "headache_intensity"):
        assert c in cohort.diary.columns, c
    assert cohort.diary["date"].str.match(r"^\d{4}-\d{2}-\d{2}$").all()
    assert cohort.attacks["start"].map(lambda s: bool(ISO_OFFSET.match(s))).all()
    ends = cohort.attacks["end"][cohort.attacks["end"] != ""]
    assert ends.map(lambda s: bool(ISO_OFFSET.match(s))).all()
    assert cohort.attacks["medications"].str.match(r"^[a-z_]+:\d+$").all()
    assert {"patient_id", "start", "end", "minutes_asleep", "awakenings", "efficiency", "source"} <= set(
        cohort.sleep.columns)
    assert list(cohort.weather_hourly.columns) == ["latitude", "longitude", "time", "pressure_msl",
                                                   "temperature_2m", "relative_humidity_2m", "precipitation"]
    assert cohort.weather_hourly["pressure_msl"].between(850, 1090).all()
    assert cohort.weather_hourly["relative_humidity_2m"].between(0, 100).all()
    for c in ("pressure_mean", "pressure_change", "temperature_max", "temperature_change", "humidity",
              "precipitation", "source"):
        assert c in cohort.weather_daily.columns
    for c in ("sleep_hours", "efficiency", "awakenings", "bedtime", "wake_time", "time_in_bed_hours"):
        assert c in cohort.sleep_nightly.columns
    assert set(cohort.truth.columns) >= {"patient_id", "factor", "lag", "log_odds_ratio"}
    assert cohort.diary["stress"].dropna().between(0, 10).all()


def test_same_seed_same_cohort():
    a = simulate.simulate_cohort(5, 60, SEED)
    b = simulate.simulate_cohort(5, 60, SEED)
    pd.testing.assert_frame_equal(a.diary, b.diary)
    pd.testing.assert_frame_equal(a.attacks, b.attacks)
    assert not a.diary.equals(simulate.simulate_cohort(5, 60, SEED + 1).diary)


def test_planted_triggers_follow_the_brief(cohort):
    t = cohort.truth
    ors = t["odds_ratio_ref"]
    assert ors.between(1.5, 4.0).all()
    # lag 1 where the evening's own rating or log is changed by the attack (behaviour, stress)
    assert (t.loc[t["factor"].isin(["alcohol_units", "skipped_meal", "caffeine_withdrawal", "stress",
                                    "stress_letdown"]), "lag"] == 1).all()
    assert (t.loc[t["factor"].isin(["pressure_drop", "sleep_short", "menstrual_window"]), "lag"] == 0).all()
    per = t.groupby("patient_id").size()
    assert per.max() <= 4
    assert len(per) < len(cohort.patients)  # some patients have no trigger
    assert t["factor"].value_counts().max() >= 5  # shared triggers: pooling has something to find


def test_attacks_episodes_and_at_risk(cohort, panel):
    truth = cohort.daily_truth
    assert (panel["onset"].to_numpy() == truth["onset"].to_numpy()).all()
    assert not (panel["at_risk"] & panel["in_episode"]).any()
    monthly = panel.groupby("patient_id")["onset"].sum() / (cohort.n_days / 30)
    assert 1.5 < monthly.median() < 7
    # a new attack starts at least 24 hours after the previous one ended (one episode per attack record)
    a = cohort.attacks[cohort.attacks["end"] != ""].copy()
    a["s"] = pd.to_datetime(a["start"], utc=True)
    a["e"] = pd.to_datetime(a["end"], utc=True)
    a = a.sort_values(["patient_id", "s"])
    gap = a.groupby("patient_id")["s"].shift(-1) - a["e"]
    assert (gap.dropna() >= pd.Timedelta(hours=24)).all()
    length = (a["e"].dt.tz_convert(None).dt.normalize() - a["s"].dt.tz_convert(None).dt.normalize()).dt.days + 1
    assert length.between(1, 4).all()


def test_missing_days_cluster_in_attacks(panel):
    attack_day = panel["onset"].astype(bool) | panel["in_episode"]
    missing = ~panel["diary_kept"]
    assert missing[attack_day].mean() > 3 * missing[~attack_day].mean()


def test_warning_signs_rise_before_onset_and_avoidance_on_attack_days(panel):
    at = panel[panel["at_risk"]]
    sym = at[[c for c in at.columns if c.startswith("symptom:") and c.endswith("@1")]].max(axis=1)
    assert sym[at["onset"] == 1].mean() > 2 * sym[at["onset"] == 0].mean()
    alc = at["alcohol_units@0"]
    assert alc[at["onset"] == 1].mean() < 0.5 * alc[at["onset"] == 0].mean()


def test_stress_is_rated_higher_on_attack_days_by_the_reactivity():
    """The diary's stress is the stress the planted effects act on, plus ``stress_reactivity`` on onset and
    episode days (clipped to 0-10); other days, and every other column, are the same."""
    calm = simulate.simulate_cohort(20, 120, SEED, stress_reactivity=0.0)
    pained = simulate.simulate_cohort(20, 120, SEED, stress_reactivity=2.0)
    pd.testing.assert_frame_equal(calm.attacks, pained.attacks)
    a, b = calm.diary, pained.diary
    pd.testing.assert_frame_equal(a.drop(columns="stress"), b.drop(columns="stress"))
    truth = calm.daily_truth.assign(date=lambda d: pd.to_datetime(d["date"]).dt.strftime("%Y-%m-%d"))
    days = a[["patient_id", "date"]].merge(truth, on=["patient_id", "date"], how="left")
    attack = (days["onset"].astype(bool) | ~days["at_risk"].astype(bool)).to_numpy()
    diff = (b["stress"] - a["stress"]).to_numpy()
    known = ~np.isnan(diff)
    assert attack.sum() > 100
    assert (diff[known & ~attack] == 0).all()
    expected = np.minimum(a["stress"].to_numpy() + 2, 10) - a["stress"].to_numpy()
    np.testing.assert_array_equal(diff[known & attack], expected[known & attack])


def test_weather_is_a_realistic_series(cohort):
    w = cohort.weather_daily[cohort.weather_daily["patient_id"] == cohort.patients["patient_id"].iloc[0]]
    p = w["pressure_mean"].to_numpy()
    assert 4 < p.std() < 12  # synoptic swings of 10-20 hPa over days
    assert 10 < pd.Series(p).rolling(7).apply(np.ptp).median() < 35
    assert 0.05 < (w["pressure_change"] <= -5).mean() < 0.3
    h = cohort.weather_hourly
    one = h[(h["latitude"] == h["latitude"].iloc[0])].head(24 * 30)
    daily_range = one.groupby(one["time"].str[:10])["temperature_2m"].agg(np.ptp)
    assert daily_range.median() > 4  # diurnal cycle


def test_write_files(cohort, tmp_path):
    paths = simulate.write_files(cohort, tmp_path)
    assert set(paths) == {"patients", "diary", "attacks", "sleep", "weather", "treatments"}
    back = pd.read_csv(paths["diary"])
    assert len(back) == len(cohort.diary)
    assert pd.read_csv(paths["weather"]).columns[:3].tolist() == ["latitude", "longitude", "time"]


def test_panel_has_the_documented_shape(panel):
    for c in ("patient_id", "date", "observed", "diary_kept", "onset", "in_episode", "at_risk", "headache_day",
              "migraine_day", "intensity"):
        assert c in panel.columns
    meta = panel.attrs["factors"]
    assert list(meta.columns) == ["column", "factor", "lag", "kind", "group", "label", "behaviour"]
    assert all(panel[c].dtype == np.float64 for c in meta["column"])
    assert meta.loc[meta["factor"] == "alcohol_units", "behaviour"].all()
    assert not meta.loc[meta["factor"] == "pressure_drop", "behaviour"].any()
    assert (panel.loc[panel["at_risk"], "onset"].isin([0, 1])).all()


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_lag_one_is_the_previous_day(seed):
    c = simulate.simulate_cohort(2, 30, seed)
    p = simulate.panel_from_cohort(c)
    for _, g in p.groupby("patient_id"):
        lag0, lag1 = g["stress@0"].to_numpy(), g["stress@1"].to_numpy()
        np.testing.assert_array_equal(lag1[1:], lag0[:-1])
        assert np.isnan(lag1[0])
