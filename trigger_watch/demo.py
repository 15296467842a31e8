"""The demo: a simulated clinic, imported and analysed offline, end to end.

``trigger-watch demo`` makes a scratch workspace, simulates a cohort (the simulator of ``simulate``, with
planted triggers, warning signs and avoidance behaviour), writes it as ordinary import files, imports them
through the same path a clinic uses, runs one cycle without the network and says where the reports are.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from trigger_watch import config as config_mod
from trigger_watch import storage
from trigger_watch.importing import ImportOptions, import_file

DEMO_CONFIG = """# The demo workspace's configuration (written by `trigger-watch demo`).
[storage]
database = "trigger_watch.db"
reports_dir = "reports"
models_dir = "models"

[weather]
# The demo imports the simulated weather from a file and never uses the network.
enabled = false
"""

IMPORT_ORDER = ("patients", "diary", "attacks", "sleep", "weather", "treatments")


@dataclass
class DemoResult:
    workspace: Path
    patients: int
    days: int
    as_of: date
    imports: list[str]
    cycle: list[str]
    top_patient: str | None

    def lines(self) -> list[str]:
        reports = self.workspace / "reports"
        out = [f"demo workspace: {self.workspace}",
               f"simulated {self.patients} patients over {self.days} days (up to {self.as_of})", ""]
        out += self.imports + [""] + self.cycle + ["", "Open these in a browser:",
                                                   f"  cohort ranking : {reports / 'cohort' / 'ranking.html'}"]
        if self.top_patient:
            out += [f"  patient summary: {reports / self.top_patient / 'summary.html'}",
                    f"  clinician page : {reports / self.top_patient / 'clinician.html'}"]
        out += ["", f"Try: trigger-watch --config {self.workspace / 'config.toml'} rank",
                f"     trigger-watch --config {self.workspace / 'config.toml'} report "
                f"{self.top_patient or 'PATIENT'} --for patient --format md"]
        return out


def is_demo_workspace(folder: Path) -> bool:
    """Whether ``folder`` is a workspace the demo made (and may replace): its config.toml begins with the
    demo's own first line. A clinic's workspace also has a config.toml, and must never be removed."""
    try:
        with open(folder / "config.toml", encoding="utf-8") as fh:
            return fh.readline() == DEMO_CONFIG.splitlines(keepends=True)[0]
    except (OSError, UnicodeDecodeError):
        return False


def run_demo(workspace: Path, *, today: date, n_patients: int = 36, n_days: int = 365, seed: int = 20261121,
             log: Callable[[str], None] | None = None, progress=None) -> DemoResult:
    from trigger_watch import daemon, simulate

    log = log or (lambda line: None)
    workspace = Path(workspace).resolve()
    if workspace.exists():
        if any(workspace.iterdir()) and not is_demo_workspace(workspace):
            from trigger_watch.errors import TriggerWatchError

            raise TriggerWatchError(f"{workspace} exists and is not a demo workspace (its config.toml was not "
                                    "written by `trigger-watch demo`); nothing was changed; pick another --dir")
        shutil.rmtree(workspace)
    (workspace / "input").mkdir(parents=True)
    (workspace / "config.toml").write_text(DEMO_CONFIG, encoding="utf-8")
    cfg = config_mod.load(workspace / "config.toml")

    as_of = today - timedelta(days=1)
    start = as_of - timedelta(days=n_days - 1)
    log(f"simulating {n_patients} patients x {n_days} days (seed {seed})")
    cohort = simulate.simulate_cohort(n_patients, n_days, seed, start=start)
    files = simulate.write_files(cohort, workspace / "input")

    db = storage.connect(cfg.database)
    imports = []
    for kind in IMPORT_ORDER:
        if kind not in files:
            continue
        log(f"importing {files[kind].name}")
        options = ImportOptions(today=today, default_timezone=cfg["patients.default_timezone"], config=cfg)
        result = import_file(db, kind, files[kind], options)
        imports.extend(result.lines())
    log("analysing")
    cycle = daemon.run_cycle(db, cfg, today=today, fetch=False, progress=progress)
    ranking = _top_patient(cfg)
    db.conn.close()
    return DemoResult(workspace, n_patients, n_days, as_of, imports, cycle.lines(), ranking)


def _top_patient(cfg) -> str | None:
    import json

    path = Path(cfg.reports_dir) / "cohort" / "ranking.json"
    if not path.exists():
        return None
    ranking = json.loads(path.read_text())
    return ranking[0]["patient_id"] if ranking else None
