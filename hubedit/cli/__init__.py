"""The ``hubedit`` command. Each command group lives in its own module and registers its sub-parser."""

from __future__ import annotations

import argparse
import os
import sys

from ..version import __version__
from ..errors import HubeditError
from . import editing as editing_commands
from . import pareto as pareto_commands
from . import publish as publish_commands
from . import zoo as zoo_commands

COMMAND_GROUPS = [zoo_commands, editing_commands, pareto_commands, publish_commands]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``hubedit: error: ...`` line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # noqa: D401 -- argparse's hook
        self.exit(2, f"hubedit: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hubedit",
        description="Learned editing of MLP classifiers for requirement compliance, with the Hugging Face Hub as home.",
    )
    parser.add_argument("--version", action="version", version=f"hubedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; every failure is one ``hubedit: error: ...`` line on stderr and exit status 2
    (130 on Ctrl-C). ``HUBEDIT_DEBUG=1`` re-raises instead, for a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hubedit: interrupted; rerun the same command to resume where supported", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the CLI's boundary: one line per error, never a traceback
        if os.environ.get("HUBEDIT_DEBUG"):
            raise
        print(f"hubedit: error: {error_line(exc)}", file=sys.stderr)
        return 2


def error_line(exc: BaseException) -> str:
    """One line for ``exc``: hubedit's own errors say what was expected and what came; anything else is named
    by its type, since its message alone may not say what went wrong."""
    text = " ".join(str(exc).split()) or repr(exc)
    if isinstance(exc, (HubeditError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
        return text
    return f"{type(exc).__name__}: {text}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
