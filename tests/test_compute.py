"""Where the per-patient work runs does not change what it produces: one cycle in this process, on local
worker processes and on a Dask cluster writes byte-identical reports (timestamps aside)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from trigger_watch import compute, daemon, simulate, storage
from trigger_watch import config as config_mod
from trigger_watch import reports as tw_reports
from trigger_watch.errors import ConfigError
from trigger_watch.importing import ImportOptions, import_file

TODAY = date(2026, 11, 20)
SEED = 777
STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """12 simulated patients x 150 days as import files (seed 777)."""
    print(f"simulation seed {SEED}")
    cohort = simulate.simulate_cohort(12, 150, SEED, start=TODAY - timedelta(days=150))
    return simulate.write_files(cohort, tmp_path_factory.mktemp("input"))


def cycle(workspace: Path, files: dict[str, Path], scheduler: str = "", workers: int = 0, block: int = 500,
          more: str = ""):
    """Import ``files`` into a fresh workspace and run one cycle; returns the result and the report files.
    ``more``: config.toml sections added to the workspace's."""
    workspace.mkdir()
    (workspace / "config.toml").write_text(
        '[storage]\ndatabase = "tw.db"\nreports_dir = "reports"\nmodels_dir = "models"\n'
        f'[weather]\nenabled = false\n[compute]\nscheduler = "{scheduler}"\nworkers = {workers}\n'
        f'block_patients = {block}\n{more}')
    cfg = config_mod.load(workspace / "config.toml")
    db = storage.connect(cfg.database)
    options = ImportOptions(today=TODAY, default_timezone="UTC", config=cfg)
    for kind in ("patients", "diary", "attacks", "sleep", "weather", "treatments"):
        import_file(db, kind, files[kind], options)
    result = daemon.run_cycle(db, cfg, today=TODAY - timedelta(days=1), fetch=False)
    history = db.execute("SELECT count(*), count(DISTINCT patient_id) FROM reports").fetchone()
    db.conn.close()
    reports = Path(cfg.reports_dir)
    out = {str(p.relative_to(reports)): STAMP.sub(b"<time>", p.read_bytes())
           for p in sorted(reports.rglob("*")) if p.is_file() and p.name != tw_reports.OWNER}
    return result, out, history


@pytest.fixture(scope="module")
def serial(files, tmp_path_factory):
    return cycle(tmp_path_factory.mktemp("serial") / "ws", files)


def assert_same(serial, other) -> None:
    (r1, files1, hist1), (r2, files2, hist2) = serial, other
    assert r1.status == r2.status == "ok"
    assert r1.analysed == r2.analysed and len(r1.analysed) == 12
    assert hist1 == hist2 == (12, 12)
    assert sorted(files1) == sorted(files2) and len(files1) == 12 * 4 + 3
    different = [name for name in files1 if files1[name] != files2[name]]
    assert different == []


def test_local_worker_processes_write_the_same_reports(serial, files, tmp_path, monkeypatch):
    monkeypatch.setattr(compute, "MIN_PARALLEL", 1)  # 12 patients would otherwise run serially
    with compute.executor(config_mod.Config(values={"compute.workers": 2}), 12) as ex:
        assert ex.kind == "local" and ex.workers == 2
    assert_same(serial, cycle(tmp_path / "ws", files, workers=2))
    # blocks of 5: the workers also read their blocks from the database file and reduce them
    assert_same(serial, cycle(tmp_path / "ws5", files, workers=2, block=5))


def test_the_validation_runs_on_the_workers_while_this_process_makes_the_calls(serial, files, tmp_path,
                                                                              monkeypatch):
    """The validation needs only the cohort prior: its blocks go to the local workers as soon as the fit has
    it, while this process makes the cohort's calls (models._verdicts), and the reports are the same."""
    import threading

    from trigger_watch import analysis, models

    monkeypatch.setattr(compute, "MIN_PARALLEL", 1)
    begun, waited = threading.Event(), []
    validation_for, verdicts = analysis.validation_for, models._verdicts

    def validation_spy(*args, **kwargs):
        begun.set()
        return validation_for(*args, **kwargs)

    def verdicts_spy(*args, **kwargs):  # the calls wait for the validation to begin: run after it, they never would
        waited.append(begun.wait(30))
        return verdicts(*args, **kwargs)

    monkeypatch.setattr(analysis, "validation_for", validation_spy)
    monkeypatch.setattr(models, "_verdicts", verdicts_spy)
    assert_same(serial, cycle(tmp_path / "ws", files, workers=2, block=5))
    assert waited == [True]


