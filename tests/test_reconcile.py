"""The reconciler: minimal, ordered, idempotent, and blind to flows that are not ours."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ryu_nsm.core.flowspec import PIPELINE_COOKIE, FlowSpec, Table, wire_cookie
from ryu_nsm.core.reconcile import ConflictingFlows, apply, diff, diff_fabric


def flow(port, out, cookie=None, table=Table.CLASSIFY):
    return FlowSpec.make(table, 1000, {"in_port": port}, [("output", out)],
                         cookie=wire_cookie("w") if cookie is None else cookie)


def test_adds_modifies_deletes_are_minimal():
    actual = {flow(1, 2), flow(3, 4), flow(5, 6)}
    desired = {flow(1, 2), flow(3, 9), flow(7, 8)}
    d = diff(desired, actual)
    assert d.adds == (flow(7, 8),)
    assert d.modifies == (flow(3, 9),)
    assert d.deletes == (flow(5, 6),)
    assert apply(actual, d) == frozenset(desired)


def test_applying_twice_changes_nothing():
    actual = {flow(1, 2)}
    desired = {flow(1, 3), flow(2, 2)}
    once = apply(actual, diff(desired, actual))
    assert diff(desired, once).size == 0
    assert apply(once, diff(desired, once)) == once


def test_foreign_flows_are_never_touched():
    foreign = flow(1, 2, cookie=0x1234)
    d = diff(set(), {foreign})
    assert d.size == 0
    d = diff({flow(5, 6)}, {foreign})
    assert d.adds == (flow(5, 6),) and not d.deletes


def test_changed_cookie_is_a_modify():
    old = flow(1, 2, cookie=PIPELINE_COOKIE)
    new = flow(1, 2)
    assert diff({new}, {old}).modifies == (new,)


def test_conflicting_desired_flows_are_refused():
    with pytest.raises(ConflictingFlows):
        diff({flow(1, 2), flow(1, 3)}, set())


def test_diff_fabric_skips_unchanged_and_unknown_switches():
    desired = {"s1": {flow(1, 2)}, "s2": {flow(1, 2)}, "s3": {flow(1, 1)}}
    actual = {"s1": {flow(1, 2)}, "s2": set()}
    out = diff_fabric(desired, actual)
    assert list(out) == ["s2"]


@given(st.lists(st.tuples(st.sampled_from([Table.CLASSIFY, Table.FORWARD]), st.integers(0, 3),
                          st.integers(1, 6), st.integers(0, 4095), st.integers(1, 9)), max_size=40))
def test_a_diff_lists_flows_in_their_sorted_order(shapes):
    # Each list is sorted by key alone (its flows' keys are distinct): the order FlowSpec's own
    # comparison gives, so a program's order does not depend on which way it was sorted.
    flows = {}
    for table, prio, port, vid, out in shapes:
        match = {"in_port": port, "vlan_vid": 0x1000 | vid} if table == Table.FORWARD else {"in_port": port}
        f = FlowSpec.make(table, 1000 + prio, match, [("output", out)], cookie=wire_cookie("w"))
        flows[f.key] = f
    half = len(flows) // 2
    actual = list(flows.values())[:half]
    desired = [FlowSpec.make(f.table, f.priority, f.match_dict(), [("output", 99)], cookie=f.cookie)
               for f in list(flows.values())[half // 2:]]
    d = diff(desired, actual)
    for part in (d.adds, d.modifies, d.deletes):
        assert list(part) == sorted(part)
    assert d.adds and d.modifies or len(flows) < 4
