"""The next-day forecast and its rolling-origin validation, on small fixed-seed simulated cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trigger_watch import config, features, forecast, models, simulate

SEED = 20261121
#: strong triggers a forecast can use: weather (known ahead) and yesterday's behaviour, planted in everyone
STRONG = (("pressure_drop", 0, 1.0, 1.0), ("alcohol_units", 1, 0.8, 2.0), ("skipped_meal", 1, 1.0, 1.0))


@pytest.fixture(scope="module")
def cfg():
    return config.defaults()


@pytest.fixture(scope="module")
def panel():
    print(f"seed {SEED}")
    cohort = simulate.simulate_cohort(40, 240, SEED, plant=STRONG, or_range=(3.0, 5.0))
    return simulate.panel_from_cohort(cohort)


@pytest.fixture(scope="module")
def validation(panel, cfg):
    return forecast.rolling_origin(panel, cfg, origins=2, step_days=30)


def test_forecast_beats_base_rate_on_strong_triggers(validation):
    c = validation.cohort
    assert c["days"] > 1000 and c["onsets"] > 100
    assert c["auc"] > 0.6
    assert c["mean_patient_auc"] > 0.55
    assert c["brier"] <= c["base_rate_brier"] + 0.002
    assert c["brier_skill"] > 0
    # calibrated: the mean forecast is close to the observed rate, and the slope is not wildly off
    pred = validation.predictions
    assert abs(pred["p"].mean() - pred["onset"].mean()) < 0.03
    assert 0.4 < c["calibration_slope"] < 1.6


def test_validation_blocks_and_per_patient_keys(validation, panel):
    pred = validation.predictions
    last = panel["date"].max()
    assert validation.cohort["origins"] == [(last - pd.Timedelta(days=59)).date().isoformat(),
                                            (last - pd.Timedelta(days=29)).date().isoformat()]
    assert (pred["date"] >= pred["origin"]).all() and (pred["date"] < pred["origin"] + pd.Timedelta(days=30)).all()
    at = panel[panel["at_risk"] & (panel["date"] > last - pd.Timedelta(days=60))]
    assert len(pred) == len(at)  # every at-risk day of the window, once
    assert ((pred["p"] > 0) & (pred["p"] < 1)).all()
    for pid, v in validation.per_patient.items():
        assert set(v) == {"cv_auc", "cv_brier", "cv_days", "base_rate_brier", "calibration"}
        mine = pred[pred["patient_id"] == pid]
        assert v["cv_days"] == len(mine)
        assert v["cv_brier"] == pytest.approx(((mine["p"] - mine["onset"]) ** 2).mean(), abs=1e-4)
        if mine["onset"].sum() < 2:
            assert v["cv_auc"] is None
    bins = validation.cohort["calibration"]
    assert 5 <= len(bins) <= 10 and sum(b["n"] for b in bins) == len(pred)


def test_no_leakage_from_days_on_or_after_the_origin(panel, cfg):
    """Scrambling everything from the origin on (outcomes, and every value a forecast of that day may not
    know) leaves the forecast of the origin day unchanged."""
    d = panel["date"].max() - pd.Timedelta(days=20)
    rng = np.random.default_rng(SEED)
    meta = panel.attrs["factors"]
    hidden = [c for c in meta["column"] if c in panel.columns
              and not (c.endswith("@0") and meta.set_index("column").at[c, "group"] in forecast.KNOWN_AHEAD)
              and not c.endswith("@1")]
    bad = panel.copy()
    later = bad["date"] > d
    today = bad["date"] == d
    for c in meta["column"]:
        if c in bad.columns:
            bad.loc[later, c] = rng.normal(size=int(later.sum())) * 5
    bad.loc[today, hidden] = rng.normal(size=(int(today.sum()), len(hidden))) * 5
    bad.loc[later | today, "onset"] = rng.integers(0, 2, int((later | today).sum())).astype(np.int8)
    bad.attrs = panel.attrs
    a = forecast.rolling_origin(panel, cfg, origins=[d], step_days=1).predictions
    b = forecast.rolling_origin(bad, cfg, origins=[d], step_days=1).predictions
    assert len(a) > 20 and (a["date"] == d).all()
    np.testing.assert_allclose(a["p"].to_numpy(), b["p"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["p_base"].to_numpy(), b["p_base"].to_numpy(), rtol=0, atol=1e-12)
    # and a value the forecast may know (the day's weather) does move it: the test can fail
    w = bad.copy()
    w.loc[today, "pressure_drop@0"] = 1 - panel.loc[today, "pressure_drop@0"].fillna(0)
    w.attrs = panel.attrs
    c = forecast.rolling_origin(w, cfg, origins=[d], step_days=1).predictions
    assert np.abs(c["p"].to_numpy() - a["p"].to_numpy()).max() > 0.01


def test_patients_without_a_model_get_the_base_rate(panel, cfg):
    few = panel[panel["patient_id"].isin(panel["patient_id"].unique()[:35])]
    short = few.groupby("patient_id")["date"].transform("min") + pd.Timedelta(days=200)
    late = few["patient_id"] == few["patient_id"].iloc[0]
    few = few[~late | (few["date"] >= short)]  # the first patient starts 200 days late: too few days at origin
    few.attrs = panel.attrs
    v = forecast.rolling_origin(few, cfg, origins=1, step_days=20)
    pred = v.predictions
    mine = pred[pred["patient_id"] == few["patient_id"].iloc[0]]
    assert len(mine) and not mine["fitted"].any()
    np.testing.assert_allclose(mine["p"], mine["p_base"])
    assert v.cohort["base_rate_patients"] == 1 and v.cohort["base_rate_days"] == len(mine)
    assert pred.loc[pred["fitted"], "patient_id"].nunique() == 34


def test_an_origin_before_anyone_logged_gives_base_rates_not_an_error(cfg):
    """A young cohort (60 days, origins 30 days apart): the first origin has no days before it, so no fit
    and no recent days to average over; its block is forecast from the base rate of the days there are."""
    young = simulate.panel_from_cohort(simulate.simulate_cohort(8, 60, 31, triggers=False))
    v = forecast.rolling_origin(young, cfg, origins=3, step_days=30)
    pred = v.predictions
    assert len(pred) and pred["p"].between(0, 1).all()
    assert not pred.loc[pred["date"] < young["date"].min() + pd.Timedelta(days=30), "fitted"].any()


def test_next_day_probability_baseline_and_drivers(panel, cfg):
    tomorrow = (panel["date"].max() + pd.Timedelta(days=1)).date()
    res = models.analyse(panel, cfg, store=False)
    ahead = panel[panel["date"] == panel["date"].max()].copy()
    ahead["date"] = pd.Timestamp(tomorrow)
    meta = panel.attrs["factors"].set_index("column")
    for c in meta.index:  # tomorrow: no diary or night yet; lag 1 from today; weather from the forecast
        if c.endswith("@0") and meta.at[c, "group"] not in forecast.KNOWN_AHEAD:
            ahead[c] = np.nan
    ahead["at_risk"] = False
    body = panel.copy()
    body.attrs, ahead.attrs = {}, {}  # pandas compares attrs on concat, and a DataFrame has no truth value
    full = pd.concat([body, ahead], ignore_index=True)
    full.attrs = panel.attrs
    out = forecast.next_day(full, res, tomorrow)
    ok = [p for p, r in res.items() if r.status == "ok"]
    assert set(out) == set(ok) and len(ok) > 30
    for block in out.values():
        assert block["date"] == tomorrow.isoformat()
        assert 0 < block["attack_probability"] < 1 and 0 < block["baseline_probability"] < 1
        mags = [abs(d["contribution"]) for d in block["drivers"]]
        assert mags == sorted(mags, reverse=True) and len(mags) <= forecast.MAX_DRIVERS
        assert all(m > 0 for m in mags)  # "weekend, contribution 0.0" on the clinician page was no driver
        assert all(not (d["lag_days"] == 0 and d["factor"] in ("stress", "sleep_hours")) for d in block["drivers"])
    # a day that is simply not there yet is not read as an attack day: the forecast's mean stays near the
    # patients' baselines instead of the diary-missing jump
    p = np.array([b["attack_probability"] for b in out.values()])
    base = np.array([b["baseline_probability"] for b in out.values()])
    assert abs(np.log(p / (1 - p)).mean() - np.log(base / (1 - base)).mean()) < 0.5


def test_scores_on_known_values():
    y = np.array([0, 0, 1, 1])
    assert forecast.auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert forecast.auc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    per = forecast.auc_by_patient(np.array(["a"] * 4 + ["b"] * 3), np.array([0, 0, 1, 1, 0, 1, 0]),
                                  np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.1]))
    assert per["a"] == pytest.approx(0.75) and np.isnan(per["b"])  # b has one onset only
    rng = np.random.default_rng(SEED)
    p = rng.uniform(0.02, 0.5, 20000)
    yy = (rng.random(20000) < p).astype(float)
    slope, intercept = forecast.calibration_line(yy, p)
    assert slope == pytest.approx(1.0, abs=0.1) and intercept == pytest.approx(0.0, abs=0.05)
    slope2, _ = forecast.calibration_line(yy, np.clip(p * 2 - 0.1, 0.01, 0.99))  # too extreme
    assert slope2 < 0.9
    bins = forecast.calibration_bins(yy, p, 10)
    assert len(bins) == 10 and all(abs(b["predicted"] - b["observed"]) < 0.05 for b in bins)


def test_config_has_validation_settings(cfg):
    assert cfg["analysis.validation_origins"] == 3 and cfg["analysis.validation_step_days"] == 30


def test_additive_shortcut_equals_the_full_average(panel, cfg):
    """The forecast averages the risk over the patient's recent same-day values; the shortcut through the
    additive log odds gives the same numbers as replacing them day by day."""
    d = panel["date"].max() - pd.Timedelta(days=10)
    train = panel[panel["date"] < d]
    train.attrs = panel.attrs
    res = models.analyse(train, cfg, store=False)
    pid = next(p for p, r in res.items() if r.status == "ok")
    est = res[pid].estimator
    mine = panel[(panel["patient_id"] == pid) & (panel["date"] >= d)]
    hist = forecast._History(forecast._recent(panel[panel["patient_id"] == pid], d), panel.attrs["factors"])
    masks = hist.layout(est.columns_)[1]
    x = mine.reindex(columns=est.columns_).to_numpy(dtype=float, copy=True)
    x[:, masks[0]] = np.nan
    past = hist.of(pid, est.columns_)
    assert masks[0].sum() >= 5 and len(past) == forecast.SAME_DAY_HISTORY
    exact = forecast._marginal(est, x, past, masks)
    fast = forecast._marginal(est, x, past, masks, additive=True)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-9)
    usual = forecast.forecast_rows(mine, est, hide_same_day=[c for c, h in zip(est.columns_, masks[0]) if h])
    assert not np.allclose(exact, est.predict_proba(usual)[:, 1])  # averaging is not the usual day's risk


def test_the_validation_refits_without_fingerprints_and_the_same_models(panel, cfg, monkeypatch):
    """A validation refit is used and thrown away: it skips the data fingerprints (a hash of every fitted
    value, ~5 % of its CPU), and what it fits is the same as with them."""
    train = panel[panel["date"] < panel["date"].max() - pd.Timedelta(days=30)]
    train.attrs = panel.attrs
    with_fp = models.analyse(train, cfg, store=False)
    without = models.analyse(train, cfg, store=False, fingerprint=False)
    assert list(without) == list(with_fp)
    for pid, a in with_fp.items():
        assert a.model["fingerprint"] and without[pid].model["fingerprint"] is None
        pd.testing.assert_frame_equal(without[pid].summary, a.summary)
    with pytest.raises(ValueError, match="store=False"):
        models.analyse(train, cfg, fingerprint=False)
    with pytest.raises(ValueError, match="store=False"):  # the pipeline's way in: prepare, then fit_prepared
        models.fit_prepared([models.prepare(train, cfg, fingerprint=False)], cfg)

    def no_hashing(*args, **kwargs):
        raise AssertionError("the validation hashed the data")

    monkeypatch.setattr(models, "fingerprints", no_hashing)
    v = forecast.rolling_origin(panel, cfg, origins=1, step_days=20)
    assert v.predictions["fitted"].any()


def test_the_time_of_year_is_in_the_usual_risk_and_never_a_driver(cfg):
    """A cohort whose attacks follow the seasons (three times the rate in summer), forecast for a day in
    August that is in every other way the patient's usual day: the risk is the usual risk at that time of
    year (``baseline_probability``), and the time of year is not named as a driver."""
    panel = simulate.panel_from_cohort(simulate.simulate_cohort(40, 240, 4407, triggers=False, seasonality=3.0))
    res = models.analyse(panel, cfg, store=False)
    tomorrow = (panel["date"].max() + pd.Timedelta(days=1)).date()
    ahead = panel[panel["date"] == panel["date"].max()].copy()
    ahead["date"] = pd.Timestamp(tomorrow)
    ahead["at_risk"] = False
    ok = [p for p, r in res.items() if r.status == "ok"]
    season = ["season_sin@0", "season_cos@0"]
    coef = np.array([res[p].estimator.coef_[[res[p].estimator.columns_.index(c) for c in season]] for p in ok])
    assert np.abs(coef).max() > 0.1  # the models did fit a seasonal wave
    when = features.season_values(np.array([(pd.Timestamp(tomorrow) - pd.Timestamp("1970-01-01")).days]))
    for p in ok:  # every factor at the patient's usual value; the time of year tomorrow's
        est = res[p].estimator
        row = ahead["patient_id"] == p
        for c, usual in zip(est.columns_, est.mean_):
            ahead.loc[row, c] = when[c.removesuffix("@0")][0] if c in season else usual
    body = panel.copy()
    body.attrs, ahead.attrs = {}, {}
    full = pd.concat([body, ahead], ignore_index=True)
    full.attrs = panel.attrs
    out = forecast.next_day(full, res, tomorrow)
    assert set(out) == set(ok)
    for block in out.values():
        assert not any(d["factor"].startswith("season") for d in block["drivers"])
        assert block["attack_probability"] == pytest.approx(block["baseline_probability"], abs=2e-4)
