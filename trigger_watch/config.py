"""Configuration: one registry of every setting, loaded from ``config.toml`` into a frozen object.

Where the file comes from, first match wins: ``--config PATH``, the ``TRIGGER_WATCH_CONFIG`` environment
variable, ``./config.toml``. Relative paths in the file are relative to the file. An unknown section or
key is an error that names it and, when it looks like a typo, the closest valid name.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trigger_watch.errors import ConfigError

ENV_VAR = "TRIGGER_WATCH_CONFIG"


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    default: Any
    help: str
    kind: type = str
    is_path: bool = False
    choices: tuple = ()
    is_zone: bool = False  # an IANA time zone name
    low: float | None = None  # a number's least allowed value (inclusive)
    high: float | None = None  # and its greatest
    unit_hint: str = ""  # said when the value is out of range: what the number means

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SETTINGS: tuple[Setting, ...] = (
    # storage
    Setting("storage", "database", "data/trigger_watch.db", "SQLite file, created on first use", is_path=True),
    Setting("storage", "reports_dir", "reports", "where reports are written, one folder per patient", is_path=True),
    Setting("storage", "models_dir", "models", "store of fitted per-patient models", is_path=True),
    Setting("storage", "busy_timeout_ms", 30000, "how long a writer waits for another one to finish, ms",
            int, low=0),
    Setting("storage", "report_spares", True,
            "keep each report file's previous version as a hidden .spare to write over next time "
            "(about twice the disk; no files created or freed each night)", bool),
    # patients
    Setting("patients", "default_timezone", "UTC", "IANA time zone for patients imported without one",
            is_zone=True),
    # import
    Setting("import", "create_patients", False, "create unknown patients on import instead of quarantining rows",
            bool),
    Setting("import", "batch_rows", 50000, "rows written per transaction when streaming a large file",
            int, low=1),
    # weather
    Setting("weather", "archive_url", "https://archive-api.open-meteo.com/v1/archive",
            "Open-Meteo historical (archive) API"),
    Setting("weather", "forecast_url", "https://api.open-meteo.com/v1/forecast", "Open-Meteo forecast API"),
    Setting("weather", "enabled", True, "fetch weather at all (false: only offline `import weather`)", bool),
    Setting("weather", "grid_degrees", 0.1, "patients within one grid cell of this size share one weather series",
            float, low=0.01, high=10),
    Setting("weather", "archive_lag_days", 5,
            "days the archive lags behind today; those days come from the forecast API and are refetched",
            int, low=0, high=90),
    Setting("weather", "timeout_seconds", 30.0, "HTTP timeout of one request, seconds",
            float, low=0.1, high=600),
    Setting("weather", "max_retries", 5, "tries after the first one on 429, 5xx or a connection error",
            int, low=0, high=20),
    Setting("weather", "backoff_seconds", 1.0, "first retry delay; doubles each try, with jitter",
            float, low=0, high=600),
    Setting("weather", "calls_per_minute", 500, "rate budget (Open-Meteo free tier: < 600)", int, low=1),
    Setting("weather", "calls_per_hour", 4500, "rate budget (free tier: < 5,000)", int, low=1),
    Setting("weather", "calls_per_day", 9000, "rate budget (free tier: < 10,000)", int, low=1),
    Setting("weather", "cells_per_request", 10, "grid cells asked for in one multi-location request",
            int, low=1, high=1000),
    Setting("weather", "user_agent", "trigger-watch/0.1 (migraine trigger analysis; clinic server)",
            "User-Agent header sent to Open-Meteo"),
    # sleep
    Setting("sleep", "fitabase_id_map", "",
            "CSV file `fitabase_id,patient_id` mapping Fitabase `Id` to patients (empty: Id is the patient id)",
            is_path=True),
    Setting("sleep", "nap_max_hours", 3.0, "a sleep period shorter than this that is not the main sleep is a nap",
            float, low=0, high=24),
    # analysis
    Setting("analysis", "fdr", 0.10, "false discovery rate allowed across reported triggers and protective factors",
            float, low=0.001, high=0.5, unit_hint="a share, not a percentage: 0.1 allows 10 % false calls"),
    Setting("analysis", "min_at_risk_days", 60, "fewer at-risk diary days than this: status insufficient_data",
            int, low=1),
    Setting("analysis", "min_attacks", 5, "fewer attack onsets than this: status insufficient_data",
            int, low=1),
    Setting("analysis", "no_association_low", 0.8, "an OR interval inside [low, high] means no association",
            float, low=0.01, high=1),
    Setting("analysis", "no_association_high", 1.25, "upper end of the no-association band",
            float, low=1, high=100),
    Setting("analysis", "max_history_days", 730, "days of history used for a fit (most recent first)",
            int, low=30),
    Setting("analysis", "validation_origins", 3,
            "rolling-origin validation of the forecast: cohort refits on the days before each origin "
            "(0: off; each costs about one fit)", int, low=0, high=24),
    Setting("analysis", "validation_every_days", 7,
            "validate each patient's forecast once in this many nights, on a night set by their id (so each "
            "night validates about this fraction of the cohort; 0: every run); the nights in between reuse "
            "it", int, low=0),
    Setting("analysis", "validation_catch_up", 250,
            "patients overdue for it (new ones, a missed night) are validated at their next run while there are "
            "at most this many or a night's share; more (a new installation, a missed week) each wait for their "
            "own night", int, low=0),
    Setting("analysis", "validation_step_days", 30,
            "days between validation origins; each origin's model forecasts the days up to the next one",
            int, low=1),
    # schedule
    Setting("schedule", "timezone", "UTC",
            "the clinic's clock: what 'today' is for the daemon's cycles and for run, analyze and fetch-weather",
            is_zone=True),
    Setting("schedule", "weather", "15 * * * *", "cron: when the daemon fetches weather"),
    Setting("schedule", "analysis", "30 2 * * *", "cron: when the daemon runs the analysis cycle"),
    Setting("schedule", "misfire_grace_seconds", 3600, "a job late by less than this still runs", int, low=1),
    # compute
    Setting("compute", "scheduler", "", "empty: run on this machine; `tcp://host:8786`: a Dask scheduler"),
    Setting("compute", "workers", 0, "local worker processes (0: one per core)", int, low=0),
    Setting("compute", "block_patients", 250,
            "patients read and reduced at a time: memory grows with this, not with the cohort", int, low=1),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_SECTIONS = sorted({s.section for s in SETTINGS})


@dataclass(frozen=True)
class Config:
    """Every setting by ``section.key``; paths already resolved against the config file's folder."""

    values: dict = field(default_factory=dict)
    source: Path | None = None

    def __getitem__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise ConfigError(f"no setting {name!r}{_did_you_mean(name, _BY_NAME)}") from None

    @property
    def root(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    @property
    def database(self) -> Path:
        return self["storage.database"]

    @property
    def reports_dir(self) -> Path:
        return self["storage.reports_dir"]

    @property
    def models_dir(self) -> Path:
        return self["storage.models_dir"]

    def with_values(self, **overrides: Any) -> "Config":
        """A copy with some settings replaced; keys use ``section__key`` (``storage__database=...``)."""
        values = dict(self.values)
        for k, v in overrides.items():
            name = k.replace("__", ".")
            if name not in _BY_NAME:
                raise ConfigError(f"no setting {name!r}{_did_you_mean(name, _BY_NAME)}")
            values[name] = _coerce(_BY_NAME[name], v, self.root)
        return Config(values=values, source=self.source)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(setting: Setting, value: Any, root: Path) -> Any:
    given = value
    kind = setting.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{setting.name} must be true or false, not {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{setting.name} must be a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{setting.name} must be a number, not {value!r}")
        value = float(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{setting.name} must be a string, not {value!r}")
    if (setting.low is not None and value < setting.low) or (setting.high is not None and value > setting.high):
        hint = f"; {setting.unit_hint}" if setting.unit_hint else ""
        raise ConfigError(f"{setting.name} = {given!r} is out of range ({_allowed(setting)}{hint})")
    if setting.is_zone:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{setting.name} = {value!r} is not a time zone: use an IANA name such as "
                              "'Europe/Vienna' or 'UTC'") from None
    if setting.is_path and value != "":
        p = Path(value).expanduser()
        value = p if p.is_absolute() else (root / p)
    return value


def defaults(root: Path | None = None) -> Config:
    root = root or Path.cwd()
    return Config(values={s.name: _coerce(s, s.default, root) for s in SETTINGS}, source=None)


def find_config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path.cwd() / "config.toml"
    return local if local.exists() else None


def load(path: str | os.PathLike | None = None) -> Config:
    """Load the configuration; with no file anywhere, the defaults relative to the current folder."""
    found = find_config_path(path)
    if found is None:
        return defaults()
    found = found.expanduser().resolve()
    if not found.is_file():
        raise ConfigError(f"config file {str(found)!r} does not exist")
    try:
        with found.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(found)!r} is not valid TOML: {exc}") from None
    return from_mapping(data, source=found)


def from_mapping(data: dict, source: Path | None = None) -> Config:
    root = source.parent if source else Path.cwd()
    values = {s.name: _coerce(s, s.default, root) for s in SETTINGS}
    where = f" in {source}" if source else ""
    for section, table in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]{where}{_did_you_mean(section, _SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]{where} must be a table of settings")
        for key, value in table.items():
            name = f"{section}.{key}"
            if name not in _BY_NAME:
                keys = [s.key for s in SETTINGS if s.section == section]
                hint = _did_you_mean(key, keys)
                raise ConfigError(f"unknown setting {name!r}{where}{hint}")
            values[name] = _coerce(_BY_NAME[name], value, root)
    return Config(values=values, source=source)


def render_toml() -> str:
    """The documented default config.toml, generated from the registry (``trigger-watch init`` writes it)."""
    lines = ["# trigger-watch configuration. Every setting, its default and what it does.",
             "# Relative paths are relative to this file.", ""]
    for section in dict.fromkeys(s.section for s in SETTINGS):
        lines.append(f"[{section}]")
        for s in (s for s in SETTINGS if s.section == section):
            allowed = _allowed(s)
            lines.append(f"# {s.help} ({allowed})" if allowed else f"# {s.help}")
            lines.append(f"{s.key} = {_toml_value(s.default)}")
        lines.append("")
    return "\n".join(lines)


def _allowed(s: Setting) -> str:
    """A number's allowed values in words ("from 0.001 to 0.5", "at least 1"); "" for any value."""
    if s.low is not None and s.high is not None:
        return f"from {s.low:g} to {s.high:g}"
    if s.low is not None:
        return f"at least {s.low:g}"
    return f"at most {s.high:g}" if s.high is not None else ""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
