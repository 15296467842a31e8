"""How long rendering every report takes for a cohort, and the demo pages used for the screenshots.

    python benchmarks/render_reports.py [--patients 1000] [--days 365] [--seed 7] [--out DIR] [--no-fsync]
    python benchmarks/render_reports.py --demo DIR      # one realistic patient + a 40-patient cohort

Builds fake-but-realistic ``triggers``/``charts`` dicts (the shapes of ``../shared/spec/reports.md``; the
numbers are drawn at random, nothing is fitted), then times, separately, rendering all four patient files
plus the cohort files in memory, and writing them to disk atomically (with fsync unless ``--no-fsync``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from trigger_watch import reports

AS_OF = date(2026, 11, 20)
STANDARD = [
    ("alcohol_units", "Alcohol (drinks)", ">= 3 drinks", "behaviour"),
    ("stress", "Stress (0-10)", ">= 7/10", "diary"),
    ("stress_letdown", "Stress let-down, fell by 3 or more (yes/no)", "yes", "diary"),
    ("caffeine_mg", "Caffeine (mg)", ">= 300 mg", "behaviour"),
    ("caffeine_withdrawal", "Caffeine under half the usual (yes/no)", "yes", "behaviour"),
    ("menstrual_window", "Menstrual window, day -2 to +3 (yes/no)", "yes", "diary"),
    ("skipped_meal", "Skipped meal (yes/no)", "yes", "behaviour"),
    ("exercise_minutes", "Exercise (minutes)", ">= 30 min", "behaviour"),
    ("water_l", "Water (litres)", "> 2.5 l", "behaviour"),
    ("screen_hours", "Screen time (hours)", ">= 6 h", "behaviour"),
    ("sleep_hours", "Sleep (hours)", ">= 8.5 h", "sleep"),
    ("sleep_short", "Short sleep (yes/no)", "yes", "sleep"),
    ("pressure_drop", "Pressure fall of 5 hPa or more (yes/no)", "yes", "weather"),
    ("humidity", "Humidity (%)", ">= 85 %", "weather"),
    ("weekend", "Weekend (yes/no)", "yes", "calendar"),
    ("food:red_wine", "Ate red wine (yes/no)", "yes", "food"),
    ("food:chocolate", "Ate chocolate (yes/no)", "yes", "food"),
    ("symptom:yawning", "Yawning (yes/no)", "yes", "symptom"),
    ("symptom:neck_stiffness", "Neck stiffness (yes/no)", "yes", "symptom"),
]
LAG_WORDS = {0: "the same day", 1: "the day before"}


def _factor(rng: random.Random, fid, label, exposure, group, lag, verdict, rank=None) -> dict:
    exposed = rng.randint(15, 60)
    unexposed = rng.randint(120, 250)
    base = rng.uniform(0.08, 0.16)
    if verdict == "trigger":
        orr = rng.uniform(1.8, 4.0)
    elif verdict == "protective":
        orr = rng.uniform(0.3, 0.6)
    elif verdict == "warning_sign":
        orr = rng.uniform(2.0, 5.0)
    elif verdict == "no_association":
        orr = rng.uniform(0.92, 1.08)
    else:
        orr = rng.uniform(0.6, 1.9)
    width = {"no_association": 1.12, "insufficient_data": 2.2}.get(verdict, 1.6)
    p_exp = min(base * orr / (1 - base + base * orr), 0.9)
    return {
        "factor": fid, "label": f"{label} {LAG_WORDS[lag]}", "lag_days": lag, "verdict": verdict, "rank": rank,
        "odds_ratio": round(orr, 3), "ci_low": round(orr / width, 3), "ci_high": round(orr * width, 3),
        "q_value": round(rng.uniform(0.001, 0.08) if verdict in ("trigger", "protective", "warning_sign")
                         else rng.uniform(0.2, 0.99), 4),
        "exposed_days": exposed, "attacks_after_exposure": round(exposed * p_exp),
        "days_needed": rng.randint(20, 200) if verdict == "insufficient_data" else None,
        "unexposed_days": unexposed, "attacks_without_exposure": round(unexposed * base),
        "exposure": exposure, "group": group,
    }


def fake_patient(i: int, seed: int = 7, days: int = 365) -> tuple[dict, dict]:
    """One patient's ``triggers`` and ``charts`` dicts, realistic in shape and size (about 38 factor rows)."""
    rng = random.Random(seed * 100_003 + i)
    first = AS_OF - timedelta(days=days - 1)
    calendar, monthly, gaps = [], {}, []
    gap_left, in_attack, gap_start = 0, 0, None
    for k in range(days):
        day = first + timedelta(days=k)
        if gap_left == 0 and rng.random() < 0.01:
            gap_left, gap_start = rng.randint(2, 9), day
        if gap_left:
            status, intensity = "missing", None
            gap_left -= 1
            if gap_left == 0:
                gaps.append({"start": gap_start.isoformat(), "end": day.isoformat(), "days": (day - gap_start).days + 1})
        elif in_attack:
            status, intensity = "attack", round(rng.uniform(3, 8), 1)
            in_attack -= 1
        elif rng.random() < 0.12:
            status, intensity = "onset", round(rng.uniform(4, 9.5), 1)
            in_attack = rng.choice([0, 0, 1, 2])
        else:
            status, intensity = "free", None
        calendar.append({"date": day.isoformat(), "status": status, "intensity": intensity})
        m = monthly.setdefault(day.strftime("%Y-%m"), {"month": day.strftime("%Y-%m"), "migraine_days": 0,
                                                        "headache_days": 0, "days_logged": 0})
        if status != "missing":
            m["days_logged"] += 1
        if status in ("onset", "attack"):
            m["headache_days"] += 1
            m["migraine_days"] += 1 if (intensity or 0) >= 4 else 0
    for m in monthly.values():
        m["headache_days"] += rng.randint(0, 3)
    factors, rank = [], 1
    chosen = STANDARD if i % 50 else STANDARD[:3]
    for fid, label, exposure, group in chosen:
        for lag in (0, 1):
            if fid.startswith("symptom:"):
                verdict = "warning_sign" if rng.random() < 0.6 else "insufficient_data"
            elif group == "behaviour" and lag == 0:
                verdict = rng.choice(["no_association", "insufficient_data"])
            else:
                verdict = rng.choices(["trigger", "protective", "no_association", "insufficient_data"],
                                      [0.15, 0.05, 0.4, 0.4])[0]
            factors.append(_factor(rng, fid, label, exposure, group, lag, verdict))
    for f in sorted((f for f in factors if f["verdict"] == "trigger"), key=lambda f: -f["odds_ratio"]):
        f["rank"] = rank
        rank += 1
    n_cal = [c for c in calendar if c["status"] != "missing"]
    attacks = sum(c["status"] == "onset" for c in calendar)
    treat_day = first + timedelta(days=days // 2)
    triggers = {
        "schema_version": 1, "patient_id": f"p{i:05d}", "generated_at": "2026-11-21T02:30:00Z",
        "as_of": AS_OF.isoformat(),
        "data": {"first_day": first.isoformat(), "last_day": AS_OF.isoformat(), "diary_days": len(n_cal),
                 "missing_days": days - len(n_cal),
                 "at_risk_days": sum(c["status"] in ("free", "onset") for c in calendar), "attacks": attacks,
                 "migraine_days_last_30": sum(c["status"] in ("onset", "attack") for c in calendar[-30:])},
        "status": "ok", "factors": factors,
        "forecast": {"date": (AS_OF + timedelta(days=1)).isoformat(), "attack_probability": round(rng.uniform(0.05, 0.5), 3),
                     "baseline_probability": 0.14,
                     "drivers": [{"factor": "pressure_drop", "lag_days": 0, "contribution": 0.08,
                                  "exposure": "yes"},
                                 {"factor": "alcohol_units", "lag_days": 1, "contribution": 0.05,
                                  "exposure": ">= 3 drinks"}]},
        "flags": {"chronic_migraine": i % 7 == 0, "medication_overuse": i % 11 == 0,
                  "details": ["triptans on 11 of the last 30 days (threshold 10)"] if i % 11 == 0 else []},
        "treatments": [{"treatment": "erenumab_70mg", "date": treat_day.isoformat(),
                        "migraine_days_per_30_before": 7.8, "migraine_days_per_30_after": 4.1, "responder": True,
                        "caveat": None}],
        "model": {"method": "penalised logistic regression, per patient, partial pooling", "model_id": f"m-{i:05d}-3",
                  "fitted_at": "2026-11-21T02:29:12Z", "cv_auc": 0.68, "cv_brier": 0.112, "cv_days": 120,
                  "base_rate_brier": 0.121,
                  "calibration": [{"bin_low": b / 10, "bin_high": (b + 1) / 10, "predicted": b / 10 + 0.05,
                                   "observed": max(0.0, b / 10 + 0.05 + rng.uniform(-0.04, 0.04)),
                                   "n": rng.randint(8, 60)} for b in range(5)]},
    }
    return triggers, {"calendar": calendar, "monthly": list(monthly.values()), "gaps": gaps}


def fake_ranking(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        risk = round(rng.uniform(0.03, 0.6), 3)
        last30 = rng.randint(0, 18)
        prev = round(rng.uniform(0, 16), 1)
        rows.append({
            "patient_id": f"p{i:05d}", "clinician_id": rng.choice(["dr_a", "dr_b", "dr_c"]), "rank": 0,
            "risk_next_day": risk, "risk_band": "high" if risk > 0.35 else "moderate" if risk > 0.15 else "low",
            "migraine_days_last_30": last30, "migraine_days_prev_90_per_30": prev,
            "trend": "worse" if last30 > prev + 2 else "better" if last30 < prev - 2 else "stable",
            "chronic_migraine": i % 7 == 0, "medication_overuse": i % 11 == 0,
            "top_triggers": rng.sample(["alcohol_units", "sleep_short", "pressure_drop", "stress_letdown"], 2),
            "days_logged_last_30": rng.randint(10, 30), "last_entry": "2026-11-20",
            "latest_treatment_response": rng.choice([None, "responder", "non-responder"]),
            "reasons": [f"{last30} migraine days in the last 30, {'up' if last30 > prev else 'down'} from {prev:.0f}"]
            + (["triptans on 11 days: medication overuse threshold"] if i % 11 == 0 else []),
        })
    rows.sort(key=lambda r: -r["risk_next_day"])
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    return rows


#: The showcase patient's verdicts (factor, lag) -> (verdict, rank); everything else stays as drawn.
SHOWCASE = {("alcohol_units", 1): ("trigger", 1), ("sleep_short", 1): ("trigger", 2),
            ("pressure_drop", 0): ("trigger", 3), ("symptom:yawning", 1): ("warning_sign", None),
            ("symptom:neck_stiffness", 0): ("warning_sign", None), ("exercise_minutes", 1): ("protective", None),
            ("food:chocolate", 0): ("no_association", None), ("food:chocolate", 1): ("no_association", None),
            ("caffeine_mg", 1): ("no_association", None), ("weekend", 0): ("no_association", None),
            ("weekend", 1): ("no_association", None), ("humidity", 1): ("insufficient_data", None),
            ("humidity", 0): ("insufficient_data", None)}


def showcase_patient() -> tuple[dict, dict]:
    """p00001 with hand-set verdicts, so the demo pages show every section with sensible content."""
    triggers, charts = fake_patient(1, days=365)
    rng = random.Random(1)
    new = []
    for f in triggers["factors"]:
        verdict, rank = SHOWCASE.get((f["factor"], f["lag_days"]), (None, None))
        if verdict is None:
            verdict = f["verdict"] if f["verdict"] in ("no_association", "insufficient_data") else "insufficient_data"
        g = _factor(rng, f["factor"], f["label"].rsplit(" the ", 1)[0], f["exposure"], f["group"], f["lag_days"],
                    verdict, rank)
        new.append(g)
    alcohol = next(f for f in new if f["factor"] == "alcohol_units" and f["lag_days"] == 1)
    alcohol.update(exposed_days=31, attacks_after_exposure=14, unexposed_days=160, attacks_without_exposure=20,
                   odds_ratio=2.4, ci_low=1.5, ci_high=3.9, q_value=0.01)
    triggers["factors"] = new
    triggers["forecast"]["attack_probability"] = 0.31
    triggers["flags"] = {"chronic_migraine": False, "medication_overuse": True,
                         "details": ["triptans on 11 days in each of the last 4 months (ICHD-3 threshold: 10)"]}
    return triggers, charts


def demo(out: Path) -> list[Path]:
    """Write the showcase patient p00001 and a 40-patient cohort under ``out``."""
    paths = []
    for i in range(40):
        triggers, charts = showcase_patient() if i == 1 else fake_patient(i, days=120)
        paths += reports.write_patient_reports(out, triggers, charts, fsync=False)
    paths += reports.write_cohort_reports(out, fake_ranking(40), fsync=False)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, help="write here (default: a temporary folder, removed afterwards)")
    ap.add_argument("--no-fsync", action="store_true", help="skip fsync (a crash may lose the newest files)")
    ap.add_argument("--demo", type=Path, metavar="DIR", help="only write the demo pages to DIR")
    args = ap.parse_args(argv)
    if args.demo:
        paths = demo(args.demo)
        print(f"wrote {len(paths)} files under {args.demo}")
        return
    print(f"seed {args.seed}: building {args.patients} fake patients with {args.days} calendar days each",
          file=sys.stderr)
    t0 = time.perf_counter()
    inputs = [fake_patient(i, args.seed, args.days) for i in range(args.patients)]
    ranking = fake_ranking(args.patients, args.seed)
    t1 = time.perf_counter()
    size = 0
    for triggers, charts in inputs:
        size += sum(len(t) for t in reports.patient_texts(triggers, charts).values())
    reports.ranking_csv(ranking), reports.render_ranking_html(ranking)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for triggers, charts in inputs:
            reports.write_patient_reports(out, triggers, charts, fsync=not args.no_fsync)
        reports.write_cohort_reports(out, ranking, fsync=not args.no_fsync)
        t3 = time.perf_counter()
    result = {"patients": args.patients, "calendar_days": args.days, "inputs_s": round(t1 - t0, 2),
              "render_s": round(t2 - t1, 2), "ms_per_patient": round(1000 * (t2 - t1) / args.patients, 1),
              "render_and_write_s": round(t3 - t2, 2), "fsync": not args.no_fsync,
              "mb_per_patient": round(size / args.patients / 1e6, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
