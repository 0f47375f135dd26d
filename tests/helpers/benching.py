"""Bench settings short enough for a test: every phase of a real run, in about a second."""

QUICK = dict(warmup_s=0.1, window_s=0.1, max_seconds=0.5, point_warmup_s=0.2, duration_s=0.5, search_steps=2)
