"""Reading a TOML file's text into a typed struct, with errors a person can act on."""

from __future__ import annotations

import tomllib
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def load(text: str, into: type[T], name: str) -> T:
    """`text` as an `into`, its `name` field set from the file's name. ValueError saying
    what is wrong: the TOML parser's message (with the line), or the field at fault."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"the name {name!r} may use only letters, digits, - and _ (rename the file)")
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None
    if "name" in raw:
        raise ValueError("leave out `name`: it is the file's name")
    try:
        return msgspec.convert({**raw, "name": name}, into)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
