"""One sentence instead of a ModuleNotFoundError traceback when a command needs an extra that is not installed.

Defined in ``edgecnn.train.commandline`` (the lowest layer, so train/ and export/ use it without importing
serve/); serve/ and benchmarks/ keep importing it from here.
"""

from __future__ import annotations

from edgecnn.train.commandline import EXTRA_MODULES, needs_extra

__all__ = ["EXTRA_MODULES", "needs_extra"]
