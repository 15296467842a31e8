"""Reading import files and the machinery every importer shares.

A file is checked before anything is written (exists, is a file, not empty, not binary, decodable), then
streamed in batches of rows with their line numbers, so a file of millions of rows never sits in memory
whole. Each batch is validated column by column with vectorised pandas operations; a row that fails any
rule is quarantined with every reason found, the others are written. One file is one transaction: a crash
half-way leaves the database as it was before the import.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlite_utils

from trigger_watch import packs, storage
from trigger_watch.errors import InputFileError

FORMATS = ("csv", "json", "ndjson")
_EXT_FORMAT = {".csv": "csv", ".tsv": "csv", ".tab": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}
UNKNOWN_TOKENS = {"", "null", "none", "na", "n/a", "nan"}
PATIENT_ID_RE = r"[A-Za-z0-9_.\-]{1,64}"
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class ImportOptions:
    """What the user said about an import besides the file."""

    today: date
    patient: str | None = None
    create_patients: bool = False
    default_timezone: str = "UTC"
    renames: dict[str, str] = field(default_factory=dict)
    skips: set[str] = field(default_factory=set)
    batch_rows: int = 50000
    #: strptime format of date columns for files not in YYYY-MM-DD (e.g. "%m-%d-%Y")
    date_format: str | None = None
    #: the column names of a CSV file without a header row, in order (its first line is then a record)
    header: list[str] | None = None
    config: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: called as ``progress(rows_done)`` after each batch; None for silence
    progress: Callable[..., None] | None = None
    #: this moment (timezone-aware; the command line's): a diary or treatment date is in the future where it
    #: is after today in its patient's timezone, which is ahead of ``today`` east of the server. None (a
    #: fixed ``today``: the demo, the benchmarks, tests): after ``today``.
    now: datetime | None = None

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done)

    def zones(self, patient_ids: pd.Series, known: dict[str, str | None]) -> pd.Series:
        """Each row's patient's timezone: the stored patient's (``known``), else ``default_timezone``."""
        zones = patient_ids.map(lambda p: known.get(p) or self.default_timezone, na_action="ignore")
        return zones.fillna(self.default_timezone)

    def after_today(self, days: pd.Series, zones: pd.Series) -> tuple[np.ndarray, pd.Series]:
        """Which of ``days`` (ISO dates, None where unknown) are after today where their row's patient lives
        (``zones``), and each row's words for it: ``(today is D in ZONE)``, or ``(today is D)`` without ``now``."""
        if self.now is None:
            today = pd.Series(self.today.isoformat(), index=days.index, dtype=object)
            said = "(today is " + today + ")"
        else:
            from zoneinfo import ZoneInfo

            there = {z: self.now.astimezone(ZoneInfo(z)).date().isoformat() for z in zones.dropna().unique()}
            today = zones.map(there).astype(object)
            said = "(today is " + today + " in " + zones.astype(object) + ")"
        return (days.notna() & (days.fillna("") > today)).to_numpy(), said  # ISO dates sort as text


@dataclass
class ImportResult:
    kind: str
    file: str
    accepted: int = 0
    replaced: int = 0
    unchanged: int = 0
    quarantined: int = 0
    resolved: int = 0  # rejects of earlier imports whose key this import stored a good row for
    gone: int = 0  # rejects without a key, of an earlier import of this file, that it no longer repeats
    messages: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        out = [
            # cli.md names the counts: accepted, replaced, quarantined ("accepted": rows new to the database)
            f"{self.kind} from {self.file}: {self.accepted} accepted (new), {self.replaced} replaced, "
            f"{self.unchanged} unchanged, {self.quarantined} quarantined"
        ]
        if self.quarantined:
            out.append(f"  see the reasons with: trigger-watch rejects --kind {self.kind}")
        if self.resolved:
            out.append(f"  {self.resolved} row(s) quarantined by an earlier import now have a good row, and "
                       f"leave the rejects list (trigger-watch rejects --all shows them)")
        if self.gone:
            out.append(f"  {self.gone} row(s) quarantined by an earlier import of this file are not quarantined by "
                       f"this one, and leave the rejects list (trigger-watch rejects --all shows them)")
        out.extend(f"  note: {m}" for m in self.messages)
        return out


Importer = Callable[[sqlite_utils.Database, Path, str, ImportOptions], ImportResult]

