"""The training commands' argument parsing (masksub-train, masksub-train-mlm): each option's default after its help in
--help, and options by their full names only."""

from __future__ import annotations

import argparse
import copy
import sys

__all__ = ["FullNamesParser", "HelpWithDefaults"]


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


class FullNamesParser(argparse.ArgumentParser):
    """An ArgumentParser that takes options by their full names only (``allow_abbrev=False``): argparse's prefixes
    (``--mask-r`` for ``--mask-ratio``) would be recorded as typed in a run's ``meta.command``, which a resume
    repeats, and a prefix unique today becomes ambiguous when an option is added. An unrecognised ``--prefix`` of
    known options gets a hint naming them (a command recorded before 2026-12-07 may hold one)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            hints = []
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            for word in message[len("unrecognized arguments: ") :].split():
                name = word.split("=", 1)[0]
                full = [s for s in known if name.startswith("--") and len(name) > 2 and s.startswith(name)]
                if full and name not in known:
                    hints.append(f"{name} is not an option: {' or '.join(full[:4])}?")
            if hints:
                message += f" ({'; '.join(hints)} options are taken by their full names only)"
        super().error(message)
