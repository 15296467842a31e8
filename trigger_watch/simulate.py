"""Realistic simulated cohorts with planted triggers of known size (tests, benchmarks, the demo).

What a simulated patient looks like (every knob is a keyword of :func:`simulate_cohort`):

- several attacks a month (2-6 onsets per 30 at-risk days, patient-specific); episodes last 1-3 days, and a
  day inside an episode is not at risk; a new attack starts at least 24 h after the last one ended, so the
  episode rule of factors.md sees exactly the planted onsets;
- stress follows an AR(1) process with a weekly rhythm (higher on weekdays: the weekend "let-down");
- menstrual cycles of 25-33 days for most female patients;
- weather from a realistic hourly series per city: synoptic sea-level pressure swings of 10-20 hPa over days
  (AR(2) in the daily mean, interpolated hourly, with the semi-diurnal tide), seasonal and diurnal temperature,
  humidity and rain that follow low pressure;
- sleep around a personal median with weekend lie-ins and occasional short nights, from a wearable for most;
- premonitory symptoms (yawning, craving, neck stiffness, fatigue) that rise the day before an onset and on the
  onset day: warning signs, not causes;
- avoidance: alcohol and exercise recorded in the evening diary of an onset or episode day are mostly skipped;
- reactivity: stress rated in the evening of an onset or episode day is higher (the pain is stressful), by
  ``stress_reactivity`` points; the planted effects act on the stress the patient would have rated without it;
- missing diary days that cluster in attacks (a Markov chain whose start probability rises on attack days);
- a ketamine infusion for some patients that lowers the attack rate afterwards.

Planted triggers act on the daily onset hazard: ``logit p = a_i + sum_k beta_ik x_ik`` over at-risk days,
drawn per patient from :data:`PLANTABLE` (lag 0 for weather, sleep and the menstrual window, lag 1 for stress,
the stress let-down and behaviour, whose same-day ratings the attack changes) with odds ratios 1.5-4 for the factor's reference contrast (exposed vs not, or ``ref_change``
natural units for a continuous factor). ``Cohort.truth`` lists them as log odds ratios per natural unit.

:func:`panel_from_cohort` is a **test helper**: a small stand-in for ``features.build_panel`` that builds a panel
of the documented shape straight from a cohort, so the models can be developed and tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from trigger_watch.features import SEASON, season_values

#: (factor, lag, share of patients it is planted in, reference contrast in natural units; 1 for booleans)
PLANTABLE: tuple[tuple[str, int, float, float], ...] = (
    ("pressure_drop", 0, 0.35, 1.0),
    ("menstrual_window", 0, 0.50, 1.0),  # female patients with cycles only
    ("sleep_short", 0, 0.25, 1.0),
    ("stress", 1, 0.25, 3.0),  # OR quoted per 3 points of stress
    ("stress_letdown", 1, 0.12, 1.0),
    ("alcohol_units", 1, 0.25, 2.0),  # OR quoted per 2 drinks; drinkers only
    ("skipped_meal", 1, 0.20, 1.0),
    ("caffeine_withdrawal", 1, 0.12, 1.0),  # regular coffee drinkers only
)

CITIES = (  # name, latitude, longitude, IANA zone, mean temperature C
    ("vienna", 48.21, 16.37, "Europe/Vienna", 11.0),
    ("berlin", 52.52, 13.40, "Europe/Berlin", 10.0),
    ("london", 51.51, -0.13, "Europe/London", 11.5),
    ("madrid", 40.42, -3.70, "Europe/Madrid", 15.5),
    ("stockholm", 59.33, 18.07, "Europe/Stockholm", 7.5),
    ("new_york", 40.71, -74.01, "America/New_York", 13.0),
    ("chicago", 41.88, -87.63, "America/Chicago", 10.5),
    ("denver", 39.74, -104.99, "America/Denver", 10.0),
)
FOODS = ("chocolate", "cheese", "red_wine", "citrus")
SYMPTOMS = ("yawning", "craving", "neck_stiffness", "fatigue")


@dataclass
class Cohort:
    """A simulated cohort in the stored / import-file shapes of ``../shared/spec/inputs.md``.

    ``truth``: planted effects ``patient_id, factor, lag, log_odds_ratio`` (per natural unit), ``odds_ratio_ref``
    (for the reference contrast) and ``ref_change``. ``daily_truth``: ``patient_id, date, p_onset`` (true onset
    probability of the day, NaN when not at risk), ``at_risk``, ``onset``.
    """

    patients: pd.DataFrame
    diary: pd.DataFrame
    attacks: pd.DataFrame
    sleep: pd.DataFrame
    weather_hourly: pd.DataFrame
    weather_daily: pd.DataFrame
    sleep_nightly: pd.DataFrame
    treatments: pd.DataFrame
    truth: pd.DataFrame
    daily_truth: pd.DataFrame
    start: date
    n_days: int
    seed: int
    _grids: dict = field(default_factory=dict, repr=False)

    @property
    def dates(self) -> pd.DatetimeIndex:
        return pd.date_range(pd.Timestamp(self.start), periods=self.n_days)


# ----------------------------------------------------------------------------------------------- weather

def _ar2(rng: np.random.Generator, n_series: int, n: int, phi1: float, phi2: float) -> np.ndarray:
    x = np.zeros((n_series, n + 50))
    e = rng.normal(size=x.shape)
    for t in range(2, x.shape[1]):
        x[:, t] = phi1 * x[:, t - 1] + phi2 * x[:, t - 2] + e[:, t]
    x = x[:, 50:]
    return x / x.std(axis=1, keepdims=True)


def _localize(local: pd.Series, tz: str) -> pd.DatetimeIndex:
    """Wall-clock times -> instants in ``tz``: a time in the spring gap moves forward, a repeated autumn
    time takes its first (summer) instant. Never NaT."""
    idx = pd.DatetimeIndex(local)
    return idx.tz_localize(tz, nonexistent="shift_forward", ambiguous=np.ones(len(idx), dtype=bool))


def _offset_text(stamps: pd.DatetimeIndex) -> np.ndarray:
    s = pd.Series(stamps.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return (s.str[:-2] + ":" + s.str[-2:]).to_numpy()


def _simulate_weather(rng: np.random.Generator, start: date, n_days: int):
    """Hourly series per city over local days -1..n_days-1; returns (hourly frame, daily arrays by city)."""
    n_c = len(CITIES)
    nd = n_days + 1  # one day before the start, for the day-to-day changes
    anchor = _ar2(rng, n_c, nd + 2, 1.0, -0.3) * 7.0  # daily pressure anomaly, hPa (sd 7)
    tanom = _ar2(rng, n_c, nd + 2, 0.75, 0.0) * 3.0 - 0.15 * anchor  # synoptic temperature anomaly, C
    first = pd.Timestamp(start) - pd.Timedelta(days=1)
    hourly, daily = [], {k: np.full((n_c, nd), np.nan) for k in
                         ("pressure_mean", "pressure_min", "pressure_max", "temperature_max",
                          "temperature_mean", "humidity", "precipitation")}
    for c, (_, lat, lon, tz, tmean) in enumerate(CITIES):
        t0 = first.tz_localize(tz).tz_convert("UTC")
        t1 = (first + pd.Timedelta(days=nd)).tz_localize(tz).tz_convert("UTC")
        utc = pd.date_range(t0, t1, freq="h", inclusive="left")
        local = utc.tz_convert(tz)
        naive = local.tz_localize(None)
        day = ((naive.normalize() - first) // pd.Timedelta(days=1)).to_numpy()
        hour = (naive.hour + naive.minute / 60).to_numpy()
        frac = day + hour / 24 + 0.5  # anchors sit at local noon of day index (shifted by one spare day)
        p = 1013 + 3 * np.cos(2 * np.pi * (naive.day_of_year.to_numpy() - 15) / 365)
        p = p + np.interp(frac, np.arange(nd + 2), anchor[c]) + 0.6 * np.cos(4 * np.pi * (hour - 10) / 24)
        p = p + rng.normal(0, 0.25, len(p))
        doy = naive.day_of_year.to_numpy()
        seasonal = tmean - 9 * np.cos(2 * np.pi * (doy - 20) / 365)
        amp = 4.5 + 1.5 * np.cos(2 * np.pi * (doy - 180) / 365)
        temp = seasonal + np.interp(frac, np.arange(nd + 2), tanom[c]) + amp * np.sin(2 * np.pi * (hour - 9) / 24)
        temp = temp + rng.normal(0, 0.4, len(temp))
        hum = 72 - 1.0 * (p - 1013) - 2.5 * amp * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 5, len(p))
        hum = np.clip(hum, 15, 100)
        wet = rng.random(len(p)) < 1 / (1 + np.exp(3.2 + 0.25 * (p - 1013)))
        rain = np.where(wet, np.round(rng.exponential(1.0, len(p)), 1), 0.0)
        hourly.append(pd.DataFrame({
            "latitude": lat, "longitude": lon, "time": _offset_text(local),
            "pressure_msl": np.round(p, 1), "temperature_2m": np.round(temp, 1),
            "relative_humidity_2m": np.round(hum).astype(int), "precipitation": rain,
        }))
        # daily aggregates over local days (as weather.daily_for_patients would from these hours)
        g = pd.DataFrame({"d": day, "p": np.round(p, 1), "t": np.round(temp, 1), "h": np.round(hum), "r": rain})
        agg = g.groupby("d").agg(pm=("p", "mean"), pn=("p", "min"), px=("p", "max"), tx=("t", "max"),
                                 tm=("t", "mean"), h=("h", "mean"), r=("r", "sum"))
        idx = agg.index.to_numpy()
        for k, col in (("pressure_mean", "pm"), ("pressure_min", "pn"), ("pressure_max", "px"),
                       ("temperature_max", "tx"), ("temperature_mean", "tm"), ("humidity", "h"),
                       ("precipitation", "r")):
            daily[k][c, idx] = agg[col].to_numpy()
    daily["pressure_change"] = np.diff(daily["pressure_mean"], axis=1, prepend=np.nan)
    daily["temperature_change"] = np.diff(daily["temperature_mean"], axis=1, prepend=np.nan)
    daily = {k: v[:, 1:] for k, v in daily.items()}  # drop the spare day before the start
    return pd.concat(hourly, ignore_index=True), daily


# ----------------------------------------------------------------------------------------------- cohort

def simulate_cohort(
    n_patients: int,
    n_days: int,
    seed: int,
    start: date = date(2026, 1, 1),
    *,
    triggers: bool = True,
    or_range: tuple[float, float] = (1.5, 4.0),
    attacks_per_month: tuple[float, float] = (2.0, 6.0),
    max_triggers: int = 4,
    p_wearable: float = 0.7,
    p_ketamine: float = 0.1,
    premonitory: float = 0.7,
    avoidance: float = 0.8,
    stress_reactivity: float = 1.0,
    seasonality: float = 1.0,
    plant: tuple[tuple[str, int, float, float], ...] | None = None,
) -> Cohort:
    """Simulate ``n_patients`` over ``n_days`` local days from ``start``; the same ``seed`` gives the same cohort.

    ``plant`` replaces :data:`PLANTABLE` (e.g. ``(("pressure_drop", 0, 1.0, 1.0),)`` plants it in everyone);
    ``triggers=False`` plants nothing (a null cohort). ``avoidance`` is the share of alcohol and exercise
    skipped on attack days; ``stress_reactivity`` the points stress is rated higher on them;
    ``premonitory`` the share of patients with warning signs; ``seasonality`` the ratio of the attack rate at
    its seasonal peak (high summer, when it is warmest) to its trough (1: none), shared by everyone, a
    confounder of every seasonal factor.
    """
    rng = np.random.default_rng(seed)
    P, D = int(n_patients), int(n_days)
    dates = pd.date_range(pd.Timestamp(start), periods=D)
    weekend = np.asarray(dates.day_of_week >= 5, dtype=float)
    weekday = 1 - weekend

    # ---- patients
    pid = np.array([f"p{i:05d}" for i in range(P)])
    city = rng.integers(0, len(CITIES), P)
    sex = np.where(rng.random(P) < 0.72, "F", "M")
    birth = rng.integers(1960, 2006, P)
    patients = pd.DataFrame({
        "patient_id": pid, "timezone": [CITIES[c][3] for c in city],
        "latitude": [CITIES[c][1] for c in city], "longitude": [CITIES[c][2] for c in city],
        "sex": sex, "birth_year": birth, "clinician_id": np.array(["c01", "c02", "c03"])[rng.integers(0, 3, P)],
    })

    weather_hourly, wd = _simulate_weather(rng, start, D)
    W = {k: v[city] for k, v in wd.items()}  # (P, D) per patient

    # ---- exogenous daily exposures, (P, D)
    z = np.zeros((P, D))
    e = rng.normal(0, 1.4, (P, D))
    for t in range(1, D):
        z[:, t] = 0.6 * z[:, t - 1] + e[:, t]
    stress_mean = rng.uniform(2.5, 6.0, (P, 1))
    stress = np.clip(np.round(stress_mean + z + 1.2 * weekday - 0.6), 0, 10)
    letdown = np.zeros((P, D))
    letdown[:, 1:] = (stress[:, :-1] - stress[:, 1:] >= 3).astype(float)

    cycles = (sex == "F") & (rng.random(P) < 0.85) & (birth > 1972)
    mens = np.zeros((P, D))
    window = np.zeros((P, D))
    for i in np.flatnonzero(cycles):
        length = rng.integers(25, 34)
        s = -rng.integers(0, length)
        while s < D + 3:
            bleed = rng.integers(4, 7)
            mens[i, max(s, 0):max(min(s + bleed, D), 0)] = 1
            window[i, max(s - 2, 0):max(min(s + 4, D), 0)] = 1
            s += length + rng.integers(-2, 3)

    sleep_median = rng.uniform(6.3, 8.0, (P, 1))
    sn = np.zeros((P, D))
    e = rng.normal(0, 0.6, (P, D))
    for t in range(1, D):
        sn[:, t] = 0.3 * sn[:, t - 1] + e[:, t]
    short_night = rng.random((P, D)) < 0.06
    sleep_h = np.clip(sleep_median + 0.5 * weekend + sn - 2.2 * short_night, 2.5, 12)
    sleep_short = ((sleep_h <= sleep_median - 1.5) | (sleep_h < 6)).astype(float)

    drinker = rng.random(P) < 0.7
    alc_rate = np.where(drinker, rng.uniform(0.2, 1.0, P), 0.0)[:, None] * (1 + 1.8 * weekend)
    alcohol = rng.poisson(alc_rate).astype(float)
    usual_caf = np.where(rng.random(P) < 0.8, rng.choice([100, 150, 200, 250, 300, 400], P), 0)[:, None]
    withdraw = rng.random((P, D)) < (0.05 + 0.10 * weekend)
    caffeine = usual_caf * np.where(withdraw, rng.uniform(0, 0.4, (P, D)), rng.lognormal(0, 0.15, (P, D)))
    caffeine = np.round(caffeine / 10) * 10
    caf_wd = ((usual_caf >= 100) & (caffeine < 0.5 * usual_caf)).astype(float)
    skipped = (rng.random((P, D)) < rng.uniform(0.03, 0.15, (P, 1))).astype(float)
    exerciser = rng.random(P) < 0.6
    exercise = np.where((rng.random((P, D)) < rng.uniform(0.2, 0.6, (P, 1))) & exerciser[:, None],
                        np.round(rng.uniform(20, 90, (P, D)) / 5) * 5, 0.0)

    X0 = {"pressure_drop": (W["pressure_change"] <= -5).astype(float), "menstrual_window": window,
          "sleep_short": sleep_short, "stress": stress, "stress_letdown": letdown,
          "alcohol_units": alcohol, "skipped_meal": skipped, "caffeine_withdrawal": caf_wd}

    # ---- planted effects
    rows = []
    beta = {}
    if triggers:
        for i in range(P):
            chosen = []
            for factor, lag, share, ref in (plant or PLANTABLE):
                if factor == "menstrual_window" and not cycles[i]:
                    continue
                if factor == "alcohol_units" and not drinker[i]:
                    continue
                if factor == "caffeine_withdrawal" and usual_caf[i, 0] < 100:
                    continue
                if rng.random() < share:
                    chosen.append((factor, lag, ref))
            if len(chosen) > max_triggers:
                chosen = [chosen[j] for j in sorted(rng.choice(len(chosen), max_triggers, replace=False))]
            for factor, lag, ref in chosen:
                ref_or = rng.uniform(*or_range)
                b = np.log(ref_or) / ref
                beta[(i, factor, lag)] = b
                rows.append((pid[i], factor, lag, b, ref_or, ref))
    truth = pd.DataFrame(rows, columns=["patient_id", "factor", "lag", "log_odds_ratio", "odds_ratio_ref",
                                        "ref_change"])

    # baseline: a target onset rate, corrected for the mean planted push
    rate = rng.uniform(*attacks_per_month, P) / 30
    a = np.log(rate / (1 - rate))
    for (i, factor, lag), b in beta.items():
        a[i] -= b * X0[factor][i].mean()
    doy = np.asarray(dates.day_of_year, dtype=float)
    season = np.log(seasonality) / 2 * -np.cos(2 * np.pi * (doy - 20) / 365)
    ket_day = np.where(rng.random(P) < p_ketamine, rng.integers(D // 3, max(D // 3 + 1, 2 * D // 3), P), D + 1)

    # ---- the day loop: onsets, episodes, avoidance
    onset = np.zeros((P, D), dtype=np.int8)
    in_ep = np.zeros((P, D), dtype=bool)
    p_on = np.full((P, D), np.nan)
    busy_until = np.full(P, -1)  # last day index of the current episode
    last_end_hour = np.full(P, -1.0)  # end hour on day busy_until
    st_hour = np.zeros((P, D))
    end_day = np.zeros((P, D), dtype=int)
    end_hour = np.zeros((P, D))
    by_lag: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for (i, factor, lag), b in beta.items():
        by_lag.setdefault((factor, lag), []).append((i, b))
    plant_idx = {k: (np.array([i for i, _ in v]), np.array([b for _, b in v])) for k, v in by_lag.items()}
    for t in range(D):
        in_ep[:, t] = busy_until >= t
        eta = a - 0.7 * (t >= ket_day) + season[t]
        for (factor, lag), (ii, bb) in plant_idx.items():
            if t - lag >= 0:
                eta[ii] += bb * X0[factor][ii, t - lag]
        p = 1 / (1 + np.exp(-eta))
        risk = ~in_ep[:, t]
        p_on[risk, t] = p[risk]
        new = risk & (rng.random(P) < p)
        onset[new, t] = 1
        dur = rng.choice([1, 2, 3], P, p=[0.5, 0.3, 0.2])
        sh = rng.uniform(4, 20, P)
        sh = np.where(busy_until == t - 1, np.minimum(np.maximum(sh, last_end_hour + 0.5), 22.5), sh)
        # a one-day attack ends by 22:00 and lasts at least half an hour; one starting later runs overnight
        dur = np.where((dur == 1) & (sh > 21.5), 2, dur)
        eh = np.where(dur == 1, np.clip(sh + rng.uniform(3, 10, P), sh + 0.5, 22.0), rng.uniform(1, 20, P))
        st_hour[new, t] = sh[new]
        end_day[new, t] = t + dur[new] - 1
        end_hour[new, t] = eh[new]
        busy_until = np.where(new, t + dur - 1, busy_until)
        last_end_hour = np.where(new, eh, last_end_hour)
        # avoidance: behaviour recorded that evening is changed by the attack
        hit = new | in_ep[:, t]
        keep = rng.random(P) >= avoidance
        alcohol[hit & ~keep, t] = 0
        exercise[hit & ~keep, t] = 0
        X0["alcohol_units"] = alcohol
    attack_day = onset.astype(bool) | in_ep

    # ---- diary: missing days cluster in attacks
    miss = np.zeros((P, D), dtype=bool)
    m_rate = rng.uniform(0.01, 0.06, P)
    u = rng.random((P, D))
    for t in range(D):
        prev = miss[:, t - 1] if t else np.zeros(P, dtype=bool)
        miss[:, t] = np.where(prev, u[:, t] < 0.5, u[:, t] < m_rate + 0.3 * attack_day[:, t])
    sym_base = rng.uniform(0.02, 0.07, (P, 1))
    has_pre = rng.random(P) < premonitory
    pre_sym = rng.integers(0, len(SYMPTOMS), P)
    sym = {s: rng.random((P, D)) < sym_base for s in SYMPTOMS}
    before = np.zeros((P, D), dtype=bool)
    before[:, :-1] = onset[:, 1:].astype(bool)
    for j, s in enumerate(SYMPTOMS):
        mine = has_pre & ((pre_sym == j) | (rng.random(P) < 0.25))
        sym[s] |= mine[:, None] & (((rng.random((P, D)) < 0.5) & before) | ((rng.random((P, D)) < 0.4)
                                                                             & onset.astype(bool)))
    wine = (alcohol > 0) & (rng.random((P, D)) < 0.4)
    foods = {"chocolate": rng.random((P, D)) < 0.15, "cheese": rng.random((P, D)) < 0.2, "red_wine": wine,
             "citrus": rng.random((P, D)) < 0.12}
    sleep_diary = np.round((sleep_h + rng.normal(0, 0.4, (P, D))) * 2) / 2
    quality = np.clip(np.round(5.5 + 1.3 * (sleep_h - sleep_median) + rng.normal(0, 1.2, (P, D))), 0, 10)
    intensity = np.where(attack_day, rng.integers(4, 10, (P, D)), np.nan)

    def item(x, p_missing=0.03):
        return np.where(rng.random(x.shape) < p_missing, np.nan, x)

    kept = ~miss
    ii, tt = np.nonzero(kept)
    datestr = dates.strftime("%Y-%m-%d").to_numpy()

    def tags(d: dict) -> np.ndarray:
        out = np.full((P, D), "", dtype=object)
        for name, m in d.items():
            out = np.where(m, np.where(out == "", name, out + ";" + name), out)
        return out

    food_tags, sym_tags = tags(foods), tags(sym)
    med = np.where(attack_day, np.where(rng.random((P, D)) < 0.6, "sumatriptan", "ibuprofen"), "")
    diary = pd.DataFrame({
        "patient_id": pid[ii], "date": datestr[tt],
        "stress": item(np.clip(stress + stress_reactivity * attack_day, 0, 10))[ii, tt], "alcohol_units": item(alcohol)[ii, tt],
        "caffeine_mg": item(caffeine)[ii, tt], "menstruation": item(mens)[ii, tt],
        "skipped_meal": item(skipped)[ii, tt], "exercise_minutes": item(exercise)[ii, tt],
        "water_l": item(np.round(np.clip(rng.normal(1.8, 0.45, (P, D)), 0.3, 4), 1))[ii, tt],
        "screen_hours": item(np.round(np.clip(rng.normal(5 + weekend, 1.5, (P, D)), 0, 16), 1))[ii, tt],
        "sleep_hours": item(sleep_diary)[ii, tt], "sleep_quality": item(quality)[ii, tt],
        "foods": food_tags[ii, tt], "symptoms": sym_tags[ii, tt], "medication": med[ii, tt],
        "headache": attack_day[ii, tt].astype(int), "headache_intensity": intensity[ii, tt],
    })
    for c in ("menstruation", "skipped_meal"):
        diary[c] = diary[c].astype("Int64")

    # ---- attacks (ISO with the local offset of the patient's zone)
    ai, at = np.nonzero(onset)
    tzs = patients["timezone"].to_numpy()
    start_local = pd.to_datetime(datestr[at]) + pd.to_timedelta(np.round(st_hour[ai, at] * 4) / 4, unit="h")
    end_local = (pd.to_datetime(datestr[np.minimum(end_day[ai, at], D - 1)])
                 + pd.to_timedelta(np.round(end_hour[ai, at] * 4) / 4, unit="h"))
    attacks = pd.DataFrame({"patient_id": pid[ai], "_s": start_local, "_e": end_local, "_tz": tzs[ai]})
    attacks["start"] = ""
    attacks["end"] = ""
    for tz, g in attacks.groupby("_tz"):
        s = _localize(g["_s"], tz)
        en = _localize(g["_e"], tz)
        attacks.loc[g.index, "start"] = _offset_text(s)
        attacks.loc[g.index, "end"] = _offset_text(en)
    open_attack = end_day[ai, at] >= D  # still running at the end of the record: no end yet
    attacks.loc[open_attack, "end"] = ""
    attacks["intensity"] = intensity[ai, at]
    attacks["kind"] = np.where(rng.random(len(ai)) < 0.9, "migraine", "headache")
    attacks["aura"] = (rng.random(len(ai)) < 0.2).astype(int)
    attacks["medications"] = np.where(rng.random(len(ai)) < 0.6, "sumatriptan:50", "ibuprofen:400")
    attacks = attacks.drop(columns=["_s", "_e", "_tz"])

    # ---- sleep: wearable periods (ending on the morning of day t) and the nightly summary
    wearable = rng.random(P) < p_wearable
    worn = wearable[:, None] & (rng.random((P, D)) < 0.92)
    eff = np.clip(rng.normal(90, 3, (P, D)), 70, 99)
    bedtime = rng.normal(-1.0, 0.6, (P, 1)) + 0.7 * np.roll(weekend, 1) + rng.normal(0, 0.5, (P, D))
    in_bed = sleep_h / (eff / 100)
    wake = bedtime + in_bed
    wakes = rng.poisson(1 + (100 - eff) / 5)
    si, sd = np.nonzero(worn)
    day0 = pd.to_datetime(datestr[sd])
    s_local = day0 + pd.to_timedelta(np.round(bedtime[si, sd] * 60), unit="min")
    e_local = day0 + pd.to_timedelta(np.round(wake[si, sd] * 60), unit="min")
    sleep = pd.DataFrame({"patient_id": pid[si], "_s": s_local, "_e": e_local, "_tz": tzs[si],
                          "minutes_asleep": np.round(sleep_h[si, sd] * 60).astype(int),
                          "awakenings": wakes[si, sd], "efficiency": np.round(eff[si, sd]).astype(int),
                          "source": "simulated_wearable"})
    sleep["start"] = ""
    sleep["end"] = ""
    sleep["_bed"] = pd.to_timedelta(np.round(in_bed[si, sd] * 60), unit="min")
    for tz, g in sleep.groupby("_tz"):
        s = _localize(g["_s"], tz)
        # the end is the start plus the real time in bed (over a clock change the wall clock differs)
        en = (s + pd.TimedeltaIndex(g["_bed"])).tz_convert(tz)
        sleep.loc[g.index, "start"] = _offset_text(s)
        sleep.loc[g.index, "end"] = _offset_text(en)
    sleep = sleep[["patient_id", "start", "end", "minutes_asleep", "awakenings", "efficiency", "source"]]
    sleep_nightly = pd.DataFrame({
        "patient_id": pid[si], "date": pd.to_datetime(datestr[sd]),
        "sleep_hours": np.round(sleep_h[si, sd], 2), "efficiency": np.round(eff[si, sd]),
        "awakenings": wakes[si, sd].astype(float), "bedtime": np.round(bedtime[si, sd], 2),
        "wake_time": np.round(wake[si, sd], 2), "time_in_bed_hours": np.round(in_bed[si, sd], 2),
        "nap_hours": 0.0, "source": "simulated_wearable",
    })

    # ---- weather per patient-day, treatments, truth
    wi, wt = np.nonzero(np.ones((P, D), dtype=bool))
    weather_daily = pd.DataFrame({"patient_id": pid[wi], "date": dates[wt]})
    for k in ("pressure_mean", "pressure_min", "pressure_max", "pressure_change", "temperature_max",
              "temperature_mean", "temperature_change", "humidity", "precipitation"):
        weather_daily[k] = np.round(W[k][wi, wt], 2)
    weather_daily["source"] = "import"
    kt = np.flatnonzero(ket_day < D)
    treatments = pd.DataFrame({"patient_id": pid[kt], "date": datestr[ket_day[kt]],
                               "treatment": "ketamine_infusion", "dose_mg": 35.0, "route": "iv"})
    daily_truth = pd.DataFrame({"patient_id": pid[wi], "date": dates[wt], "p_onset": p_on[wi, wt],
                                "at_risk": ~in_ep[wi, wt], "onset": onset[wi, wt]})
    grids = {"onset": onset, "in_episode": in_ep, "diary_missing": miss, "cycles": cycles, "city": city}
    return Cohort(patients, diary, attacks, sleep, weather_hourly, weather_daily, sleep_nightly, treatments,
                  truth, daily_truth, start, D, seed, grids)


def write_files(cohort: Cohort, folder: str | Path) -> dict[str, Path]:
    """Write the cohort as import files (patients, diary, attacks, sleep, weather, treatments .csv)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, df in (("patients", cohort.patients), ("diary", cohort.diary), ("attacks", cohort.attacks),
                     ("sleep", cohort.sleep), ("weather", cohort.weather_hourly),
                     ("treatments", cohort.treatments)):
        path = folder / f"{name}.csv"
        df.to_csv(path, index=False)
        out[name] = path
    return out


