"""The ``ppconvmixer`` command: a thin layer over the package's modules.

Every subcommand exits non-zero with one clear ``error:`` line on bad input; keys are never
printed, only their fingerprints. argparse lives only in this package: :mod:`.key_commands`
(keys, single images, conversion), :mod:`.data_commands` (folders and datasets, owner
evaluation, provider checks), :mod:`.hub_commands` (push, attack, card-numbers), :mod:`.common`.
"""

from __future__ import annotations

import argparse
import sys

from ..cipher import CipherInputError
from ..hub import HubError
from ..images import ImagePolicyError
from ..key import InvalidKeyError
from .common import CLIError
from .data_commands import add_data_parsers
from .hub_commands import add_attack_parser, add_card_numbers_parser, add_push_parser
from .key_commands import add_key_parsers

__all__ = ["CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppconvmixer",
        description="Privacy-preserving image classification with block-wise encrypted images "
        "and ConvMixer with an adaptive permutation matrix. Keys stay with the data owner; "
        "only their fingerprints are ever printed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_key_parsers(sub)
    add_data_parsers(sub)
    add_push_parser(sub)
    add_attack_parser(sub)
    add_card_numbers_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (
        CLIError,
        InvalidKeyError,
        CipherInputError,
        FileExistsError,
        FileNotFoundError,
        HubError,
        ImagePolicyError,
        OSError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