#: kind -> importer. Core kinds are registered by ``diary``; sleep and weather register themselves.
IMPORTERS: dict[str, Importer] = {}
KINDS = ("patients", "diary", "attacks", "sleep", "treatments", "weather")


def get_importer(kind: str) -> Importer:
    if kind not in KINDS:
        raise InputFileError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind not in IMPORTERS:
        import importlib

        module = {"sleep": "sleep", "weather": "weather"}.get(kind, "diary")
        importlib.import_module(f"trigger_watch.{module}")
    if kind not in IMPORTERS:
        raise InputFileError(f"importing {kind} is not available in this version")
    return IMPORTERS[kind]


#: Kinds whose rejects have no row key (a sleep record or an hour of weather is not a row of a table with a
#: key of its own): the same file imported again resolves the rejects it no longer repeats. The other kinds'
#: rejects are resolved by a good row for their key, and those whose key could not be read (an unreadable
#: date) by the same file again, as these are.
BY_FILE = ("sleep", "weather")


def _resolve_by_file(db: sqlite_utils.Database, kind: str, path: Path) -> list[int]:
    """Mark the file's open rejects without a key (every one of a :data:`BY_FILE` kind) resolved by it
    before its import runs again; the rows it quarantines again are opened again by :func:`quarantine`, and
    the rest were fixed. In the import's transaction. Returns the ids marked."""
    keyless = "" if kind in BY_FILE else " AND row_key IS NULL"
    ids = [r[0] for r in db.execute("SELECT id FROM rejects WHERE kind = ? AND file = ? AND resolved_at IS NULL"
                                    + keyless, (kind, str(path)))]
    now = storage.utcnow_text()
    db.conn.executemany("UPDATE rejects SET resolved_at = ?, resolved_by = ? WHERE id = ?",
                        [(now, str(path), i) for i in ids])
    return ids


def _still_resolved(db: sqlite_utils.Database, ids: list[int]) -> int:
    """How many of the rejects :func:`_resolve_by_file` marked the import did not open again."""
    if not ids:
        return 0
    return db.execute("SELECT count(*) FROM rejects WHERE resolved_at IS NOT NULL AND id IN "
                      "(SELECT value FROM json_each(?))", (json.dumps(ids),)).fetchone()[0]


def import_file(db: sqlite_utils.Database, kind: str, path: str | Path, options: ImportOptions,
                fmt: str | None = None) -> ImportResult:
    """Import one file of ``kind``: the single entry point used by the CLI, the daemon and tests."""
    importer = get_importer(kind)
    path = Path(path)
    check_readable(path)
    started = storage.utcnow_text()
    try:
        with storage.transaction(db):
            pending = _resolve_by_file(db, kind, path)
            result = importer(db, path, fmt, options)
            result.gone = _still_resolved(db, pending)
    finally:
        close = getattr(options.progress, "close", None)
        if close:
            close()
    with storage.transaction(db):
        db.conn.execute(
            "INSERT INTO imports (kind, file, started_at, finished_at, accepted, replaced, unchanged, quarantined)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, str(path), started, storage.utcnow_text(), result.accepted, result.replaced,
             result.unchanged, result.quarantined),
        )
    if result.patients:
        # The packed copies of the changed patients' rows (packs.py), made again from what is stored now,
        # in a transaction of their own. They only make the cycle's reading faster: should packing fail,
        # the import stands and the cycle reads these patients' rows.
        try:
            packs.refresh(db, result.patients)
        except Exception as exc:  # noqa: BLE001
            result.messages.append(f"the packed copy of the changed patients' inputs was not made ({exc}); "
                                   "the next cycle reads their rows instead, a little slower")
    return result


# ------------------------------------------------------------------------------------ file checks

def formats_of(kind: str) -> tuple[str, ...]:
    """The ``--format`` values an import of ``kind`` takes: the file formats, and for sleep and weather the
    device exports and services their importers read, for attacks the pain logs (named there, once)."""
    if kind == "sleep":
        from trigger_watch.sleep_formats import DEVICE_FORMATS

        return FORMATS + DEVICE_FORMATS
    if kind == "weather":
        from trigger_watch.weather import SERVICE_FORMATS

        return FORMATS + SERVICE_FORMATS
    if kind == "attacks":
        from trigger_watch.diary import LOG_FORMATS

        return FORMATS + LOG_FORMATS
    return FORMATS


