"""The one grammar of bandwidths, byte sizes, durations and distances (docs/units.md), and formatting."""

import pytest

from ryu_nsm.core.units import (
    UnitError,
    format_bandwidth,
    format_bytes,
    format_duration,
    parse_bandwidth,
    parse_bytes,
    parse_distance,
    parse_duration,
)

# Every spelling a fabric file or a ServiceLevel took before the two grammars became one.
BANDWIDTHS = [
    (1000, 1000), ("500k", 500_000), ("500K", 500_000), ("10M", 10_000_000), ("1.5G", 1_500_000_000),
    ("2T", 2 * 10**12), ("10Mbit/s", 10_000_000), ("10 Mbps", 10_000_000), ("64kbit", 64_000),
    ("1e9", 10**9), ("1.1G", 1_100_000_000), (".5M", 500_000), ("3", 3),
    ("100Mbit", 10**8), ("1G", 10**9), ("10Gbit", 10**10), ("10Gbps", 10**10), (1e9, 10**9),
    (2_500_000, 2_500_000), ("2.5 Gbit/s", 2_500_000_000), ("100mbit", 10**8), ("1T", 10**12),
    ("10 bits", 10), ("10Mb/s", 10**7), ("1gbit", 10**9), ("5.", 5),
]


@pytest.mark.parametrize(("text", "bits"), BANDWIDTHS)
def test_bandwidths_are_whole_decimal_bit_rates(text, bits):
    value = parse_bandwidth(text)
    assert value == bits and isinstance(value, int)


@pytest.mark.parametrize(("text", "hint"), [
    ("10m", 'bare "m" is milli'), ("10Mi", "binary prefixes are for bytes"), ("1 Gibit", "binary prefixes"),
    ("0", "more than zero"), (-5, "more than zero"), ("1.5", "whole number"),
    (True, "an integer or a string"),
    (None, "an integer or a string"), (["1G"], "an integer or a string"), (float("inf"), "finite"),
    ("ten", "like"), ("fast", "like"), ("", "like"), ("10GB", "like"), ("10 M B", "like"),
    ("10MB/s", '"B" is bytes'), ("10GBps", '"B" is bytes'), ("1e999999", "reasonable size"),
    ("-5M", "like"),
])
def test_bad_bandwidths_say_what_is_expected(text, hint):
    with pytest.raises(UnitError, match="^a bandwidth in bit/s: ") as error:
        parse_bandwidth(text)
    assert hint in str(error.value)


@pytest.mark.parametrize(("text", "size"), [
    (1500, 1500), ("1500", 1500), ("1500B", 1500), ("64k", 64_000), ("64Ki", 65_536), ("64KiB", 65_536),
    ("1.5M", 1_500_000), ("2MiB", 2 * 2**20), ("1Gi", 2**30), ("1.5Ki", 1536),
])
def test_sizes_are_bytes_with_decimal_or_binary_prefixes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize(("text", "hint"), [
    ("1.0005k", "whole number"), ("0", "more than zero"), ("64Ti", "like"), ("64kb", "like"),
    ("64 KiBs", "like"), (False, "like"),
])
def test_bad_sizes(text, hint):
    with pytest.raises(UnitError, match="^a size in bytes: ") as error:
        parse_bytes(text)
    assert hint in str(error.value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5ms", 0.005), ("1.2s", 1.2), ("300us", 300e-6), ("300µs", 300e-6), ("300μs", 300e-6), ("250ns", 250e-9),
    (2, 2.0), ("0.1ms", 0.0001), ("2ms", 2e-3), ("150us", 150e-6), (0.001, 1e-3), ("0", 0.0), (3, 3.0),
    ("20ns", 20e-9), (" 5 ms ", 0.005), ("0ms", 0.0), (0, 0.0), ("150µs", 150e-6), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-15)


@pytest.mark.parametrize(("text", "hint"), [
    ("5", '"5s" or "5ms"'), ("5 min", "units: s, ms, us, ns"), ("2 hours", "units"), ("1h", "units"),
    ("soon", "like"), ("-2ms", "like"), (-1, "not negative"), (False, "like"), (None, "like"),
    (float("nan"), "finite"),
])
def test_bad_durations(text, hint):
    # A bare "5" has no unit: in a latency field that is far more likely a slip than five seconds.
    with pytest.raises(UnitError, match="^a duration: ") as error:
        parse_duration(text)
    assert hint in str(error.value)


def test_positive_durations_refuse_zero():
    assert parse_duration("1ns", positive=True) == pytest.approx(1e-9)
    for zero in ("0", "0ms", 0):
        with pytest.raises(UnitError, match="more than zero"):
            parse_duration(zero, positive=True)


@pytest.mark.parametrize(("text", "km"), [
    (120, 120.0), ("120km", 120.0), ("800m", 0.8), (299.792458, 299.792458),
])
def test_distances(text, km):
    assert parse_distance(text) == pytest.approx(km)


@pytest.mark.parametrize("text", ["far", -1, "5 miles", True])
def test_bad_distances(text):
    with pytest.raises(UnitError, match="^a distance: "):
        parse_distance(text)


def test_formatting():
    assert format_bandwidth(1_500_000_000) == "1.5Gbit/s"
    assert format_bandwidth(64_000) == "64kbit/s"
    assert format_bandwidth(900) == "900bit/s"
    assert format_bytes(65_536) == "64KiB" and format_bytes(1500) == "1.465KiB"
    assert format_bytes(100) == "100B"
    assert format_duration(0.005) == "5ms" and format_duration(1.2) == "1.2s"
    assert format_duration(300e-6) == "300us" and format_duration(5e-9) == "5ns"


@pytest.mark.parametrize("bits", [900, 64_000, 1_500_000_000, 10**12, 2_500_000])
def test_formatted_bandwidths_parse_back(bits):
    assert parse_bandwidth(format_bandwidth(bits)) == bits
