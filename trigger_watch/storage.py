"""The SQLite store: opening, versioned migrations, transactions and set-based upserts.

One file, opened through sqlite-utils over a connection we configure ourselves: WAL journal so the daemon
and a command can read and write side by side, and a busy timeout so a second writer waits instead of
failing. Every multi-row write runs inside :func:`transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled
back whole on any error), so a crash or a kill never leaves half a write behind.

Conventions of the schema (the contract between modules):
- dates are ``YYYY-MM-DD`` text in the patient's local calendar; instants are UTC text
  ``YYYY-MM-DDTHH:MM:SSZ``;
- unknown is ``NULL``, never 0; booleans are 0/1 integers;
- tag lists (foods, symptoms, medication) are normalised snake-case tags joined by ``;``
  (``red_wine;cheese``); attack medications keep an optional dose (``sumatriptan:50``);
- custom diary factors live in ``diary.custom`` as a JSON object ``{"factor": number}``;
- ``changes`` holds, per patient, when its stored inputs last changed (the daemon re-analyses those).

Migrations are numbered; a database records which ones it has in ``schema_migrations`` and is upgraded
in place, never recreated. Module owners append migrations to :data:`MIGRATIONS`.
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlite_utils
import zstandard

from trigger_watch.errors import StorageError


def utcnow_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------- schema

_V1 = [
    """CREATE TABLE patients (
        patient_id TEXT PRIMARY KEY,
        timezone TEXT,
        latitude REAL,
        longitude REAL,
        sex TEXT,
        birth_year INTEGER,
        clinician_id TEXT,
        source TEXT,
        imported_at TEXT
    )""",
    """CREATE TABLE diary (
        patient_id TEXT NOT NULL,
        date TEXT NOT NULL,
        stress REAL, alcohol_units REAL, caffeine_mg REAL, menstruation INTEGER, skipped_meal INTEGER,
        exercise_minutes REAL, water_l REAL, screen_hours REAL, sleep_hours REAL, sleep_quality REAL,
        foods TEXT, symptoms TEXT, medication TEXT,
        headache INTEGER, headache_intensity REAL,
        notes TEXT,
        custom TEXT,
        source TEXT, imported_at TEXT,
        PRIMARY KEY (patient_id, date)
    )""",
    """CREATE TABLE attacks (
        patient_id TEXT NOT NULL,
        start TEXT NOT NULL,
        "end" TEXT,
        start_local TEXT,
        end_local TEXT,
        intensity REAL,
        kind TEXT,
        aura INTEGER,
        symptoms TEXT,
        medications TEXT,
        relief REAL,
        source TEXT, imported_at TEXT,
        PRIMARY KEY (patient_id, start)
    )""",
    """CREATE TABLE treatments (
        patient_id TEXT NOT NULL,
        date TEXT NOT NULL,
        treatment TEXT NOT NULL,
        dose_mg REAL,
        route TEXT,
        notes TEXT,
        source TEXT, imported_at TEXT,
        PRIMARY KEY (patient_id, date, treatment)
    )""",
    """CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        file TEXT NOT NULL,
        line INTEGER,
        reason TEXT NOT NULL,
        raw TEXT,
        patient_id TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (kind, file, line, raw)
    )""",
    """CREATE TABLE imports (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        file TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        accepted INTEGER, replaced INTEGER, unchanged INTEGER, quarantined INTEGER
    )""",
    """CREATE TABLE changes (
        patient_id TEXT PRIMARY KEY,
        changed_at TEXT NOT NULL
    )""",
    "CREATE INDEX attacks_local ON attacks (patient_id, start_local)",
    "CREATE INDEX treatments_patient ON treatments (patient_id)",
]

# v2: the clinician filter of the ranking reads patients by clinician.
_V2 = ["CREATE INDEX patients_clinician ON patients (clinician_id)"]


Migration = tuple[int, str, Sequence[str] | Callable[[sqlite3.Connection], None]]

#: (version, name, SQL statements or a function of the connection). Applied in version order.
#: Blocks: 1-9 core, 10-19 weather, 20-29 sleep, 30-39 models, 40-49 reports, 50-59 daemon.
# v3: a change counter per patient, bumped in the same transaction as the data it marks, so a cycle can
# tell exactly which changes it has seen (timestamps cannot: two imports can share a second).
_V3 = ["ALTER TABLE changes ADD COLUMN version INTEGER NOT NULL DEFAULT 1"]
# v4: the diary's groups of tags read in index order. Every night features.cohort_columns counts the days of
# each (foods, symptoms, custom or not) group over the whole cohort's diary: through this index a scan in
# group order, not every row sorted into a temporary B-tree (10,000 patients x 365 days, one thread: 0.6-0.8
# s against ~7 s, on a machine at half speed). It costs ~5 % more file (90 MB at that size).
_V4 = ["CREATE INDEX diary_tag_groups ON diary (foods, symptoms, custom IS NOT NULL, date)"]


MIGRATIONS: list[Migration] = [
    (1, "core tables: patients, diary, attacks, treatments, rejects, imports, changes", _V1),
    (2, "index patients by clinician", _V2),
    (3, "change counter per patient", _V3),
    (4, "index of the diary's tag groups", _V4),
    (62, "rejects: the row's key, and when a later import stored a good row for it", [
        "ALTER TABLE rejects ADD COLUMN row_key TEXT",
        "ALTER TABLE rejects ADD COLUMN resolved_at TEXT",
        "ALTER TABLE rejects ADD COLUMN resolved_by TEXT",
        "CREATE INDEX rejects_open ON rejects (kind, row_key) WHERE resolved_at IS NULL",
    ]),
    (63, "the database's own id, which its reports folder is marked with", [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('database_id', lower(hex(randomblob(8))))",
    ]),
]


def database_id(db: sqlite_utils.Database) -> str:
    """This database's own id, made once when it was created or migrated (a copy of the file keeps it):
    what its reports folder is marked with (``reports.claim_folder``)."""
    return db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()[0]


def register_migration(version: int, name: str, steps) -> None:
    """Add a migration (called at import time by the module that owns the tables)."""
    if any(v == version for v, _, _ in MIGRATIONS):
        if any(v == version and n == name for v, n, _ in MIGRATIONS):
            return
        raise StorageError(f"migration {version} is registered twice")
    MIGRATIONS.append((version, name, steps))
    MIGRATIONS.sort(key=lambda m: m[0])


def _load_all_migrations() -> None:
    # Modules that own tables register their migrations when imported.
    import importlib

    for mod in ("weather", "sleep", "models", "reports", "daemon", "packs"):
        try:
            importlib.import_module(f"trigger_watch.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"trigger_watch.{mod}":
                raise


# ----------------------------------------------------------------------------------------- opening

def connect(path: str | Path, *, busy_timeout_ms: int = 30000, migrate: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) the database at ``path``, in WAL mode, migrated to the current schema."""
    path = Path(path)
    if str(path) != ":memory:":
        if path.exists() and path.is_dir():
            raise StorageError(f"database path {str(path)!r} is a directory, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the folder for the database {str(path)!r}: {exc.strerror}") from None
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate:
            migrate_db(db)
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot open the database {str(path)!r}: {exc}") from None
    return db


