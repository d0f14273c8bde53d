"""A run's data: the run folder (`folder`: layout, lock, writes, reads, schema), the typed
results frame (`frame`), row selectors (`rows`), repeats folded (`repeats`) with their
statistics (`stats`), merged shards (`merge`) and the plan a folder must hold (`completeness`).
"""
