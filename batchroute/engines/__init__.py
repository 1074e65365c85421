"""Engines beyond the local one, and where their data lives (object stores, many files)."""
