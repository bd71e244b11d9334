"""modelsync: keep a folder of model files in the state a TOML manifest declares."""

__version__ = "0.1.0"
