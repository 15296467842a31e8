"""Shared fixtures: a fresh migrated database per test, a fixed clock, and file writers."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from trigger_watch import storage
from trigger_watch.importing import ImportOptions, import_file

TODAY = date(2026, 11, 20)


@pytest.fixture
def db():
    database = storage.memory_db()
    yield database
    database.conn.close()


@pytest.fixture
def file_db(tmp_path):
    database = storage.connect(tmp_path / "tw.db")
    yield database
    database.conn.close()


@pytest.fixture
def write(tmp_path):
    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def do_import(db):
    """Import a file into the test database with sensible options; returns the ImportResult."""

    def _import(kind: str, path: Path, fmt: str | None = None, **kw):
        options = ImportOptions(today=kw.pop("today", TODAY), **kw)
        return import_file(db, kind, path, options, fmt=fmt)

    return _import


PATIENTS_CSV = """patient_id,timezone,latitude,longitude,sex,birth_year,clinician_id
p1,Europe/Vienna,48.2,16.37,F,1988,dr_a
p2,America/New_York,40.74,-74.04,M,1975,dr_b
"""


@pytest.fixture
def patients(db, write, do_import):
    do_import("patients", write("patients.csv", PATIENTS_CSV))
    return db
