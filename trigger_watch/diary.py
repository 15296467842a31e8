"""The patient-kept records: patients, the daily diary, attacks and treatments.

Each kind is validated against ``../shared/spec/inputs.md`` and written with ``storage.upsert_rows``
(keys: patient; patient + date; patient + start; patient + date + treatment). A diary column we do not
know becomes a custom factor when its values are numbers or yes/no, and is named in the summary when they
are not. ``forget`` erases a patient everywhere in one transaction.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Collection, Iterable
from functools import lru_cache
from pathlib import Path
from zoneinfo import available_timezones

import numpy as np
import pandas as pd
import sqlite_utils

from trigger_watch import storage
from trigger_watch.errors import InputFileError, NothingToForget
from trigger_watch.importing import (
    IMPORTERS,
    Batch,
    Checker,
    ImportOptions,
    ImportResult,
    detect_format,
    file_encoding,
    iter_batches,
    normalise_tags,
    open_reject_keys,
    plain_number,
    quarantine,
    raw_rows,
    resolve_rejects,
    row_keys,
    snake,
    to_rows,
)

DIARY_NUMBERS = {  # column: (low, high) inclusive
    "stress": (0, 10), "alcohol_units": (0, None), "caffeine_mg": (0, None), "exercise_minutes": (0, None),
    "water_l": (0, None), "screen_hours": (0, 24), "sleep_hours": (0, 24), "sleep_quality": (0, 10),
    "headache_intensity": (0, 10),
}
DIARY_BOOLEANS = ("menstruation", "skipped_meal", "headache")
DIARY_TAGS = ("foods", "symptoms", "medication")
CAFFEINE_MG_PER_SERVING = 95.0
DIARY_COLUMNS = ["patient_id", "date", *DIARY_NUMBERS.keys(), *DIARY_BOOLEANS, *DIARY_TAGS, "notes", "custom",
                 "source", "imported_at"]
_DIARY_KNOWN = {"patient_id", "date", "caffeine_servings", "notes", *DIARY_NUMBERS, *DIARY_BOOLEANS, *DIARY_TAGS}
_DATE_PARTS = ("year", "month", "day")
#: the yes/no words of an extra diary column (a custom factor, a warning sign)
_BOOL_WORDS = {"true": 1.0, "yes": 1.0, "y": 1.0, "false": 0.0, "no": 0.0, "n": 0.0}
#: extra diary columns named after a warning sign (the premonitory phase; factors.md): recorded as that symptom
#: (factor ``symptom:<name>``, never called a trigger), not as a custom factor that could be called one
WARNING_SIGN_COLUMNS = frozenset({
    "yawning", "yawn", "yawns", "fatigue", "tired", "tiredness", "neck_stiffness", "stiff_neck", "neck_pain",
    "craving", "cravings", "food_craving", "food_cravings", "chocolate_craving", "sugar_craving",
    "light_sensitivity", "photophobia", "sound_sensitivity", "phonophobia", "smell_sensitivity",
    "mood_change", "irritability", "difficulty_concentrating", "frequent_urination", "thirst", "nausea",
    "aura", "visual_disturbance", "prodrome"})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def known_patients(db: sqlite_utils.Database) -> dict[str, str | None]:
    """patient_id -> timezone, for every stored patient."""
    return {r[0]: r[1] for r in db.execute("SELECT patient_id, timezone FROM patients")}


def _resolve_patients(db, checker: Checker, pid: pd.Series, options: ImportOptions,
                      known: dict[str, str | None], result: ImportResult) -> None:
    """Quarantine rows of unknown patients, or create those patients when asked to: those with a row that
    is imported (a patient whose every row is quarantined, a mistyped id's, is not made)."""
    unknown = pid.notna() & ~pid.isin(list(known))
    if not unknown.any():
        return
    if options.create_patients:
        new = sorted(set(pid[unknown & ~checker.bad]))
        if not new:
            return
        db.conn.executemany(
            "INSERT OR IGNORE INTO patients (patient_id, timezone, source, imported_at) VALUES (?, ?, ?, ?)",
            [(p, options.default_timezone, "created on import", storage.utcnow_text()) for p in new],
        )
        known.update(dict.fromkeys(new, options.default_timezone))
        result.messages.append(f"created {len(new)} new patient(s) with time zone {options.default_timezone}: "
                               f"{', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
    else:
        checker.add(unknown.to_numpy(), ("patient " + pid[unknown].map(repr)
                                         + " is not known; import it first or pass --create-patients")
                    .reindex(pid.index).to_numpy())


def _unused_note(col: str, read: Collection[str], kind: str) -> str:
    import difflib

    close = difflib.get_close_matches(col, list(read), n=1, cutoff=0.6)
    hint = (f" (did you mean {close[0]!r}? --rename '{col}={close[0]}')" if close
            else f" (--skip {col!r} to silence this note)")
    return f"column {col!r} is not a column of {kind} files and was not imported{hint}"


def _import(db, path: Path, fmt: str | None, options: ImportOptions, kind: str,
            validate: Callable[[Batch, Checker, ImportOptions, dict, ImportResult, dict], pd.DataFrame],
            table: str, columns: list[str], key: list[str],
            read: Callable[[Path, ImportOptions, dict], Iterable[Batch]] | None = None,
            finish: Callable[[sqlite_utils.Database, Path, dict], None] | None = None) -> ImportResult:
    """Import ``path`` as ``kind``: its batches (``read(path, options, state)`` when the kind's file is not
    a table, e.g. a pain log; the CSV/JSON reader otherwise) validated, quarantined and upserted;
    ``finish(db, path, state)`` then adds what the whole file shows to its notes."""
    result = ImportResult(kind=kind, file=str(path))
    known = known_patients(db)
    state: dict = {}
    done = 0
    now = storage.utcnow_text()
    batches = read(path, options, state) if read is not None else iter_batches(
        path, detect_format(path, fmt), batch_rows=options.batch_rows, renames=options.renames, skips=options.skips,
        header=options.header)
    with storage.transaction(db):
        before_id, open_keys = open_reject_keys(db, kind)
        for batch in batches:
            result.quarantined += quarantine(db, kind, str(path), batch.problems)
            done += len(batch.frame) + len(batch.problems)
            options.report(done)
            if batch.frame.empty:
                continue
            checker = Checker(batch.frame)
            try:
                clean = validate(batch, checker, options, known, result, state)
            except MissingColumn as exc:  # the whole file is wrong: say which file
                raise InputFileError(f"{path.name} {exc}") from None
            if kind != "diary" and "unused" not in state:  # (the diary's own become custom factors)
                state["unused"] = [c for c in batch.frame.columns if c not in checker.read]
                state.setdefault("notes", []).extend(_unused_note(c, checker.read, kind) for c in state["unused"])
            if "patient_id" in clean.columns and kind != "patients":
                _resolve_patients(db, checker, clean["patient_id"], options, known, result)
            bad = checker.bad
            if bad.any():
                rej = list(zip(batch.lines[bad].tolist(), checker.reasons[bad].tolist(),
                               raw_rows(batch.frame, bad)))
                pids = clean["patient_id"][bad].tolist() if "patient_id" in clean.columns else None
                keys = row_keys(clean.loc[bad], key) if set(key) <= set(clean.columns) else None
                result.quarantined += quarantine(db, kind, str(path), rej, pids, keys)
            good = clean.loc[~bad].copy()
            if good.empty:
                continue
            if open_keys:  # a good row for the key of an earlier import's reject: that reject is fixed
                fixed = [k for k in row_keys(good, key) if k in open_keys]
                result.resolved += resolve_rejects(db, kind, before_id, fixed, str(path))
            good["source"] = str(path)
            good["imported_at"] = now
            ins, rep, unch, changed = storage.upsert_rows(db, table, columns, to_rows(good, columns), key)
            result.accepted += ins
            result.replaced += rep
            result.unchanged += unch
            if kind == "patients":
                changed = good["patient_id"].tolist() if (ins or rep) else []
            storage.mark_changed(db, changed)
            result.patients.update(changed)
    if finish is not None:
        finish(db, path, state)
    for note in state.get("notes", []):
        result.messages.append(note)
    return result


# ------------------------------------------------------------------------------------ patients

PATIENT_COLUMNS = ["patient_id", "timezone", "latitude", "longitude", "sex", "birth_year", "clinician_id",
                   "source", "imported_at"]


def _validate_patients(batch, c: Checker, options, known, result, state) -> pd.DataFrame:
    out = pd.DataFrame(index=batch.frame.index)
    out["patient_id"] = c.patient_id()
    tz = c.text("timezone")
    bad_tz = (tz.notna() & ~tz.isin(list(_zones()))).to_numpy()
    c.add(bad_tz, ("timezone=" + tz[bad_tz].map(repr) + " is not an IANA time zone (e.g. Europe/Vienna)")
          .reindex(tz.index).to_numpy())
    out["timezone"] = tz.fillna(options.default_timezone)
    out["latitude"] = c.number("latitude", -90, 90)
    out["longitude"] = c.number("longitude", -180, 180)
    half = (out["latitude"].isna() != out["longitude"].isna()).to_numpy() & ~c.bad
    c.add(half, "latitude and longitude must be given together")
    sex = c.text("sex").map(lambda v: v.upper(), na_action="ignore")
    bad_sex = (sex.notna() & ~sex.isin(["F", "M", "X"])).to_numpy()
    c.add(bad_sex, ("sex=" + sex[bad_sex].map(repr) + " must be F, M, X or empty").reindex(sex.index).to_numpy())
    out["sex"] = sex
    out["birth_year"] = c.number("birth_year", 1900, options.today.year, integer=True)
    out["clinician_id"] = c.text("clinician_id")
    return out


def import_patients(db, path, fmt, options) -> ImportResult:
    return _import(db, path, fmt, options, "patients", _validate_patients, "patients", PATIENT_COLUMNS,
                   ["patient_id"])


# ------------------------------------------------------------------------------------ diary

class MissingColumn(InputFileError):
    """A validator's "the file has no X column": :func:`_import` puts the file's name before the message."""


def _first_of(texts: list[str], n: int) -> str:
    """The first ``n`` of ``texts``, comma-separated, and how many more there are: for a message."""
    return ", ".join(texts[:n]) + (f" and {len(texts) - n} more" if len(texts) > n else "")


def _need_column(frame: pd.DataFrame, col: str, what: str, *, instead: tuple[str, ...] = ()) -> None:
    """A file without the column ``col`` (nor any of ``instead``) cannot give a single row: one clear error
    naming the columns it has and the --rename that maps one of them, not every line quarantined."""
    if col in frame.columns or any(alt in frame.columns for alt in instead):
        return
    shown = _first_of([repr(str(n)) for n in frame.columns if not str(n).startswith("_")], 8)
    alt = "".join(f" or {a!r}" for a in instead)
    raise MissingColumn(f"has no {col!r}{alt} column ({what}); its columns are {shown or 'none'}. "
                         f"If one of them is the {col}, name it with --rename THEIRS={col}; "
                         "if the file has no header row, give one with --header")


def _diary_patient_ids(batch: Batch, c: Checker, options: ImportOptions) -> pd.Series:
    if "patient_id" not in batch.frame.columns:
        if not options.patient:
            raise MissingColumn("has no patient_id column; pass --patient ID to say whose diary it is")
        batch.frame["patient_id"] = options.patient
    elif options.patient:
        given = c.text("patient_id")
        other = (given.notna() & (given != options.patient)).to_numpy()
        c.add(other, f"patient_id differs from --patient {options.patient}")
    return c.patient_id()


def _diary_dates(batch: Batch, c: Checker, options: ImportOptions, state: dict, patient_ids: pd.Series,
                 known: dict) -> pd.Series:
    frame = batch.frame
    if "date" not in frame.columns and all(p in frame.columns for p in _DATE_PARTS):
        parts = {p: c.number(p, integer=True) for p in _DATE_PARTS}
        dt = pd.to_datetime(pd.DataFrame(parts), errors="coerce")
        frame["date"] = dt.dt.strftime("%Y-%m-%d").where(dt.notna(), None).astype(object)
        state.setdefault("notes", []).append("the date of each row was built from its year, month and day columns")
        for p in _DATE_PARTS:
            state.setdefault("date_parts", set()).add(p)
    return c.day("date", options, options.zones(patient_ids, known))


def _validate_diary(batch, c: Checker, options, known, result, state) -> pd.DataFrame:
    frame = batch.frame
    out = pd.DataFrame(index=frame.index)
    if not all(p in frame.columns for p in _DATE_PARTS):  # (else the date is built from them)
        _need_column(frame, "date", "the local day, YYYY-MM-DD; or year, month and day columns")
    out["patient_id"] = _diary_patient_ids(batch, c, options)
    out["date"] = _diary_dates(batch, c, options, state, out["patient_id"], known)
    for col, (lo, hi) in DIARY_NUMBERS.items():
        out[col] = c.number(col, lo, hi)
    if "caffeine_servings" in frame.columns:
        servings = c.number("caffeine_servings", 0, None)
        out["caffeine_mg"] = out["caffeine_mg"].fillna(servings * CAFFEINE_MG_PER_SERVING)
    for col in DIARY_BOOLEANS:
        out[col] = c.boolean(col)
    for col in DIARY_TAGS:
        out[col] = c.tags(col)
    signs = [col for col in frame.columns if col not in _DIARY_KNOWN and snake(col) in WARNING_SIGN_COLUMNS]
    if signs:
        out["symptoms"] = _warning_sign_columns(frame, c, state, signs, out["symptoms"])
    out["notes"] = c.text("notes")
    out["custom"] = _custom_factors(frame, c, state, exclude=state.get("date_parts", set()) | set(signs))
    _refuse_empty_days(frame, out, c, state)
    said = out["headache"].notna() | out["headache_intensity"].notna()
    state.setdefault("silent", set()).update(out["patient_id"][~said & ~c.bad].dropna().unique().tolist())
    state.setdefault("said", set()).update(out["patient_id"][said & ~c.bad].dropna().unique().tolist())
    return out


def _refuse_empty_days(frame: pd.DataFrame, out: pd.DataFrame, c: Checker, state: dict) -> None:
    """A diary file whose rows hold no value the diary keeps, only text in columns it does not know (a
    treatments file imported as a diary: patient, date and a treatment's name), is refused whole: each row
    would store an empty day over the day stored, whose values would be lost. A file of the days alone
    (patient and date: the days a patient kept the diary, their attacks imported apart) still imports, as
    does one whose known columns are empty. Judged on the first batch with rows; once a row of the file has
    a value (or a value the checks refused), the rest import as usual."""
    if state.get("has_values") or not len(out):
        return
    if c.bad.any() or out.drop(columns=["patient_id", "date"]).notna().to_numpy().any():
        state["has_values"] = True
        return
    skip = _DIARY_KNOWN | set(_DATE_PARTS)
    text = [repr(str(n)) for n in frame.columns if n not in skip and not str(n).startswith("_")
            and c.text(n).notna().any()]
    if not text:
        return
    shown = _first_of(text, 4)
    raise MissingColumn(
        f"has no value a diary keeps on any of its {len(out)} row(s), only text in {shown}: importing it would "
        "store empty days over the days already stored. If it is a file of treatments or attacks, import it as "
        "that kind (trigger-watch import treatments FILE); if its columns are a diary's under other names, "
        "name them with --rename THEIRS=stress (README, \"Importing records\")")


def _headache_note(db, path: Path, state: dict) -> None:
    """A note for the file's patients whose days it imported never say whether there was a headache, when
    no attack of theirs is stored either: their reports say so rather than count the days headache-free.
    Only patients stored (a row of an unknown patient was quarantined, not imported)."""
    silent = state.get("silent", set()) - state.get("said", set())
    if not silent:
        return
    left = [r[0] for r in db.execute(
        """SELECT value FROM json_each(?) AS ids
           WHERE EXISTS (SELECT 1 FROM patients p WHERE p.patient_id = ids.value)
             AND NOT EXISTS (SELECT 1 FROM attacks a WHERE a.patient_id = ids.value)
             AND NOT EXISTS (SELECT 1 FROM diary d WHERE d.patient_id = ids.value
                             AND (d.headache IS NOT NULL OR d.headache_intensity IS NOT NULL))
           ORDER BY value""", (json.dumps(sorted(silent)),))]
    if left:
        who = _first_of(left, 5)
        state.setdefault("notes", []).append(
            f"no day of {path.name} says whether there was a headache (no headache or headache_intensity value), "
            f"and no attack is stored for {len(left)} patient(s): {who}. Their days are not headache-free days: "
            "import their attacks (trigger-watch import attacks FILE), or --rename the file's headache column "
            "to headache; until then their reports say that no headache is on record")


def _warning_sign_columns(frame: pd.DataFrame, c: Checker, state: dict, signs: list[str],
                          symptoms: pd.Series) -> pd.Series:
    """Columns such as ``yawning`` (yes/no, or a score: above 0 is felt) added to the day's symptom tags. A day
    the column says no keeps the symptoms it has; it is a known empty list only when the file has no
    symptoms column (then the columns are the only symptoms it records)."""
    if "sign_notes" not in state:
        state["sign_notes"] = True
        state.setdefault("notes", []).extend(
            f"column {col!r} is a warning sign: recorded as symptom {snake(col)!r} (factor "
            f"'symptom:{snake(col)}'), which precedes attacks but is never called a trigger" for col in signs)
    felt = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    said = np.zeros(len(frame), dtype=bool)
    for col in signs:
        s = c.text(col)
        v = pd.to_numeric(s, errors="coerce").astype(float).fillna(
            s.astype("string").str.lower().map(_BOOL_WORDS, na_action="ignore").astype(float))
        bad = (s.notna() & ~np.isfinite(v)).to_numpy()
        c.flag(col, bad, " is not yes/no or a number")
        yes = (v > 0).to_numpy()
        felt[yes] = felt[yes] + ";" + snake(col)
        said |= np.isfinite(v).to_numpy()
    merged = (symptoms.fillna("").astype(str) + felt).str.strip(";")
    twice = felt.ne("").to_numpy() & symptoms.notna().to_numpy()  # also tagged in the symptoms column
    merged[twice] = merged[twice].map(lambda t: ";".join(dict.fromkeys(t.split(";"))))
    known = symptoms.notna().to_numpy() | (said if "symptoms" not in frame.columns else felt.ne("").to_numpy())
    return merged.where(known, None)


def _custom_factors(frame: pd.DataFrame, c: Checker, state: dict, exclude: set[str]) -> pd.Series:
    """Unknown columns: numbers or yes/no become custom factors (JSON per row); text ones are reported."""
    if "custom_kinds" not in state:
        kinds: dict[str, str] = {}
        notes = state.setdefault("notes", [])
        for col in frame.columns:
            if col in _DIARY_KNOWN or col in exclude:
                continue
            s = c.text(col).dropna()
            name = snake(col)
            if s.empty:
                kinds[col] = "numeric"
                continue
            low = s.map(lambda v: str(v).lower())
            is_bool = low.isin(list(_BOOL_WORDS))
            is_num = pd.to_numeric(s, errors="coerce").notna()
            if (is_bool | is_num).all():
                kinds[col] = "boolean" if is_bool.any() else "numeric"
                notes.append(f"column {col!r} became custom factor {name!r}")
            else:
                example = s[~(is_bool | is_num)].iloc[0]
                kinds[col] = "text"
                notes.append(
                    f"column {col!r} was not imported: its values are text (e.g. {str(example)[:40]!r}); only "
                    f"numbers or yes/no become factors (--skip {col!r} to silence this note)"
                )
        state["custom_kinds"] = kinds
    numeric = {col: kind for col, kind in state["custom_kinds"].items() if kind != "text" and col in frame.columns}
    if not numeric:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    values = pd.DataFrame(index=frame.index)
    for col, kind in numeric.items():
        s = c.text(col)
        low = s.astype("string").str.lower()
        as_bool = low.map(_BOOL_WORDS, na_action="ignore").astype(float)
        as_num = pd.to_numeric(s, errors="coerce").astype(float)
        v = as_num.where(np.isfinite(as_num)).fillna(as_bool)  # "inf" is no reading (and no JSON number)
        bad = (s.notna() & v.isna()).to_numpy()
        c.add(bad, (col + "=" + s[bad].map(repr) + " is not a number or yes/no like the rest of the column")
              .reindex(s.index).to_numpy())
        values[snake(col)] = v
    return _json_objects(values)


def _json_objects(values: pd.DataFrame) -> pd.Series:
    """Each row's non-missing values as a JSON object with sorted keys, or None. Vectorised per column."""
    body = pd.Series("", index=values.index, dtype=object)
    for name in sorted(values.columns):
        v = values[name]
        present = v.notna().to_numpy()
        text = v.to_numpy(dtype=float).astype(str).astype(object)
        piece = np.where(present, (json.dumps(name) + ": ") + text, "")
        sep = np.where((body.to_numpy() != "") & present, ", ", "")
        body = body + sep + piece
    return ("{" + body + "}").where(body != "", None)


def import_diary(db, path, fmt, options) -> ImportResult:
    return _import(db, path, fmt, options, "diary", _validate_diary, "diary", DIARY_COLUMNS,
                   ["patient_id", "date"], finish=_headache_note)


# ------------------------------------------------------------------------------------ attacks

ATTACK_COLUMNS = ["patient_id", "start", "end", "start_local", "end_local", "intensity", "kind", "aura",
                  "symptoms", "medications", "relief", "source", "imported_at"]
_OFFSET = r"(?:[zZ]|[+-]\d\d:?\d\d)$"


def parse_instants(s: pd.Series, tz: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """ISO 8601 text -> UTC timestamps. Text without an offset is local time in the row's ``tz``.

    Returns (UTC datetime64 series, mask of unparseable non-empty cells). A local time that falls in the
    spring-forward gap is shifted forward; one repeated in the autumn takes the first (summer) instant.
    """
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    present = s.notna()
    aware = present & s.str.contains(_OFFSET, regex=True).fillna(False).astype(bool)
    if aware.any():
        out[aware] = pd.to_datetime(s[aware], utc=True, format="ISO8601", errors="coerce")
    naive = present & ~aware
    if naive.any():
        local = pd.to_datetime(s[naive], format="ISO8601", errors="coerce")
        for zone, idx in tz[naive].groupby(tz[naive]).groups.items():
            vals = local.loc[idx]
            ok = vals.notna()
            if ok.any():
                loc = vals[ok].dt.tz_localize(zone, ambiguous=np.ones(ok.sum(), dtype=bool),
                                              nonexistent="shift_forward")
                out.loc[vals[ok].index] = loc.dt.tz_convert("UTC")
    bad = (present & out.isna()).to_numpy()
    return out, bad


def _local_text(utc: pd.Series, tz: pd.Series) -> pd.Series:
    out = pd.Series([None] * len(utc), index=utc.index, dtype=object)
    for zone, idx in tz.groupby(tz).groups.items():
        vals = utc.loc[idx]
        ok = vals.notna()
        if ok.any():
            out.loc[vals[ok].index] = vals[ok].dt.tz_convert(zone).dt.strftime("%Y-%m-%dT%H:%M:%S")
    return out


def _utc_text(ts: pd.Series) -> pd.Series:
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ").where(ts.notna(), None).astype(object)


def _validate_attacks(batch, c: Checker, options, known, result, state) -> pd.DataFrame:
    out = pd.DataFrame(index=batch.frame.index)
    _need_column(batch.frame, "start", "when the attack began, an ISO 8601 date-time")
    out["patient_id"] = _diary_patient_ids(batch, c, options)
    tz = options.zones(out["patient_id"], known)
    start_text = c.required("start", "ISO 8601 date-time")
    end_text = c.text("end")
    start, bad_start = parse_instants(start_text, tz)
    end, bad_end = parse_instants(end_text, tz)
    c.add(bad_start, ("start=" + start_text[bad_start].map(repr)
                      + " is not an ISO 8601 date-time (e.g. 2026-03-02T07:30 or 2026-03-02T07:30+01:00)")
          .reindex(start.index).to_numpy())
    c.add(bad_end, ("end=" + end_text[bad_end].map(repr) + " is not an ISO 8601 date-time")
          .reindex(end.index).to_numpy())
    before = (end < start).to_numpy()
    c.add(before, ("end " + end_text[before] + " is before start " + start_text[before]).reindex(end.index)
          .to_numpy())
    tomorrow = pd.Timestamp(options.today, tz="UTC") + pd.Timedelta(days=1, hours=14)
    future = (start > tomorrow).to_numpy()
    c.add(future, ("start " + start_text[future] + f" is in the future (today is {options.today})")
          .reindex(start.index).to_numpy())
    out["start"] = _utc_text(start)
    out["end"] = _utc_text(end)
    out["start_local"] = _local_text(start, tz)
    out["end_local"] = _local_text(end, tz)
    out["intensity"] = c.number("intensity", 0, 10)
    kind = c.text("kind").map(lambda v: v.lower(), na_action="ignore")
    bad_kind = (kind.notna() & ~kind.isin(["migraine", "headache"])).to_numpy()
    c.add(bad_kind, ("kind=" + kind[bad_kind].map(repr) + " must be migraine or headache")
          .reindex(kind.index).to_numpy())
    out["kind"] = kind.fillna("migraine")
    out["aura"] = c.boolean("aura")
    out["symptoms"] = c.tags("symptoms")
    meds = c.tags("medications", keep=":.")
    dose = meds.map(lambda v: [t.split(":", 1)[1] for t in v.split(";") if ":" in t], na_action="ignore")
    bad_dose = dose.map(lambda ds: any(not _is_number(d) for d in ds), na_action="ignore").fillna(False)
    bad_dose = bad_dose.astype(bool).to_numpy()
    c.add(bad_dose, ("medications=" + meds[bad_dose].map(repr)
                     + " has a dose that is not a number (write name:dose_mg, e.g. sumatriptan:50)")
          .reindex(meds.index).to_numpy())
    out["medications"] = meds
    out["relief"] = c.number("relief", 0, 10)
    return out


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def import_attacks(db, path, fmt, options) -> ImportResult:
    logged = fmt is not None and fmt.lower() in LOG_FORMATS
    return _import(db, path, fmt, options, "attacks", _validate_attacks, "attacks", ATTACK_COLUMNS,
                   ["patient_id", "start"], read=severity_log_batches if logged else None)


#: attack files that are logs of one person's pain over time rather than one row per attack
LOG_FORMATS = ("severity-log",)
#: a symptom logged this long or less before an attack starts (an aura, most often) belongs to it
_LEAD = pd.Timedelta(hours=6)
_DOSE = re.compile(r"^(\d+(?:\.\d+)?)\s*mg\s+(.+)$", re.IGNORECASE)
_LOG_LINE = "expected 'YYYY-MM-DD HH:MM:SS', a tab, then a pain number, a dose and drug ('10mg rizatriptan') or a symptom"
#: the layout of a pain log's time (its day or time may still not exist: 2026-02-30, 25:00)
_LOG_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_PREVENTIVE = re.compile(r"\b(preventa?tive|prophyla(xis|ctic))\b", re.IGNORECASE)


def severity_log_batches(path: Path, options: ImportOptions, state: dict) -> list[Batch]:
    """A pain log (MultiLog's export and the like; README, "Pain logs") as the attack rows it describes, in
    one batch; what it leaves out goes to the import's notes (``state["notes"]``).

    Each line is ``YYYY-MM-DD HH:MM[:SS]<TAB>value``, local to the patient's timezone. A number
    is the pain from then until the next number (0: the headache is over): an attack runs from the first
    number above 0 to the next 0, its intensity the highest number (an attack still going at the end of
    the log has no end). ``<dose>mg <drug>`` is a medication of the attack going on (not a preventive one,
    ``... preventative``: a treatment, which the import's note names); any other text a symptom
    of it ("aura..." sets ``aura``), or of the attack starting within six hours after it. Lines starting
    ``#`` are comments. The lines are read in time order (an export may list its pain, drugs and symptoms
    one after another; a line repeated is read once). A line that cannot be read is quarantined with its
    number and why; the attacks are made from the others. Each attack row carries the number of its first
    line."""
    if not options.patient:
        raise InputFileError(f"{path.name} is one person's pain log: say whose with --patient ID")
    problems, entries, impossible = [], [], 0
    with path.open(encoding=file_encoding(path), newline="") as fh:
        for n, text in enumerate(fh, start=1):
            line = text.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            when_text, tab, value = line.partition("\t")
            when_text, value = when_text.strip(), value.strip()
            when = pd.to_datetime(when_text, format="ISO8601", errors="coerce") if tab else pd.NaT
            if pd.isna(when) and tab and _LOG_TIME.match(when_text):  # a log's line, a wrong time
                impossible += 1
                why = (f"{when_text!r} has the layout of a time, but no such day or time exists "
                       "(month 01-12, a day of that month, hour 00-23, minute 00-59)")
                problems.append((n, why, line))
            elif pd.isna(when):
                problems.append((n, _LOG_LINE, line))
            elif when.tzinfo is not None:
                why = f"{when_text} has a UTC offset: a pain log's times are the patient's local times"
                problems.append((n, why, line))
            elif not value:
                problems.append((n, "the line has a time but nothing after the tab", line))
            elif "\t" in value:  # a table's row (a diary's day, say), not a log's one value
                problems.append((n, "the line has more than one tab: " + _LOG_LINE, line))
            else:
                try:
                    pain = float(value)
                except ValueError:
                    pain = None
                if pain is not None and not 0 <= pain <= 10:
                    problems.append((n, f"pain {value} is outside 0-10", line))
                else:
                    entries.append((when, n, pain, value, line))
    if problems and not entries and not impossible:
        # not one line of a pain log: another kind of file, refused whole
        first, why, _ = problems[0]
        raise InputFileError(f"{path.name} is not a pain log: none of its {len(problems)} line(s) reads as one "
                             f"(line {first}: {why}); check --format")
    # in time order (an export may list its pain, drugs and symptoms one after the other), the file's order
    # within a minute; a line repeated is read once
    entries.sort(key=lambda e: (e[0], e[1]))
    rows, lines, raws = [], [], []
    attack: dict | None = None
    pending: list[tuple[pd.Timestamp, str]] = []  # words before any attack, waiting for one
    stray = preventive = 0
    seen: set[tuple] = set()
    for when, n, pain, value, line in entries:
        if (when, value) in seen:
            continue
        seen.add((when, value))
        if pain is None and _DOSE.match(value) and _PREVENTIVE.search(value):
            preventive += 1  # a treatment, not a drug for the attack in hand
            continue
        if pain is not None:
            if pain > 0 and attack is None:
                attack = {"start": when, "peak": pain, "symptoms": [], "meds": [], "aura": False,
                          "line": n, "raw": [line]}
                for at, word in pending:
                    if when - at <= _LEAD:
                        _note_in(attack, word)
                    else:
                        stray += 1
                pending = []
            elif attack is not None:
                attack["peak"] = max(attack["peak"], pain)
                attack["raw"].append(line)
                if pain == 0:
                    rows.append(_attack_row(attack, when))
                    lines.append(attack["line"])
                    raws.append("\n".join(attack["raw"]))
                    attack = None
        elif attack is not None:
            _note_in(attack, value)
            attack["raw"].append(line)
        elif _DOSE.match(value):
            stray += 1  # a drug taken with no attack going on says nothing about one
        else:
            stray += sum(1 for at, _ in pending if when - at > _LEAD)
            pending = [(at, w) for at, w in pending if when - at <= _LEAD] + [(when, value)]
    if attack is not None:  # still going at the end of the log
        rows.append(_attack_row(attack, None))
        lines.append(attack["line"])
        raws.append("\n".join(attack["raw"]))
    stray += len(pending)
    notes = state.setdefault("notes", [])
    if stray:
        notes.append(f"{stray} symptom or drug line(s) of {path.name} fell outside every attack and were not "
                     "imported")
    if preventive:
        notes.append(f"{preventive} preventive drug line(s) of {path.name} were not imported as attack "
                     "medications: import them as treatments (a start date each) to see how they worked")
    frame = pd.DataFrame(rows, columns=["start", "end", "intensity", "aura", "symptoms", "medications"])
    return [Batch(frame.astype(object).where(frame.notna(), None), np.array(lines, dtype=np.int64), raws, problems)]


def _note_in(attack: dict, value: str) -> None:
    """A text line of the log, in ``attack``: a medication (``10mg rizatriptan``), an aura or a symptom."""
    dose = _DOSE.match(value)
    if dose:
        attack["meds"].append(f"{dose.group(2).strip()}:{dose.group(1)}")
    elif value.lower().startswith("aura"):
        attack["aura"] = True
    else:
        attack["symptoms"].append(value)


def _attack_row(attack: dict, end) -> list:
    return [attack["start"].isoformat(), None if end is None else end.isoformat(), plain_number(attack["peak"]),
            "yes" if attack["aura"] else None, ";".join(dict.fromkeys(attack["symptoms"])) or None,
            ";".join(dict.fromkeys(attack["meds"])) or None]



# ------------------------------------------------------------------------------------ treatments

TREATMENT_COLUMNS = ["patient_id", "date", "treatment", "dose_mg", "route", "notes", "source", "imported_at"]


def _validate_treatments(batch, c: Checker, options, known, result, state) -> pd.DataFrame:
    frame = batch.frame
    out = pd.DataFrame(index=frame.index)
    _need_column(frame, "date", "the day the treatment began, YYYY-MM-DD", instead=("start",))
    _need_column(frame, "treatment", "its name, e.g. ketamine_infusion, botox, erenumab")
    out["patient_id"] = _diary_patient_ids(batch, c, options)
    if "date" not in frame.columns and "start" in frame.columns:
        start = c.text("start")
        frame["date"] = start.map(lambda v: str(v)[:10], na_action="ignore")
    out["date"] = c.day("date", options, options.zones(out["patient_id"], known))
    treatment = c.required("treatment", "e.g. ketamine_infusion, botox, erenumab")
    out["treatment"] = normalise_tags(treatment.map(lambda v: str(v).replace(";", " "), na_action="ignore"))
    out["dose_mg"] = c.number("dose_mg", 0, None)
    out["route"] = c.text("route")
    out["notes"] = c.text("notes")
    return out


def import_treatments(db, path, fmt, options) -> ImportResult:
    return _import(db, path, fmt, options, "treatments", _validate_treatments, "treatments", TREATMENT_COLUMNS,
                   ["patient_id", "date", "treatment"])


IMPORTERS.update(patients=import_patients, diary=import_diary, attacks=import_attacks,
                 treatments=import_treatments)


# ------------------------------------------------------------------------------------ forget

#: Functions ``(db, config, patient_id)`` that erase what other modules keep outside the tables
#: (model files, report history...). Called inside forget's transaction.
FORGET_HOOKS: list[Callable] = []


def forget(db: sqlite_utils.Database, patient_id: str, *, reports_dir: Path | None = None,
           config=None) -> dict[str, int]:
    """Erase every stored record of a patient, in one transaction, and their files: their report folder
    and cohort ranking entry (with ``reports_dir``), their models (with ``config``: ``storage.models_dir``).

    Returns rows deleted per table. Raises :class:`NothingToForget` (an :class:`UnknownPatient`) when nothing
    of the patient exists.
    """
    from trigger_watch import models, reports

    storage._load_all_migrations()
    if reports_dir is not None and Path(reports_dir).is_dir():  # not another database's patient of that id
        reports.claim_folder(reports_dir, storage.database_id(db), getattr(config, "database", None) or "")
    tables = set(db.table_names())
    deleted: dict[str, int] = {}
    with storage.transaction(db):
        for table, column in storage.PATIENT_TABLES:
            if table in tables:
                n = db.conn.execute(f'DELETE FROM "{table}" WHERE "{column}" = ?', (patient_id,)).rowcount
                if n:
                    deleted[table] = n
        for hook in FORGET_HOOKS:
            hook(db, config, patient_id)
        if not deleted:
            raise NothingToForget(patient_id)
        # the files before the commit: if this fails or stops, the rows are still there to forget again
        if reports_dir is not None and reports.remove_from_cohort_reports(reports_dir, patient_id):
            deleted["cohort ranking files"] = len(reports.COHORT_FILES)
        if config is not None:
            n = models.ModelStore(config.models_dir).forget(patient_id)
            if n:
                deleted["model files"] = n
        if reports_dir is not None:
            folder = Path(reports_dir) / patient_id
            if folder.is_dir():
                shutil.rmtree(folder)
                deleted["report files"] = 1
    return deleted