def memory_db() -> sqlite_utils.Database:
    """A fresh, migrated in-memory database (tests)."""
    return connect(":memory:")


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """One write transaction; joins the outer one when nested. Rolled back whole on any exception."""
    conn = db.conn
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()


def schema_version(db: sqlite_utils.Database) -> int:
    if "schema_migrations" not in db.table_names():
        return 0
    row = db.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return row[0] or 0


def applied_versions(db: sqlite_utils.Database) -> set[int]:
    if "schema_migrations" not in db.table_names():
        return set()
    return {r[0] for r in db.execute("SELECT version FROM schema_migrations")}


def migrate_db(db: sqlite_utils.Database, *, up_to: int | None = None) -> list[int]:
    """Apply every migration not yet applied (each in its own transaction). Returns the versions applied."""
    _load_all_migrations()
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)"
    )
    conn.commit()
    done = applied_versions(db)
    applied = []
    for version, name, steps in MIGRATIONS:
        if version in done or (up_to is not None and version > up_to):
            continue
        with transaction(db):
            # Another process may have migrated while we waited for the write lock.
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                continue
            if callable(steps):
                steps(conn)
            else:
                for sql in steps:
                    conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, utcnow_text()),
            )
        applied.append(version)
    return applied


# ------------------------------------------------------------------------------ compressed values

