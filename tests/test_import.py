"""Import of the core kinds: every validation rule, quarantine, idempotence, formats, forget."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TODAY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigger_watch import storage
from trigger_watch.diary import forget
from trigger_watch.errors import InputFileError, UnknownPatient
from trigger_watch.importing import ImportOptions, import_file, list_rejects

HEADER = "patient_id,date,stress,alcohol_units,caffeine_mg,menstruation,foods,headache\n"


def rows(db, sql):
    return [tuple(r) for r in db.execute(sql).fetchall()]


@pytest.mark.parametrize(
    "column,value,reason",
    [
        ("stress", "11", "stress='11' is outside 0-10"),
        ("stress", "high", "stress='high' is not a number"),
        ("stress", "inf", "stress='inf' is not a number"),
        ("caffeine_mg", "-Infinity", "caffeine_mg='-Infinity' is not a number"),
        ("alcohol_units", "-1", "alcohol_units='-1' is negative"),
        ("caffeine_mg", "-5", "caffeine_mg='-5' is negative"),
        ("screen_hours", "25", "screen_hours='25' is outside 0-24"),
        ("sleep_hours", "30", "sleep_hours='30' is outside 0-24"),
        ("sleep_quality", "12", "sleep_quality='12' is outside 0-10"),
        ("headache_intensity", "10.5", "headache_intensity='10.5' is outside 0-10"),
        ("exercise_minutes", "-3", "exercise_minutes='-3' is negative"),
        ("water_l", "-0.5", "water_l='-0.5' is negative"),
        ("menstruation", "maybe", "menstruation='maybe' is not yes/no"),
        ("headache", "2", "headache='2' is not yes/no"),
        ("date", "2026-02-30", "date='2026-02-30' is not a date (use YYYY-MM-DD, or --date-format for another layout)"),
        ("date", "03/01/2026", "date='03/01/2026' is not a date"),
        ("date", "2027-01-01", "date='2027-01-01' is in the future (today is 2026-11-20)"),
        ("patient_id", "a b", "patient_id='a b' must be 1-64 letters, digits"),
        ("patient_id", "x" * 65, "must be 1-64 letters"),
        ("patient_id", "p9", "patient 'p9' is not known; import it first or pass --create-patients"),
    ],
)
def test_each_diary_rule_quarantines_with_its_reason(patients, write, do_import, column, value, reason):
    row = {"patient_id": "p1", "date": "2026-03-01", column: value}
    cols = list(row)
    good = {c: "" for c in cols} | {"patient_id": "p1", "date": "2026-03-02"}
    text = ",".join(cols) + "\n" + ",".join(good[c] for c in cols) + "\n"
    text += ",".join(row[c] for c in cols) + "\n"
    result = do_import("diary", write("d.csv", text))
    assert (result.accepted, result.quarantined) == (1, 1)
    (rej,) = list_rejects(patients, "diary")
    assert rej["line"] == 3
    assert reason in rej["reason"]
    assert rej["file"].endswith("d.csv")
    assert json.loads(rej["raw"])[column] == value


def test_a_row_with_several_problems_lists_them_all(patients, write, do_import):
    do_import("diary", write("d.csv", HEADER + "p1,2026-03-01,12,-1,,x,,\n"))
    (rej,) = list_rejects(patients)
    assert "stress='12' is outside 0-10" in rej["reason"]
    assert "alcohol_units='-1' is negative" in rej["reason"]
    assert "menstruation='x' is not yes/no" in rej["reason"]


def test_patient_rules(db, write, do_import):
    text = (
        "patient_id,timezone,latitude,longitude,sex,birth_year\n"
        "ok1,Europe/Vienna,48,16,f,1980\n"
        "bad1,Mars/Olympus,,,F,1980\n"
        "bad2,UTC,95,16,F,1980\n"
        "bad3,UTC,48,,F,1980\n"
        "bad4,UTC,48,16,Q,1980\n"
        "bad5,UTC,48,16,F,80\n"
        "bad6,UTC,48,-200,F,1980\n"
    )
    result = do_import("patients", write("p.csv", text))
    assert (result.accepted, result.quarantined) == (1, 6)
    reasons = {r["line"]: r["reason"] for r in list_rejects(db)}
    assert "timezone='Mars/Olympus' is not an IANA time zone" in reasons[3]
    assert "latitude='95' is outside -90-90" in reasons[4]
    assert "latitude and longitude must be given together" in reasons[5]
    assert "sex='Q' must be F, M, X or empty" in reasons[6]
    assert "birth_year='80' is outside 1900-2026" in reasons[7]
    assert "longitude='-200' is outside -180-180" in reasons[8]
    assert rows(db, "SELECT patient_id, sex FROM patients") == [("ok1", "F")]


def test_a_day_is_in_the_future_only_after_today_where_its_patient_lives(db, write, do_import):
    """19:00 on a UTC server is 08:00 the next morning in Auckland. A diary day, a treatment and the night's
    sleep dated that morning were quarantined as "in the future" by the server's date: every morning's
    import of an Auckland patient's diary app or wearable, until the server's midnight."""
    from datetime import UTC, date, datetime

    at = {"today": date(2026, 11, 23), "now": datetime(2026, 11, 23, 19, 0, tzinfo=UTC)}
    do_import("patients", write("p.csv", "patient_id,timezone\nnz,Pacific/Auckland\nuk,Europe/London\n"))
    diary = do_import("diary", write("d.csv", "patient_id,date,stress\nnz,2026-11-24,3\nuk,2026-11-24,3\n"
                                               "nz,2026-11-25,3\nuk,2026-11-23,2\n"), **at)
    treated = do_import("treatments", write("t.csv", "patient_id,date,treatment\nnz,2026-11-24,botox\n"
                                                     "uk,2026-11-24,botox\n"), **at)
    slept = do_import("sleep", write("s.csv", "patient_id,start,end,minutes_asleep\n"
                                              "nz,2026-11-23T22:40,2026-11-24T06:50,450\n"
                                              "uk,2026-11-23T22:40,2026-11-24T06:50,450\n"), **at)
    assert [(r.accepted, r.quarantined) for r in (diary, treated, slept)] == [(2, 2), (1, 1), (1, 1)]
    assert rows(db, "SELECT patient_id, date FROM diary ORDER BY patient_id") == [
        ("nz", "2026-11-24"), ("uk", "2026-11-23")]
    assert rows(db, "SELECT patient_id FROM treatments") == [("nz",)]
    assert [r["reason"] for r in list_rejects(db)] == [
        "date='2026-11-24' is in the future (today is 2026-11-23 in Europe/London)",
        "date='2026-11-25' is in the future (today is 2026-11-24 in Pacific/Auckland)",
        "date='2026-11-24' is in the future (today is 2026-11-23 in Europe/London)",
        "the night ending 2026-11-24 is in the future (today is 2026-11-23 in Europe/London)"]


def test_attack_rules_and_time_zones(patients, write, do_import):
    text = (
        "patient_id,start,end,intensity,kind,medications\n"
        "p1,2026-03-29T01:30,2026-03-29T05:00,6,migraine,Sumatriptan:50;ibuprofen\n"  # Vienna, before DST jump
        "p1,2026-03-30T08:00+02:00,,7,,\n"
        "p1,2026-03-31T10:00,2026-03-31T09:00,5,,\n"
        "p1,2030-01-01T10:00,,5,,\n"
        "p1,2026-04-01T10:00,,11,,\n"
        "p1,2026-04-02T10:00,,5,cluster,\n"
        "p1,yesterday,,5,,\n"
        "p1,2026-04-03T10:00,,5,,sumatriptan:lots\n"
    )
    result = do_import("attacks", write("a.csv", text))
    assert (result.accepted, result.quarantined) == (2, 6)
    stored = rows(patients, "SELECT start, \"end\", start_local, kind, medications FROM attacks ORDER BY start")
    assert stored[0] == ("2026-03-29T00:30:00Z", "2026-03-29T03:00:00Z", "2026-03-29T01:30:00", "migraine",
                         "sumatriptan:50;ibuprofen")
    assert stored[1][0] == "2026-03-30T06:00:00Z" and stored[1][1] is None and stored[1][3] == "migraine"
    reasons = {r["line"]: r["reason"] for r in list_rejects(patients)}
    assert reasons[4] == "end 2026-03-31T09:00 is before start 2026-03-31T10:00"
    assert "is in the future" in reasons[5]
    assert "intensity='11' is outside 0-10" in reasons[6]
    assert "kind='cluster' must be migraine or headache" in reasons[7]
    assert "start='yesterday' is not an ISO 8601 date-time" in reasons[8]
    assert "has a dose that is not a number" in reasons[9]


PAIN_LOG = (  # the shape of a MultiLog export (docs/inputs.md), made up here; line numbers on the right
    "# pain over time\n"                      # 1
    "2026-03-01 08:00:00\t0\n"               # 2
    "2026-03-01 09:00:00\tAura\n"            # 3  before the attack: belongs to it
    "2026-03-01 09:40:00\t4\n"               # 4  attack 1 starts
    "2026-03-01 10:00:00\t10mg Rizatriptan\n"  # 5
    "2026-03-01 11:00:00\t6\n"               # 6
    "2026-03-01 15:00:00\t2\n"               # 7
    "2026-03-01 18:00:00\t0\n"               # 8  attack 1 ends
    "2026-03-02 07:00:00\t50mg propranolol preventative\n"  # 9  a treatment
    "2026-03-02 12:00:00\t400mg ibuprofen\n"  # 10 no attack going on
    "no tab on this line\n"                   # 11
    "2026-03-03 12:00\t12\n"                 # 12 off the scale
    "2026-03-04 08:00:00\t3\n"               # 13 attack 2
    "2026-03-04 09:00:00\t\n"                # 14 nothing after the tab
    "2026-03-04 20:00:00\t0\n"               # 15
    "2026-03-01 11:30:00\tNauseous\n"        # 16 listed after the pain: attack 1's
    "2026-03-01 09:40:00\t4\n"               # 17 a repeat, read once
    "2026-03-05 07:00:00\t5\n"               # 18 attack 3, still going
    "2026-03-05 09:00:00+01:00\t6\n"         # 19 an offset: local times only
)


def test_a_pain_log_becomes_its_attacks(patients, write, do_import):
    """A real migraine log (bitmask's MultiLog export) is pain numbers over time, with drugs, symptoms and
    comments between them: it had no import path (inputs.md's attacks are one row each)."""
    log = write("pain.tsv", PAIN_LOG)
    with pytest.raises(InputFileError, match="say whose with --patient"):
        do_import("attacks", log, fmt="severity-log")
    result = do_import("attacks", log, fmt="severity-log", patient="p1")
    assert (result.accepted, result.quarantined) == (3, 4)
    assert any("1 symptom or drug line(s) of pain.tsv fell outside every attack" in m for m in result.messages)
    assert any("1 preventive drug line(s)" in m and "as treatments" in m for m in result.messages)
    stored = rows(patients, 'SELECT start_local, end_local, start, intensity, aura, symptoms, medications '
                            'FROM attacks ORDER BY start')
    assert stored == [
        ("2026-03-01T09:40:00", "2026-03-01T18:00:00", "2026-03-01T08:40:00Z", 6.0, 1, "nauseous", "rizatriptan:10"),
        ("2026-03-04T08:00:00", "2026-03-04T20:00:00", "2026-03-04T07:00:00Z", 3.0, None, None, None),
        ("2026-03-05T07:00:00", None, "2026-03-05T06:00:00Z", 5.0, None, None, None),
    ]
    reasons = {r["line"]: r["reason"] for r in list_rejects(patients, "attacks")}
    assert set(reasons) == {11, 12, 14, 19}
    assert "has a UTC offset" in reasons[19]
    assert reasons[11].startswith("expected 'YYYY-MM-DD HH:MM:SS', a tab, then a pain number")
    assert reasons[12] == "pain 12 is outside 0-10"
    assert reasons[14] == "the line has a time but nothing after the tab"
    again = do_import("attacks", log, fmt="severity-log", patient="p1")
    assert (again.accepted, again.replaced, again.unchanged) == (0, 0, 3)


def test_a_pain_log_line_with_a_time_that_does_not_exist_says_so(patients, write, do_import):
    """A line laid out as the log's lines are, with a day or an hour no calendar has, was told the layout it
    already has. It says which time does not exist; a log whose one line is such is that line quarantined,
    not a file refused as no pain log. Imported again, an old reject takes the new reason."""
    log = write("pain.tsv", "2026-03-01 09:00:00\t4\n2026-02-30 10:00:00\t5\n2026-03-01 25:00\t0\n"
                            "2026-03-01 18:00:00\t0\n")
    patients.conn.execute("INSERT INTO rejects (kind, file, line, reason, raw, created_at) VALUES"
                          " ('attacks', ?, 2, 'an older wording', '2026-02-30 10:00:00\t5', 'then')", (str(log),))
    result = do_import("attacks", log, fmt="severity-log", patient="p1")
    assert (result.accepted, result.quarantined) == (1, 2)
    reasons = {r["line"]: r["reason"] for r in list_rejects(patients, "attacks")}
    assert reasons == {
        2: "'2026-02-30 10:00:00' has the layout of a time, but no such day or time exists "
           "(month 01-12, a day of that month, hour 00-23, minute 00-59)",
        3: "'2026-03-01 25:00' has the layout of a time, but no such day or time exists "
           "(month 01-12, a day of that month, hour 00-23, minute 00-59)"}
    one = do_import("attacks", write("one.tsv", "2026-13-01 09:00\t4\n"), fmt="severity-log", patient="p1")
    assert (one.accepted, one.quarantined) == (0, 1)


def test_a_file_that_is_no_pain_log_is_refused_whole(patients, write, do_import):
    """A daily table (bitmask's journal.tsv layout, made up here) or a CSV given --format severity-log had
    every line quarantined, or read as symptoms outside every attack: one error, nothing stored."""
    journal = write("journal.tsv", "day\thours\tpain\tdrug\tmg\n2026-03-01\t5\t6\t\t\n2026-03-02\t0\t0\t\t\n")
    table = write("days.csv", "Date,Type,Medication\n03-01-2026,0,sumatriptan\n")
    for path in (journal, table):
        with pytest.raises(InputFileError, match=rf"{path.name} is not a pain log: none of its \d line\(s\) reads"):
            do_import("attacks", path, fmt="severity-log", patient="p1")
    assert rows(patients, "SELECT count(*) FROM attacks") == [(0,)]
    assert rows(patients, "SELECT count(*) FROM rejects") == [(0,)]


@pytest.mark.parametrize("kind,text,missing,has", [
    ("diary", "day\tpain\n2026-03-01\t4\n", "'date' column", "'day', 'pain'"),
    ("attacks", "patient_id,begin,intensity\np1,2026-03-01T08:00,6\n", "'start' column", "'patient_id', 'begin'"),
    ("treatments", "patient_id,when,drug\np1,2026-03-01,botox\n", "'date' or 'start' column", "'patient_id', 'when', 'drug'"),
    ("treatments", "patient_id,date,drug\np1,2026-03-01,botox\n", "'treatment' column", "'patient_id', 'date', 'drug'"),
])
def test_a_file_without_a_key_column_is_refused_with_the_rename_that_fits(patients, write, do_import, kind, text,
                                                                          missing, has):
    """Every row of such a file was quarantined with "date is missing", however many: the file now gets one
    error naming it, its columns and --rename."""
    path = write("in.tsv" if "\t" in text else "in.csv", text)
    with pytest.raises(InputFileError) as err:
        do_import(kind, path, patient="p1")
    message = str(err.value)
    assert message.startswith(f"{path.name} has no {missing}")
    assert f"its columns are {has}" in message and "--rename THEIRS=" in message
    assert rows(patients, "SELECT count(*) FROM rejects") == [(0,)]


def test_a_diary_that_never_says_headache_is_named_when_no_attack_is_stored(patients, write, do_import):
    """A diary of bad days only, with no headache column (clanceybarrington's layout), read as 0 attacks
    without a word. The import names the patients it leaves with no headache on record."""
    bad_days = write("bad_days.csv", "patient_id,date,medication\np1,2026-03-01,sumatriptan\np2,2026-03-03,\n")
    result = do_import("diary", bad_days)
    (note,) = [m for m in result.messages if "says whether there was a headache" in m]
    assert "no attack is stored for 2 patient(s): p1, p2" in note
    do_import("attacks", write("a.csv", "patient_id,start\np1,2026-03-01T08:00\n"))
    again = do_import("diary", write("more.csv", "patient_id,date,stress\np1,2026-03-04,3\np2,2026-03-04,2\n"))
    (note,) = [m for m in again.messages if "says whether there was a headache" in m]
    assert "for 1 patient(s): p2." in note
    unknown = do_import("diary", write("unknown.csv", "patient_id,date,stress\nnobody,2026-03-05,3\n"))
    assert unknown.quarantined == 1  # quarantined, not imported: not named as a patient with days
    assert not [m for m in unknown.messages if "says whether there was a headache" in m]
    told = do_import("diary", write("told.csv", "patient_id,date,headache\np2,2026-03-05,no\n"))
    later = do_import("diary", write("later.csv", "patient_id,date,stress\np2,2026-03-06,1\n"))
    assert not [m for m in told.messages + later.messages if "says whether there was a headache" in m]


def test_a_file_without_a_header_row_is_read_with_the_names_given(patients, write, do_import):
    """A log of preventive dose changes (bitmask's, made up here) has no header row: `time<TAB>mg<TAB>drug`.
    Its first line was taken for the header, so every other line was quarantined against it."""
    log = write("preventives.tsv", "2026-01-05 08:00:00\t25\tmetoprolol\n"
                                   "2026-02-01 08:00:00\t50\tmetoprolol\n"
                                   "2026-02-10 21:00:00\t10\n"
                                   "2026-03-01 08:00:00\t155\tbotox\n")
    result = do_import("treatments", log, patient="p1", header=["start", "dose_mg", "treatment"])
    assert (result.accepted, result.quarantined) == (3, 1)
    assert rows(patients, "SELECT date, treatment, dose_mg FROM treatments ORDER BY date") == [
        ("2026-01-05", "metoprolol", 25.0), ("2026-02-01", "metoprolol", 50.0), ("2026-03-01", "botox", 155.0)]
    reasons = {r["line"]: r["reason"] for r in list_rejects(patients)}
    assert reasons == {3: "has 2 values but the header has 3 columns (--header)"}
    with pytest.raises(InputFileError, match="--header names the columns of a CSV file"):
        do_import("treatments", write("t.json", "[]"), patient="p1", header=["start"])


def test_treatments_accept_start_for_date(patients, write, do_import):
    text = "patient_id,start,treatment,dose_mg\np1,2026-05-02T09:00,Ketamine Infusion,35\np1,2026-05-03,,\n"
    result = do_import("treatments", write("t.csv", text))
    assert (result.accepted, result.quarantined) == (1, 1)
    assert rows(patients, "SELECT date, treatment, dose_mg FROM treatments") == [
        ("2026-05-02", "ketamine_infusion", 35.0)]
    assert "treatment is missing" in list_rejects(patients)[0]["reason"]


def test_reimport_changes_nothing_and_later_rows_replace(patients, write, do_import):
    path = write("d.csv", HEADER + "p1,2026-03-01,3,0,100,no,Red Wine; cheese ,0\np1,2026-03-02,4,0,,,,1\n")
    first = do_import("diary", path)
    before = rows(patients, "SELECT * FROM diary ORDER BY date")
    second = do_import("diary", path)
    assert (first.accepted, second.accepted, second.replaced, second.unchanged) == (2, 0, 0, 2)
    assert [r[:-1] for r in rows(patients, "SELECT * FROM diary ORDER BY date")] == [r[:-1] for r in before]
    newer = do_import("diary", write("d2.csv", HEADER + "p1,2026-03-02,9,0,,,,1\n"))
    assert (newer.accepted, newer.replaced) == (0, 1)
    assert rows(patients, "SELECT date, stress, foods FROM diary ORDER BY date") == [
        ("2026-03-01", 3.0, "red_wine;cheese"), ("2026-03-02", 9.0, None)]


def test_empty_cells_are_unknown_not_zero(patients, write, do_import):
    do_import("diary", write("d.csv", HEADER + "p1,2026-03-01,,,,,,\n"))
    assert rows(patients, "SELECT stress, alcohol_units, menstruation, foods, headache FROM diary") == [
        (None, None, None, None, None)]


def test_a_diary_of_text_alone_is_refused_and_the_stored_days_keep_their_values(patients, write, do_import):
    """A treatments file imported as a diary (patient, date, a treatment's name) imported: each row an empty
    day that replaced the stored one, whose stress was lost. Refused whole now; a file of the days alone
    (patient and date: when the diary was kept) still imports, and so does one whose known columns are empty."""
    do_import("diary", write("d.csv", "patient_id,date,stress\np1,2026-03-01,6\n"))
    treatments = write("t.csv", "patient_id,date,treatment\np1,2026-03-01,botox\np1,2026-03-02,ketamine\n")
    with pytest.raises(InputFileError, match=r"t\.csv has no value a diary keeps on any of its 2 row\(s\), only text "
                                             r"in 'treatment'.*import treatments FILE"):
        do_import("diary", treatments)
    assert rows(patients, "SELECT date, stress FROM diary") == [("2026-03-01", 6.0)]
    assert rows(patients, "SELECT count(*) FROM rejects") == [(0,)]
    assert do_import("treatments", treatments).accepted == 2
    days = do_import("diary", write("days.csv", "patient_id,date\np1,2026-03-03\n"))
    assert days.accepted == 1
    # text beside a value the diary keeps: the file is a diary, its text column named in a note
    mixed = do_import("diary", write("m.csv", "patient_id,date,stress,city\np1,2026-03-04,,Graz\np1,2026-03-05,2,Linz\n"))
    assert mixed.accepted == 2


def test_custom_columns_become_factors_and_text_columns_are_reported(patients, write, do_import):
    text = "Patient_ID , Date,Barometer Ache,Took Nap,City\np1,2026-03-01,3.5,yes,Graz\np1,2026-03-02,,no,Linz\n"
    result = do_import("diary", write("d.csv", text))
    assert result.accepted == 2
    customs = [json.loads(r[0]) if r[0] else None for r in patients.execute("SELECT custom FROM diary ORDER BY date")]
    assert customs == [{"barometer_ache": 3.5, "took_nap": 1.0}, {"took_nap": 0.0}]
    assert any("'city' was not imported: its values are text (e.g. 'Graz')" in m for m in result.messages)


def test_an_infinite_value_is_quarantined_and_leaves_the_stored_day_as_it_was(patients, write, do_import):
    """'inf' parses as a float but is no reading: in a known column it would have replaced the stored value
    with unknown; in a custom column it was stored as JSON no reader accepts (the cohort's analysis failed)."""
    do_import("diary", write("d.csv", "patient_id,date,stress,mood\np1,2026-03-01,4,3\np1,2026-03-02,5,2\n"))
    before = rows(patients, "SELECT date, stress, custom FROM diary ORDER BY date")
    result = do_import("diary", write("d2.csv", "patient_id,date,stress,mood\np1,2026-03-01,inf,3\n"
                                                "p1,2026-03-02,5,inf\n"))
    assert result.quarantined == 2
    assert rows(patients, "SELECT date, stress, custom FROM diary ORDER BY date") == before
    reasons = [r["reason"] for r in list_rejects(patients)]
    assert reasons == ["stress='inf' is not a number",
                       "mood='inf' is not a number or yes/no like the rest of the column"]
    # every stored custom value is JSON that SQLite reads
    assert patients.execute("SELECT count(*) FROM diary WHERE json_valid(custom)").fetchone()[0] == 2


def test_a_column_named_after_a_warning_sign_is_recorded_as_that_symptom(patients, write, do_import):
    """A yes/no 'Yawning' column would have been a custom factor, and custom factors can be called triggers:
    an audit's simulated cohort, nothing planted, got 'yawning is one of your triggers' for 149 of 150
    patients. It is the symptom factor, a warning sign, like the symptoms column's tags."""
    text = ("patient_id,date,Yawning,fatigue,symptoms,mood\np1,2026-03-01,yes,0,,3\np1,2026-03-02,no,,neck_stiffness,2\n"
            "p1,2026-03-03,y,7,yawning,1\np1,2026-03-04,,,,1\n")
    result = do_import("diary", write("d.csv", text))
    assert (result.accepted, result.quarantined) == (4, 0)
    assert rows(patients, "SELECT date, symptoms, custom FROM diary ORDER BY date") == [
        ("2026-03-01", "yawning", '{"mood": 3.0}'), ("2026-03-02", "neck_stiffness", '{"mood": 2.0}'),
        ("2026-03-03", "yawning;fatigue", '{"mood": 1.0}'), ("2026-03-04", None, '{"mood": 1.0}')]
    assert any("'yawning' is a warning sign: recorded as symptom 'yawning'" in m for m in result.messages)
    # without a symptoms column, a day the columns say no is a known empty list, not unknown
    do_import("diary", write("d2.csv", "patient_id,date,yawning\np1,2026-03-05,no\np1,2026-03-06,maybe\n"))
    assert rows(patients, "SELECT symptoms FROM diary WHERE date = '2026-03-05'") == [("",)]
    (rej,) = list_rejects(patients)
    assert "yawning='maybe' is not yes/no or a number" in rej["reason"]


def test_a_column_no_kind_but_the_diary_reads_is_named_not_dropped_silently(patients, write, do_import):
    """inputs.md: a column is never silently ignored. An attacks file with 'intensty' imported '1 new' and
    stored no intensity, without a word."""
    result = do_import("attacks", write("a.csv", "patient_id,start,intensty,relief\np1,2026-03-01T08:00,7,\n"))
    assert result.accepted == 1
    assert rows(patients, "SELECT intensity FROM attacks") == [(None,)]
    assert result.messages == [("column 'intensty' is not a column of attacks files and was not imported "
                                "(did you mean 'intensity'? --rename 'intensty=intensity')")]


def test_none_in_a_tag_column_is_a_known_empty_list(patients, write, do_import):
    text = HEADER + "p1,2026-03-01,,,,,none,\np1,2026-03-02,,,,,,\np1,2026-03-03,,,,,None; cheese,\n"
    do_import("diary", write("d.csv", text))
    assert rows(patients, "SELECT foods FROM diary ORDER BY date") == [("",), (None,), ("cheese",)]
    do_import("diary", write("d.json", json.dumps([{"patient_id": "p1", "date": "2026-03-04", "foods": []},
                                                   {"patient_id": "p1", "date": "2026-03-05", "foods": None}])))
    assert rows(patients, "SELECT foods FROM diary WHERE date > '2026-03-03' ORDER BY date") == [("",), (None,)]


def test_date_format_option_reads_other_layouts(patients, write, do_import):
    text = "patient_id,date,stress\np1,11-17-2018,3\np1,1-2-2020,4\np1,2020-01-03,5\n"
    result = do_import("diary", write("us.csv", text), date_format="%m-%d-%Y")
    assert (result.accepted, result.quarantined) == (2, 1)
    assert rows(patients, "SELECT date FROM diary ORDER BY date") == [("2018-11-17",), ("2020-01-02",)]
    assert "date='2020-01-03' is not a date (expected %m-%d-%Y)" in list_rejects(patients)[0]["reason"]


def test_caffeine_servings_convert_to_mg(patients, write, do_import):
    do_import("diary", write("d.csv", "patient_id,date,caffeine_servings\np1,2026-03-01,2\n"))
    assert rows(patients, "SELECT caffeine_mg FROM diary") == [(190.0,)]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_and_ndjson_give_the_same_rows_as_csv(patients, write, do_import, fmt):
    records = [{"patient_id": "p1", "date": "2026-03-01", "stress": 3, "foods": ["Red Wine", "cheese"],
                "menstruation": True, "alcohol_units": None},
               {"patient_id": "p1", "date": "2026-03-02", "stress": 40}]
    text = json.dumps(records) if fmt == "json" else "\n".join(json.dumps(r) for r in records) + "\n"
    result = do_import("diary", write(f"d.{fmt}", text))
    assert (result.accepted, result.quarantined) == (1, 1)
    assert rows(patients, "SELECT stress, foods, menstruation, alcohol_units FROM diary") == [
        (3.0, "red_wine;cheese", 1, None)]
    assert list_rejects(patients)[0]["line"] == 2


def test_broken_ndjson_line_is_quarantined_rest_imports(patients, write, do_import):
    text = '{"patient_id": "p1", "date": "2026-03-01"}\n{"patient_id": "p1", "date": \n[1]\n'
    result = do_import("diary", write("d.ndjson", text))
    assert (result.accepted, result.quarantined) == (1, 2)
    reasons = [r["reason"] for r in list_rejects(patients)]
    assert reasons[0].startswith("is not valid JSON") and reasons[1] == "is not a JSON object ({...})"


def test_ragged_csv_row_is_quarantined(patients, write, do_import):
    result = do_import("diary", write("d.csv", "patient_id,date,stress\np1,2026-03-01,3,extra\np1,2026-03-02,4\n"))
    assert (result.accepted, result.quarantined) == (1, 1)
    assert list_rejects(patients)[0]["reason"] == "has 4 values but the header has 3 columns"


def test_rejects_are_listed_by_line_within_each_file(patients, write, do_import):
    """A file's unreadable lines are quarantined before its invalid rows, and the list showed line 4 before
    line 2. Files keep the order they were first quarantined in."""
    do_import("diary", write("a.csv", "patient_id,date,stress\np1,2026-03-01,11\np1,2026-03-02,3\n"
                                      "p1,2026-03-03,4,extra\np1,2026-03-04,12\n"))
    do_import("diary", write("b.csv", "patient_id,date,stress\np1,2026-03-05,1,2\np1,2026-03-06,13\n"))
    listed = [(Path(r["file"]).name, r["line"]) for r in list_rejects(patients, "diary")]
    assert listed == [("a.csv", 2), ("a.csv", 4), ("a.csv", 5), ("b.csv", 2), ("b.csv", 3)]
    assert [(Path(r["file"]).name, r["line"]) for r in list_rejects(patients, "diary", limit=2)] == listed[:2]


def test_an_unclosed_quote_is_quarantined_alone_and_the_lines_after_it_import(patients, write, do_import):
    """Read leniently, the open quote of line 3 swallowed lines 4-6 into its note: one row imported, three
    lost without a word. Now line 3 is quarantined and reading starts again on line 4."""
    do_import("diary", write("d0.csv", "patient_id,date,stress\np1,2026-03-02,7\n"))
    before = rows(patients, "SELECT date, stress, notes FROM diary ORDER BY date")
    text = ('patient_id,date,stress,notes\np1,2026-03-01,3,"fine"\np1,2026-03-02,4,"forgot to close\n'
            'p1,2026-03-03,5,ok\np1,2026-03-04,6,"two\nlines"\np1,2026-03-05,2,"x""y"\n')
    result = do_import("diary", write("d.csv", text))
    assert (result.accepted, result.quarantined) == (4, 1)
    (rej,) = list_rejects(patients)
    assert rej["line"] == 3 and rej["reason"].startswith('opens a quote (") that is never closed')
    got = rows(patients, "SELECT date, stress, notes FROM diary ORDER BY date")
    assert got == [("2026-03-01", 3.0, "fine"), before[0], ("2026-03-03", 5.0, "ok"),
                   ("2026-03-04", 6.0, "two\nlines"), ("2026-03-05", 2.0, 'x"y')]
    # the line numbers after it are the file's (the two-line note is lines 5-6): a bad value on line 8
    do_import("diary", write("e.csv", text + "p1,2026-03-06,11,\n"))
    last = [(Path(r["file"]).name, r["line"]) for r in list_rejects(patients)][-2:]
    assert last == [("e.csv", 3), ("e.csv", 8)]


def test_a_file_separated_by_semicolons_says_so(patients, write, do_import):
    """A spreadsheet saved with semicolons read as one column named 'patient_id;date;stress', and the error
    asked for --patient. (Its numbers may have decimal commas: it is refused, not guessed at.)"""
    text = "patient_id;date;stress\np1;2026-03-01;3\n"
    with pytest.raises(InputFileError, match=re.escape("the header row is separated by semicolons (;), not commas")):
        do_import("diary", write("d.csv", text))
    assert rows(patients, "SELECT count(*) FROM diary") == [(0,)]


@pytest.mark.parametrize("name", ["d.tsv", "d.csv"])
def test_a_tab_separated_file_imports(patients, write, do_import, name):
    """A .tsv file (the real bitmask journal) could not be imported: its extension was unknown, and as CSV
    it was refused. Tabs are read as the separator for a .tsv, or a header with tabs and no commas; a
    value may hold a comma."""
    text = "patient_id\tdate\tstress\tnotes\np1\t2026-03-01\t3\tslept badly, then coffee\np1\t2026-03-02\t11\t\n"
    result = do_import("diary", write(name, text))
    assert (result.accepted, result.quarantined) == (1, 1)
    assert rows(patients, "SELECT date, stress, notes FROM diary") == [("2026-03-01", 3.0, "slept badly, then coffee")]
    assert [(r["line"], r["reason"]) for r in list_rejects(patients)] == [(3, "stress='11' is outside 0-10")]


def test_a_later_good_row_for_the_same_key_resolves_a_reject(patients, write, do_import):
    """The rejects list only grew: a row fixed and imported again stayed listed for ever."""
    bad = write("d.csv", "patient_id,date,stress\np1,2026-03-01,11\np1,2026-03-02,maybe\nq!,2026-03-03,2\n"
                         "p1,2026-03-04,3\n")
    assert do_import("diary", bad).quarantined == 3
    key_of = {r["line"]: r["row_key"] for r in patients.query("SELECT line, row_key FROM rejects")}
    assert key_of == {2: "p1|2026-03-01", 3: "p1|2026-03-02", 4: None}  # no key without a valid patient id
    # another kind's good row, or another day, resolves nothing
    do_import("treatments", write("t.csv", "patient_id,date,treatment\np1,2026-03-01,botox\n"))
    result = do_import("diary", write("other.csv", "patient_id,date,stress\np1,2026-03-05,4\n"))
    assert result.resolved == 0 and len(list_rejects(patients)) == 3
    fixed = write("fixed.csv", "patient_id,date,stress\np1,2026-03-01,1\n")
    result = do_import("diary", fixed)
    assert result.resolved == 1 and "1 row(s) quarantined by an earlier import" in "\n".join(result.lines())
    assert [r["line"] for r in list_rejects(patients)] == [3, 4]
    everything = list_rejects(patients, resolved=True)
    assert [(r["line"], r["resolved_by"]) for r in everything] == [(2, str(fixed)), (3, None), (4, None)]
    # the bad file again: its row is the later one, so the reject is open again, and stored only once
    assert do_import("diary", bad).quarantined == 3
    assert [r["line"] for r in list_rejects(patients)] == [2, 3, 4]
    assert len(list_rejects(patients, resolved=True)) == 3
    assert rows(patients, "SELECT stress FROM diary WHERE date = '2026-03-01'") == [(1.0,)]


def test_a_reject_without_a_key_leaves_when_its_file_is_imported_again_fixed(patients, write, do_import):
    """A row whose date could not be read has no key for a good row to resolve: the real clanceybarrington
    diary (dates like 11-17-2018) imported again with --date-format left its 107 rejects listed for ever."""
    text = "patient_id,date,stress\np1,{0},3\np1,{1},4\n"
    bad = write("d.csv", text.format("03-01-2026", "03-02-2026"))
    other = write("o.csv", "patient_id,date,stress\np1,3/3/2026,5\n")
    assert do_import("diary", bad).quarantined == 2 and do_import("diary", other).quarantined == 1
    assert {r["row_key"] for r in patients.query("SELECT row_key FROM rejects")} == {None}
    result = do_import("diary", bad, date_format="%m-%d-%Y")  # the same file, read as it is written
    assert (result.accepted, result.quarantined, result.gone) == (2, 0, 2)
    assert "2 row(s) quarantined by an earlier import of this file" in "\n".join(result.lines())
    assert [Path(r["file"]).name for r in list_rejects(patients)] == ["o.csv"]  # another file's stays
    # a line it still cannot read stays listed
    write("d.csv", text.format("2026-03-01", "tomorrow"))
    result = do_import("diary", bad)
    assert (result.quarantined, result.gone) == (1, 0)
    assert sorted(Path(r["file"]).name for r in list_rejects(patients)) == ["d.csv", "o.csv"]


def test_a_bad_row_and_a_good_one_for_its_key_in_one_file_stay_as_they_are(patients, write, do_import):
    result = do_import("diary", write("d.csv", "patient_id,date,stress\np1,2026-03-01,3\np1,2026-03-01,11\n"))
    assert (result.accepted, result.quarantined, result.resolved) == (1, 1, 0)
    assert [r["line"] for r in list_rejects(patients)] == [3]


def test_create_patients_option(db, write, do_import):
    result = do_import("diary", write("d.csv", "patient_id,date,stress\nnew1,2026-03-01,3\n"),
                       create_patients=True, default_timezone="Europe/Oslo")
    assert result.accepted == 1
    assert rows(db, "SELECT patient_id, timezone FROM patients") == [("new1", "Europe/Oslo")]


def test_create_patients_creates_no_patient_whose_every_row_is_quarantined(db, write, do_import):
    """A new patient is made for a row that is imported: one whose rows all fail (here a mistyped id's
    stress of 11) would otherwise stand in the ranking with nothing logged."""
    text = "patient_id,date,stress\nnew1,2026-03-01,3\nnwe1,2026-03-02,11\nnew1,2026-03-03,4\n"
    result = do_import("diary", write("d.csv", text), create_patients=True, default_timezone="UTC")
    assert (result.accepted, result.quarantined) == (2, 1)
    assert rows(db, "SELECT patient_id FROM patients") == [("new1",)]
    assert any("created 1 new patient(s)" in m and "nwe1" not in m for m in result.messages)
    result = do_import("attacks", write("a.csv", "patient_id,start\nnew2,not a time\n"), create_patients=True)
    assert (result.accepted, result.quarantined) == (0, 1)
    assert rows(db, "SELECT patient_id FROM patients") == [("new1",)]


def test_one_person_diary_with_year_month_day_and_renames(db, write, do_import):
    text = ("Year,Month,Day,Headache,Severity,Medication,Pressure (hPa),Location\n"
            "2020,12,20,0,0,0,1002,Trondheim\n2020,12,21,1,3,1,987,Trondheim\n")
    result = do_import("diary", write("owm.csv", text), patient="me", create_patients=True,
                       renames={"Severity": "headache_intensity", "Medication": "took_medication"},
                       skips={"Location"})
    assert (result.accepted, result.quarantined) == (2, 0)
    got = rows(db, "SELECT patient_id, date, headache, headache_intensity, custom FROM diary ORDER BY date")
    assert got[1][:4] == ("me", "2020-12-21", 1, 3.0)
    assert json.loads(got[1][4]) == {"pressure_hpa": 987.0, "took_medication": 1.0}


def test_forget_leaves_no_row_of_the_patient(patients, write, do_import, tmp_path):
    do_import("diary", write("d.csv", HEADER + "p1,2026-03-01,3,,,,,\np2,2026-03-01,4,,,,,\np1,2026-03-02,99,,,,,\n"))
    do_import("attacks", write("a.csv", "patient_id,start\np1,2026-03-01T10:00\n"))
    do_import("treatments", write("t.csv", "patient_id,date,treatment\np1,2026-03-01,botox\n"))
    (tmp_path / "reports" / "p1").mkdir(parents=True)
    (tmp_path / "reports" / "p1" / "summary.md").write_text("x")
    forget(patients, "p1", reports_dir=tmp_path / "reports")
    for table, column in storage.PATIENT_TABLES:
        if table in patients.table_names():
            n = patients.execute(f'SELECT count(*) FROM "{table}" WHERE "{column}" = ?', ("p1",)).fetchone()[0]
            assert n == 0, table
    assert rows(patients, "SELECT patient_id FROM diary") == [("p2",)]
    assert not (tmp_path / "reports" / "p1").exists()
    with pytest.raises(UnknownPatient):
        forget(patients, "p1")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.csv", None, "no such file"),
        ("empty.csv", b"", "is empty"),
        ("blank.csv", b"\n \n", "is empty"),
        ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file"),
        ("latin1.csv", "patient_id,date,notes\np1,2026-03-01,Kopfschmerz \xe4\n".encode("latin-1"),
         "is not UTF-8 text (first bad byte on line 2)"),
        ("weird.txt", b"patient_id,date\n", "cannot tell the format"),
    ],
)
def test_unreadable_files_raise_one_clear_error(patients, tmp_path, do_import, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError, match=re.escape(message)):
        do_import("diary", path)


