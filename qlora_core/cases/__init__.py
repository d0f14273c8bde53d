"""What runs: the `Case` (`case`), the GPU profile it targets (`gpus`), the tiers and families
the matrix is built from (`tiers`, `families`) and the matrix itself (`matrix`).
"""
