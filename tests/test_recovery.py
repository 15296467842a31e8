"""Recovery through the product's path: simulated cohort -> import files -> ``importing.import_file`` into
SQLite -> ``features.load_inputs`` / ``features.build_panel`` -> ``models.analyse``.

test_models.py checks the models on ``simulate.panel_from_cohort`` (a stand-in panel builder); these tests check
that the calls survive the real importers and the real panel (episode merging, baselines from earlier days,
missingness, rare tags, weather per local day). Every cohort has a fixed seed, printed.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from trigger_watch import config, features, importing, models, simulate, storage

SEED_PLANTED = 3303
SEED_ALCOHOL = 3304
SEED_NULL = 4404
SEED_STRESS = 3305
SEED_SEASONAL = 4406
SEED_MEDICATED = 4408
N, DAYS = 40, 240
KINDS = ("patients", "diary", "attacks", "sleep", "weather", "treatments")


def _through_the_pipeline(cohort: simulate.Cohort, folder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import the cohort's files into a fresh database, build the real panel, analyse; (panel, long summary)."""
    files = simulate.write_files(cohort, folder / "files")
    db = storage.connect(folder / "acc.db")
    try:
        today = cohort.start + timedelta(days=cohort.n_days)  # the day after the cohort ends
        for kind in KINDS:
            r = importing.import_file(db, kind, files[kind], importing.ImportOptions(today=today))
            assert r.quarantined == 0, r.lines()
        as_of = today - timedelta(days=1)
        panel = features.build_panel(features.load_inputs(db, None, as_of), as_of)
    finally:
        db.conn.close()
    res = models.analyse(panel, config.defaults(), store=False)
    long = pd.concat([a.summary.assign(patient_id=pid, status=a.status) for pid, a in res.items()],
                     ignore_index=True)
    return panel, long


