"""Every error trigger-watch raises on purpose.

    TriggerWatchError                      base; the CLI prints its message as one line, exit 1
    ├── ConfigError(ValueError)            config.toml is unreadable, has an unknown key or a bad value
    ├── InputFileError(OSError)            an input file cannot be read at all (missing, directory, binary,
    │                                      empty, unknown encoding, unknown format)
    ├── StorageError                       the database cannot be opened or migrated
    ├── UnknownPatient(LookupError)        a patient id that is not in the database
    │   └── NothingToForget                forget of an id with nothing stored (a typo, or forgotten already)
    ├── WeatherError                       Open-Meteo could not be reached or answered an error
    │   └── WeatherRateLimited             our own rate budget (free tier) would be exceeded
    ├── ModelError                         a model could not be fitted (with likely causes)
    └── CycleBusy                          another process holds the analysis lease

Row-level problems are not exceptions: they become quarantined rows (see ``importing``).
"""

from __future__ import annotations


class TriggerWatchError(Exception):
    """Base of every deliberate trigger-watch error; its message is meant for a person."""


class ConfigError(TriggerWatchError, ValueError):
    pass


class InputFileError(TriggerWatchError, OSError):
    pass


class StorageError(TriggerWatchError):
    pass


class UnknownPatient(TriggerWatchError, LookupError):
    def __init__(self, patient_id: str):
        self.patient_id = patient_id
        # not the import's advice (--create-patients): analyze, report, panel and forget have no such option
        super().__init__(f"patient {patient_id!r} is not in the database: import them first with "
                         f"`trigger-watch import patients FILE` (`trigger-watch rank` lists the patients)")


class NothingToForget(UnknownPatient):
    """``forget`` of an id with nothing stored: the import's advice would send a clinic that mistyped the id
    of a patient asking to be erased to import them."""

    def __init__(self, patient_id: str):
        self.patient_id = patient_id
        LookupError.__init__(self, f"nothing is stored of patient {patient_id!r}, so nothing was erased: check "
                                   f"the id (`trigger-watch rank` lists the patients), or they were forgotten "
                                   f"already")


class WeatherError(TriggerWatchError):
    pass


class WeatherRateLimited(WeatherError):
    pass


class ModelError(TriggerWatchError):
    pass


class CycleBusy(TriggerWatchError):
    pass