def detect_format(path: Path, fmt: str | None, allowed: tuple[str, ...] = FORMATS) -> str:
    if fmt:
        fmt = fmt.lower()
        if fmt == "jsonl":
            fmt = "ndjson"
        if fmt not in allowed:
            raise InputFileError(f"unknown format {fmt!r} for {path.name}; use one of {', '.join(allowed)}")
        return fmt
    found = _EXT_FORMAT.get(path.suffix.lower())
    if found is None or found not in allowed:
        raise InputFileError(
            f"cannot tell the format of {path.name} from its extension; name it .csv, .tsv, .json or .ndjson "
            f"or pass --format"
        )
    return found


def check_readable(path: Path) -> None:
    """Fail with one clear line when the file cannot be read at all."""
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path} is a folder, not a file; name a file inside it")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8192)
    except PermissionError:
        raise InputFileError(f"{path}: permission denied; check the file's owner and mode") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror})") from None
    if size == 0 or not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise InputFileError(f"{path} is empty; nothing to import")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return
    if b"\x00" in head:
        raise InputFileError(f"{path} looks like a binary file, not CSV or JSON text")


def file_encoding(path: Path) -> str:
    """``utf-8-sig`` or ``utf-16`` (by its BOM); raises when the text is not valid UTF-8 anywhere."""
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        line = 1
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad_line = line + chunk[: exc.start].count(b"\n")
                raise InputFileError(
                    f"{path} is not UTF-8 text (first bad byte on line {bad_line}); "
                    f"save it as UTF-8 (in a spreadsheet: 'CSV UTF-8') and import again"
                ) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputFileError(f"{path} ends in the middle of a UTF-8 character; save it as UTF-8 again") from None
    return "utf-8-sig"


# ------------------------------------------------------------------------------------ batches

@dataclass
class Batch:
    """Rows of one chunk of a file: ``frame`` holds text (or None) per cell, columns normalised."""

    frame: pd.DataFrame
    lines: np.ndarray
    raw: list[str]
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # rows unreadable as such


def normalise_name(name: str) -> str:
    return str(name).strip().lower()


def snake(name: str) -> str:
    s = re.sub(r"[^\w]+", "_", str(name).strip().lower(), flags=re.UNICODE)
    return s.strip("_")


def _cell(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):  # [] is a known empty list ("none"), unlike null
        return ";".join("" if x is None else str(x) for x in v) or "none"
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def iter_batches(path: Path, fmt: str, *, batch_rows: int = 50000, renames: dict[str, str] | None = None,
                 skips: set[str] | None = None, header: list[str] | None = None) -> Iterator[Batch]:
    """Stream ``path`` as batches. ``renames`` maps source column names to ours; ``skips`` drops columns;
    ``header``: the column names of a CSV file that has no header row (its first line is a record)."""
    encoding = file_encoding(path)
    renames = {normalise_name(k): normalise_name(v) for k, v in (renames or {}).items()}
    skips = {normalise_name(s) for s in (skips or set())}

    def columns(names: list[str]) -> list[str]:
        out = []
        for n in names:
            n = normalise_name(n)
            out.append(renames.get(n, n))
        return out

    if header and fmt != "csv":
        raise InputFileError(f"{path.name}: --header names the columns of a CSV file without a header row; "
                             f"a {fmt} file names its own")
    if fmt == "csv":
        yield from _csv_batches(path, encoding, batch_rows, columns, skips, header)
    elif fmt == "ndjson":
        yield from _ndjson_batches(path, encoding, batch_rows, columns, skips)
    else:
        yield from _json_batches(path, encoding, batch_rows, columns, skips)


