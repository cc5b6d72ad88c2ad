"""Bandwidths, durations, byte sizes and distances: one grammar for every input format, and formatting.

Fabric files, imported graphs and ServiceLevels all read quantities here, so ``100M`` means the
same everywhere. The grammar is stated in docs/units.md. Parsers raise ``UnitError``, whose message
says what was expected; callers add where and what was found.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# A number as text: digits with an optional fraction and exponent; groups 1 and 2 of a match.
NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?"
_BIT_UNITS = "bit/s|bits|bit|bps|b/s"
_BANDWIDTH = re.compile(rf"^ *{NUMBER} *([A-Za-z]{{0,2}}?) *({_BIT_UNITS}|B/s|Bps)? *$")
_BYTES = re.compile(rf"^ *{NUMBER} *([A-Za-z]{{0,2}}?) *(B)? *$")
_DURATION = re.compile(rf"^ *{NUMBER} *([a-zµμ]*) *$")
_DISTANCE = re.compile(rf"^ *{NUMBER} *(km|m)? *$")
_RATE_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "m": 10**6, "g": 10**9, "t": 10**12}
_BYTE_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
_SECONDS = {"s": Decimal(1), "ms": Decimal("1e-3"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"),
            "μs": Decimal("1e-6"), "ns": Decimal("1e-9")}

BANDWIDTH_FORM = 'a bandwidth in bit/s: an integer or a string like "500k", "10M", "1.5G" or "10Mbit/s"'
BYTES_FORM = 'a size in bytes: an integer or a string like "1500", "64Ki", "1.5M" or "2MiB"'
DURATION_FORM = 'a duration: a string like "5ms", "300us" or "1.2s", or a number of seconds'
DISTANCE_FORM = 'a distance: a number of km or a string like "120km" or "800m"'


class UnitError(ValueError):
    """A quantity that does not parse; the message is what was expected."""


def _given(value: object, form: str) -> Decimal | None:
    """A number value as a Decimal; None for a string; UnitError for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(form)
    if isinstance(value, float) and not math.isfinite(value):
        raise UnitError(f"{form}, a finite number")
    return None if isinstance(value, str) else Decimal(value)


def decimal(match: re.Match, form: str) -> Decimal:
    """The number of a match of ``NUMBER`` (groups 1 and 2) as a Decimal, refusing absurd exponents."""
    exponent = int(match.group(2) or 0)
    if abs(exponent) > 400:
        raise UnitError(f"{form}, of a reasonable size")
    return Decimal(match.group(1)) * Decimal(10) ** exponent


def _whole(number: Decimal, form: str, what: str) -> int:
    if number <= 0:
        raise UnitError(f"{form}, more than zero")
    if number != number.to_integral_value():
        raise UnitError(f"{form}, a whole number of {what}")
    return int(number)


def parse_bandwidth(value: object) -> int:
    """Bit/s (a whole number > 0) from a number or a string with a decimal prefix and optional unit."""
    number = _given(value, BANDWIDTH_FORM)
    if number is None:
        match = _BANDWIDTH.match(value)
        if not match:
            raise UnitError(BANDWIDTH_FORM)
        prefix, unit = match.group(3), match.group(4)
        if unit in ("B/s", "Bps"):
            raise UnitError(f'{BANDWIDTH_FORM}; "B" is bytes, bandwidths are in bits ("bit/s", "bps")')
        if prefix == "m" and unit is None:
            raise UnitError(f'{BANDWIDTH_FORM}; a bare "m" is milli in Kubernetes quantities, '
                            'write "M" or "mbit" for mega')
        if prefix not in _RATE_PREFIX:
            hint = " (binary prefixes are for bytes; line rates are decimal)" if prefix.endswith("i") else ""
            raise UnitError(f"{BANDWIDTH_FORM}{hint}")
        number = decimal(match, BANDWIDTH_FORM) * _RATE_PREFIX[prefix]
    return _whole(number, BANDWIDTH_FORM, "bit/s")


def parse_bytes(value: object) -> int:
    """Bytes (a whole number > 0) from a number or a string with a k/M/G or Ki/Mi/Gi prefix."""
    number = _given(value, BYTES_FORM)
    if number is None:
        match = _BYTES.match(value)
        if not match or match.group(3) not in _BYTE_PREFIX:
            raise UnitError(BYTES_FORM)
        number = decimal(match, BYTES_FORM) * _BYTE_PREFIX[match.group(3)]
    return _whole(number, BYTES_FORM, "bytes")


def parse_duration(value: object, *, positive: bool = False) -> float:
    """Seconds (≥ 0, or > 0 if ``positive``) from a number of seconds or a string with a unit.

    A string needs its unit unless it is zero: a bare "5" is more likely a slip than five seconds.
    """
    number = _given(value, DURATION_FORM)
    if number is None:
        match = _DURATION.match(value)
        if not match:
            raise UnitError(DURATION_FORM)
        number, unit = decimal(match, DURATION_FORM), match.group(3)
        if unit == "" and number != 0:
            raise UnitError(f'{DURATION_FORM}; a string needs a unit: "{value.strip()}s" or '
                            f'"{value.strip()}ms"')
        if unit and unit not in _SECONDS:
            raise UnitError(f"{DURATION_FORM} (units: s, ms, us, ns)")
        number *= _SECONDS.get(unit, 1)
    seconds = float(number)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise UnitError(f"{DURATION_FORM}, more than zero" if positive else f"{DURATION_FORM}, not negative")
    return seconds


def parse_distance(value: object) -> float:
    """Kilometres (≥ 0) from a number of km or a string like '120km' / '800m'."""
    number = _given(value, DISTANCE_FORM)
    if number is None:
        match = _DISTANCE.match(value)
        if not match:
            raise UnitError(DISTANCE_FORM)
        number = decimal(match, DISTANCE_FORM) / (1000 if match.group(3) == "m" else 1)
    km = float(number)
    if not math.isfinite(km) or km < 0:
        raise UnitError(f"{DISTANCE_FORM}, not negative")
    return km


# -- formatting ---------------------------------------------------------------------------------


def _trim(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def format_bandwidth(bits: float) -> str:
    """'1.5Gbit/s', '64kbit/s', '900bit/s'."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(bits) >= scale:
            return f"{_trim(bits / scale)}{prefix}bit/s"
    return f"{_trim(bits)}bit/s"


def format_bytes(count: int) -> str:
    """'64KiB', '1.5MiB', '1500B'."""
    for prefix, scale in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if count >= scale:
            return f"{_trim(count / scale)}{prefix}B"
    return f"{count}B"


def format_duration(seconds: float) -> str:
    """'5ms', '1.2s', '300us'."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{_trim(seconds / scale)}{unit}"
    return f"{_trim(seconds / 1e-9)}ns"
