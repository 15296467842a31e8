"""Packed inputs (packs.py): the cycle reads the same inputs from the packs as from the rows, and a pack
never outlives a change of its patient's rows."""

from __future__ import annotations

from datetime import date, timedelta
from unittest import mock

import pandas as pd
import pytest

from trigger_watch import features, packs, simulate, storage
from trigger_watch.diary import forget
from trigger_watch.importing import ImportOptions, import_file

START = date(2026, 5, 1)
DAYS = 90
LAST = START + timedelta(days=DAYS - 1)
OPTIONS = ImportOptions(today=date(2026, 11, 20), create_patients=True)
KINDS = ("patients", "diary", "attacks", "sleep", "weather", "treatments")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    cohort = simulate.simulate_cohort(6, DAYS, 23, start=START)
    return simulate.write_files(cohort, tmp_path_factory.mktemp("input"))


@pytest.fixture
def packed(tmp_path, files):
    db = storage.connect(tmp_path / "tw.db")
    for kind in KINDS:
        import_file(db, kind, files[kind], OPTIONS)
    yield db
    db.conn.close()


def ids_of(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT patient_id FROM patients ORDER BY patient_id")]


def pack_count(db, patient_id: str | None = None) -> dict[str, int]:
    sql = "SELECT source, count(*) FROM input_packs" + (" WHERE patient_id = ?" if patient_id else "")
    return dict(db.execute(sql + " GROUP BY source", (patient_id,) if patient_id else ()).fetchall())


def load(db, ids, as_of, *, use_packs: bool):
    """load_inputs as the cycle calls it, with or without the packs; with them it must unpack some."""
    with mock.patch.object(packs, "_unpack", wraps=packs._unpack) as unpacked:
        if use_packs:
            out = features.load_inputs(db, ids, as_of, weather_through=as_of + timedelta(days=1))
        else:
            with mock.patch.object(packs, "available", return_value=False):
                out = features.load_inputs(db, ids, as_of, weather_through=as_of + timedelta(days=1))
    return out, unpacked.call_count


def assert_same_inputs(db, ids, as_of, *, unpacked: bool = True) -> features.PanelInputs:
    fast, n = load(db, ids, as_of, use_packs=True)
    slow, none = load(db, ids, as_of, use_packs=False)
    assert none == 0
    assert (n > 0) == unpacked
    for name in ("patients", "diary", "attacks", "treatments", "sleep_nightly", "weather_daily", "diary_custom"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=True, obj=name)
    return fast


def test_an_import_packs_every_patient_and_the_cycle_reads_the_same_inputs_from_them(packed):
    ids = ids_of(packed)
    assert pack_count(packed) == {"diary": 6, "sleep_periods": 6}
    for as_of in (LAST, START + timedelta(days=40), START - timedelta(days=5)):
        inputs = assert_same_inputs(packed, ids, as_of)
        if as_of == LAST:
            assert len(inputs.diary) > 300 and len(inputs.sleep_nightly) > 150  # 2 of the 6 wear a device
    # a block of some patients, one of them without a pack: that one is read from its rows, in its place
    packed.conn.execute("DELETE FROM input_packs WHERE patient_id = ?", (ids[2],))
    packed.conn.commit()
    inputs = assert_same_inputs(packed, ids[1:5], LAST)
    assert inputs.diary["patient_id"].is_monotonic_increasing and set(inputs.diary["patient_id"]) == set(ids[1:5])


def test_any_change_to_a_patients_rows_drops_their_pack_and_the_read_sees_it(packed):
    worn = [r[0] for r in packed.execute("SELECT DISTINCT patient_id FROM sleep_periods ORDER BY 1")]
    p, other = worn[0], next(i for i in ids_of(packed) if i != worn[0])  # p has sleep periods to change
    day = packed.execute("SELECT min(date) FROM diary WHERE patient_id = ? AND date > ?",
                         (p, (START + timedelta(days=10)).isoformat())).fetchone()[0]  # a day p logged
    changes = [
        ("UPDATE diary SET stress = 9.5 WHERE patient_id = ? AND date = ?", (p, day), "diary"),
        ("DELETE FROM diary WHERE patient_id = ? AND date = ?", (p, day), "diary"),
        ("INSERT INTO diary (patient_id, date, stress) VALUES (?, '2026-04-20', 1)", (p,), "diary"),
        ("DELETE FROM sleep_periods WHERE rowid = (SELECT min(rowid) FROM sleep_periods WHERE patient_id = ?)",
         (p,), "sleep_periods"),
        ("UPDATE sleep_periods SET minutes_asleep = 33 WHERE patient_id = ?", (p,), "sleep_periods"),
    ]
    for sql, params, source in changes:
        packs.refresh(packed, [p])
        assert pack_count(packed, p) == {"diary": 1, "sleep_periods": 1}
        packed.conn.execute(sql, params)
        packed.conn.commit()
        assert source not in pack_count(packed, p), sql
        assert pack_count(packed, other) == {"diary": 1, "sleep_periods": 1}
        assert_same_inputs(packed, [p, other], LAST)
    diary = load(packed, [p], LAST, use_packs=True)[0].diary
    assert diary["date"].iloc[0] == "2026-04-20" and day not in set(diary["date"])


def test_an_import_packs_the_patients_it_changed_again(packed, tmp_path):
    p = ids_of(packed)[0]
    new = tmp_path / "late.csv"
    new.write_text(f"patient_id,date,stress,caffeine_mg\n{p},{(LAST + timedelta(days=1)).isoformat()},7,321\n")
    import_file(packed, "diary", new, OPTIONS)
    assert pack_count(packed, p) == {"diary": 1, "sleep_periods": 1}
    rows = packs.read(packed.conn, "diary", [p], (LAST + timedelta(days=1)).isoformat())
    assert rows.num_rows > 0 and rows["caffeine_mg"][-1].as_py() == 321.0
    assert_same_inputs(packed, ids_of(packed), LAST + timedelta(days=1))


def test_a_pack_of_another_layout_is_not_read_and_is_made_again(packed):
    worn = [r[0] for r in packed.execute("SELECT DISTINCT patient_id FROM sleep_periods ORDER BY 1")]
    p, other = worn[0], next(i for i in ids_of(packed) if i != worn[0])  # p has sleep periods to change
    # p's pack replaced by the other patient's rows under an old layout: read, it would show
    data = packed.execute("SELECT data FROM input_packs WHERE patient_id = ? AND source = 'diary'",
                          (other,)).fetchone()[0]
    packed.conn.execute("UPDATE input_packs SET layout = 'old', data = ? WHERE patient_id = ? AND "
                        "source = 'diary'", (data, p))
    packed.conn.commit()
    inputs = assert_same_inputs(packed, [p], LAST)
    assert set(inputs.diary["patient_id"]) == {p}
    assert packs.refresh(packed, [p]) == 1
    assert packed.execute("SELECT layout FROM input_packs WHERE patient_id = ? AND source = 'diary'",
                          (p,)).fetchone()[0] == packs.diary_source(packed.conn).layout


def test_rows_the_packs_cannot_hold_are_read_as_before(packed):
    """Text in a numeric column (SQLite keeps it): no pack for that patient, and the same frame as the
    row-by-row reading, which falls back to pandas for it."""
    p = ids_of(packed)[0]
    packed.conn.execute("UPDATE diary SET stress = 'high' WHERE patient_id = ? AND date = ?",
                        (p, START.isoformat()))
    packed.conn.commit()
    assert packs.refresh(packed, [p]) == 0
    assert "diary" not in pack_count(packed, p)
    inputs = assert_same_inputs(packed, ids_of(packed)[:3], LAST)
    assert "high" in set(inputs.diary["stress"])


def migrate_but(db, *versions: int) -> None:
    """Every migration except ``versions``: a database from before them, with the tables today's importers
    write (the rejects' columns of migration 62)."""
    with mock.patch.object(storage, "MIGRATIONS", [m for m in storage.MIGRATIONS if m[0] not in versions]):
        storage.migrate_db(db)


def test_the_migration_packs_a_database_that_had_no_packs(tmp_path, files):
    db = storage.connect(tmp_path / "old.db", migrate=False)
    migrate_but(db, 60, 61)
    for kind in KINDS:
        import_file(db, kind, files[kind], OPTIONS)
    assert not packs.available(db.conn)
    assert_same_inputs(db, ids_of(db), LAST, unpacked=False)  # read row by row, as before
    storage.migrate_db(db)
    assert pack_count(db) == {"diary": 6, "sleep_periods": 6}
    assert_same_inputs(db, ids_of(db), LAST)
    db.conn.close()


def test_packs_of_an_older_format_are_made_again_by_the_migration_that_changed_it(tmp_path, files):
    """Packs made by the first format (zlib) are of another layout, which the cycle would not read (everyone
    row by row until their rows change): migration 61 packs everyone again."""
    import zlib

    db = storage.connect(tmp_path / "old.db", migrate=False)
    with mock.patch.object(packs, "FORMAT", 1), \
            mock.patch.object(storage, "compress", lambda data, level=1: zlib.compress(bytes(data), 1)):
        migrate_but(db, 61)
        for kind in KINDS:
            import_file(db, kind, files[kind], OPTIONS)
    old = dict(db.execute("SELECT patient_id || source, layout FROM input_packs").fetchall())
    assert len(old) == 12
    assert_same_inputs(db, ids_of(db), LAST, unpacked=False)  # none of them is read
    assert storage.migrate_db(db) == [61]
    new = dict(db.execute("SELECT patient_id || source, layout FROM input_packs").fetchall())
    assert new.keys() == old.keys() and not set(new.values()) & set(old.values())
    assert_same_inputs(db, ids_of(db), LAST)
    db.conn.close()


def test_forgetting_a_patient_removes_their_packs(packed):
    p = ids_of(packed)[0]
    forget(packed, p)
    assert pack_count(packed, p) == {}
    assert pack_count(packed) == {"diary": 5, "sleep_periods": 5}
