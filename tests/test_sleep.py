"""Sleep import and the nightly summary.

One suite runs every importer against the same expectations: each fixture in ``tests/fixtures/sleep/`` holds
the same two nights and one nap of patient ``p1`` (Europe/Vienna) in its own format, plus one bad record:

- night ending 2025-03-11: in bed 23:00-07:00 local (480 min), asleep 420 min, 2 awakenings;
- night ending 2025-03-12: in bed 22:30-06:30 (480 min), asleep 450 min, 0 awakenings;
- nap 2025-03-12 14:00-14:45 (45 min in bed), asleep 40 min.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigger_watch import sleep, storage
from trigger_watch.errors import InputFileError
from trigger_watch.importing import ImportOptions, import_file
from trigger_watch.sleep_formats import localize

FIXTURES = Path(__file__).parent / "fixtures" / "sleep"
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "sleep"
TODAY = date(2025, 3, 20)
TZ = "Europe/Vienna"


@pytest.fixture
def db():
    database = storage.memory_db()
    database.conn.execute("INSERT INTO patients (patient_id, timezone) VALUES ('p1', ?)", (TZ,))
    database.conn.commit()
    return database


def options(**kw) -> ImportOptions:
    kw.setdefault("today", TODAY)
    kw.setdefault("default_timezone", TZ)
    return ImportOptions(**kw)


# ------------------------------------------------------------------------------ one suite, every format

@dataclass
class Case:
    fmt: str | None
    file: str
    patient: str | None = "p1"
    accepted: int = 3
    extra: dict = field(default_factory=dict)
    clock_times: bool = True
    reason: str = "is before start"


CASES = [
    Case("csv", "generic.csv"),
    Case(None, "generic.ndjson", reason="minutes asleep 500 is more than the time in bed (480 minutes)"),
    Case("fitbit", "fitbit_webapi.json"),
    Case("fitbit", "fitbit_export.json"),
    Case("oura", "oura_sleep.json"),
    Case("apple-health", "export.xml", reason="endDate 2025-03-13 22:00:00 +0100 is before startDate"),
    Case("sleep-as-android", "sleep-export.csv", reason="Tz='Mars/Olympus_Mons'"),
    Case("fitabase", "sleepDay_merged.csv", patient=None, accepted=2, clock_times=False,
         extra={"id_map": str(FIXTURES / "fitabase_id_map.csv")},
         reason="minutes asleep 500 is more than the time in bed (480 minutes)"),
]


@pytest.fixture(params=CASES, ids=[c.file for c in CASES])
def case(request) -> Case:
    return request.param


def test_every_importer_stores_the_same_nights(db, case):
    result = import_file(db, "sleep", FIXTURES / case.file, options(patient=case.patient, extra=case.extra),
                         fmt=case.fmt)
    assert (result.accepted, result.quarantined) == (case.accepted, 1)
    assert result.patients == {"p1"}
    n = sleep.nightly(db).set_index("date")
    assert list(n.index) == [pd.Timestamp("2025-03-11"), pd.Timestamp("2025-03-12")]
    first, second = n.loc["2025-03-11"], n.loc["2025-03-12"]
    assert first.sleep_hours == pytest.approx(7.0)
    assert first.time_in_bed_hours == pytest.approx(8.0)
    assert first.efficiency == pytest.approx(87.5)
    if case.clock_times:
        assert second.sleep_hours == pytest.approx(7.5)
        assert second.efficiency == pytest.approx(93.8)
        assert (first.bedtime, first.wake_time) == (pytest.approx(-1.0), pytest.approx(7.0))
        assert (second.bedtime, second.wake_time) == (pytest.approx(-1.5), pytest.approx(6.5))
        assert (first.awakenings, second.awakenings) == (2, 0)
        assert (first.nap_hours, second.nap_hours) == (0, pytest.approx(40 / 60))
    else:  # Fitabase: one total per date (naps included), no clock times, no awakenings
        assert second.sleep_hours == pytest.approx(490 / 60)
        assert math.isnan(first.bedtime) and math.isnan(second.wake_time) and math.isnan(first.awakenings)


def test_a_device_export_without_format_is_told_from_its_contents(db, case):
    """Without --format, an Apple Health export.xml was refused for its extension, a Sleep as Android file
    stopped on its repeated Event columns, a Fitbit JSON was one row quarantined for having no start: each
    was read as a generic table. A device export is now read as what its contents show, and says so; a
    generic table is read as before."""
    result = import_file(db, "sleep", FIXTURES / case.file, options(patient=case.patient, extra=case.extra))
    assert (result.accepted, result.quarantined) == (case.accepted, 1)
    told = [m for m in result.messages if "told from its contents" in m]
    if case.fmt in sleep.DEVICE_FORMATS:
        assert len(told) == 1 and told[0].startswith("read as a") and "--format F reads it as F" in told[0]
        assert set(db.execute("SELECT DISTINCT source FROM sleep_periods").fetchall()) == {(case.fmt,)}
    else:
        assert told == []


def test_every_importer_is_idempotent(db, case):
    opts = options(patient=case.patient, extra=case.extra)
    import_file(db, "sleep", FIXTURES / case.file, opts, fmt=case.fmt)
    before = sleep.nightly(db)
    again = import_file(db, "sleep", FIXTURES / case.file, opts, fmt=case.fmt)
    assert (again.accepted, again.replaced, again.unchanged) == (0, 0, case.accepted)
    pd.testing.assert_frame_equal(sleep.nightly(db), before)


def test_every_importer_quarantines_its_bad_record_with_a_reason(db, case):
    import_file(db, "sleep", FIXTURES / case.file, options(patient=case.patient, extra=case.extra), fmt=case.fmt)
    rows = list(db.query("SELECT reason, raw FROM rejects WHERE kind = 'sleep'"))
    assert len(rows) == 1
    assert case.reason in rows[0]["reason"]
    assert rows[0]["raw"]


def test_stored_periods_are_true_instants_with_local_dates(db):
    import_file(db, "sleep", FIXTURES / "export.xml", options(patient="p1"), fmt="apple-health")
    rows = list(db.query('SELECT start, "end", start_local, local_date, tz_offset_minutes, minutes_asleep, '
                         'time_in_bed_minutes, is_nap, source FROM sleep_periods ORDER BY start'))
    # The iPhone wrote night A in New York time (-0400); 18:00-04:00 is 23:00 in Vienna.
    assert rows[0] == {"start": "2025-03-10T22:00:00Z", "end": "2025-03-11T06:00:00Z",
                       "start_local": "2025-03-10T23:00:00", "local_date": "2025-03-11", "tz_offset_minutes": 60,
                       "minutes_asleep": 420.0, "time_in_bed_minutes": 480.0, "is_nap": 0, "source": "apple-health"}
    assert [r["is_nap"] for r in rows] == [0, 0, 1]


# ------------------------------------------------------------------------------ validation

def test_validation_reasons_are_actionable(db, tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("patient_id,start,end,minutes_asleep\n"
                 "p1,2025-03-09T22:00,2025-03-09T06:00,300\n"
                 "p1,2025-03-01T22:00,2025-03-03T06:00,300\n"
                 "p1,2025-03-05T23:00,2025-03-06T06:00,500\n"
                 "p1,2025-03-25T23:00,2025-03-26T06:00,400\n"
                 "p1,2025-03-06T23:00,2025-03-07T06:00,-5\n"
                 "p1,yesterday,2025-03-07T06:00,400\n"
                 "p1,2025-03-07T23:00,2025-03-08T07:00,400\n")
    result = import_file(db, "sleep", f, options())
    assert (result.accepted, result.quarantined) == (1, 6)
    reasons = {r["line"]: r["reason"] for r in db.query("SELECT line, reason FROM rejects")}
    assert reasons[2] == "end 2025-03-09T06:00 is before start 2025-03-09T22:00"
    assert reasons[3] == "2025-03-01T22:00 to 2025-03-03T06:00 is longer than 24 h; split it into separate sleep periods"
    assert reasons[4] == "minutes asleep 500 is more than the time in bed (420 minutes)"
    assert reasons[5] == "the night ending 2025-03-26 is in the future (today is 2025-03-20)"
    assert reasons[6] == "minutes_asleep='-5' is negative"
    assert reasons[7].startswith("start='yesterday' is not an ISO 8601 date-time")


def test_device_export_without_patient_is_an_input_error(db):
    with pytest.raises(InputFileError, match="pass --patient"):
        import_file(db, "sleep", FIXTURES / "fitbit_webapi.json", options(), fmt="fitbit")


def test_a_fitabase_file_given_as_sleep_as_android_is_refused(db):
    """Its header starts with Id, as Sleep as Android's does, so every row was quarantined ("Tz=..."): one
    error now names the columns Sleep as Android needs."""
    with pytest.raises(InputFileError, match=r"sleepDay_merged.csv line 1 has the header Id,SleepDay,.*without "
                                             r"Sleep as Android's Tz, From, To.*check --format"):
        import_file(db, "sleep", FIXTURES / "sleepDay_merged.csv", options(patient="p1"), fmt="sleep-as-android")
    assert db.execute("SELECT count(*) FROM rejects").fetchone()[0] == 0


def test_unknown_patient_is_quarantined_unless_created(db):
    r = import_file(db, "sleep", FIXTURES / "oura_sleep.json", options(patient="p2"), fmt="oura")
    assert (r.accepted, r.quarantined) == (0, 4)
    unknown = db.execute("SELECT count(*) FROM rejects WHERE reason LIKE 'patient ''p2'' is not known%'")
    assert unknown.fetchone()[0] == 3
    r = import_file(db, "sleep", FIXTURES / "oura_sleep.json", options(patient="p2", create_patients=True),
                    fmt="oura")
    assert r.accepted == 3
    assert db.execute("SELECT timezone FROM patients WHERE patient_id = 'p2'").fetchone()[0] == TZ
    # the file imported again: its three 'not known' rejects are fixed and leave the list, its bad record stays
    assert r.gone == 3 and "3 row(s) quarantined by an earlier import of this file" in "\n".join(r.lines())
    open_ = db.execute("SELECT reason FROM rejects WHERE kind = 'sleep' AND resolved_at IS NULL").fetchall()
    assert len(open_) == 1 and "is not known" not in open_[0][0]


def test_fitabase_without_map_uses_the_id_and_reports_unmapped_ids(db, tmp_path):
    r = import_file(db, "sleep", FIXTURES / "sleepDay_merged.csv", options(create_patients=True), fmt="fitabase")
    assert r.accepted == 2
    assert db.execute("SELECT DISTINCT patient_id FROM sleep_periods").fetchall() == [("1503960366",)]
    other = tmp_path / "map.csv"
    other.write_text("fitabase_id,patient_id\n999,p1\n")
    r = import_file(db, "sleep", FIXTURES / "sleepDay_merged.csv", options(extra={"id_map": str(other)}),
                    fmt="fitabase")
    assert r.quarantined == 4
    reason = db.execute("SELECT reason FROM rejects WHERE line = 2").fetchone()[0]
    assert reason == "Fitabase Id 1503960366 is not in the id map; add a line '1503960366,<patient_id>' to it"


def test_forget_erases_sleep(db):
    from trigger_watch.diary import forget

    import_file(db, "sleep", FIXTURES / "generic.csv", options())
    deleted = forget(db, "p1")
    assert deleted["sleep_periods"] == 3
    assert sleep.nightly(db).empty


def test_two_sources_of_one_night_are_never_added_up(db):
    import_file(db, "sleep", FIXTURES / "oura_sleep.json", options(patient="p1"), fmt="oura")
    import_file(db, "sleep", FIXTURES / "fitbit_webapi.json", options(patient="p1"), fmt="fitbit")
    import_file(db, "sleep", FIXTURES / "export.xml", options(patient="p1"), fmt="apple-health")
    assert db.execute("SELECT count(*) FROM sleep_periods").fetchone()[0] == 9
    n = sleep.nightly(db)
    assert n["sleep_hours"].tolist() == [pytest.approx(7.0), pytest.approx(7.5)]
    assert n["nap_hours"].tolist() == [0, pytest.approx(40 / 60)]


def test_split_night_of_one_source_counts_whole(db, tmp_path):
    # Sleep as Android restarts tracking: 00:27-02:22 and 02:23-04:09 are one night; 14:00-15:00 a nap.
    f = tmp_path / "s.csv"
    f.write_text("patient_id,start,end,minutes_asleep\n"
                 "p1,2025-03-12T00:27,2025-03-12T02:22,110\n"
                 "p1,2025-03-12T02:23,2025-03-12T04:09,100\n"
                 "p1,2025-03-12T14:00,2025-03-12T15:00,50\n")
    import_file(db, "sleep", f, options())
    n = sleep.nightly(db).iloc[0]
    assert n.sleep_hours == pytest.approx(210 / 60)
    assert n.nap_hours == pytest.approx(50 / 60)
    assert (n.bedtime, n.wake_time) == (pytest.approx(0.45), pytest.approx(4.15))


def test_nightly_as_of_and_patient_filter(db):
    import_file(db, "sleep", FIXTURES / "generic.csv", options())
    assert sleep.nightly(db, as_of=date(2025, 3, 11))["date"].tolist() == [pd.Timestamp("2025-03-11")]
    assert sleep.nightly(db, patient_ids=["nobody"]).empty
    assert list(sleep.nightly(db).columns) == sleep.NIGHTLY_COLUMNS


# ------------------------------------------------------------------------------ property: no double counting

def _write_generic(path: Path, nights: list[tuple]) -> None:
    lines = ["patient_id,start,end,minutes_asleep"]
    lines += [f"p1,{s:%Y-%m-%dT%H:%M},{e:%Y-%m-%dT%H:%M},{a}" for s, e, a in nights]
    path.write_text("\n".join(lines) + "\n")


def _write_fitbit(path: Path, nights: list[tuple]) -> None:
    recs = [{"startTime": f"{s:%Y-%m-%dT%H:%M:%S}.000", "endTime": f"{e:%Y-%m-%dT%H:%M:%S}.000",
             "minutesAsleep": a, "timeInBed": int((e - s).total_seconds() // 60), "isMainSleep": True}
            for s, e, a in nights]
    path.write_text(json.dumps(recs))


def _write_apple(path: Path, nights: list[tuple]) -> None:
    body = []
    for s, e, a in nights:
        su, eu = localize(s, TZ), localize(e, TZ)
        asleep_end = su + timedelta(minutes=a)
        for src, value, x, y in (("iPhone", "InBed", su, eu), ("Watch", "AsleepCore", su, asleep_end),
                                 ("AutoSleep", "Asleep", su, asleep_end)):
            body.append(f'<Record type="HKCategoryTypeIdentifierSleepAnalysis" sourceName="{src}" '
                        f'startDate="{x:%Y-%m-%d %H:%M:%S} +0000" endDate="{y:%Y-%m-%d %H:%M:%S} +0000" '
                        f'value="HKCategoryValueSleepAnalysis{value}"/>')
    path.write_text('<?xml version="1.0"?>\n<HealthData locale="en">\n' + "\n".join(body) + "\n</HealthData>\n")


WRITERS = {"csv": _write_generic, "fitbit": _write_fitbit, "apple-health": _write_apple}
_nights = st.lists(st.tuples(st.integers(0, 3), st.integers(-150, 90), st.integers(240, 600), st.integers(0, 60)),
                   min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_nights, fmt=st.sampled_from(sorted(WRITERS)), cut=st.data())
def test_import_twice_or_overlapping_exports_never_double_counts(tmp_path_factory, spec, fmt, cut):
    """Exports A (nights 0..j) and B (nights i..end, i <= j, every night re-cut ``shift`` minutes later)
    overlap; import A, B, A again: each night is stored once, in the version imported last."""
    nights, day = [], datetime(2025, 1, 1)
    for gap_days, bed_min, length, awake in spec:
        day += timedelta(days=1 + gap_days)
        start = day + timedelta(minutes=bed_min)
        nights.append((start, start + timedelta(minutes=length), length - awake))
    j = cut.draw(st.integers(0, len(nights) - 1))
    i = cut.draw(st.integers(0, j))
    shift = timedelta(minutes=cut.draw(st.integers(0, 30)))
    recut = [(s + shift, e + shift, a) for s, e, a in nights]
    folder = tmp_path_factory.mktemp("exports")
    suffix = {"csv": ".csv", "fitbit": ".json", "apple-health": ".xml"}[fmt]
    a, b = folder / f"a{suffix}", folder / f"b{suffix}"
    WRITERS[fmt](a, nights[: j + 1])
    WRITERS[fmt](b, recut[i:])
    db = storage.memory_db()
    db.conn.execute("INSERT INTO patients (patient_id, timezone) VALUES ('p1', ?)", (TZ,))
    db.conn.commit()
    opts = options(patient="p1", today=date(2026, 1, 1))
    for f in (a, b, a):
        import_file(db, "sleep", f, opts, fmt=fmt)
    expected = nights[: j + 1] + recut[j + 1:]
    n = sleep.nightly(db)
    assert len(n) == len(nights)
    assert n["sleep_hours"].tolist() == pytest.approx([x[2] / 60 for x in expected])
    bedtimes = [(s - datetime.combine(e.date(), datetime.min.time())).total_seconds() / 3600 for s, e, _ in expected]
    assert n["bedtime"].tolist() == pytest.approx(bedtimes)
    assert db.execute("SELECT count(*) FROM sleep_periods").fetchone()[0] == len(nights)


def test_a_recut_night_from_a_later_export_replaces_the_stored_one(db, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write_generic(a, [(datetime(2025, 3, 10, 23, 0), datetime(2025, 3, 11, 7, 0), 400)])
    _write_generic(b, [(datetime(2025, 3, 10, 23, 20), datetime(2025, 3, 11, 7, 5), 410)])
    import_file(db, "sleep", a, options())
    r = import_file(db, "sleep", b, options())
    assert (r.accepted, r.replaced) == (0, 1)
    assert sleep.nightly(db)["sleep_hours"].tolist() == [pytest.approx(410 / 60)]


# ------------------------------------------------------------------------------ the real samples

needs_real = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not beside the repo")


@needs_real
def test_real_fitbit_record(db):
    db.conn.execute("INSERT INTO patients (patient_id, timezone) VALUES ('fb', 'America/New_York')")
    r = import_file(db, "sleep", REALDATA / "fitbit_api_v1.2" / "sleep_date_2025-03-30.json",
                    options(patient="fb", today=date(2026, 11, 21)), fmt="fitbit")
    assert r.accepted == 1
    n = sleep.nightly(db, ["fb"]).iloc[0]
    assert n.date == pd.Timestamp("2025-03-30")
    assert n.sleep_hours * 60 == pytest.approx(391)
    assert n.time_in_bed_hours * 60 == pytest.approx(537)
    assert n.awakenings == 26
    assert (n.bedtime, n.wake_time) == (pytest.approx(-(1 + 48.5 / 60)), pytest.approx(7.15))


@needs_real
def test_real_apple_health_excerpt(db):
    r = import_file(db, "sleep", REALDATA / "apple_health" / "export_sleep_excerpt.xml",
                    options(patient="ah", create_patients=True, today=date(2026, 11, 21)), fmt="apple-health")
    assert (r.accepted, r.quarantined) == (3, 0)
    n = sleep.nightly(db, ["ah"]).set_index("date")
    assert list(n.index.strftime("%Y-%m-%d")) == ["2019-06-15", "2019-06-16", "2019-06-17"]
    night = n.loc["2019-06-16"]  # user-entered Asleep 22:21-08:21 plus the Clock's InBed 08:55-09:14
    assert night.sleep_hours == pytest.approx(10.0)
    assert night.time_in_bed_hours * 60 == pytest.approx(600 + 18 + 57 / 60)
    assert (night.bedtime, night.wake_time) == (pytest.approx(-1.65), pytest.approx(9 + 14 / 60 + 49 / 3600))
    assert math.isnan(n.loc["2019-06-15"].sleep_hours)  # in bed only: asleep unknown, not zero


@needs_real
def test_real_sleep_as_android(db):
    r = import_file(db, "sleep", REALDATA / "sleep_as_android" / "sleep-export.csv",
                    options(patient="saa", create_patients=True, today=date(2026, 11, 21)), fmt="sleep-as-android")
    assert (r.accepted, r.quarantined) == (222, 0)
    n = sleep.nightly(db, ["saa"]).set_index("date")
    assert len(n) == 120
    assert n.index.min() == pd.Timestamp("2020-03-10") and n.index.max() == pd.Timestamp("2020-07-14")
    assert n["sleep_hours"].between(0.4, 13).all()
    # the newest record: 14. 07. 2020 4:46-5:12 BST, Hours 0.430, LenAdjust -1 -> 24.8 min asleep
    row = db.execute("SELECT start, minutes_asleep, awakenings FROM sleep_periods ORDER BY start DESC").fetchone()
    assert row == ("2020-07-14T03:46:56Z", 24.8, 1.0)


@needs_real
def test_real_fitabase(db):
    r = import_file(db, "sleep", REALDATA / "fitbit_fitabase" / "sleepDay_merged.csv",
                    options(create_patients=True, today=date(2026, 11, 21)), fmt="fitabase")
    assert (r.accepted, r.quarantined) == (410, 0)
    n = sleep.nightly(db)
    assert n["patient_id"].nunique() == 24 and len(n) == 410
    first = n[(n.patient_id == "1503960366") & (n.date == pd.Timestamp("2016-04-12"))].iloc[0]
    assert (first.sleep_hours * 60, first.time_in_bed_hours * 60) == (pytest.approx(327), pytest.approx(346))


# ------------------------------------------------------------------------------ a bad record changes nothing stored

def _stored(db) -> list[dict]:
    return list(db.query("SELECT * FROM sleep_periods ORDER BY patient_id, source, period_key"))


@dataclass
class BadNumber:
    fmt: str
    file: str
    good: str      # text in the fixture ...
    bad: str       # ... replaced by this
    reason: str
    line: int
    patient: str | None = "p1"
    extra: dict = field(default_factory=dict)


BAD_NUMBERS = [
    BadNumber("fitabase", "sleepDay_merged.csv", "AM,1,420,480", "AM,1,abc,480",
              "TotalMinutesAsleep='abc' is not a number", 2, patient=None,
              extra={"id_map": str(FIXTURES / "fitabase_id_map.csv")}),
    BadNumber("fitbit", "fitbit_webapi.json", '"minutesAsleep": 420', '"minutesAsleep": "420x"',
              "minutesAsleep='420x' is not a number", 1),
    BadNumber("fitbit", "fitbit_webapi.json", '"minutesAsleep": 420', '"minutesAsleep": "inf"',
              "minutesAsleep='inf' is not a finite number", 1),
    BadNumber("oura", "oura_sleep.json", '"total_sleep_duration": 25200', '"total_sleep_duration": "7h"',
              "total_sleep_duration='7h' is not a number", 1),
    BadNumber("sleep-as-android", "sleep-export.csv", '"8.000","0.0","#fixture","10007","-1","-1.0","1","0.5","-60"',
              '"abc","0.0","#fixture","10007","-1","-1.0","1","0.5","-60"', "Hours='abc' is not a number", 8),
]


@pytest.mark.parametrize("case", BAD_NUMBERS, ids=[f"{c.fmt}:{c.reason.split(' is')[0]}" for c in BAD_NUMBERS])
def test_a_bad_number_is_quarantined_and_leaves_the_stored_period_alone(db, tmp_path, case):
    opts = options(patient=case.patient, extra=case.extra)
    import_file(db, "sleep", FIXTURES / case.file, opts, fmt=case.fmt)
    before = _stored(db)
    assert before and all(x["minutes_asleep"] > 0 for x in before)
    text = (FIXTURES / case.file).read_text(encoding="utf-8")
    assert text.count(case.good) == 1
    bad = tmp_path / case.file
    bad.write_text(text.replace(case.good, case.bad), encoding="utf-8")
    r = import_file(db, "sleep", bad, opts, fmt=case.fmt)
    assert (r.accepted, r.replaced, r.quarantined) == (0, 0, 2)  # the fixture's own bad record + this one
    assert _stored(db) == before
    rejects = list(db.query("SELECT line, reason FROM rejects WHERE file = ?", [str(bad)]))
    assert [(x["line"], case.reason) for x in rejects if case.reason in x["reason"]] == [(case.line, case.reason)]


def test_an_empty_number_is_unknown_not_a_reject(db, tmp_path):
    f = tmp_path / "fitbit.json"
    f.write_text(json.dumps([{"startTime": "2025-03-10T23:00:00.000", "endTime": "2025-03-11T07:00:00.000",
                              "minutesAsleep": None, "timeInBed": ""}]))
    r = import_file(db, "sleep", f, options(patient="p1"), fmt="fitbit")
    assert (r.accepted, r.quarantined) == (1, 0)
    assert db.execute("SELECT minutes_asleep, time_in_bed_minutes FROM sleep_periods").fetchone() == (None, 480.0)


def _apple_export(asleep_value: str) -> str:
    """Night 1: Asleep 22:00-08:00 (600 min) + InBed 08:30-08:50; night 2: InBed 23:00-07:00. UTC times."""
    rec = ('<Record type="HKCategoryTypeIdentifierSleepAnalysis" sourceName="{src}" startDate="{s} +0000" '
           'endDate="{e} +0000" value="HKCategoryValueSleepAnalysis{v}">')
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<HealthData locale="en_US">',
        ' <ExportDate value="2025-03-20 10:00:00 +0000"/>',
        " " + rec.format(src="Health", s="2025-03-09 22:00:00", e="2025-03-10 08:00:00", v=asleep_value),  # line 4
        '  <MetadataEntry key="HKWasUserEntered" value="1"/>',
        " </Record>",
        " " + rec.format(src="Clock", s="2025-03-10 08:30:00", e="2025-03-10 08:50:00", v="InBed") + "</Record>",
        " " + rec.format(src="Clock", s="2025-03-11 23:00:00", e="2025-03-12 07:00:00", v="InBed") + "</Record>",
        "</HealthData>", ""])


def test_apple_a_bad_record_quarantines_its_whole_night(db, tmp_path):
    good, bad = tmp_path / "good.xml", tmp_path / "bad.xml"
    good.write_text(_apple_export("Asleep"))
    bad.write_text(_apple_export("Sleeping"))
    r = import_file(db, "sleep", good, options(patient="p1"), fmt="apple-health")
    assert (r.accepted, r.quarantined) == (2, 0)
    before = _stored(db)
    assert [(x["minutes_asleep"], x["time_in_bed_minutes"]) for x in before] == [(600.0, 620.0), (None, 480.0)]
    r = import_file(db, "sleep", bad, options(patient="p1"), fmt="apple-health")
    assert (r.accepted, r.replaced, r.unchanged, r.quarantined) == (0, 0, 1, 2)
    assert _stored(db) == before
    rejects = {x["line"]: x for x in db.query("SELECT line, reason, raw FROM rejects WHERE file = ?", [str(bad)])}
    assert sorted(rejects) == [4, 7]
    assert "value='HKCategoryValueSleepAnalysisSleeping' is not a known" in rejects[4]["reason"]
    assert rejects[7]["reason"].startswith("another record of this night is malformed: sleep record #1")
    assert 'startDate="2025-03-10 08:30:00 +0000"' in rejects[7]["raw"]
    assert 'HKWasUserEntered' in rejects[4]["raw"]