def _frame(records: list[list], names: list[str], skips: set[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=names) if records else pd.DataFrame(columns=names)
    frame = frame.astype(object)
    if skips:
        frame = frame.drop(columns=[c for c in frame.columns if c in skips])
    if frame.columns.duplicated().any():
        dup = frame.columns[frame.columns.duplicated()][0]
        raise InputFileError(f"column {dup!r} appears twice (after renaming); rename or --skip one of them")
    return frame


#: separators a spreadsheet may have used instead of the contract's ",": tabs are read as such (a value
#: never holds one, and the numbers are as in a comma-separated file); semicolons are refused, since the
#: spreadsheets that use them write decimal commas ("7,5" hours)
_OTHER_SEPARATORS = {";": "semicolons (;)"}


def _csv_rows(path: Path, encoding: str, delimiter: str = ",", skip: int = 1
              ) -> Iterator[tuple[int, list[str] | None, str]]:
    """``(line, row, "")`` for each record after the header (``skip``: its lines, 0 for none), or ``(line,
    None, why)`` for one that is not valid CSV. A quote opened and never closed swallows the lines after it
    into one cell (to the end of the file, or to the next quote, where the record then breaks; the csv
    module's lenient mode imported the first case as one row): that line alone is reported, and reading
    starts again on the line after it."""
    while True:
        with path.open("r", encoding=encoding, newline="") as fh:
            reader = csv.reader(itertools.islice(fh, skip, None), strict=True, delimiter=delimiter)
            prev = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    line = skip + prev + 1
                    if "unexpected end of data" in str(exc) or reader.line_num != prev + 1:
                        # the record ran on past its own line: a quote left open took the next lines in
                        why = ('opens a quote (") that is never closed, so the lines after it were read as '
                               "part of one cell: close the quote or remove it")
                        yield line, None, why
                        skip = line  # read again from the line after this one
                        break
                    yield line, None, f"is not valid CSV ({exc})"
                    prev = reader.line_num
                    continue
                yield skip + prev + 1, row, ""
                prev = reader.line_num


def _csv_batches(path, encoding, batch_rows, columns, skips, given: list[str] | None = None) -> Iterator[Batch]:
    with path.open("r", encoding=encoding, newline="") as fh:
        first = fh.readline()
    if not first:
        raise InputFileError(f"{path} has no header row" if not given else f"{path} is empty")
    # tab-separated: a .tsv file, or a header with tabs and no commas (a spreadsheet's "text" export)
    tabs = path.suffix.lower() in (".tsv", ".tab") or ("\t" in first and "," not in first)
    delimiter = "\t" if tabs else ","
    try:
        header = list(given) if given else next(csv.reader([first], delimiter=delimiter))
    except csv.Error as exc:
        raise InputFileError(f"{path}: the header row is not valid CSV ({exc})") from None
    if len([h for h in header if h.strip()]) < 1:
        raise InputFileError(f"{path}: the first line must be a header row naming the columns")
    if len(header) == 1:
        for sep, name in _OTHER_SEPARATORS.items():
            if sep in header[0]:
                raise InputFileError(
                    f"{path}: the header row is separated by {name}, not commas ({header[0][:60]!r}). Save "
                    f"the file as comma-separated CSV (in a spreadsheet: CSV UTF-8, comma delimited) and "
                    f"import it again")
    names = columns(header)
    width = len(names)
    records, lines, problems = [], [], []
    for line, row, why in _csv_rows(path, encoding, delimiter, skip=0 if given else 1):
        if row is None:
            problems.append((line, why, ""))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            problems.append((line, f"has {len(row)} values but the header has {width} columns"
                             + (" (--header)" if given else ""),
                             json.dumps(row, ensure_ascii=False)))
            continue
        records.append(row)
        lines.append(line)
        if len(records) >= batch_rows:
            yield Batch(_frame(records, names, skips), np.asarray(lines), [], problems)
            records, lines, problems = [], [], []
    if records or problems:
        yield Batch(_frame(records, names, skips), np.asarray(lines, dtype=int), [], problems)


def _objects_to_batch(objs: list[dict], lines: list[int], columns, skips, problems) -> Batch:
    keys: dict[str, None] = {}
    for o in objs:
        keys.update(dict.fromkeys(o))
    raw_names = list(keys)
    names = columns(raw_names)
    records = [[_cell(o.get(k)) for k in raw_names] for o in objs]
    return Batch(_frame(records, names, skips), np.asarray(lines, dtype=int), [], problems)


def _ndjson_batches(path, encoding, batch_rows, columns, skips) -> Iterator[Batch]:
    with path.open("r", encoding=encoding) as fh:
        objs, lines, problems = [], [], []
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append((n, f"is not valid JSON ({exc.msg} at column {exc.colno})", text.rstrip("\n")))
                continue
            if not isinstance(obj, dict):
                problems.append((n, "is not a JSON object ({...})", text.rstrip("\n")))
                continue
            objs.append(obj)
            lines.append(n)
            if len(objs) >= batch_rows:
                yield _objects_to_batch(objs, lines, columns, skips, problems)
                objs, lines, problems = [], [], []
        if objs or problems:
            yield _objects_to_batch(objs, lines, columns, skips, problems)


def _json_batches(path, encoding, batch_rows, columns, skips) -> Iterator[Batch]:
    try:
        with path.open("r", encoding=encoding) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path} is not valid JSON: {exc.msg} on line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise InputFileError(f"{path} must hold a JSON array of objects, one per row")
    objs, lines, problems = [], [], []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            problems.append((i, "is not a JSON object ({...})", json.dumps(obj)))
            continue
        objs.append(obj)
        lines.append(i)
        if len(objs) >= batch_rows:
            yield _objects_to_batch(objs, lines, columns, skips, problems)
            objs, lines, problems = [], [], []
    if objs or problems:
        yield _objects_to_batch(objs, lines, columns, skips, problems)


