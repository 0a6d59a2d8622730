"""Comparison tables (and, later, plots) built from finished runs."""
