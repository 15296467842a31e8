import tomllib
from pathlib import Path

import pytest

from trigger_watch import config
from trigger_watch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_shipped_config_with_a_comment():
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    text = (ROOT / "config.toml").read_text().splitlines()
    for s in config.SETTINGS:
        assert s.key in shipped[s.section], f"{s.name} missing from config.toml"
        i = next(i for i, line in enumerate(text) if line.startswith(f"{s.key} ="))
        assert text[i - 1].startswith("# "), f"{s.name} has no comment line in config.toml"
        assert s.help, f"{s.name} has no help text"


def test_spec_keys_exist_with_spec_defaults():
    d = config.defaults(Path("/x"))
    assert d.database == Path("/x/data/trigger_watch.db")
    assert d.reports_dir == Path("/x/reports")
    assert d["weather.archive_url"] == "https://archive-api.open-meteo.com/v1/archive"
    assert d["weather.forecast_url"] == "https://api.open-meteo.com/v1/forecast"
    assert d["schedule.timezone"] == "UTC"


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg_file = tmp_path / "sub" / "c.toml"
    cfg_file.write_text('[storage]\ndatabase = "db/x.db"\nreports_dir = "/abs/reports"\n')
    cfg = config.load(cfg_file)
    assert cfg.database == tmp_path / "sub" / "db" / "x.db"
    assert cfg.reports_dir == Path("/abs/reports")


def test_typo_key_is_named_with_the_closest_valid_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[storage]\ndatabse = "x.db"\n')
    with pytest.raises(ConfigError, match=r"storage\.databse.*did you mean 'database'"):
        config.load(f)


def test_unknown_section_is_named(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[wether]\narchive_url = "x"\n')
    with pytest.raises(ConfigError, match=r"\[wether\].*did you mean 'weather'"):
        config.load(f)


def test_wrong_type_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[analysis]\nfdr = \"low\"\n")
    with pytest.raises(ConfigError, match="analysis.fdr must be a number"):
        config.load(f)


@pytest.mark.parametrize("line,message", [
    ("[analysis]\nfdr = 10", r"analysis\.fdr = 10 is out of range \(from 0\.001 to 0\.5; a share, not a percentage"),
    ("[analysis]\nfdr = 0", r"analysis\.fdr = 0 is out of range"),
    ("[analysis]\nmin_at_risk_days = -5", r"analysis\.min_at_risk_days = -5 is out of range \(at least 1\)"),
    ("[analysis]\nno_association_low = 1.2", r"no_association_low = 1\.2 is out of range \(from 0\.01 to 1\)"),
    ("[compute]\nblock_patients = 0", r"compute\.block_patients = 0 is out of range \(at least 1\)"),
])
def test_a_number_out_of_its_range_is_named_when_the_file_loads(tmp_path, line, message):
    """fdr = 10 (a clinic writing 10 for 10 %) was taken: every factor of the walkthrough's patient was then
    called a trigger, against the 10 % the README promises."""
    f = tmp_path / "config.toml"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        config.load(f)


def test_every_default_is_in_its_range_and_the_written_file_says_the_range():
    for s in config.SETTINGS:
        assert s.low is None or s.default >= s.low, s.name
        assert s.high is None or s.default <= s.high, s.name
    assert "# false discovery rate allowed across reported triggers and protective factors (from 0.001 to 0.5)\n" \
        "fdr = 0.1\n" in config.render_toml()
    assert config.from_mapping({"analysis": {"fdr": 0.5, "validation_origins": 0}})["analysis.fdr"] == 0.5


@pytest.mark.parametrize("section,key", [("schedule", "timezone"), ("patients", "default_timezone")])
def test_a_time_zone_that_does_not_exist_is_named_when_the_file_loads(tmp_path, section, key):
    """A misspelt zone failed later with a traceback (the daemon in a restart loop under systemd), or in
    patients' stored zones with only a warning."""
    f = tmp_path / "config.toml"
    f.write_text(f'[{section}]\n{key} = "Europe/Viena"\n')
    with pytest.raises(ConfigError, match=rf"{section}\.{key} = 'Europe/Viena' is not a time zone"):
        config.load(f)
    f.write_text(f'[{section}]\n{key} = "Europe/Vienna"\n')
    assert config.load(f)[f"{section}.{key}"] == "Europe/Vienna"


def test_env_var_is_used_when_no_option(tmp_path, monkeypatch):
    f = tmp_path / "env.toml"
    f.write_text('[storage]\nreports_dir = "r2"\n')
    monkeypatch.setenv(config.ENV_VAR, str(f))
    assert config.load().reports_dir == tmp_path / "r2"
    other = tmp_path / "opt.toml"
    other.write_text('[storage]\nreports_dir = "r3"\n')
    assert config.load(other).reports_dir == tmp_path / "r3"


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
