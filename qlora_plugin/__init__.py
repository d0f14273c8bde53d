"""The qlora-bench pytest plugin.

- `options`: the qlora-bench option group, validated once into `BenchOptions`.
- `session`: `BenchSession`, one `pytest bench` session's run folder, resume, progress, outputs.
- `hooks`: the matrix as tests (parametrization, ordering, fixtures), the end of the session.
- `resume`: what --resume accepts as a run folder, the settings it keeps, conflicting options.
- `interrupt`: Ctrl-C and SIGTERM stop the session cleanly; the paragraph that says how to resume.
- `checks`: assertions the bench modules share, imported by name.

Loading this module (`pytest_plugins = ("qlora_plugin",)` in the root conftest.py) registers
`options` and `hooks`; `checks` is imported by the tests that use it.
"""

pytest_plugins = ("qlora_plugin.options", "qlora_plugin.hooks")
