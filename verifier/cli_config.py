"""`verify --config run.toml`: options from a TOML file, and the resolved options of a run.

A config file's keys are the command's option names (`eps = 0.1`, or several radii as `eps =
[0.02, 0.05]` or `eps = "0.02,0.05"`, `eps-max = 0.3` or `eps_max = 0.3`, `json = true`, `target
= [3, 5]`, `model = "net.onnx"` for the argument); values given on the command line win. The
file is read by an eager `--config` callback that fills click's `default_map` before any other
option is parsed. Why default_map rather than merging dictionaries after parsing: click then
applies the usual precedence (command line, then the file, then the declared default) and the
usual conversions (a path string becomes a Path, a list feeds a repeatable option) to every
option, including ones added later, so there is no second list of options to keep in step with
the command. What click cannot do is name the file and key of a bad value, so each value's TOML
type is checked here first against the option's annotation. Relative paths in a config are
relative to the current folder, as on the command line.

A `--report FOLDER` run writes every option's final value to `FOLDER/run.toml` (paths made
absolute, unset options listed in a comment), which `--config FOLDER/run.toml` reads back to
repeat the run exactly. TOML has no writer in the standard library; the few value types the
command has (booleans, numbers, strings, lists of them) are written by `dumps` below.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Iterable

from verifier.errors import InputError

#: Parameters a config file cannot set: the file itself, and --version (which prints and exits).
NOT_CONFIGURABLE = {"config", "version"}
#: Actions on a results folder rather than settings of the run: a config may hold them, but the
#: run.toml that repeats a run leaves them out (repeating it must not rerun or export again).
ONE_OFF = {"save_examples", "rerun_unknown"}
#: Options given on the command line as "a,b,c" whose config value may be a number or a list.
NUMBER_LISTS = {"mean", "std"}
#: The radii: a number, a list of numbers or the command line's "0.01,0.02"; checked here (each
#: finite and >= 0), and written to run.toml as a number (one radius) or a list.
RADII = "eps"


def config_keys(params: Iterable) -> dict[str, Any]:
    """Accepted key -> click parameter: each long option's name in both spellings (`eps-max`,
    `eps_max`), and the argument's name (`model`)."""
    keys = {}
    for p in params:
        if p.name in NOT_CONFIGURABLE:
            continue
        names = [o[2:] for o in p.opts if o.startswith("--")] if p.param_type_name == "option" else [p.name]
        for name in names:
            keys[name] = keys[name.replace("-", "_")] = keys[name.replace("_", "-")] = p
    return keys


def key_of(param) -> str:
    """The name a parameter is written under in run.toml: its first long option, as typed."""
    if param.param_type_name != "option":
        return param.name
    return next((o[2:] for o in param.opts if o.startswith("--")), param.name)