def raw_rows(frame: pd.DataFrame, mask: np.ndarray) -> list[str]:
    """The rows selected by ``mask`` as JSON objects of their cells, verbatim (for quarantine)."""
    sub = frame.loc[mask]
    return [json.dumps({k: v for k, v in zip(sub.columns, row) if v is not None}, ensure_ascii=False)
            for row in sub.itertuples(index=False, name=None)]


# ------------------------------------------------------------------------------------ validation

class Checker:
    """Collects, per row of a batch, every reason it must be quarantined. Vectorised."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.n = len(frame)
        self._reasons = np.full(self.n, None, dtype=object)
        self._text: dict[str, pd.Series] = {}

    def add(self, mask, message) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        if isinstance(message, str):
            msgs = np.full(mask.sum(), message, dtype=object)
        else:
            msgs = np.asarray(pd.Series(message).to_numpy()[mask] if len(message) == self.n else message,
                              dtype=object)
        current = self._reasons[mask]
        self._reasons[mask] = [m if c is None else f"{c}; {m}" for c, m in zip(current, msgs)]

    @property
    def read(self) -> set[str]:
        """The columns a validator has read (what is left of a row was not imported)."""
        return set(self._text)

    @property
    def bad(self) -> np.ndarray:
        return pd.notna(self._reasons)

    @property
    def reasons(self) -> np.ndarray:
        return self._reasons

    def text(self, col: str) -> pd.Series:
        """Cells of ``col`` as stripped text, None where unknown (missing column: all None). Cached."""
        cached = self._text.get(col)
        if cached is not None:
            return cached
        if col not in self.frame.columns:
            out = pd.Series([None] * self.n, index=self.frame.index, dtype=object)
        else:
            st = self.frame[col].astype("string").str.strip()
            unknown = st.isna() | st.str.lower().isin(UNKNOWN_TOKENS)
            out = st.astype(object).where(~unknown.to_numpy(dtype=bool), None)
        self._text[col] = out
        return out

    def _shown(self, col: str, s: pd.Series, mask) -> pd.Series:
        return col + "=" + s[mask].map(lambda v: repr(v)[:60])

    def flag(self, col: str, mask, why: str | pd.Series) -> None:
        """Quarantine the rows of ``mask`` with ``<col>='<value>'<why>`` (the value as the file gave it; ``why``
        one text, or each row's)."""
        s = self.text(col)
        self.add(mask, (self._shown(col, s, np.asarray(mask, dtype=bool)) + why).reindex(s.index).to_numpy())

    def required(self, col: str, what: str | None = None) -> pd.Series:
        s = self.text(col)
        self.add(s.isna().to_numpy(), f"{col} is missing{' (' + what + ')' if what else ''}")
        return s

    def number(self, col: str, lo: float | None = None, hi: float | None = None, *,
               integer: bool = False, lo_open: bool = False) -> pd.Series:
        s = self.text(col)
        v = pd.to_numeric(s, errors="coerce").astype(float)
        bad = (s.notna() & ~np.isfinite(v)).to_numpy()  # "inf" parses, but is no reading
        self.flag(col, bad, " is not a number")
        v = v.where(~bad)
        if integer:
            frac = (v.notna() & (v != np.round(v))).to_numpy()
            self.flag(col, frac, " must be a whole number")
        out = np.zeros(self.n, dtype=bool)
        if lo is not None:
            out |= (v < lo).to_numpy() if not lo_open else (v <= lo).to_numpy()
        if hi is not None:
            out |= (v > hi).to_numpy()
        if out.any():
            if lo is not None and hi is not None:
                rng = f"outside {plain_number(lo)}-{plain_number(hi)}"
            elif lo is not None:
                rng = "negative" if lo == 0 and not lo_open else f"not above {plain_number(lo)}"
            else:
                rng = f"above {plain_number(hi)}"
            self.flag(col, out, f" is {rng}")
        return v.where(~out)

    def boolean(self, col: str) -> pd.Series:
        s = self.text(col)
        v = s.astype("string").str.lower().map(_BOOL, na_action="ignore").astype(float)
        bad = (s.notna() & v.isna()).to_numpy()
        self.flag(col, bad, " is not yes/no (use 1/0, true/false, yes/no or y/n)")
        return v

    def day(self, col: str, options: ImportOptions, zones: pd.Series, *, required: bool = True) -> pd.Series:
        """A local calendar date, ``YYYY-MM-DD`` (or ``options.date_format``); not after today where the row's
        patient lives (``zones``, :meth:`ImportOptions.after_today`)."""
        s, fmt = self.text(col), options.date_format
        shape = "YYYY-MM-DD" if not fmt else fmt
        if required:
            self.add(s.isna().to_numpy(), f"{col} is missing ({shape})")
        parsed = pd.to_datetime(s, format=fmt or "%Y-%m-%d", errors="coerce")
        bad = (s.notna() & parsed.isna()).to_numpy()
        hint = "use YYYY-MM-DD, or --date-format for another layout" if not fmt else f"expected {fmt}"
        self.flag(col, bad, f" is not a date ({hint})")
        days = parsed.dt.strftime("%Y-%m-%d").where(parsed.notna(), None).astype(object)
        future, said = options.after_today(days, zones)
        self.flag(col, future, " is in the future " + said)
        return days.where(~future, None)

    def patient_id(self, col: str = "patient_id") -> pd.Series:
        s = self.required(col)
        ok = s.str.fullmatch(PATIENT_ID_RE).fillna(False).astype(bool).to_numpy()
        bad = (s.notna().to_numpy() & ~ok)
        self.flag(col, bad, " must be 1-64 letters, digits, '_', '-' or '.'")
        return s.where(ok, None)

    def tags(self, col: str, keep: str = "") -> pd.Series:
        """A tag list; "none" here means a known empty list, not unknown."""
        s = self.text(col)
        if col in self.frame.columns:
            said_none = (self.frame[col].astype("string").str.strip().str.lower() == "none").fillna(False)
            s = s.where(~said_none.to_numpy(dtype=bool), "none")
        return normalise_tags(s, keep=keep)


_BOOL = {"1": 1.0, "true": 1.0, "yes": 1.0, "y": 1.0, "1.0": 1.0,
         "0": 0.0, "false": 0.0, "no": 0.0, "n": 0.0, "0.0": 0.0}


def plain_number(x: float) -> str:
    """``x`` as written in a reason or a stored text: ``5`` rather than ``5.0``."""
    return str(int(x)) if float(x).is_integer() else str(x)


def normalise_tags(s: pd.Series, *, keep: str = "") -> pd.Series:
    """``"Red Wine; Cheese"`` -> ``"red_wine;cheese"``; ``"none"`` -> ``""`` (known: nothing); None stays
    None (unknown). Vectorised.

    ``keep`` lists extra characters kept inside a tag (``":."`` for doses like ``sumatriptan:50``).
    """
    st = s.astype("string").str.lower()
    st = st.str.replace(rf"[^\w;{re.escape(keep)}]+", "_", regex=True)
    st = st.str.replace(r"_*;[_;]*", ";", regex=True).str.strip("_;")
    # "none" (or "nothing", "-") is a known empty list: stored as "" and kept apart from unknown (NULL)
    st = (";" + st + ";").str.replace(r";(?:none|nothing|no|_)(?=;)", "", regex=True).str.strip(";")
    return st.astype(object).where(st.notna(), None)


# ------------------------------------------------------------------------------------ quarantine

def quarantine(db: sqlite_utils.Database, kind: str, file: str | Path,
               rows: list[tuple[int | None, str, str]], patient_ids: list[str | None] | None = None,
               keys: list[str | None] | None = None) -> int:
    """Store rejected rows verbatim with where they came from and why. Must run inside a transaction.

    ``keys``: each row's key (:func:`row_keys`) where it could be read, so that a later good row for the same
    key resolves the reject (:func:`resolve_rejects`). Re-importing the same bad file does not store its
    rejects twice; a reject it repeats is open again, resolved or not (the file's row is the later one), with
    this import's reason (a newer version may say it better).
    Returns how many rows were given.
    """
    if not rows:
        return 0
    now = storage.utcnow_text()
    pids = patient_ids or [None] * len(rows)
    keys = keys or [None] * len(rows)
    db.conn.executemany(
        "INSERT INTO rejects (kind, file, line, reason, raw, patient_id, row_key, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, file, line, raw) DO UPDATE SET resolved_at = NULL,"
        " resolved_by = NULL, reason = excluded.reason",
        [(kind, str(file), None if line is None else int(line), reason, raw, pid, key, now)
         for (line, reason, raw), pid, key in zip(rows, pids, keys)],
    )
    return len(rows)


def row_keys(frame: pd.DataFrame, key: list[str]) -> list[str | None]:
    """Each row's key columns as one text (``p1|2026-03-01``); None where a part could not be read."""
    cols = [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in key]
    return [None if None in parts else "|".join(map(str, parts)) for parts in zip(*cols)]


def open_reject_keys(db: sqlite_utils.Database, kind: str) -> tuple[int, set[str]]:
    """(the last reject's id, the keys of ``kind``'s unresolved rejects): read once at an import's start."""
    last = db.execute("SELECT coalesce(max(id), 0) FROM rejects").fetchone()[0]
    keys = {r[0] for r in db.execute("SELECT row_key FROM rejects WHERE kind = ? AND resolved_at IS NULL"
                                     " AND row_key IS NOT NULL", (kind,))}
    return last, keys


def resolve_rejects(db: sqlite_utils.Database, kind: str, before_id: int, keys: list[str], file: str) -> int:
    """Mark the rejects of ``kind`` (up to id ``before_id``: earlier imports') whose key a good row of this
    import now stores as resolved by ``file``. They leave ``rejects`` and stay in ``rejects --all``."""
    if not keys:
        return 0
    now = storage.utcnow_text()
    cur = db.conn.executemany(
        "UPDATE rejects SET resolved_at = ?, resolved_by = ? WHERE kind = ? AND row_key = ? AND id <= ?"
        " AND resolved_at IS NULL", [(now, file, kind, k, before_id) for k in keys])
    return cur.rowcount


#: ``resolved_by`` of the rejects :func:`dismiss_rejects` took off the list (no file fixed them)
DISMISSED = "dismissed"


def dismiss_rejects(db: sqlite_utils.Database, file: str | Path, kind: str | None = None) -> int:
    """Take a file's open rejects (of ``kind``, or every kind) off the list, resolved by ``"dismissed"``: a
    file imported by mistake (as the wrong kind, or for the wrong patient) leaves rejects no import of it
    will ever fix. ``file`` as the list names it, or as a path to the same file. Returns how many."""
    names = sorted({str(file), str(Path(file).resolve())})
    where = f"file IN ({', '.join('?' * len(names))}) AND resolved_at IS NULL" + (" AND kind = ?" if kind else "")
    with storage.transaction(db):
        cur = db.conn.execute(f"UPDATE rejects SET resolved_at = ?, resolved_by = ? WHERE {where}",
                              [storage.utcnow_text(), DISMISSED, *names, *([kind] if kind else [])])
    return cur.rowcount


def list_rejects(db: sqlite_utils.Database, kind: str | None = None, limit: int | None = None, *,
                 resolved: bool = False) -> list[dict]:
    """Quarantined rows: those no later import has fixed, or with ``resolved`` every one. The files in the
    order they were first quarantined, each file's rows by line (an import stores a batch's unreadable
    lines before its invalid rows, so by id line 10 came before line 3)."""
    sql = "SELECT kind, file, line, reason, raw, created_at, resolved_at, resolved_by FROM rejects"
    where, params = [], []
    if kind:
        where.append("kind = ?")
        params.append(kind)
    if not resolved:
        where.append("resolved_at IS NULL")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    rows = list(db.query(sql, params))
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r["file"], i)
    rows.sort(key=lambda r: (first[r["file"]], r["line"] is None, r["line"] or 0))  # stable: ties keep id order
    return rows[:int(limit)] if limit else rows


def location(file: str, line: int | None) -> str:
    if line is None:
        return file
    unit = "item" if str(file).lower().endswith(".json") else "line"
    return f"{file} {unit} {line}"


def to_rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """DataFrame -> tuples of Python values with None for missing (for executemany). Column-wise."""
    cols = [frame[c].to_numpy(dtype=object, na_value=None).tolist() for c in columns]
    return list(zip(*cols))
