"""Silence a chatty library logger for the length of a call (the CLI prints its own progress)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str | None, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger ``name`` (None: the root logger) to ``level`` inside the block."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