def test_a_folder_is_not_a_file(patients, tmp_path, do_import):
    with pytest.raises(InputFileError, match="is a folder"):
        do_import("diary", tmp_path)


def test_utf8_bom_and_utf16_are_read(patients, write, do_import):
    text = "patient_id,date,stress\np1,2026-03-01,3\n"
    assert do_import("diary", write("bom.csv", "\ufeff" + text)).accepted == 1
    assert do_import("diary", write("u16.csv", text.encode("utf-16"))).unchanged == 1


_cell = st.one_of(st.just(""), st.integers(-3, 14).map(str), st.sampled_from(["yes", "no", "x", "2026-13-01"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["p1", "p2", "p9", "bad id"]),
                          st.sampled_from(["2026-03-01", "2026-03-02", "2026-02-30", "2027-01-01"]),
                          _cell, _cell), min_size=1, max_size=12))
def test_quarantined_rows_never_change_stored_data(tmp_path_factory, rows_in):
    """Property: after any import, every stored row equals the last *valid* row for its key in the file,
    and rows stored before are untouched unless a valid row replaced them."""
    db = storage.memory_db()
    folder = tmp_path_factory.mktemp("q")
    options = ImportOptions(today=TODAY)
    (folder / "p.csv").write_text("patient_id,timezone\np1,UTC\np2,UTC\n")
    import_file(db, "patients", folder / "p.csv", options)
    base = folder / "base.csv"
    base.write_text("patient_id,date,stress,menstruation\np1,2026-03-01,5,no\np2,2026-03-02,6,yes\n")
    import_file(db, "diary", base, options)
    before = {(r[0], r[1]): (r[2], r[3]) for r in db.execute("SELECT patient_id, date, stress, menstruation FROM diary")}
    text = "patient_id,date,stress,menstruation\n" + "".join(f"{p},{d},{s},{m}\n" for p, d, s, m in rows_in)
    (folder / "new.csv").write_text(text)
    result = import_file(db, "diary", folder / "new.csv", options)

    expected = dict(before)
    valid_count = 0
    for p, d, s, m in rows_in:
        ok_s = s == "" or (s.lstrip("-").isdigit() and 0 <= int(s) <= 10)
        ok_m = m in ("", "yes", "no", "0", "1")
        ok = p in ("p1", "p2") and d in ("2026-03-01", "2026-03-02") and ok_s and ok_m
        if ok:
            valid_count += 1
            expected[(p, d)] = (float(s) if s else None, {"yes": 1, "no": 0, "1": 1, "0": 0, "": None}[m])
    after = {(r[0], r[1]): (r[2], r[3]) for r in db.execute("SELECT patient_id, date, stress, menstruation FROM diary")}
    assert after == expected
    assert result.quarantined == len(rows_in) - valid_count
    assert result.accepted + result.replaced + result.unchanged == valid_count
