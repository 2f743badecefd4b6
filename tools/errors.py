"""How the command-line tools end: a user's mistake is a short message and exit code 2, a bug
is a traceback.

A mistake in the user's input (a config key, a missing file, a corrupt image, a bad checkpoint)
is raised as one of :data:`USER_ERRORS` and printed as ``error: <message>``; with ``--debug`` or
``TOOLS_DEBUG=1`` in the environment its traceback is shown too. Any other exception is a bug
and propagates with its traceback. This module imports nothing heavy, so a CLI that does not need
torch does not load it here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: Exit status of a user error.
USER_ERROR_EXIT_CODE = 2
#: Environment variable that shows tracebacks of user errors too.
DEBUG_ENV = "TOOLS_DEBUG"
#: ``module:class`` of every exception that reports a user's mistake. Resolved lazily: a class
#: whose module was never imported cannot have been raised.
USER_ERRORS = (
    "backbones_tools.config.loader:ConfigError",
    "backbones_tools.engine.data:DataRootError",
    "backbones_tools.engine.checkpoint:CheckpointError",
    "backbones_tools.data.errors:CocoFormatError",
    "backbones_tools.data.errors:ImageLoadError",
    "backbones_tools.data.errors:DatasetError",
    "backbones.weights:WeightsFileError",
    "backbones.weights:WeightsMismatchError",
    "backbones.variants:UnknownBackboneError",
    "builtins:FileNotFoundError",
    "backbones_tools.deploy.convert:ConversionError",
    "backbones_tools.deploy.onnx_export:DeployError",
)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a mistake in the user's input (see :data:`USER_ERRORS`)."""
    for entry in USER_ERRORS:
        module, name = entry.split(":")
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``TOOLS_DEBUG`` set to a true value."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_cli(main: Callable[[], int], *, debug: bool = False) -> int:
    """Call ``main``; a user error becomes ``error: ...`` on stderr and exit code 2 (or the
    error's own ``exit_code``, e.g. 1 for an export whose check failed)."""
    try:
        return main()
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs just below
        if not is_user_error(exc) or debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; one says why
            print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", USER_ERROR_EXIT_CODE))