def _cohort(tmp_path_factory, name: str, seed: int, extra=None, **kw):
    print(f"{name} cohort: seed {seed}, {N} patients x {DAYS} days, {kw}")
    c = simulate.simulate_cohort(N, DAYS, seed, **kw)
    if extra:
        extra(c)
    panel, long = _through_the_pipeline(c, tmp_path_factory.mktemp(name))
    return c, panel, long


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Everyone has pressure_drop (lag 0) as a trigger with OR 3-4, and premonitory symptoms."""
    return _cohort(tmp_path_factory, "planted", SEED_PLANTED, plant=(("pressure_drop", 0, 1.0, 1.0),),
                   or_range=(3.0, 4.0), premonitory=1.0)


@pytest.fixture(scope="module")
def alcohol(tmp_path_factory):
    """Every drinker has alcohol the day before (lag 1) as a trigger, OR 3-4 per 2 drinks; avoidance on."""
    return _cohort(tmp_path_factory, "alcohol", SEED_ALCOHOL, plant=(("alcohol_units", 1, 1.0, 2.0),),
                   or_range=(3.0, 4.0), premonitory=1.0)


@pytest.fixture(scope="module")
def null(tmp_path_factory):
    """Nothing planted; stress is rated a point higher on attack days (the simulator's default reactivity)."""
    return _cohort(tmp_path_factory, "null", SEED_NULL, triggers=False, premonitory=1.0, stress_reactivity=1.0)


@pytest.fixture(scope="module")
def stress(tmp_path_factory):
    """Everyone has stress the day before (lag 1) as a trigger, OR 3-4 per 3 points, and rates stress 1.5
    points higher on attack days (the pain is stressful)."""
    return _cohort(tmp_path_factory, "stress", SEED_STRESS, plant=(("stress", 1, 1.0, 3.0),),
                   or_range=(3.0, 4.0), stress_reactivity=1.5)


@pytest.fixture(scope="module")
def seasonal(tmp_path_factory):
    """Nothing planted; everyone's attacks are three times as frequent at the height of summer as in
    midwinter (and the cohort's 240 days run from January to August, so warmer days come with more
    attacks)."""
    return _cohort(tmp_path_factory, "seasonal", SEED_SEASONAL, triggers=False, seasonality=3.0)


@pytest.fixture(scope="module")
def medicated(tmp_path_factory):
    """Nothing planted; the diary has a column of its own, ``took_medication``: 1 on nine in ten headache
    days (the attack's doing), 1 on one in twenty other days."""
    def add(c):
        rng = np.random.default_rng(SEED_MEDICATED)
        u = rng.random(len(c.diary))
        c.diary["took_medication"] = np.where(c.diary["headache"] == 1, u < 0.9, u < 0.05).astype(int)
    return _cohort(tmp_path_factory, "medicated", SEED_MEDICATED, extra=add, triggers=False)


def _planted_rows(c, s) -> pd.DataFrame:
    t = c.truth.rename(columns={"lag": "lag_days"})
    return t.merge(s, on=["patient_id", "factor", "lag_days"], how="left")


def test_the_real_panel_has_every_planted_factor_and_patient(planted, alcohol):
    for c, panel, _ in (planted, alcohol):
        cols = set(panel.attrs["factors"]["column"])
        assert {f"{f}@{lag}" for f, lag in zip(c.truth["factor"], c.truth["lag"])} <= cols
        assert set(panel["patient_id"]) == set(c.patients["patient_id"])
        # the 24-hour rule sees exactly the planted onsets (the simulator keeps attacks 24 h apart)
        assert int(panel["onset"].sum()) == len(c.attacks)


def test_planted_pressure_drop_is_recovered_through_the_pipeline(planted):
    c, _, s = planted
    rows = _planted_rows(c, s)
    assert len(rows) == N and rows["verdict"].notna().all()
    assert (rows["verdict"] == "trigger").mean() >= 0.5  # 26 of 40 with this seed
    trig = s[s["verdict"] == "trigger"]
    false = trig[~((trig["factor"] == "pressure_drop") & (trig["lag_days"] == 0))]
    assert len(false) <= max(1, 0.1 * len(trig))


def test_planted_alcohol_the_day_before_is_recovered_through_the_pipeline(alcohol):
    c, _, s = alcohol
    rows = _planted_rows(c, s)
    assert len(rows) >= N // 2 and rows["verdict"].notna().all()  # drinkers only
    assert (rows["verdict"] == "trigger").mean() >= 0.4  # 15 of 28 with this seed
    trig = s[s["verdict"] == "trigger"]
    false = trig[~((trig["factor"] == "alcohol_units") & (trig["lag_days"] == 1))]
    # (weekend the day before, a proxy of weekend drinking, is the usual false call here: 1 of 16)
    assert len(false) <= max(2, 0.1 * len(trig))
    # avoidance makes lag-0 alcohol look protective; it is never called
    assert not ((s["factor"] == "alcohol_units") & (s["lag_days"] == 0)
                & s["verdict"].isin(["trigger", "protective"])).any()


def test_stress_the_day_before_is_recovered_and_the_same_day_never_called(stress):
    c, _, s = stress
    rows = _planted_rows(c, s)
    assert len(rows) == N and rows["verdict"].notna().all()
    assert (rows["verdict"] == "trigger").mean() >= 0.4
    # the evening's rating rises with the day's attack: a consequence, estimated but never called
    same_day = s[s["factor"].isin(["stress", "stress_letdown"]) & (s["lag_days"] == 0)]
    assert len(same_day) == 2 * N
    assert same_day.loc[same_day["factor"] == "stress", "odds_ratio"].notna().all()  # estimated and shown
    assert not same_day["verdict"].isin(["trigger", "protective"]).any()
    calls = s[s["verdict"].isin(["trigger", "protective"])]
    false = calls[~((calls["factor"] == "stress") & (calls["lag_days"] == 1) & (calls["verdict"] == "trigger"))]
    assert not false["factor"].str.startswith("stress").any()
    # the 10% FDR holds on average; one cohort of 40 can exceed it: 7 of 47 calls with this seed, on sleep
    # timing and red wine, the same 7 when stress is rated no higher on attack days
    assert len(false) <= max(2, 0.2 * len(calls))


def test_stress_rated_higher_in_attacks_is_no_trigger_in_a_null_cohort(null):
    """Pain raises the evening's stress rating: without the same-day rating treated as a consequence, every
    patient of a null cohort got "stress the same day" as a trigger (300 of 300 at 365 days, measured)."""
    c, _, s = null
    raw = c.diary.merge(c.daily_truth.assign(date=c.daily_truth["date"].dt.strftime("%Y-%m-%d")),
                        on=["patient_id", "date"])
    attack = raw["onset"].astype(bool) | ~raw["at_risk"].astype(bool)
    assert raw.loc[attack, "stress"].mean() > raw.loc[~attack, "stress"].mean() + 0.5  # the bias is there
    stress_calls = s[s["factor"].str.startswith("stress") & s["verdict"].isin(["trigger", "protective"])]
    assert stress_calls.empty, stress_calls[["patient_id", "factor", "lag_days", "verdict", "odds_ratio"]]


def test_symptoms_are_never_triggers_through_the_pipeline(planted, alcohol, null):
    for _, _, s in (planted, alcohol, null):
        sym = s[s["factor"].str.startswith("symptom:")]
        assert len(sym) > 0
        assert not sym["verdict"].isin(["trigger", "protective"]).any()


def test_null_cohort_gives_no_trigger_through_the_pipeline(null):
    _, _, s = null
    assert (s["verdict"] == "trigger").sum() <= 1
    assert (s["verdict"] == "protective").sum() <= 1


def test_premonitory_symptoms_are_warning_signs_through_the_pipeline(planted):
    _, _, s = planted  # premonitory=1.0: every patient has a symptom that rises before onsets
    warned = s[s["verdict"] == "warning_sign"]["patient_id"].nunique()
    assert warned >= N // 2


def test_attacks_that_follow_the_seasons_make_no_weather_trigger(seasonal):
    """The time of year moves attacks and the weather together: without the models' adjustment for it, a
    cohort like this (300 patients x 365 days, twice the rate in summer) was told temperature is a trigger
    166 times."""
    _, panel, s = seasonal
    onsets = panel[panel["at_risk"]].groupby(panel["date"].dt.month)["onset"].mean()
    assert onsets.loc[[6, 7, 8]].mean() > 1.5 * onsets.loc[[1, 2, 3]].mean()  # the confounding is there
    assert {"season_sin@0", "season_cos@0"} <= set(panel.columns)
    # the time of year is adjusted for, never a factor of the summaries
    assert not s["factor"].str.startswith("season").any()
    calls = s[s["verdict"].isin(["trigger", "protective"])]
    weather = {f.id for f in features.FACTORS if f.group == "weather"}
    assert not calls["factor"].isin(weather).any(), calls[["patient_id", "factor", "lag_days", "odds_ratio"]]
    assert len(calls) <= 1


def test_a_diary_column_of_its_own_is_never_called_on_the_same_day(medicated):
    """A column a diary adds is logged for the day, as behaviour is, and may be the attack's doing:
    medication taken on headache days was "one of your triggers" for every patient (OR in the hundreds,
    as in the README's real diary)."""
    _, panel, s = medicated
    assert {"took_medication@0", "took_medication@1"} <= set(panel.columns)
    same_day = s[(s["factor"] == "took_medication") & (s["lag_days"] == 0)]
    assert len(same_day) == N
    assert (same_day["odds_ratio"].dropna() > 5).mean() > 0.5  # estimated and shown: the attack's doing
    assert not same_day["verdict"].isin(["trigger", "protective"]).any()
    assert (s["verdict"] == "trigger").sum() <= 1
