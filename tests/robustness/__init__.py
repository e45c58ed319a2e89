"""Robustness: hostile input, faults and restarts (nothing crashes, nothing replays, nothing is lost)."""
