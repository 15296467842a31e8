import sqlite3

import pytest

from trigger_watch import storage


def test_new_database_is_wal_with_busy_timeout(tmp_path):
    db = storage.connect(tmp_path / "a.db", busy_timeout_ms=1234)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
    assert storage.schema_version(db) == max(v for v, _, _ in storage.MIGRATIONS)


def test_database_of_first_schema_is_upgraded_not_recreated(tmp_path):
    path = tmp_path / "old.db"
    old = storage.connect(path, migrate=False)
    storage.migrate_db(old, up_to=1)
    assert storage.schema_version(old) == 1
    old.conn.execute("INSERT INTO patients (patient_id, timezone) VALUES ('keep', 'UTC')")
    old.conn.execute("INSERT INTO diary (patient_id, date, stress) VALUES ('keep', '2026-01-01', 3)")
    old.conn.commit()
    old.conn.close()

    db = storage.connect(path)
    assert storage.applied_versions(db) == {v for v, _, _ in storage.MIGRATIONS}
    assert db.execute("SELECT stress FROM diary WHERE patient_id = 'keep'").fetchone()[0] == 3
    indexes = {r[1] for r in db.execute("PRAGMA index_list(patients)")}
    assert "patients_clinician" in indexes


def test_transaction_rolls_back_everything_on_error(db):
    try:
        with storage.transaction(db):
            db.conn.execute("INSERT INTO patients (patient_id) VALUES ('a')")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert db.execute("SELECT count(*) FROM patients").fetchone()[0] == 0


def test_upsert_counts_new_replaced_unchanged(db):
    cols = ["patient_id", "date", "stress", "source", "imported_at"]
    with storage.transaction(db):
        db.conn.execute("INSERT INTO patients (patient_id) VALUES ('a')")
        first = storage.upsert_rows(db, "diary", cols, [("a", "2026-01-01", 1, "f", "t1"),
                                                        ("a", "2026-01-02", 2, "f", "t1")], ["patient_id", "date"])
    assert first[:3] == (2, 0, 0)
    with storage.transaction(db):
        second = storage.upsert_rows(db, "diary", cols, [("a", "2026-01-01", 1, "f", "t2"),
                                                         ("a", "2026-01-02", 5, "f", "t2"),
                                                         ("a", "2026-01-02", 6, "f", "t2")], ["patient_id", "date"])
    # the 2nd day is given twice: the later row wins, both count as replacements
    assert second[:3] == (0, 2, 1)
    assert db.execute("SELECT stress FROM diary WHERE date = '2026-01-02'").fetchone()[0] == 6


def test_two_connections_share_the_file(tmp_path):
    a = storage.connect(tmp_path / "s.db")
    b = storage.connect(tmp_path / "s.db")
    with storage.transaction(a):
        a.conn.execute("INSERT INTO patients (patient_id) VALUES ('x')")
    assert b.execute("SELECT count(*) FROM patients").fetchone()[0] == 1
    assert isinstance(a.conn, sqlite3.Connection)


def test_settled_objects_are_out_of_the_collectors_sight_until_the_block_ends():
    """storage.objects_settled: what settle() took out of sight (gc.freeze) is not looked through, so
    garbage in a reference cycle among it stays until the block ends, and is collected after; an error
    inside ends the block too."""
    import gc
    import weakref

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with storage.objects_settled() as settle:
        node = Node()
        node.me = node  # freed by the cyclic collector only
        ref = weakref.ref(node)
        settle()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError), storage.objects_settled() as settle:
        settle()
        raise RuntimeError("mid-cycle")
    assert gc.get_freeze_count() == 0
