"""tables.md, wall_time.md and plots/: the lesson's tables with measured numbers (`lesson`,
which assembles tables.md from `dtype`, `engines`, `ladder`, `multigpu`, `two_card_70b`),
where the wall time went (`wall_time`) and the figures (`plots`).
"""
