"""How often the shell reads flow counters: the configured interval, or what keeps their cost bounded."""

from ryu_nsm.openflow.counter_reads import COUNTER_SHARE, counter_pace


def test_counters_come_at_the_interval_while_they_are_cheap_and_less_often_when_not():
    assert counter_pace(5.0, 0.0) == 5.0  # the first read: nothing spent yet
    assert counter_pace(5.0, 0.05) == 5.0  # 1 % of a core at 5 s
    # 0.6 s of CPU a read (61,000 flows at 10,000 connections): read when that is 2 % of a core.
    assert counter_pace(5.0, 0.6) == 0.6 / COUNTER_SHARE == 30.0
