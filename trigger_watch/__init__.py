"""trigger-watch: per-patient migraine trigger analysis from diary, weather and sleep data."""

__version__ = "0.1.0"
