"""The `kvserve` command. Only `--help` and `version` exist until the server lands."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvserve", description=__doc__)
    parser.add_argument("command", choices=["version"], help="what to do")
    args = parser.parse_args(argv)
    if args.command == "version":
        from importlib.metadata import version

        print(version("kvserve"))
    return 0
