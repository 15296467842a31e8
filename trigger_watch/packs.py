"""Packed inputs: each patient's diary rows and sleep periods also kept as one compressed Arrow buffer.

The nightly cycle reads every patient's diary and sleep. Through ``sqlite3`` that costs ~170 ns a row
and ~100 ns a value, turned into Python objects one by one: three quarters of reading a block of
patients. A pack is the same rows as Arrow columns (what :func:`storage.arrow_rows` makes of them), in
the order the cycle's query returns them, written as an Arrow IPC stream and compressed with zstd
(:func:`storage.compress`); a block's packs are read, unpacked and joined in a tenth of the time.

A pack is a copy, never the record: the rows stay in their tables and every other reader uses them.

- **Never stale.** Triggers on ``diary`` and ``sleep_periods`` delete a patient's pack in the same
  statement that inserts, changes or deletes any of their rows, whatever writes it (an import, ``forget``,
  a migration, a hand-run ``sqlite3``). A reader uses only packs that exist.
- **Made again where the rows change.** :func:`refresh` packs the patients without a pack; an import calls
  it for the patients it changed, in the transaction that records the import, and the migration that
  brings the packs packs everyone.
- **Read with a fallback.** :func:`read` takes the packs there are and reads the rows of the patients
  without one through the same query; the result is the same either way (``tests/test_packs.py``).
- **Layout.** Each pack records the layout it was made for (its query and column types); a pack of
  another layout counts as missing, so a change of the query in the code never reads an old pack.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import sqlite_utils
from pyarrow import ipc

from trigger_watch import storage

#: Bumped when the packing itself changes (the encoding, the compression): 1 zlib, 2 zstd.
FORMAT = 2
#: Patients packed per query in :func:`refresh`.
BATCH = 500
#: The cut of a query that wants every row (the stored dates are ``YYYY-MM-DD``).
EVERYTHING = "9999-12-31"

#: What drops a patient's pack of ``{table}``: any insert, change or delete of their rows in it.
_TRIGGER = ("CREATE TRIGGER input_packs_{table}_{event} AFTER {EVENT} ON {table} BEGIN "
            "DELETE FROM input_packs WHERE patient_id IN ({rows}) AND source = '{table}'; END")
_TRIGGERS = [_TRIGGER.format(table=table, event=event.lower(), EVENT=event, rows=rows)
             for table in ("diary", "sleep_periods")
             for event, rows in (("INSERT", "NEW.patient_id"), ("UPDATE", "OLD.patient_id, NEW.patient_id"),
                                 ("DELETE", "OLD.patient_id"))]


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE input_packs (
        patient_id TEXT NOT NULL,
        source TEXT NOT NULL,
        layout TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (patient_id, source)
    )""")
    for sql in _TRIGGERS:
        conn.execute(sql)
    _refresh(conn, None)


storage.register_migration(60, "packed copies of each patient's diary and sleep periods", _migrate)
# the packs made again in zstd (FORMAT 2): a pack of the old format counts as missing, which would read
# everyone row by row until their rows change
storage.register_migration(61, "input packs compressed with zstd", lambda conn: _refresh(conn, None))
storage.register_patient_table("input_packs")


# ----------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """The rows one table's packs hold: ``sql`` with two parameters, the patients (a JSON array) and the
    last date (compared with result column ``cut``), ordered by patient first."""

    table: str
    sql: str
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    cut: str

    @functools.cached_property
    def layout(self) -> str:
        text = repr((FORMAT, self.sql, self.names, self.kinds, self.cut))
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def diary_source(conn: sqlite3.Connection) -> Source:
    """``features.load_inputs``'s diary rows."""
    from trigger_watch.features import DIARY_COLUMNS

    cols = ", ".join(f'"{c}"' for c in DIARY_COLUMNS)
    return Source("diary", f"SELECT {cols} FROM diary WHERE {storage.patients_in()} AND date <= ? "
                  "ORDER BY patient_id, date",
                  tuple(DIARY_COLUMNS), tuple(storage.column_kinds(conn, "diary", DIARY_COLUMNS)), "date")


def sleep_source(conn: sqlite3.Connection) -> Source:
    """``sleep.nightly``'s periods (``sleep._read_periods``), with their local date to cut on."""
    from trigger_watch import sleep

    names = ("patient_id", "source", *sleep._NUMERIC, "local_date")
    kinds = ("TEXT", "TEXT", *["REAL"] * len(sleep._NUMERIC), "TEXT")
    return Source("sleep_periods", sleep.period_sql(", s.local_date") + f" WHERE {storage.patients_in('s.patient_id')} AND "
                  "s.local_date <= ? ORDER BY s.patient_id, s.local_date, s.rowid", names, kinds, "local_date")


_SOURCES = {"diary": diary_source, "sleep_periods": sleep_source}