def read_config(path: Path, params: Iterable, hints: dict[str, Any]) -> dict[str, Any]:
    """The file's values by parameter name (click's default_map), each checked against the
    parameter's annotation in `hints`; an unknown key or a wrong type is a one-line InputError
    naming the file and the key."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--config {path}: is a folder, expected a TOML file") from None
    except OSError as e:
        raise InputError(f"--config {path}: cannot read it: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--config {path}: not a valid TOML file ({' '.join(str(e).split())})") from None
    keys = config_keys(params)
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        param = keys.get(key)
        if param is None:
            close = difflib.get_close_matches(key, sorted(k for k in keys if "_" not in k), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; keys are the option names, e.g. eps-max = 0.3"
            why = " (it cannot be set from a config file)" if key in NOT_CONFIGURABLE else ""
            raise InputError(f"{path}: unknown key '{key}'{why}{hint}")
        if param.name in seen:
            raise InputError(f"{path}: '{key}' and '{seen[param.name]}' are the same option, given twice")
        seen[param.name] = key
        where = f"{path}: {key}"
        if param.name in NUMBER_LISTS:
            out[param.name] = _number_list(value, where)
        elif param.name == RADII:
            out[param.name] = _radii(value, where)
        else:
            out[param.name] = _checked(value, hints.get(param.name, Any), where)
    return out


def _optional_inner(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       (list, "an array"), (dict, "a table")):
        if isinstance(value, kind):
            return name
    return "a date or time"


def _checked(value: Any, annotation: Any, where: str) -> Any:
    """The value if its TOML type fits the option (an integer counts as a float), else an error."""
    kind = _optional_inner(annotation)
    if typing.get_origin(kind) in (list, tuple):
        inner = (typing.get_args(kind) or (Any,))[0]
        items = value if isinstance(value, list) else [value]
        return [_checked(v, inner, f"{where}[{k}]" if isinstance(value, list) else where) for k, v in enumerate(items)]
    expected = {bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"),
                str: (str, "a string"), Path: (str, "a path (a string)")}.get(kind)
    if expected is None:
        return value
    types, what = expected
    if isinstance(value, types) and (kind is bool or not isinstance(value, bool)):
        return float(value) if kind is float else value
    raise InputError(f"{where} must be {what}, got {_toml_type(value)} ({dumps_value(value)})")


def _number_list(value: Any, where: str) -> str:
    """--mean/--std: a number, a list of numbers or the command line's "a,b,c" string, as that
    string (repr keeps every float exact)."""
    if isinstance(value, str):
        return value
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise InputError(f"{where} must be a number or a list of numbers, got {_toml_type(value)} "
                         f"({dumps_value(value)})")
    return ",".join(repr(float(v)) for v in items)


def _radii(value: Any, where: str) -> str:
    """--eps: a number, a list of numbers or text such as "0.01,0.02", as the command line's text
    (repr keeps every float exact); a value of another type or a bad radius names the file and key."""
    from verifier.radii import eps_list

    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in items) or (
            isinstance(value, list) and any(isinstance(v, str) for v in items)):
        raise InputError(f'{where} must be a number, a list of numbers or text such as "0.01,0.02", got '
                         f"{_toml_type(value)} ({dumps_value(value)})")
    return ",".join(repr(r) for r in eps_list(value, where))


def resolved_options(params: Iterable, values: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """(key, value) for every option with a value, in the command's order, paths absolute and
    --mean/--std as lists of numbers; and the keys of the options left unset (None)."""
    from verifier.importers.normalisation import parse_values

    written, unset = [], []
    for p in params:
        if p.name in NOT_CONFIGURABLE | ONE_OFF or p.name not in values:
            continue
        value = values[p.name]
        if value is None or (isinstance(value, (list, tuple)) and not value):
            unset.append(key_of(p))
            continue
        if isinstance(value, Path):
            value = os.path.abspath(value)
        elif p.name in NUMBER_LISTS:
            value = list(parse_values(value, f"--{p.name}"))
        elif p.name == RADII:
            from verifier.radii import eps_list

            radii = eps_list(value, "--eps")
            value = radii[0] if len(radii) == 1 else radii
        elif isinstance(value, tuple):
            value = list(value)
        written.append((key_of(p), value))
    return written, unset


def write_run_config(path: Path, params: Iterable, values: dict[str, Any], version: str) -> None:
    """Write the run's resolved options to `path` (atomically: a crash leaves the old file or
    the new one, never half of it)."""
    written, unset = resolved_options(params, values)
    lines = [f"# The options of this verify run (relu-verifier {version}); repeat it with",
             f"#   verify --config {os.path.abspath(path)}",
             "# (options given on that command line win over these)."]
    lines += [f"{key} = {dumps_value(value)}" for key, value in written]
    if unset:
        lines.append(f"# not set, so the command's default applies: {', '.join(unset)}")
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except (OSError, UnicodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise InputError(f"{path}: cannot write the run's options: {why} (the results are stored)") from None


def dumps_value(value: Any) -> str:
    """One TOML value: a boolean, an integer, a float, a string or an array of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back as the same float
    if isinstance(value, (str, Path)):
        return _string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps_value(v) for v in value) + "]"
    return _string(str(value))


def _string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, the rest as is."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
