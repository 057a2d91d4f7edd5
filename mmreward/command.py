"""How every command of the suite ends: exit status 0 on success; a user error is one line on stderr and
exit status 2; Ctrl-C is one line and status 130. ``--debug`` (anywhere on the command line) or
``MMALIGN_DEBUG=1`` shows the traceback instead.

    if __name__ == "__main__":
        sys.exit(run_command(main))
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .errors import UserError

DEBUG_FLAG = "--debug"


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it (or ``MMALIGN_DEBUG=1``) asks for tracebacks."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return rest, len(rest) != len(argv) or os.environ.get("MMALIGN_DEBUG", "") not in ("", "0")


def run_command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` (default ``sys.argv[1:]``) and turn its end into an exit status."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
    except UserError as e:
        if debug:
            raise
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def with_examples(parser: argparse.ArgumentParser, *commands: str) -> argparse.ArgumentParser:
    """Show ``commands`` under ``examples:`` at the end of ``parser``'s ``--help``."""
    parser.epilog = "examples:\n" + "\n".join(f"  {c}" for c in commands)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
