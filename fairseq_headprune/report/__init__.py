"""Plots and the report, drawn from results files only (never from a model).
matplotlib is imported lazily so training never pays for it."""
