"""The training commands' --help formatter (masksub-train, masksub-train-mlm): each option's default after its help."""

from __future__ import annotations

import argparse
import copy
import sys

__all__ = ["HelpWithDefaults"]


class HelpWithDefaults(argparse.HelpFormatter):
    """The commands' --help: each option's default after its help, unless said there or none (None, a flag off)."""

    # Python 3.10's BooleanOptionalAction appends this to its own help (3.11 and later do not): taken off (a flag off)
    _APPENDED = " (default: %(default)s)"

    @classmethod
    def _own_help(cls, action: argparse.Action) -> str | None:
        help_text = action.help
        appended = sys.version_info < (3, 11) and isinstance(action, argparse.BooleanOptionalAction)
        if appended and help_text and help_text.endswith(cls._APPENDED):
            help_text = help_text[: -len(cls._APPENDED)]
        return help_text

    @classmethod
    def _says_default(cls, action: argparse.Action) -> bool:
        none = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        return bool(action.option_strings) and "default" not in (cls._own_help(action) or "") and not none

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and self._says_default(action):  # argparse prints no help line for help=None
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not self._says_default(action):
            return self._own_help(action)
        return f"{self._own_help(action) or ''} (default: %(default)s)".lstrip()
