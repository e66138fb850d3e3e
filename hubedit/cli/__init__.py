"""The ``hubedit`` command. Each command group lives in its own module and registers its sub-parser."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import HubeditError
from . import editing as editing_commands
from . import pareto as pareto_commands
from . import publish as publish_commands
from . import zoo as zoo_commands

COMMAND_GROUPS = [zoo_commands, editing_commands, pareto_commands, publish_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubedit",
        description="Learned editing of MLP classifiers for requirement compliance, with the Hugging Face Hub as home.",
    )
    parser.add_argument("--version", action="version", version=f"hubedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (HubeditError, FileNotFoundError, FileExistsError) as exc:
        print(f"hubedit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hubedit: interrupted; rerun the same command to resume where supported", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