def test_work_in_the_background_hands_back_its_result_or_its_error_and_never_holds_up_the_exit():
    """compute.Background (the validation's thread): result() returns what the function returned or raises
    what it raised; a process that gives up on it (Ctrl-C) exits without waiting for it."""
    assert compute.Background(divmod, 17, 5).result() == (3, 2)
    failing = compute.Background(int, "seventeen")
    with pytest.raises(ValueError, match="seventeen"):
        failing.result()
    assert failing.done()
    code = ("import time; from trigger_watch import compute; "
            "job = compute.Background(time.sleep, 300); print(job.done())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_blocks_of_patients_write_the_same_reports_as_one_block(serial, files, tmp_path):
    """The pipeline reads, reduces and spills 5 patients at a time (three blocks, design blocks in files):
    the same panel columns, fits, forecasts, validation and reports as the whole cohort at once."""
    assert_same(serial, cycle(tmp_path / "ws", files, block=5))


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:distributed")
def test_a_dask_cluster_writes_the_same_reports(serial, files, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert_same(serial, cycle(tmp_path / "ws", files, scheduler=cluster.scheduler_address))
        # blocks of 5: the blocks are read here, reduced on the cluster, their design blocks sent back
        assert_same(serial, cycle(tmp_path / "ws5", files, scheduler=cluster.scheduler_address, block=5))


def test_the_design_blocks_files_are_gone_once_the_fit_is_done(serial, files, tmp_path, monkeypatch):
    """The fit's spilled design blocks are removed as soon as the fit has read them for the last time (on a
    thread), not after the reports: when the reports begin, the folder is gone; the reports are the same."""
    from trigger_watch import models, reports

    monkeypatch.setattr(compute, "MIN_PARALLEL", 1)
    models_dir = tmp_path / "ws" / "models"
    seen = {}
    fit_chunks, begin_writing = models._fit_chunks, reports.begin_writing

    def fit_spy(*args, **kwargs):
        out = fit_chunks(*args, **kwargs)
        seen["after fit"] = sorted(p.name for p in models_dir.glob(".fit-*/*"))
        return out

    def begin_spy(*args, **kwargs):
        seen["reports"] = sorted(p.name for p in models_dir.glob(".fit-*"))
        return begin_writing(*args, **kwargs)

    monkeypatch.setattr(models, "_fit_chunks", fit_spy)
    monkeypatch.setattr(reports, "begin_writing", begin_spy)
    assert_same(serial, cycle(tmp_path / "ws", files, workers=2, block=5))
    assert len(seen["after fit"]) == 3  # three blocks of patients, a file each, still there after the last round
    assert seen["reports"] == []


def test_design_block_folders_a_killed_run_left_are_removed_by_the_next(tmp_path):
    """A run killed during the fit leaves its .fit-* folder (~1 GB at 10,000 patients); the next run removes
    those untouched for an hour, and never a younger one (a run going on beside it)."""
    import os
    import time

    from trigger_watch import analysis

    old, young, other = tmp_path / ".fit-old", tmp_path / ".fit-young", tmp_path / "analyses.joblib"
    for folder in (old, young):
        folder.mkdir()
        (folder / "chunk-1.npy").write_bytes(b"x" * 100)
    other.write_bytes(b"kept")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    assert analysis.remove_stale_spills(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fit-young", "analyses.joblib"]


def _loaded(name: str) -> tuple[int, bool]:
    """A worker's pid and whether it has imported ``name`` (a task for the test below)."""
    import os
    import time

    time.sleep(0.05)  # long enough that both workers get tasks
    return os.getpid(), name in sys.modules


def test_workers_started_early_have_imported_what_they_were_given():
    """LocalExecutor.start: the workers start and import the given modules on a thread while the caller goes
    on; once its wait returns, every worker has them (colorsys: a module nothing here imports)."""
    ex = compute.LocalExecutor(2)
    list(ex.map(_loaded, ["os"] * 4))  # the pool is up, as after an earlier cycle: the imports take no time
    wait = ex.start(("colorsys",))
    assert "colorsys" not in sys.modules  # imported there, not here
    wait()
    seen = list(ex.map(_loaded, ["colorsys"] * 20))
    assert len({pid for pid, _ in seen}) == 2
    assert all(loaded for _, loaded in seen)
    assert compute.Executor().start(("colorsys",))() is None  # in this process: nothing to start


def _on_interrupt(_):
    import os
    import signal
    import time

    time.sleep(0.05)  # long enough that both workers take tasks, on a loaded machine too
    return os.getpid(), signal.getsignal(signal.SIGINT)


def test_local_workers_leave_ctrl_c_to_the_daemon(monkeypatch):
    """Ctrl-C in a terminal signals the daemon and its workers together. A worker that raised
    KeyboardInterrupt in its task failed the cycle with a traceback; it ignores SIGINT, and the daemon
    finishes the current patient and stops, as on SIGTERM. Both ways in: a map and an early start."""
    import signal

    ex = compute.LocalExecutor(2)
    ex.start(("colorsys",))()
    seen = list(ex.map(_on_interrupt, range(20)))
    assert len({pid for pid, _ in seen}) == 2
    assert {handler for _, handler in seen} == {signal.SIG_IGN}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process still stops on it
    # a task run in the process that made it (joblib running it in place, a test) leaves that process's
    # SIGINT alone: the heap test below made pytest itself ignore Ctrl-C
    monkeypatch.setattr(compute, "_LAST_TASK", {})
    monkeypatch.setattr(compute, "keep_heap", lambda: None)
    assert compute._TrimOnNewStage(lambda x: x + 1)(1) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_scheduler_setting_that_is_not_an_address_is_an_error():
    with pytest.raises(ConfigError, match="tcp://host:8786"):
        compute.make_executor(config_mod.Config(values={"compute.scheduler": "localhost"}), 10)


def test_a_worker_hands_its_heap_back_when_a_new_stage_begins_not_between_tasks_of_one(monkeypatch):
    released, kept = [], []
    monkeypatch.setattr(compute, "release_memory", lambda: released.append(1))
    monkeypatch.setattr(compute, "keep_heap", lambda: kept.append(1))
    monkeypatch.setattr(compute, "_LAST_TASK", {})

    def read_block(x):
        return x + 1

    def write_chunk(x):
        return x * 2

    reading, writing = compute._TrimOnNewStage(read_block), compute._TrimOnNewStage(write_chunk)
    assert [reading(1), reading(2), reading(3)] == [2, 3, 4] and released == []  # one stage: heap kept
    assert kept == [1]  # a new worker is told to keep its heap, once
    assert writing(5) == 10 and len(released) == 1  # the next stage starts on a trimmed heap
    assert writing(6) == 12 and len(released) == 1 and kept == [1]


def test_a_worker_told_to_keep_its_heap_reuses_freed_buffers_instead_of_faulting_them_in_again():
    """In a fresh process (the settings stay with it): four 8 MiB buffers made and freed together, as a
    block's frames are, twenty times over. By glibc's default the freed top of the heap is handed back
    (more than twice the largest freed buffer is free) and faulted in again the next time; not after
    keep_heap."""
    if compute.libc("mallopt") is None:
        pytest.skip("not glibc: keep_heap does nothing here")
    code = (
        "import resource, sys, numpy as np\n"
        "from trigger_watch import compute\n"
        "if sys.argv[1] == 'keep': compute.keep_heap()\n"
        "[np.ones(2**20) for _ in range(4)]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): [np.ones(2**20) for _ in range(4)]\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {how: int(subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("default", "keep")}
    assert faults["default"] > 10 * 2048  # 2,048 pages of 4 KiB in each buffer
    assert faults["keep"] < 2048


def test_chunks_cover_every_item_once_in_order():
    items = [f"p{i}" for i in range(1003)]
    parts = compute.chunks(items, 2)
    assert [p for part in parts for p in part] == items
    assert len(parts) >= 8 and max(len(p) for p in parts) <= 500


def test_validation_spreads_the_cohort_over_the_nights():
    """Each patient is validated on one night in ``analysis.validation_every_days`` (their slot), so a night
    validates about a seventh of the cohort, not all of it once a week; a patient never validated, or whose
    stored validation is a full period old, is validated at their next run while such patients are few (at
    most a night's share or ``analysis.validation_catch_up``), else on their own night: a large cohort's
    first night validates a seventh of it, as every later night does."""
    from trigger_watch import analysis

    cfg = config_mod.defaults().with_values(analysis__validation_catch_up=150)
    ids = [f"p{i:05d}" for i in range(700)]
    day0 = date(2026, 1, 5)
    slot0 = [p for p in ids if analysis.validation_slot(p, 7) == day0.toordinal() % 7]
    # a new installation: 700 never validated, more than a night's share (100) or the catch-up (150)
    assert analysis.validate_due(cfg, {}, ids, day0, None) == slot0 and 60 <= len(slot0) <= 140
    # a small clinic's first night (150 patients)
    assert analysis.validate_due(cfg, {}, ids[:150], day0, None) == ids[:150]
    # a running clinic of 1,200: its 150 newcomers (at most a night's share, 172) are validated at once
    newcomers, more = [f"n{i:04d}" for i in range(150)], [f"q{i:05d}" for i in range(350)]
    known = {p: {"cv_as_of": (day0 - timedelta(days=1)).isoformat()} for p in ids + more}
    due = analysis.validate_due(cfg, known, ids + more + newcomers, day0, None)
    assert set(newcomers) <= set(due) and len(due) < 150 + 250, len(due)
    stored = {p: {"cv_as_of": day0.isoformat()} for p in ids}

    def week(first_night: date) -> list[list[str]]:
        nights = []
        for k in range(7):
            night = first_night + timedelta(days=k)
            nights.append(analysis.validate_due(cfg, stored, ids, night, None))
            stored.update({p: {"cv_as_of": night.isoformat()} for p in nights[-1]})
        return nights

    nights = week(day0 + timedelta(days=1))
    assert sorted(p for night in nights for p in night) == ids  # once each over the week
    assert all(60 <= len(night) <= 140 for night in nights), [len(n) for n in nights]
    assert week(day0 + timedelta(days=8)) == nights  # and then on the same night every week
    # a missed slot: validated at the next run, whatever the night
    late = dict(stored, p00001={"cv_as_of": (day0 - timedelta(days=30)).isoformat()})
    assert "p00001" in analysis.validate_due(cfg, late, ids, day0 + timedelta(days=9), None)
    # one night missed (day0 + 15): its patients are validated the next night with that night's own, which
    # are a period old too (the rule counts the overdue beyond tonight's own against a night's share)
    missed, nxt = (day0 + timedelta(days=k) for k in (15, 16))
    assert analysis.validate_due(cfg, stored, ids, nxt, None) == [
        p for p in ids if analysis.validation_slot(p, 7) in (missed.toordinal() % 7, nxt.toordinal() % 7)]
    # the daemon down for a fortnight: everyone is overdue, and each waits for their own night
    back = day0 + timedelta(days=22)
    assert analysis.validate_due(cfg, stored, ids, back, None) == [
        p for p in ids if analysis.validation_slot(p, 7) == back.toordinal() % 7]
    # a back-test (--as-of months ago): validations made with later data are not reused, whatever the slot
    assert analysis.validate_due(cfg, stored, ids, day0 - timedelta(days=120), None) == ids
    # forced, skipped, listed, turned off
    assert analysis.validate_due(cfg, stored, ids, day0 + timedelta(days=9), True) == ids
    assert analysis.validate_due(cfg, stored, ids, day0 + timedelta(days=9), False) == []
    assert analysis.validate_due(cfg, stored, ids, day0, ["p00002", "nobody"]) == ["p00002"]
    off = cfg.with_values(analysis__validation_origins=0)
    assert analysis.validate_due(off, {}, ids, day0, None) == []


def test_validation_runs_when_due_and_is_reused_in_between(files, tmp_path):
    """The rolling-origin validation refits the cohort three times, so it runs for a patient on their night
    of the week; the nights in between reuse the stored figures in the reports."""
    import json

    from trigger_watch import analysis

    cycle(tmp_path / "ws", files)  # imports and runs the first cycle (as of TODAY - 2: all due)
    cfg = config_mod.load(tmp_path / "ws" / "config.toml")
    db = storage.connect(cfg.database)
    first = TODAY - timedelta(days=2)
    every = int(cfg["analysis.validation_every_days"])

    def run(as_of, **kw):
        out = analysis.analyze(db, cfg, as_of=as_of, **kw)
        docs = {p.parent.name: json.loads(p.read_text())["model"]
                for p in Path(cfg.reports_dir).glob("p*/triggers.json")}
        return out, docs

    night = TODAY - timedelta(days=1)
    on_slot = {p for p in analysis.all_patient_ids(db)
               if analysis.validation_slot(p, every) == night.toordinal() % every}
    out, models = run(night)
    assert out.validation.get("patients", 0) == len(on_slot)
    for pid, model in models.items():  # validated tonight if it is their night, else yesterday's figures
        assert model["cv_as_of"] == (night if pid in on_slot else first).isoformat(), pid
        assert "cv_brier" in model, pid
    out, models = run(first + timedelta(days=8), validate=False)
    assert out.validation == {} and models["p00003"]["cv_as_of"] != (first + timedelta(days=8)).isoformat()
    out, models = run(first + timedelta(days=8), validate=True)
    assert out.validation["patients"] == 12
    assert {m["cv_as_of"] for m in models.values()} == {(first + timedelta(days=8)).isoformat()}
    db.conn.close()


def test_a_large_cohort_s_first_night_validates_a_night_s_share_and_says_when_the_rest_come(files, tmp_path):
    """With more patients never validated than ``analysis.validation_catch_up`` or a night's share (here 0,
    so 12 patients are "many"), the first night validates those whose night it is, as every later night
    does; each other patient's report says by which run theirs comes (``model.cv_due``), and that run
    validates it."""
    import json

    from trigger_watch import analysis

    cycle(tmp_path / "ws", files, more="[analysis]\nvalidation_catch_up = 0\n")
    cfg = config_mod.load(tmp_path / "ws" / "config.toml")
    reports_dir, first = Path(cfg.reports_dir), TODAY - timedelta(days=2)

    def model(pid: str) -> dict:
        return json.loads((reports_dir / pid / "triggers.json").read_text())["model"]

    slot = {f"p{i:05d}": analysis.validation_slot(f"p{i:05d}", 7) for i in range(12)}
    tonight = sorted(p for p, s in slot.items() if s == first.toordinal() % 7)
    later = sorted(set(slot) - set(tonight))
    assert 0 < len(tonight) < 12 > len(later) > 0, tonight  # the seed puts some on the first night
    for pid in tonight:
        assert model(pid)["cv_as_of"] == first.isoformat() and "cv_due" not in model(pid), pid
    for pid in later:
        m, page = model(pid), (reports_dir / pid / "clinician.html").read_text()
        due = date.fromisoformat(m["cv_due"])
        assert first < due <= first + timedelta(days=7) and due.toordinal() % 7 == slot[pid], (pid, due)
        assert m["cv_days"] is None and m["cv_brier"] is None and "cv_as_of" not in m, pid
        assert f"this patient's comes with the analysis of the data through {m['cv_due']} at the" in page, pid
    pid = later[0]
    due = date.fromisoformat(model(pid)["cv_due"])
    db = storage.connect(cfg.database)
    analysis.analyze(db, cfg, as_of=due)
    db.conn.close()
    assert model(pid)["cv_as_of"] == due.isoformat() and model(pid)["cv_days"] > 0
    assert "cv_due" not in model(pid) and "Not validated yet" not in (reports_dir / pid / "clinician.html").read_text()


def test_a_back_test_validates_everyone_however_many_were_never_validated(files, tmp_path):
    """``analyze --as-of`` a past day is one run: no later night would validate the patients left for
    their own night, so it validates all of them even where a nightly run would spread them."""
    import json

    from trigger_watch import analysis

    cycle(tmp_path / "ws", files, more="[analysis]\nvalidation_catch_up = 0\n")
    cfg = config_mod.load(tmp_path / "ws" / "config.toml")
    db = storage.connect(cfg.database)
    past = TODAY - timedelta(days=30)
    out = analysis.analyze(db, cfg, as_of=past, back_test=True)
    db.conn.close()
    assert out.validation["patients"] == 12
    for folder in Path(cfg.reports_dir).glob("p*"):
        model = json.loads((folder / "triggers.json").read_text())["model"]
        assert model["cv_as_of"] == past.isoformat() and "cv_due" not in model, folder.name


def test_a_validation_the_cycle_gave_up_on_sends_no_more_blocks_and_keeps_nothing(files, tmp_path):
    """The validation runs on a thread while the cycle goes on; when the cycle fails or is interrupted it sets
    ``halt``: no further block is sent and nothing of the validation is stored."""
    import threading

    from trigger_watch import analysis, features, models

    cycle(tmp_path / "ws", files)
    cfg = config_mod.load(tmp_path / "ws" / "config.toml")
    db = storage.connect(cfg.database)
    night = TODAY - timedelta(days=1)
    ids = analysis.all_patient_ids(db)
    store = models.ModelStore(cfg.models_dir)
    kept = (Path(cfg.models_dir) / store.VALIDATION).read_bytes()
    sent = []
    source = analysis._block_source

    def counted(*args, **kwargs):
        sent.append(args[2])
        return source(*args, **kwargs)

    args = (db, cfg.with_values(compute__block_patients=4), ids, night, {}, features.cohort_columns(db, None, night))
    kwargs = {"subset": False, "validate": True, "outcome": analysis.AnalysisOutcome(),
              "prior": store.load_prior()}
    halt = threading.Event()
    halt.set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis, "_block_source", counted)
        with pytest.raises(analysis.AnalysisHalted):
            analysis.validation_for(*args, **kwargs, halt=halt)
        assert sent == []
        assert (Path(cfg.models_dir) / store.VALIDATION).read_bytes() == kept
        done = analysis.validation_for(*args, **kwargs, halt=threading.Event())
    assert len(sent) == 6 and sorted(done) == ids  # blocks of two: twelve patients validated
    assert all(v["cv_as_of"] == night.isoformat() for v in done.values())
    db.conn.close()


def test_a_cycle_settles_its_blocks_and_results_and_leaves_the_collector_as_it_was(files, tmp_path, monkeypatch):
    """The blocks of patients and the results stay to the end of the cycle: they are taken out of the
    collector's sight as they are made (storage.objects_settled), once per block and once after the fit,
    and handed back when the cycle ends."""
    import gc

    calls = []
    freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1) or freeze())
    result, _, _ = cycle(tmp_path / "ws", files, block=5)
    assert result.status == "ok" and len(calls) == 3 + 1  # 12 patients in blocks of 5, then the results
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_a_report_that_cannot_be_put_in_place_fails_that_patient_alone(files, tmp_path, monkeypatch):
    """A patient whose file cannot be renamed into place (reports.commit_staged) is failed, with no history
    row, the others are written, and no temporary file is left anywhere."""
    from trigger_watch import reports

    commit = reports.commit_staged

    def blocked(reports_dir, staged):
        for pid, moves in staged:
            if pid == "p00003":  # the staged file is gone: it cannot be put in place
                Path(moves[1][0]).unlink()
        return commit(reports_dir, staged)

    monkeypatch.setattr(reports, "commit_staged", blocked)
    result, out, history = cycle(tmp_path / "ws", files)
    assert list(result.failed) == ["p00003"] and "FileNotFoundError" in result.failed["p00003"]
    assert len(result.analysed) == 11 and "p00003" not in result.analysed
    assert history == (11, 11)
    assert not [name for name in out if name.endswith(".tmp")]
    assert sum(name.startswith("p00004/") for name in out) == 4
