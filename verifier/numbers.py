"""Lists of numbers as users give them: "0.01,0.02" on the command line or in a config file's
text, a number, or a sequence of numbers (the Python API, a TOML list).

One reader for every such option (radii, per-channel mean and std), so that each refuses the same
things with the same one-line errors: an empty item, a boolean, text that is not a number, NaN
and infinities.
"""

from __future__ import annotations

import math

import numpy as np

from verifier.errors import InputError


def number_list(value, name: str, example: str = "0.01,0.02") -> list[float]:
    """The finite numbers of `value`, in the order given; an InputError naming `name` (the
    option) and the offending item otherwise. `example` shows a valid value in the message."""
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        if any(part == "" for part in items):
            raise InputError(f"{name} {value!r}: expected a number or a comma list of numbers such as {example}")
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(np.asarray(value, dtype=object).ravel())
    else:
        items = [value]
    if not items:
        raise InputError(f"{name}: no values given")
    numbers = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise InputError(f"{name}: {item!r} is not a number")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise InputError(f"{name}: {item!r} is not a number (expected e.g. {example})") from None
        if not math.isfinite(number):
            raise InputError(f"{name}: {item!r} is not a finite number")
        numbers.append(number)
    return numbers
