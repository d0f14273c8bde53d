"""The release gate: a run compared with a stored baseline (`verdict`), metric by metric
(`rules`) within `thresholds`; baselines written and read (`baseline`) and chosen by profile,
tier and GPU kind (`baseline_choice`). See docs/gate.md.
"""
