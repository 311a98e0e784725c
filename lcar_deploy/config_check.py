"""Validation of the stage configs, driven by their dataclass field annotations.

Every config's ``__post_init__`` calls :func:`check_fields` (each field's type from its
annotation: ``bool``, ``int``, ``float``, ``str``, a ``Literal``, ``tuple[int, ...]`` or a nested
config) and then its own ranges and relations with :func:`check_range`, :func:`check_length`
and :func:`check_order`. A bad value raises :class:`SettingError` (a ValueError) whose message
starts with the setting's name, ``setting max_steps: ...``. :func:`from_table` builds a config
from a JSON object of settings, its nested configs from nested objects, refuses unknown keys and
puts the table in front of the name (``setting sgrm.max_steps: ...``).

Types are strict, since settings come from JSON where ``"yes"``, ``1`` and ``NaN`` all parse:
a bool field takes only true / false, an int field no bool and no float, a float field any
int or float but only finite ones. Numpy scalars and lists are accepted and stored as Python
scalars and tuples, so a config built from JSON equals one built in code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import typing
from typing import Any, Literal, TypeVar

import numpy as np

from .errors import SettingError

T = TypeVar("T")


def show(value: Any) -> str:
    """``value`` as the user wrote it in JSON (true, "abc", NaN, [1, 2]), else its repr."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def number(value: float) -> str:
    """A bound or a checked number as written in JSON: ``1`` for 1.0, ``0.005``, ``1e-08``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotation of every dataclass field of ``cls`` (the modules use postponed
    annotations, so ``fields(cls)[i].type`` is a string)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def describe(hint: Any) -> str:
    """What a value of type ``hint`` is, for messages: ``an integer``, ``a number``, ..."""
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {'integers' if typing.get_args(hint)[0] is int else 'numbers'}"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__}"
    raise TypeError(f"no check for fields of type {hint!r}")


def converted(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits ``hint``, the value as stored)."""
    if hint is bool:
        ok = isinstance(value, bool | np.bool_)
        return ok, bool(value) if ok else value
    if hint is int:
        return is_int(value), int(value) if is_int(value) else value
    if hint is float:
        ok = is_number(value) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is Literal:
        return isinstance(value, str) and value in typing.get_args(hint), value
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            return False, value
        items = [converted(v, item) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint), value
    raise TypeError(f"no check for fields of type {hint!r}")


def check_fields(config: Any) -> None:
    """Check every field of the (frozen) dataclass ``config`` against its annotation and store
    it normalised (Python scalars, tuples)."""
    for name, hint in field_types(type(config)).items():
        value = getattr(config, name)
        ok, value = converted(value, hint)
        if not ok:
            kind = "a finite number" if hint is float else describe(hint)
            raise SettingError(name, f"must be {kind}, got {show(getattr(config, name))}")
        object.__setattr__(config, name, value)


def interval(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``, ..."""
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"in {left}{number(low)}, {number(high)}{right}"
    if low is not None:
        return f"{'>' if low_open else '>='} {number(low)}"
    assert high is not None
    return f"{'<' if high_open else '<='} {number(high)}"


def check_range(
    config: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """The number ``name`` (or each entry of a tuple field) lies between ``low`` and ``high``
    (closed unless ``low_open`` / ``high_open``). Call after :func:`check_fields`."""
    value = getattr(config, name)
    hint = field_types(type(config))[name]
    values = value if isinstance(value, tuple) else (value,)

    def inside(v: float) -> bool:
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    if not all(inside(v) for v in values):
        bounds = interval(low, high, low_open, high_open)
        kind = describe(hint)
        if isinstance(value, tuple):
            raise SettingError(name, f"must be {kind}, each {bounds}, got {show(value)}")
        raise SettingError(name, f"must be {kind} {bounds}, got {number(value)}")


def check_length(config: Any, name: str, low: int, high: int) -> None:
    """The tuple field ``name`` has ``low`` to ``high`` entries."""
    value = getattr(config, name)
    if not low <= len(value) <= high:
        raise SettingError(name, f"must have {low} to {high} entries, got {show(value)}")


def check_order(config: Any, low: str, high: str) -> None:
    """Field ``low`` is at most field ``high``."""
    small, large = getattr(config, low), getattr(config, high)
    if small > large:
        raise SettingError(low, f"must be <= {high} ({number(large)}), got {number(small)}")


def field_default(cls: type, name: str) -> Any:
    """The default value of field ``name`` of the dataclass ``cls`` (its factory called)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def from_table(cls: type[T], table: dict[str, Any], name: str | None = None) -> T:
    """``cls(**table)``, its nested configs built the same way from their own tables.

    A nested table changes only the keys it names: the others keep ``cls``'s default for that
    config (e.g. PipelineConfig's ARM dilations), not the nested class's own defaults.
    ``name``: the table's dotted name (None at the top). A key that is no field of ``cls`` and a
    bad value raise ValueError naming the setting by its dotted name.
    """
    types = field_types(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = key if name is None else f"{name}.{key}"
        if key not in types:
            where = "" if name is None else f" in {name}"
            raise SettingError(dotted, f"unknown setting (known{where}: {', '.join(types)})")
        hint = types[key]
        if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            if not isinstance(value, dict):
                raise SettingError(dotted, f"must be a JSON object, got {show(value)}")
            base = field_default(cls, key)
            defaults = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
            value = from_table(hint, {**defaults, **value}, dotted)
        values[key] = value
    try:
        return cls(**values)
    except SettingError as exc:
        raise exc if name is None else exc.within(name) from None
