"""The `mvf` console command: one entry point, one module per subcommand in `mvf.commands`.

Each command module defines ``add_parser(subparsers)`` that registers its parser and sets
``func`` to a callable taking the parsed arguments. Bad input raises `MvfError`; `main` prints
it as one line (``mvf <cmd>: error: ...``) and exits with status 2.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import sys

from mvf.errors import INPUT_ERRORS, MvfError

# Subcommand modules, in the order `mvf --help` lists them.
COMMANDS = (
    "build_model", "export", "visualize", "synth", "train", "reconstruct", "fit", "evaluate",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `mvf` parser with every subcommand, or only ``only`` (a name in `COMMANDS`): a run
    imports just its own command's modules (each pulls in its part of mvf; ~1 s for all)."""
    parser = argparse.ArgumentParser(
        prog="mvf", description="MVF-Net: multi-view 3D face morphable model regression.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"mvf.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mvf.commands.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0].replace("-", "_") if argv else None
    parser = build_parser(name if name in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except INPUT_ERRORS as e:
        print(f"mvf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that can't be read or created: name it, no traceback
        where = e.filename if e.filename is not None else "<file>"
        print(f"mvf {args.command}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mvf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def entry() -> None:
    """The console command: `main`, then exit without the interpreter's final garbage collection
    of everything torch and mediapipe loaded (`gc.freeze`: ~0.7 s of every run, after all files
    are written and closed)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