# zstd: 2-4 times as fast as zlib at the same or a better ratio, both ways (the report history's JSON and the
# packed inputs, both on the nightly cycle's path). One context per thread, reused: making one costs ~10 us.
_CODEC = threading.local()


def compress(data, level: int = 1) -> bytes:
    """``data`` (bytes, or any object with the buffer protocol) as one zstd frame (:func:`decompress`).
    A higher ``level`` packs smaller (and unpacks a little faster) for more time spent packing."""
    compressors = getattr(_CODEC, "compressors", None)
    if compressors is None:
        compressors = _CODEC.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor.compress(data)


def decompress(frame) -> bytes:
    """The bytes :func:`compress` made ``frame`` of; :class:`StorageError` when it is not a whole frame."""
    decompressor = getattr(_CODEC, "decompressor", None)
    if decompressor is None:
        decompressor = _CODEC.decompressor = zstandard.ZstdDecompressor()
    try:
        return decompressor.decompress(frame)
    except zstandard.ZstdError as exc:
        raise StorageError(f"a compressed value in the database is damaged ({exc})") from None


# ----------------------------------------------------------------------------------------- reading

@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection inside. Reading a large result makes one tuple per row, which the collector
    tracks: it ran its passes over them again and again while they came in, and once more after. Freed
    inside, they are never looked at."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@contextmanager
def objects_settled() -> Iterator[Callable[[], None]]:
    """Gives ``settle()``, which takes every object alive now out of the cyclic collector's sight
    (``gc.freeze``) until the block ends (``gc.unfreeze``: they are looked at again from then on).

    For a long job that builds a large structure and keeps it to the end (the nightly cycle's blocks of
    patients, then their results): each full collection would look through all of it again to find nothing
    (10,000 patients: six full collections took 2.1 s of the daemon's time). Objects are still freed when
    their last reference goes; only garbage in reference cycles among the settled objects waits for the end.
    """
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def read_table(conn: sqlite3.Connection, table: str, columns: Sequence[str], where: str = "1 = 1",
               params: Sequence = ()) -> pd.DataFrame:
    """``pd.read_sql_query("SELECT <columns> FROM <table> WHERE <where>", conn, params=params)``: the same
    frame (columns, dtypes, values, row order), its columns built in about half the time.

    pandas infers each column's type value by value from Python objects. Here the column's affinity in the
    schema says which types SQLite can hand back for it (https://sqlite.org/datatype3.html), and pyarrow
    converts all rows at once to those types, which map one to one onto what pandas infers:

    - REAL: floats (SQLite turns integers into floats) -> float64, NaN for NULL;
    - INTEGER, NUMERIC: integers (SQLite turns whole floats in int64's range into integers) and the floats
      left -> int64 when all are whole and none is NULL, else float64;
    - TEXT: text (SQLite turns numbers into text) -> pandas' text dtype;
    - NULL in every row -> an object column of None; no rows -> pandas' frame of object columns.

    What the affinity does not rule out (a blob; text that is not a number in a numeric column) pyarrow
    refuses or, for blobs in a text column, is looked for; a column without affinity is not converted at
    all. Then pandas reads the query itself: rare, and exact by definition.
    """
    sql = f"SELECT {', '.join(_quoted(c) for c in columns)} FROM {table} WHERE {where}"
    kinds = column_kinds(conn, table, columns)
    with collector_paused():
        if "BLOB" in kinds:
            return pd.read_sql_query(sql, conn, params=params)
        cur = conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        if not rows:
            return pd.DataFrame(columns=names)
        arrays = _typed_columns(rows, kinds)
        del rows
        if arrays is None:
            return pd.read_sql_query(sql, conn, params=params)
    return frame_of(arrays, names)


def frame_of(arrays: list, names: Sequence[str]) -> pd.DataFrame:
    """A frame of these columns under these names (which may repeat, as a query's may)."""
    frame = pd.DataFrame(dict(enumerate(arrays)))
    frame.columns = list(names)
    return frame