def available(conn: sqlite3.Connection) -> bool:
    """Whether this database has packs (a database not yet migrated to them is read row by row)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'input_packs'"
                        ).fetchone() is not None


# ----------------------------------------------------------------------------------------- packing

def _pack(arrays: pa.StructArray, names: Sequence[str]) -> bytes:
    batch = pa.RecordBatch.from_arrays(arrays.flatten(), names=list(names))
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    # level 3: a pack is made when its rows change and read every night (7.3 KB, unpacked in 0.06 ms; zstd's
    # level 1 8.5 KB in 0.07 ms, zlib's 8.4 KB in 0.12 ms: a year of one patient's diary, measured)
    return storage.compress(sink.getvalue(), 3)


def _unpack(data: bytes) -> pa.Table:
    return ipc.open_stream(storage.decompress(data)).read_all()


def _table(arrays: pa.StructArray, names: Sequence[str]) -> pa.Table:
    return pa.Table.from_arrays(arrays.flatten(), names=list(names))


def refresh(db: sqlite_utils.Database, patient_ids: Iterable[str] | None = None) -> int:
    """Pack the patients of ``patient_ids`` (everyone in ``patients`` when None) who have no current pack,
    in one write transaction (joined when one is open), so that the rows packed are the rows stored.
    Returns the number of packs written. A patient whose rows :func:`storage.arrow_rows` refuses gets
    none, and is read row by row."""
    if not available(db.conn):
        return 0
    with storage.transaction(db):
        return _refresh(db.conn, patient_ids)


def _refresh(conn: sqlite3.Connection, patient_ids: Iterable[str] | None) -> int:
    if patient_ids is None:
        ids = [r[0] for r in conn.execute("SELECT patient_id FROM patients ORDER BY patient_id")]
    else:
        ids = sorted({str(p) for p in patient_ids})
    written = 0
    for make in _SOURCES.values():
        source = make(conn)
        have = set()
        for part in _batched(ids, 10000):
            have.update(r[0] for r in conn.execute(
                f"SELECT patient_id FROM input_packs WHERE source = ? AND layout = ? AND {storage.patients_in()}",
                (source.table, source.layout, json.dumps(list(part)))))
        todo = [p for p in ids if p not in have]
        for part in _batched(todo, BATCH):
            rows = conn.execute(source.sql, (json.dumps(part), EVERYTHING)).fetchall()
            by_patient = {p: list(g) for p, g in itertools.groupby(rows, key=operator.itemgetter(0))}
            packs = []
            for p in part:
                arrays = storage.arrow_rows(by_patient.get(p, []), list(source.kinds))
                if arrays is not None:
                    packs.append((p, source.table, source.layout, _pack(arrays, source.names)))
            conn.executemany("INSERT OR REPLACE INTO input_packs (patient_id, source, layout, data) "
                             "VALUES (?, ?, ?, ?)", packs)
            written += len(packs)
    return written


def _batched(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


# ----------------------------------------------------------------------------------------- reading

def read(conn: sqlite3.Connection, table: str, patient_ids: Iterable[str], cut: str) -> pa.Table | None:
    """The rows of ``table``'s source (:func:`diary_source`, :func:`sleep_source`) of these patients up to
    ``cut``, as an Arrow table of its columns in the query's order: from the packs, and from the table for
    the patients without one. None when the database has no packs or a patient's rows are not of their
    columns' types (the caller reads them row by row)."""
    if not available(conn):
        return None
    return _read(conn, _SOURCES[table](conn), patient_ids, cut)


def _read(conn: sqlite3.Connection, source: Source, patient_ids: Iterable[str], cut: str) -> pa.Table | None:
    ids = sorted({str(p) for p in patient_ids})
    who = json.dumps(ids)
    with storage.collector_paused():
        found = conn.execute(
            f"SELECT patient_id, data FROM input_packs WHERE source = ? AND layout = ? AND {storage.patients_in()}"
            " ORDER BY patient_id", (source.table, source.layout, who)).fetchall()
        tables = [_unpack(data) for _, data in found]
        missing = len(found) < len(ids)
        if missing:
            have = {p for p, _ in found}
            rows = conn.execute(source.sql, (json.dumps([p for p in ids if p not in have]), cut)).fetchall()
            arrays = storage.arrow_rows(rows, list(source.kinds))
            if arrays is None:
                return None
            tables.append(_table(arrays, source.names))
    if not tables:
        return _table(pa.array([], type=storage.arrow_struct(list(source.kinds))), source.names)
    out = pa.concat_tables(tables)
    out = out.filter(pc.less_equal(out[source.cut], cut))
    if missing and found:  # the unpacked patients' rows go back in patient order (a stable sort)
        out = out.take(pc.sort_indices(out, [(source.names[0], "ascending")]))
    return out.combine_chunks()


def read_frame(conn: sqlite3.Connection, table: str, patient_ids: Iterable[str], cut: str):
    """:func:`read` as the DataFrame ``storage.read_table`` gives for the same query (columns, dtypes,
    values, row order); None when :func:`read` gives None."""
    import pandas as pd

    if not available(conn):
        return None
    source = _SOURCES[table](conn)
    rows = _read(conn, source, patient_ids, cut)
    if rows is None:
        return None
    if not rows.num_rows:
        return pd.DataFrame(columns=list(rows.column_names))
    arrays = storage.frame_columns([c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()
                                    for c in rows.columns], list(source.kinds))
    return None if arrays is None else storage.frame_of(arrays, rows.column_names)
