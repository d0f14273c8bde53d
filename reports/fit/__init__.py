"""The fit advisor: does a QLoRA setting fit a GPU, and the smallest change that makes it fit
(`advisor`), from the question's options (`query`) and a memory model fitted to measured rows
(`model`). See docs/fit.md.
"""