def column_kinds(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> list[str]:
    """The affinity of each of these columns of ``table`` (BLOB for a column it does not have)."""
    declared = {name: kind for _, name, kind, *_ in conn.execute(f"PRAGMA table_info({_quoted(table)})")}
    return [_affinity(declared[c]) if c in declared else "BLOB" for c in columns]


def patients_in(column: str = "patient_id") -> str:
    """A WHERE condition keeping the rows whose ``column`` is one of the patients given as one parameter, a
    JSON array: any number of ids, through the patient index, without thousands of placeholders or a
    temporary table (whose filling would open a write transaction on a connection that may only read)."""
    return f"{column} IN (SELECT value FROM json_each(?))"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _affinity(declared: str) -> str:
    """The affinity of a column of this declared type (the rules of datatype3.html, section 3.1)."""
    kind = declared.upper()
    if "INT" in kind:
        return "INTEGER"
    if "CHAR" in kind or "CLOB" in kind or "TEXT" in kind:
        return "TEXT"
    if "BLOB" in kind or not kind:
        return "BLOB"
    if "REAL" in kind or "FLOA" in kind or "DOUB" in kind:
        return "REAL"
    return "NUMERIC"


def _typed_columns(rows: list[tuple], kinds: list[str]) -> list | None:
    """The columns of :func:`read_table` from its rows; None when a value is not of its column's types."""
    converted = arrow_rows(rows, kinds)
    if converted is None:
        return None
    return frame_columns([converted.field(i) for i in range(len(kinds))], kinds)


def arrow_rows(rows: list[tuple], kinds: list[str]) -> pa.StructArray | None:
    """Rows read from SQLite as one Arrow struct array, field ``i`` the ``i``-th column: text for a TEXT
    affinity, float64 for the others (exactly: an integer a float cannot hold is refused). None when a
    value is not of its column's types (a blob, text that is not a number in a numeric column)."""
    text = [i for i, kind in enumerate(kinds) if kind == "TEXT"]
    if text and rows:
        pick = operator.itemgetter(*text)
        values = map(pick, rows) if len(text) == 1 else itertools.chain.from_iterable(map(pick, rows))
        if bytes in set(map(type, values)):
            return None
    try:  # a float64 field takes an integer only if the float holds it exactly
        return pa.array(rows, type=arrow_struct(kinds))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def arrow_struct(kinds: list[str]) -> pa.StructType:
    """The Arrow type of :func:`arrow_rows` for columns of these affinities."""
    return pa.struct([(str(i), pa.large_string() if kind == "TEXT" else pa.float64())
                      for i, kind in enumerate(kinds)])


def frame_columns(arrows: list[pa.Array], kinds: list[str]) -> list | None:
    """The columns of :func:`read_table` from the Arrow columns of :func:`arrow_rows` (of any number of
    its calls, concatenated): float64, or int64 for a whole INTEGER or NUMERIC column without NULL; pandas'
    text dtype; a column of None when every row is NULL. None when a whole column's values are beyond
    int64's exact range."""
    arrays = []
    for arrow, kind in zip(arrows, kinds):
        n = len(arrow)
        if arrow.null_count == n:
            arrays.append(np.full(n, None, dtype=object))
        elif kind == "TEXT":
            dtype = _text_dtype()
            arrays.append(arrow.to_numpy(zero_copy_only=False) if isinstance(dtype, np.dtype)
                          else pd.array(arrow, dtype=dtype))
        else:
            values = arrow.to_numpy(zero_copy_only=False)
            if kind != "REAL" and not arrow.null_count and (np.trunc(values) == values).all():
                if not (np.abs(values) < 2**53).all():
                    return None  # whole floats beyond int64, or integers beyond float64's exact range
                values = values.astype(np.int64)
            arrays.append(values)
    return arrays


@functools.cache
def _text_dtype():
    """The dtype ``pd.read_sql_query`` gives a text column: ``str`` from pandas 3 on, object before."""
    with closing(sqlite3.connect(":memory:")) as conn:
        return pd.read_sql_query("SELECT 'a' AS a", conn)["a"].dtype


# ----------------------------------------------------------------------------------------- writing

def columns_of(db: sqlite_utils.Database, table: str) -> list[str]:
    return [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]


def upsert_rows(
    db: sqlite_utils.Database,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence],
    key: Sequence[str],
    *,
    ignore_in_compare: Sequence[str] = ("source", "imported_at"),
) -> tuple[int, int, int, list[str]]:
    """Insert or replace rows by ``key``, set-based through a temporary staging table.

    Must run inside :func:`transaction`. Rows later in ``rows`` win over earlier ones with the same key.
    Returns ``(inserted, replaced, unchanged, changed_patient_ids)``: a row identical to the stored one
    (ignoring ``ignore_in_compare`` columns) is counted as unchanged and not written again.
    """
    conn = db.conn
    if not conn.in_transaction:
        raise StorageError("upsert_rows must run inside storage.transaction()")
    cols = list(columns)
    q = lambda c: f'"{c}"'  # noqa: E731
    stage = f"stage_{table}"
    conn.execute(f"DROP TABLE IF EXISTS temp.{stage}")
    # seq keeps file order so the last row for a key wins.
    conn.execute(f"CREATE TEMP TABLE {stage} (seq INTEGER PRIMARY KEY, {', '.join(q(c) for c in cols)})")
    placeholders = ", ".join("?" for _ in cols)
    conn.executemany(f"INSERT INTO temp.{stage} ({', '.join(q(c) for c in cols)}) VALUES ({placeholders})", rows)
    conn.execute(f"CREATE INDEX temp.{stage}_key ON {stage} ({', '.join(q(k) for k in key)}, seq)")
    keyjoin = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in key)
    # Drop rows overridden by a later row with the same key in this batch.
    dupes = conn.execute(
        f"DELETE FROM temp.{stage} AS s WHERE EXISTS (SELECT 1 FROM temp.{stage} t WHERE {keyjoin} AND t.seq > s.seq)"
    ).rowcount
    compare = [c for c in cols if c not in key and c not in ignore_in_compare]
    same = " AND ".join([keyjoin] + [f"t.{q(c)} IS s.{q(c)}" for c in compare])
    unchanged = conn.execute(
        f'DELETE FROM temp.{stage} AS s WHERE EXISTS (SELECT 1 FROM "{table}" t WHERE {same})'
    ).rowcount
    replaced = conn.execute(
        f'SELECT count(*) FROM temp.{stage} s WHERE EXISTS (SELECT 1 FROM "{table}" t WHERE {keyjoin})'
    ).fetchone()[0]
    total = conn.execute(f"SELECT count(*) FROM temp.{stage}").fetchone()[0]
    changed: list[str] = []
    if "patient_id" in cols:
        changed = [r[0] for r in conn.execute(f"SELECT DISTINCT patient_id FROM temp.{stage}")]
    collist = ", ".join(q(c) for c in cols)
    conn.execute(f'INSERT OR REPLACE INTO "{table}" ({collist}) SELECT {collist} FROM temp.{stage} ORDER BY seq')
    conn.execute(f"DROP TABLE temp.{stage}")
    return total - replaced, replaced + dupes, unchanged, changed


