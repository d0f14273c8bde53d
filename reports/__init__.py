"""reports: stored runs -> claims.md, tables.md, wall_time.md, plots and the gate's verdict.

`run` (the run folder and its data), `claims`, `tables`, `gate` and `fit`; `render` renders a
folder's reports, `__main__` is the command line (`python -m reports`).
"""
