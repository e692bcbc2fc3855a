"""Typed JSON configs: the values of a dataclass config read from a JSON object, each key checked
against its field's annotation, so a typo or a wrong type is refused by name before anything runs.

Used by ``TrainConfig`` and ``TransplantConfig``; their ``validate`` checks ranges and choices after.
"""

import dataclasses
import difflib
import types
import typing

# JSON value -> Python: the types a field's annotation accepts, and how a message names them
_ACCEPTS = {float: (int, float), tuple: (list, tuple), type(None): (type(None),)}
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
          dict: "an object", tuple: "a list", type(None): "null"}


def _members(annotation) -> list[type]:
    """``int`` -> [int]; ``dict | None`` -> [dict, NoneType]; ``list[int]`` -> [list]."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    plain = typing.get_origin(annotation) or annotation
    if plain not in _NAMES:
        raise TypeError(f"config fields need a JSON type (bool, int, float, str, list, dict, tuple, None or a "
                        f"union of them), got {annotation!r}")
    return [plain]


def _type_name(members: list[type]) -> str:
    names = [_NAMES[member] for member in members]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def typed_values(cls, raw, where: str, error: type[Exception], *, keys_doc: str | None = None) -> dict:
    """The keyword arguments of dataclass ``cls`` held in the JSON object ``raw``.

    Raises ``error`` naming ``where`` and the key: for an unknown key (with the closest known one, and the
    known keys listed, or the document ``keys_doc`` that lists them) and for a value of the wrong type
    (true/false is not a number; an integer is a number). A tuple field takes a JSON list.
    """
    if not isinstance(raw, dict):
        raise error(f"{where}: expected a JSON object")
    fields = {f.name: _members(f.type) for f in dataclasses.fields(cls)}  # every field's, so none lacks a type
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        guesses = [f"{key!r} -> {close[0]!r}" for key in unknown if (close := difflib.get_close_matches(key, fields, 1))]
        did_you_mean = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
        listing = f"{keys_doc} lists the known keys" if keys_doc else f"known keys: {sorted(fields)}"
        raise error(f"{where}: unknown keys {unknown}{did_you_mean}; {listing}")
    values = {}
    for key, value in raw.items():
        members = fields[key]
        accepted = tuple(t for member in members for t in _ACCEPTS.get(member, (member,)))
        if not isinstance(value, accepted) or isinstance(value, bool) and bool not in members:
            raise error(f"{where}: {key} must be {_type_name(members)}, got {value!r}")
        values[key] = tuple(value) if tuple in members and isinstance(value, list) else value
    return values