def mark_changed(db: sqlite_utils.Database, patient_ids: Iterable[str], when: str | None = None) -> None:
    """Record that these patients' inputs changed (the daemon re-analyses them). Call it inside the
    transaction that writes the change, so the marker and the data become visible together."""
    when = when or utcnow_text()
    db.conn.executemany(
        "INSERT INTO changes (patient_id, changed_at, version) VALUES (?, ?, 1) "
        "ON CONFLICT(patient_id) DO UPDATE SET changed_at = excluded.changed_at, version = changes.version + 1",
        [(p, when) for p in patient_ids],
    )


#: Tables holding per-patient rows; ``forget`` empties each of them for a patient. Owners of new
#: per-patient tables add them here (table name, patient column).
PATIENT_TABLES: list[tuple[str, str]] = [
    ("diary", "patient_id"),
    ("attacks", "patient_id"),
    ("treatments", "patient_id"),
    ("changes", "patient_id"),
    ("rejects", "patient_id"),
    ("patients", "patient_id"),
]


def register_patient_table(table: str, column: str = "patient_id") -> None:
    if (table, column) not in PATIENT_TABLES:
        PATIENT_TABLES.insert(0, (table, column))


def patient_exists(db: sqlite_utils.Database, patient_id: str) -> bool:
    return db.execute("SELECT 1 FROM patients WHERE patient_id = ?", (patient_id,)).fetchone() is not None
