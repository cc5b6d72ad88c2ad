"""One validation kit for every input format: field paths, how values are shown, and the checks.

Documents, ServiceLevels, topology files and OVSDB marks all name the field path of a problem and
say "expected …, found …" the same way, because they build both here (like Faucet's ``conf.py``:
one mechanism, so errors read the same everywhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass


def field_path(path: str, name: str) -> str:
    """``spec.matches``: a named field inside ``path`` ('' is the top)."""
    return f"{path}.{name}" if path else name


def item_path(path: str, index: int) -> str:
    """``routes[2]``: an item of a list."""
    return f"{path}[{index}]"


def key_path(path: str, key: str) -> str:
    """``labels["app"]``: an entry of a mapping whose keys are data, not field names."""
    return f"{path}[{json.dumps(key)}]"


def describe_value(value: object) -> str:
    """How a found value is shown in a problem: its YAML type and, for scalars, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"string {json.dumps(shown)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one document: where (file, document index, field path) and what."""

    source: str
    index: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}[{self.index}]" if self.index >= 0 else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"



def expected(what: str, value: object) -> str:
    """The one shape of a message: ``expected <what>, found <the value described>``."""
    return f"expected {what}, found {describe_value(value)}"


def camel(name: str) -> str:
    """proto JSON's lowerCamelCase spelling of a snake_case field name."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class Check:
    """What is wrong with one object, as (field path, message): errors discard it, notes do not."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def note(self, path: str, message: str) -> None:
        self.notes.append((path, message))

    def problems(self, source: str, index: int) -> list[Problem]:
        """Errors then notes as Problems of document ``index`` of ``source``."""
        return [Problem(source, index, path, message) for path, message in self.errors + self.notes]

    def mapping(self, value: object, path: str) -> dict | None:
        """A mapping, with null meaning empty; None if it is something else."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, expected("a mapping", value))
            return None
        return value

    def sequence(self, value: object, path: str) -> list | None:
        """A list, with null meaning empty; None if it is something else."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, expected("a list", value))
            return None
        return value

    def string(self, value: object, path: str) -> str | None:
        if isinstance(value, str):
            return value
        hint = " (quote it in YAML)" if isinstance(value, int | float | bool) else ""
        self.error(path, expected(f"a string{hint}", value))
        return None

    def value(self, parse: Callable[[object], object], value: object, path: str) -> object:
        """``parse(value)``, or None with an error at ``path``; parse's ValueError says what was expected."""
        try:
            return parse(value)
        except ValueError as e:
            self.error(path, expected(str(e), value))
            return None

    def fields(
        self, mapping: dict, path: str, known: tuple[str, ...], ignored: tuple[str, ...] = (),
        *, camel_case: bool = False,
    ) -> dict[str, tuple[object, str]]:
        """Field name → (value, path as written), in the order of ``known``.

        Unknown fields are errors: a misspelt ``matches`` must not silently mean "no matches".
        ``ignored`` fields are allowed and dropped. With ``camel_case``, proto JSON's lowerCamelCase
        spelling of a snake_case name is taken too, and a field given in both spellings is an error.
        """
        names = known + ignored
        aliases = {n: n for n in names} | ({camel(n): n for n in names} if camel_case else {})
        found: dict[str, tuple[object, str]] = {}
        for key, value in mapping.items():
            name = aliases.get(key) if isinstance(key, str) else None
            if name is None:
                self.error(field_path(path, str(key)), f"expected one of the fields {', '.join(known)}, "
                           f"found unknown field {json.dumps(str(key))}")
            elif name in found:
                self.error(field_path(path, key), f"field {json.dumps(name)} is given twice")
            elif name in known:
                found[name] = (value, field_path(path, key))
            else:
                found[name] = (None, field_path(path, key))  # ignored: kept only to catch a second spelling
        return {name: found[name] for name in known if name in found}
