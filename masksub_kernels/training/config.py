"""``--config FILE``: a YAML file of option values for ``masksub-train`` (the recipes in ``recipes/``).

Keys are the long option names, with dashes or underscores (``weight-decay`` or ``weight_decay``); a value in the
file replaces the option's default and an option given on the command line replaces the file's value. Every key and
value is checked before anything is built: an unknown key (named, with the closest valid one and the list of valid
keys), a value of the wrong type (``lr: fast``), a value outside an option's choices, a file that is not a mapping or
not YAML, and a missing file are all ``UsageError``s, printed as ``masksub-train: error: ...`` (exit status 2).

Value types follow the options: flags (``--amp``) take ``true`` / ``false``; integer options take integers; float
options integers or floats; ``model-kwargs`` a mapping (``{img_size: 192}``) or a list of ``key=value`` strings;
list options (``--mean``) a list; ``null`` where the option's default is None.
"""

from __future__ import annotations

import argparse
import difflib
import os

from .run_setup import UsageError

__all__ = ["load_config", "parse_args_with_config"]


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{dest: action} of the options a config file may set (not --help, not --config itself)."""
    return {
        a.dest: a
        for a in parser._actions  # argparse keeps no public list of its actions
        if a.option_strings and a.dest not in ("help", "config")
    }


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _convert(key: str, value, action: argparse.Action, where: str):
    """The config value as the parsed option would hold it, or a UsageError naming the key and the expected type."""
    name = _option(action.dest)
    # Flags: store_true / store_false, and --x / --no-x pairs (BooleanOptionalAction: the command line can turn
    # off what the file turns on)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {key!r} ({name}) is a flag: true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise UsageError(f"{where}: {key!r} ({name}) cannot be null (its default is {action.default!r})")
        return None
    if action.dest == "model_kwargs":
        if isinstance(value, dict):
            return _kwargs_items(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise UsageError(f"{where}: {key!r} ({name}) takes a mapping {{key: value}} or a list of 'key=value' strings")
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        if action.nargs == "+" and not isinstance(value, (list, dict)):
            value = [value]  # one value, as the command line takes `--mean 0.5`
        if not isinstance(value, list):
            raise UsageError(f"{where}: {key!r} ({name}) takes a list, got {value!r}")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise UsageError(f"{where}: {key!r} ({name}) takes {action.nargs} values, got {len(value)}")
        if action.nargs == "+" and not value:  # as the command line refuses (else a traceback in the loader)
            raise UsageError(f"{where}: {key!r} ({name}) takes at least one value")
        return [_scalar(key, v, action, where) for v in value]
    return _scalar(key, value, action, where)


def _kwargs_items(mapping: dict) -> list[str]:
    """A file's model-kwargs mapping as the command line's 'key=value' strings: a string value as the command line
    reads it (1e-5, YAML 1.1's string: 1e-5), but an empty one quoted: `key=` alone removes the key
    (run_setup.parse_kwargs)."""
    return [f"{k}={v}" if isinstance(v, str) and v else f"{k}={v!r}" for k, v in mapping.items()]


def _scalar(key: str, value, action: argparse.Action, where: str):
    name = _option(action.dest)
    kind = action.type
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        ok = False
    elif kind is int:
        ok = isinstance(value, int)
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 1e-3 as a string: it needs 1.0e-3
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:  # a string option
        ok = isinstance(value, str)
    if not ok:
        want = {int: "an integer", float: "a number"}.get(kind, "a string")
        raise UsageError(f"{where}: {key!r} ({name}) must be {want}, got {value!r}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: {key!r} ({name}) must be one of {choices}, got {value!r}")
    return value


def _unique_key_loader():
    """PyYAML's SafeLoader refusing a mapping that gives a key twice (it would keep the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:  # SafeLoader's own error follows ("found unhashable key")
                    continue
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _recipes_hint(path: str) -> str:
    """For a missing recipes/NAME.yaml: where the recipes are (the source checkout's recipes/, not installed with the
    package), with this checkout's file where the package runs from one; where it has none, the closest names in the
    path's recipes/ folder (or the checkout's)."""
    parts = os.path.normpath(path).split(os.sep)
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if len(parts) == 1:  # a bare recipe name, `--config deit3`, `deit3.yaml` (helper-329): the recipe's path, or the
        # closest recipes' (`deit`, `deit3.yml`: helper-331)
        stem = os.path.splitext(parts[0])[0] if parts[0].endswith((".yaml", ".yml")) else parts[0]
        folders = ("recipes", os.path.join(checkout, "recipes"))
        for candidate in (os.path.join(folder, f"{stem}.yaml") for folder in folders):
            if stem and os.path.isfile(candidate):
                return f" (a recipe is passed by its path: --config {candidate})"
        import difflib
        import glob

        for folder in folders:
            found = glob.glob(os.path.join(folder, "*.yaml"))
            names = sorted(os.path.basename(name)[: -len(".yaml")] for name in found)
            close = difflib.get_close_matches(stem, names, n=3)
            if close:
                listed = ", ".join(os.path.join(folder, f"{name}.yaml") for name in close)
                return f" (a recipe is passed by its path; the closest recipes: {listed})"
        return ""
    if "recipes" not in parts[:-1]:
        return ""
    relative = os.path.join(*parts[parts.index("recipes") :])
    here = os.path.join(checkout, relative)
    if not os.path.isfile(here):  # no such recipe: the closest name in a recipes/ folder there is (cwd's, checkout's)
        import difflib
        import glob

        for folder in (os.path.dirname(path), os.path.dirname(here)):
            found = glob.glob(os.path.join(folder, "*.yaml"))
            names = sorted(os.path.basename(name)[: -len(".yaml")] for name in found)
            if names:
                close = difflib.get_close_matches(os.path.splitext(os.path.basename(path))[0], names, n=3)
                listed = ", ".join(repr(os.path.join(folder, f"{name}.yaml")) for name in close or names)
                return f" ({'the closest' if close else 'no name is close'} in {folder!r}: {listed})"
        return (  # an installed package, no recipes/ folder anywhere near: say where they are (helper-310)
            " (if you meant masksub_kernels' recipes: they are in its source checkout's recipes/, not installed with "
            "the package; clone the repository and pass the recipe's path there)"
        )
    found = f": this package's checkout has {here!r}"
    return (
        f" (recipes/ is in masksub_kernels' source checkout, not installed with the package: pass {relative!r} from "
        f"the checkout's root, or its full path{found})"
    )


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The file's values as {dest: value}, checked against ``parser``'s options (UsageError otherwise)."""
    try:
        import yaml
    except ImportError as exc:  # timm depends on PyYAML, so this is rare
        raise UsageError(f"--config needs PyYAML (pip install pyyaml): {exc}") from exc
    if not os.path.isfile(path):
        raise UsageError(f"config file {path!r} does not exist{_recipes_hint(path)}")
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_unique_key_loader())  # a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"config file {path!r} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path!r} must be a mapping of option: value, got a {type(data).__name__}")
    actions = _actions(parser)
    valid = sorted(k.replace("_", "-") for k in actions)
    out: dict = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(str(key).replace("_", "-"), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"config file {path!r}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
        if dest in out:
            raise UsageError(f"config file {path!r}: {key!r} is given twice (dashes and underscores are the same key)")
        out[dest] = _convert(str(key), value, actions[dest], f"config file {path!r}")
    return out


def config_kwargs_hint(path: str | None, model: str, kwargs: dict) -> str:
    """For timm's refusal of a run's kwargs: the ones a --config file set for another model than ``model`` (a
    recipe's model-kwargs kept under a --model of another kind), and how to drop them; else ''. Reads the file again
    (the error path only; a file that no longer reads gives no hint)."""
    if path is None:
        return ""
    try:
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f)
        from .run_setup import parse_kwargs

        file_model = data.get("model")
        given = data.get("model-kwargs", data.get("model_kwargs")) or {}
        given = parse_kwargs(_kwargs_items(given) if isinstance(given, dict) else [str(item) for item in given])
    except Exception:  # a hint, never a second error
        return ""
    # the file's keys the run kept at the file's value (a key given again on the command line is the user's own)
    keys = [key for key, value in given.items() if key in kwargs and kwargs[key] == value]
    if not keys or file_model in (None, model):
        return ""
    return (
        f"; {', '.join(keys)} came from --config {path!r}, for its model {file_model!r}: drop them with "
        f"--model-kwargs {' '.join(key + '=' for key in keys)}"
    )


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of ``--config FILE`` (when given) in place of the parser's;
    ``--model-kwargs`` given in both: the file's K=V, then the command line's (a key's last value counts)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # as the commands' parsers: --config in full
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        # (--model-kwargs extends: the command line's K=V follow the file's, and parse_kwargs keeps a key's last
        # value; replacing the whole mapping, --model-kwargs img_size=32 with the DeiT-III recipe would drop its
        # init_values, LayerScale then at timm's 1e-6, silently)
        parser.set_defaults(**load_config(known.config, parser))
    return parser.parse_args(argv)
