"""Loads the qlora-bench pytest plugin (the package `qlora_plugin`) for `pytest bench` and `pytest tests`."""

pytest_plugins = ("qlora_plugin",)