# ------------------------------------------------------------------------------ panel (test helper)

#: (factor, kind, group, label, behaviour) of the columns :func:`panel_from_cohort` builds.
PANEL_FACTORS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("stress", "continuous", "diary", "Stress (0-10, per point)", True),
    ("stress_letdown", "boolean", "diary", "Stress let-down (fell by 3+ points)", True),
    ("alcohol_units", "continuous", "behaviour", "Alcohol (per drink)", True),
    ("caffeine_mg", "continuous", "behaviour", "Caffeine (per mg)", True),
    ("caffeine_withdrawal", "boolean", "behaviour", "Caffeine below half your usual", True),
    ("menstrual_window", "boolean", "diary", "Menstrual window (day -2 to +3)", False),
    ("skipped_meal", "boolean", "behaviour", "Skipped a meal", True),
    ("exercise_minutes", "continuous", "behaviour", "Exercise (per minute)", True),
    ("water_l", "continuous", "behaviour", "Water (per litre)", True),
    ("screen_hours", "continuous", "behaviour", "Screen time (per hour)", True),
    ("sleep_quality", "continuous", "diary", "Sleep quality (0-10, per point)", False),
    ("sleep_hours", "continuous", "sleep", "Sleep (per hour)", False),
    ("sleep_short", "boolean", "sleep", "Short night", False),
    ("sleep_long", "boolean", "sleep", "Long night", False),
    ("sleep_efficiency", "continuous", "sleep", "Sleep efficiency (per %)", False),
    ("awakenings", "continuous", "sleep", "Awakenings (per awakening)", False),
    ("bedtime_shift", "continuous", "sleep", "Bedtime shift (per hour)", False),
    ("pressure_change", "continuous", "weather", "Pressure change (per hPa)", False),
    ("pressure_drop", "boolean", "weather", "Pressure drop of 5+ hPa", False),
    ("temperature_max", "continuous", "weather", "Maximum temperature (per C)", False),
    ("temperature_change", "continuous", "weather", "Temperature change (per C)", False),
    ("humidity", "continuous", "weather", "Humidity (per %)", False),
    ("precipitation", "continuous", "weather", "Rain (per mm)", False),
    ("weekend", "boolean", "calendar", "Weekend", False),
) + tuple((f"food:{f}", "boolean", "food", f"Ate {f.replace('_', ' ')}", True) for f in FOODS) + tuple(
    (f"symptom:{s}", "boolean", "symptom", f"Felt {s.replace('_', ' ')}", False) for s in SYMPTOMS)


