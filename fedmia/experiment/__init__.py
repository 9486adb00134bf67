"""Typed config, stage runner, run directory, report and CLI."""
