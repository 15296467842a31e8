"""A back-test uses no data after its date (cli.md: ``analyze --as-of`` "analyses as if that date were today").
Some patients analysed as of an earlier day used the cohort prior of the last full run, which had pooled
every patient's later days; and a run over some patients could replace the whole model store."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

import pytest

from trigger_watch import analysis, models, simulate, storage
from trigger_watch import config as config_mod
from trigger_watch.importing import ImportOptions, import_file
from trigger_watch.progress import Progress

TODAY = date(2026, 11, 20)
SEED = 5151
N, DAYS = 32, 200  # at least models._EB_MIN_PATIENTS, so that the prior is learned from the data
PAST = TODAY - timedelta(days=80)


def _workspace(folder: Path, files: dict[str, Path]):
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text('[storage]\ndatabase = "tw.db"\nreports_dir = "reports"\n'
                                        'models_dir = "models"\n[weather]\nenabled = false\n')
    cfg = config_mod.load(folder / "config.toml")
    db = storage.connect(cfg.database)
    for kind in ("patients", "diary", "attacks", "sleep", "weather", "treatments"):
        import_file(db, kind, files[kind], ImportOptions(today=TODAY, default_timezone="UTC", config=cfg))
    return cfg, db


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    print(f"simulation seed {SEED}, {N} patients x {DAYS} days")
    cohort = simulate.simulate_cohort(N, DAYS, SEED, start=TODAY - timedelta(days=DAYS))
    return simulate.write_files(cohort, tmp_path_factory.mktemp("input"))


@pytest.fixture(scope="module")
def prior_as_of_past(files, tmp_path_factory) -> models.CohortPrior:
    """The prior a full run as of PAST learns, in a workspace of its own."""
    cfg, db = _workspace(tmp_path_factory.mktemp("past") / "ws", files)
    return analysis.analyze(db, cfg, as_of=PAST, write=False).prior


def test_some_patients_analysed_as_of_an_earlier_day_use_a_prior_learned_through_that_day(
        files, prior_as_of_past, tmp_path):
    cfg, db = _workspace(tmp_path / "ws", files)
    analysis.analyze(db, cfg, as_of=TODAY, write=False)
    models_dir = Path(cfg.models_dir)
    current = models.ModelStore(models_dir).load_prior()
    assert current.id != prior_as_of_past.id  # the later days changed the pooled prior
    fits = [models_dir / models.ModelStore.INDEX, models_dir / models.ModelStore.ANALYSES]
    stored = [p.read_bytes() for p in fits]

    one = analysis.all_patient_ids(db)[3]
    back = analysis.analyze(db, cfg, as_of=PAST, patient_ids=[one], write=False)
    assert back.analysed == [one]
    assert back.prior.id == prior_as_of_past.id  # what a full run as of PAST would have pooled
    assert back.prior_learned == N and "learned again from all 32 patients" in "\n".join(back.lines())
    # the back-test's fits are not the current ones: the stored fits are as the full run left them
    assert [p.read_bytes() for p in fits] == stored
    store = models.ModelStore(models_dir)
    assert store.prior_through(PAST).id == prior_as_of_past.id and store.prior_through(TODAY).id == current.id

    # kept: a second back-test to that day (or a later one before TODAY) learns nothing again
    again = analysis.analyze(db, cfg, as_of=PAST + timedelta(days=5), patient_ids=[one], write=False)
    assert again.prior_learned == 0 and again.prior.id == prior_as_of_past.id
    # the daemon's way, some patients as of the day the stored prior was learned through: that prior
    now = analysis.analyze(db, cfg, as_of=TODAY, patient_ids=[one], write=False)
    assert now.prior_learned == 0 and now.prior.id == current.id


def test_the_store_knows_what_each_prior_saw(tmp_path):
    cfg = config_mod.defaults(tmp_path).with_values(storage__models_dir=str(tmp_path / "models"))
    print(f"simulation seed {SEED}")
    panel = simulate.panel_from_cohort(simulate.simulate_cohort(N, 120, SEED))
    last = panel["date"].max().date()
    early = panel[panel["date"] <= panel["date"].max() - timedelta(days=40)].copy()
    early.attrs = panel.attrs
    models.analyse(early, cfg)
    store = models.ModelStore(cfg.models_dir)
    first = store.load_prior()
    assert store.prior_through(last - timedelta(days=40)).id == first.id
    assert store.prior_through(last - timedelta(days=41)) is None  # it saw that day's successor
    models.analyse(panel, cfg)
    second = store.load_prior()
    assert second.id != first.id
    assert store.prior_through(last).id == second.id
    assert store.prior_through(last - timedelta(days=1)).id == first.id  # kept from the run before
    # a store written before the horizon was recorded (nor the earlier priors): the day it was saved stands in
    idx = store.load_index()
    del idx["through"]
    store._write(store.root / store.INDEX, idx)
    (store.root / store.PRIORS).unlink()
    store = models.ModelStore(cfg.models_dir)
    saved = date.fromisoformat(idx["saved_at"][:10])
    assert store.prior_through(saved).id == second.id
    assert store.prior_through(saved - timedelta(days=1)) is None


def test_a_patient_without_a_column_the_cohort_has_is_added_to_the_store_not_put_in_its_place(tmp_path):
    """A patient who never logs a food the cohort logs has no column for it: their fit's table of the prior
    lacked that column, its id differed from the stored prior's, and saving the run replaced the whole store
    with that one patient (the others' fits were lost and refitted on the next run)."""
    cfg = config_mod.defaults(tmp_path).with_values(storage__models_dir=str(tmp_path / "models"))
    print(f"simulation seed {SEED}")
    panel = simulate.panel_from_cohort(simulate.simulate_cohort(N, 120, SEED))
    full = models.analyse(panel, cfg)
    one = min(full)
    food = next(c for c in panel.attrs["factors"]["column"] if c.startswith("food:"))
    sub = panel[panel["patient_id"] == one].drop(columns=[c for c in panel.columns if c.startswith(food[:-2])])
    sub.attrs = panel.attrs
    store = models.ModelStore(cfg.models_dir)
    prior = store.load_prior()
    part = models.analyse(sub, cfg, prior=prior)
    after = models.ModelStore(cfg.models_dir)
    assert after.load_prior().id == prior.id
    assert after.is_current(one, part[one].model["fingerprint"])
    assert all(after.is_current(p, full[p].model["fingerprint"]) for p in full if p != one)


def test_the_validation_refits_each_origin_under_a_prior_learned_before_it(files, tmp_path, monkeypatch):
    """The forecast validation (cv_* in triggers.json) refits the cohort at three origins before as_of. Under
    this run's prior its hyperparameters had seen the days it scores; the priors the store keeps from the
    nights before each origin had not."""
    from trigger_watch import forecast

    cfg, db = _workspace(tmp_path / "ws", files)
    first = analysis.analyze(db, cfg, as_of=TODAY, write=False, validate=True)
    assert first.validation["prior"].startswith("learned from the days before 0 of the 3 origins; this run's")
    for back in (90, 60, 30):  # the full nights before the origins (TODAY - 89, - 59, - 29)
        analysis.analyze(db, cfg, as_of=TODAY - timedelta(days=back), write=False, validate=False)
    store = models.ModelStore(cfg.models_dir)
    kept = [store.prior_through(TODAY - timedelta(days=back)).id for back in (90, 60, 30)]
    assert len(set(kept)) == 3

    used = []
    analyse = models.analyse

    def spy(panel, config, **kw):
        used.append((panel["date"].max().date(), kw["prior"].id))
        return analyse(panel, config, **kw)

    monkeypatch.setattr(forecast.models, "analyse", spy)
    out = analysis.analyze(db, cfg, as_of=TODAY, write=False, validate=True)
    assert [(last, pid) for last, pid in used] == [
        (TODAY - timedelta(days=back), k) for back, k in zip((90, 60, 30), kept, strict=True)]
    assert out.prior.id not in kept
    assert out.validation["prior"] == "learned from the days before each origin"


def _stages(shown: str) -> list[str]:
    """Each stage's last display: the text after a line's last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in shown.split("\n") if line]


def test_a_long_analysis_shows_each_stage_and_a_plain_callback_still_counts_the_reports(files, tmp_path):
    """At 10,000 patients the reading and the fit take half a minute before the first report: a terminal
    showed nothing until the reports, and nothing at all while a back-test learned its prior."""
    cfg, db = _workspace(tmp_path / "ws", files)
    shown = io.StringIO()
    bar = Progress("analysing", stream=shown)
    analysis.analyze(db, cfg, as_of=TODAY, progress=bar)
    bar.close()
    assert _stages(shown.getvalue()) == [
        f"reading the patients' days: {N}/{N} (100%)", "fitting the models, round: 3/3 (100%)",
        f"checking the forecast on the patients' past days: {N}/{N} (100%)", f"writing reports: {N}/{N} (100%)"]

    one = analysis.all_patient_ids(db)[3]
    shown = io.StringIO()
    bar = Progress("analysing", stream=shown)
    analysis.analyze(db, cfg, as_of=PAST, patient_ids=[one], progress=bar)
    bar.close()
    stages = _stages(shown.getvalue())
    assert stages[:2] == [f"learning the cohort prior: reading the patients' days: {N}/{N} (100%)",
                          "learning the cohort prior: fitting the models, round: 3/3 (100%)"]
    assert stages[2] == "reading the patients' days: 1/1 (100%)" and stages[-1] == "writing reports: 1/1 (100%)"

    # a plain callback (a script's, the daemon's) is given what it always was: the reports written
    counted: list[tuple[int, int]] = []
    analysis.analyze(db, cfg, as_of=PAST - timedelta(days=3), patient_ids=[one],
                     progress=lambda done, total: counted.append((done, total)))
    assert counted == [(1, 1)]


def _through(files: dict[str, Path], day: date, folder: Path) -> dict[str, Path]:
    """The input files with every record after ``day`` left out (a sleep period: one that ends after it)."""
    import csv

    folder.mkdir()
    column = {"diary": "date", "attacks": "start", "sleep": "end", "weather": "time", "treatments": "date"}
    out = {}
    for kind, path in files.items():
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if kind in column:
            at = rows[0].index(column[kind])
            rows = rows[:1] + [r for r in rows[1:] if r[at][:10] <= day.isoformat()]
        out[kind] = folder / path.name
        with out[kind].open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return out


def test_a_back_test_through_the_cli_gives_what_the_data_up_to_its_day_alone_give(files, tmp_path):
    """cli.md: ``analyze --as-of`` analyses as if that date were today, no data after it used. Its forecast
    for the next day read that day's weather as stored: recorded later, not what was forecast then."""
    import json
    import subprocess
    import sys

    one = "p00003"
    reports = {}
    for name, inputs in (("all", files), ("until", _through(files, PAST, tmp_path / "until-input"))):
        cfg, db = _workspace(tmp_path / name, inputs)
        db.conn.close()
        r = subprocess.run([sys.executable, "-m", "trigger_watch", "--config", str(tmp_path / name / "config.toml"),
                            "analyze", "--patient", one, "--as-of", PAST.isoformat()],
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        doc = json.loads((Path(cfg.reports_dir) / one / "triggers.json").read_text())
        doc.pop("generated_at")
        doc["model"].pop("fitted_at", None)
        reports[name] = doc
    assert reports["all"]["forecast"]["date"] == (PAST + timedelta(days=1)).isoformat()
    assert reports["all"] == reports["until"]