def _row_median(x: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN, NaN for an all-NaN row (without numpy's warning)."""
    out = np.full((x.shape[0], 1), np.nan)
    ok = np.isfinite(x).any(axis=1)
    if ok.any():
        out[ok, 0] = np.nanmedian(x[ok], axis=1)
    return out


def panel_from_cohort(cohort: Cohort) -> pd.DataFrame:
    """Test helper: the panel of docs/internals.md built directly from a cohort's frames.

    A stand-in for ``features.build_panel`` (which reads the database). It uses the recorded frames only
    (diary, attacks, wearable nights, daily weather), never the simulator's hidden truth, except that episodes
    come from the attack records exactly as the factors.md rule would define them for these attacks.
    """
    pids = cohort.patients["patient_id"].to_numpy()
    P, D = len(pids), cohort.n_days
    dates = cohort.dates
    pos = {p: i for i, p in enumerate(pids)}
    day0 = dates[0]

    def grid(df: pd.DataFrame, col: str, date_col: str = "date") -> np.ndarray:
        g = np.full((P, D), np.nan)
        if df.empty:
            return g
        i = df["patient_id"].map(pos).to_numpy(dtype=np.int64)
        t = ((pd.to_datetime(df[date_col]) - day0) // pd.Timedelta(days=1)).to_numpy()
        ok = (t >= 0) & (t < D)
        g[i[ok], t[ok]] = pd.to_numeric(df[col]).to_numpy(dtype=float, na_value=np.nan)[ok]
        return g

    dy = cohort.diary
    kept = ~np.isnan(grid(dy.assign(one=1.0), "one"))
    a = cohort.attacks
    ai = a["patient_id"].map(pos).to_numpy().astype(int)  # int even when there is no attack at all
    a_s = ((pd.to_datetime(a["start"].str[:10]) - day0) // pd.Timedelta(days=1)).to_numpy().astype(int)
    end_txt = a["end"].where(a["end"] != "", None).fillna(str(dates[-1].date()))
    a_e = ((pd.to_datetime(end_txt.str[:10]) - day0) // pd.Timedelta(days=1)).to_numpy().astype(int)
    onset = np.zeros((P, D), dtype=np.int8)
    onset[ai, a_s] = 1
    in_ep = np.zeros((P, D), dtype=bool)
    covered = np.zeros((P, D), dtype=bool)
    for k in range(1, 4):
        m = a_e >= a_s + k
        t = np.minimum(a_s[m] + k, D - 1)
        in_ep[ai[m], t] = True
    for k in range(4):
        m = a_e >= a_s + k
        covered[ai[m], np.minimum(a_s[m] + k, D - 1)] = True
    observed = kept | covered
    at_risk = observed & ~in_ep

    X: dict[str, np.ndarray] = {}
    for c in ("stress", "alcohol_units", "caffeine_mg", "skipped_meal", "exercise_minutes", "water_l",
              "screen_hours", "sleep_quality"):
        X[c] = grid(dy, c)
    prev = np.full((P, D), np.nan)
    prev[:, 1:] = X["stress"][:, :-1]
    X["stress_letdown"] = np.where(np.isnan(prev) | np.isnan(X["stress"]), np.nan,
                                   (prev - X["stress"] >= 3).astype(float))
    med = _row_median(X["caffeine_mg"])
    X["caffeine_withdrawal"] = np.where(np.isnan(X["caffeine_mg"]), np.nan,
                                        ((med >= 100) & (X["caffeine_mg"] < 0.5 * med)).astype(float))
    mens = np.nan_to_num(grid(dy, "menstruation"))
    first = (mens == 1) & (np.concatenate([np.zeros((P, 1)), mens[:, :-1]], axis=1) == 0)
    win = np.zeros((P, D), dtype=bool)
    for k in range(-2, 4):  # window day s+k for a first bleeding day s
        if k >= 0:
            win[:, k:] |= first[:, :D - k]
        else:
            win[:, :D + k] |= first[:, -k:]
    X["menstrual_window"] = np.where(kept | observed, (win > 0).astype(float), np.nan)
    sn = cohort.sleep_nightly
    sl = grid(sn, "sleep_hours")
    X["sleep_hours"] = np.where(np.isnan(sl), grid(dy, "sleep_hours"), sl)
    smed = _row_median(X["sleep_hours"])
    sh = X["sleep_hours"]
    X["sleep_short"] = np.where(np.isnan(sh), np.nan, ((sh <= smed - 1.5) | (sh < 6)).astype(float))
    X["sleep_long"] = np.where(np.isnan(sh), np.nan, (sh >= smed + 1.5).astype(float))
    X["sleep_efficiency"] = grid(sn, "efficiency")
    X["awakenings"] = grid(sn, "awakenings")
    bt = grid(sn, "bedtime")
    X["bedtime_shift"] = np.abs(bt - _row_median(bt))
    wd = cohort.weather_daily
    for c in ("pressure_change", "temperature_max", "temperature_change", "humidity", "precipitation"):
        X[c] = grid(wd, c)
    X["pressure_drop"] = np.where(np.isnan(X["pressure_change"]), np.nan,
                                  (X["pressure_change"] <= -5).astype(float))
    X["weekend"] = np.broadcast_to(np.asarray(dates.day_of_week >= 5, dtype=float), (P, D)).copy()
    for col, prefix in (("foods", "food"), ("symptoms", "symptom")):
        names = FOODS if prefix == "food" else SYMPTOMS
        s = ";" + dy[col].fillna("").astype(str) + ";"
        for n in names:
            X[f"{prefix}:{n}"] = grid(dy.assign(_v=s.str.contains(f";{n};", regex=False).astype(float)), "_v")

    ii, tt = np.nonzero(np.ones((P, D), dtype=bool))
    headache = np.nan_to_num(grid(dy, "headache")) > 0
    inten = grid(dy, "headache_intensity")
    cols = {
        "patient_id": pids[ii], "date": dates[tt], "observed": observed[ii, tt], "diary_kept": kept[ii, tt],
        "onset": onset[ii, tt], "in_episode": in_ep[ii, tt], "at_risk": at_risk[ii, tt],
        "headache_day": (headache | covered)[ii, tt], "migraine_day": covered[ii, tt], "intensity": inten[ii, tt],
    }
    meta = []
    for factor, kind, group, label, behaviour in PANEL_FACTORS:
        x = X[factor]
        for lag in (0, 1):
            v = x if lag == 0 else np.concatenate([np.full((P, 1), np.nan), x[:, :-1]], axis=1)
            name = f"{factor}@{lag}"
            cols[name] = v[ii, tt].astype("float64")
            meta.append((name, factor, lag, kind, group,
                         f"{label} {'the day before' if lag == 1 else 'the same day'}", behaviour))
    epoch_day = (dates - pd.Timestamp("1970-01-01")).days.to_numpy()[tt]
    for f, v in zip(SEASON, season_values(epoch_day).values()):
        cols[f"{f.id}@0"] = v
        meta.append((f"{f.id}@0", f.id, 0, f.kind, f.group, f.label, False))
    panel = pd.DataFrame(cols)
    panel.attrs["factors"] = pd.DataFrame(meta, columns=["column", "factor", "lag", "kind", "group", "label",
                                                         "behaviour"])
    return panel
