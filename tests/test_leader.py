"""LeaderElector against the emulated Kubernetes API over real HTTP (tests/k8s_emulator.py).

Short timings (lease 2 s, renew deadline 1.5 s, retry 0.2 s) so hand-overs happen in seconds; every
wait polls with a deadline. Leadership intervals are recorded from the callbacks with one clock, so
"never two leaders" is checked over the whole run, not sampled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ryu_nsm.k8s.leader import LeaderElector
from ryu_nsm.lab.controller_process import free_port, wait_for
from tests.k8s_emulator import Emulator

NS, LEASE = "ryu-nsm", "ryu-nsm-leader"
LEASE_S, RENEW_S, RETRY_S = 2.0, 1.5, 0.2
SLACK = 1.0  # scheduling and HTTP round trips on a loaded test machine


class Timeline:
    """Start and stop of every term, from the electors' callbacks, on one monotonic clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, str, int | None]] = []

    def record(self, who: str, what: str, generation: int | None = None) -> None:
        with self.lock:
            self.events.append((time.monotonic(), who, what, generation))

    def terms(self) -> list[tuple[str, int, float, float]]:
        """(who, generation, start, end) per term; a running term ends at +inf."""
        with self.lock:
            events = list(self.events)
        open_terms: dict[str, tuple[int, float]] = {}
        terms = []
        for at, who, what, generation in events:
            if what == "start":
                assert who not in open_terms, f"{who} started a term twice: {events}"
                open_terms[who] = (generation, at)
            else:
                assert who in open_terms, f"{who} stopped without leading: {events}"
                gen, start = open_terms.pop(who)
                terms.append((who, gen, start, at))
        terms += [(who, gen, start, float("inf")) for who, (gen, start) in open_terms.items()]
        return sorted(terms, key=lambda t: t[2])

    def last_start(self, who: str) -> tuple[float, int] | None:
        with self.lock:
            starts = [(at, gen) for at, w, what, gen in self.events if w == who and what == "start"]
        return starts[-1] if starts else None

    def last_stop(self, who: str) -> float | None:
        with self.lock:
            stops = [at for at, w, what, _ in self.events if w == who and what == "stop"]
        return stops[-1] if stops else None


@pytest.fixture
def api() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


@pytest.fixture
def electors(api: Emulator, timeline: Timeline) -> Iterator[callable]:
    """Make started electors on the one Lease; all are stopped (and checked) at the end."""
    made: list[LeaderElector] = []

    def make(identity: str, api_client=None) -> LeaderElector:
        elector = LeaderElector(
            api_client or api.api_client(), NS, LEASE, identity,
            lease_duration=LEASE_S, renew_deadline=RENEW_S, retry_period=RETRY_S,
            on_started=lambda generation: timeline.record(identity, "start", generation),
            on_stopped=lambda: timeline.record(identity, "stop"),
        )
        made.append(elector)
        return elector.start()

    yield make
    for elector in made:
        elector.stop(timeout=10)
    assert_never_two_leaders(timeline)


def assert_never_two_leaders(timeline: Timeline) -> None:
    terms = timeline.terms()
    for earlier, later in zip(terms, terms[1:], strict=False):
        assert earlier[3] <= later[2], f"terms overlap: {earlier} and {later}"
    generations = [gen for _, gen, _, _ in terms]
    assert generations == sorted(set(generations)), f"generations not strictly increasing: {terms}"


def leader_of(electors: list[LeaderElector], timeout: float) -> LeaderElector:
    found = wait_for(lambda: [e for e in electors if e.is_leader], timeout, 0.02)
    assert found, f"nobody leads after {timeout}s"
    assert len(found) == 1, f"more than one leader: {[e.identity for e in found]}"
    return found[0]


def lease_spec(api: Emulator) -> dict:
    lease = api.get("Lease", LEASE, namespace=NS)
    assert lease is not None
    return lease["spec"]


def test_two_electors_on_one_lease_exactly_one_leads(api, electors, timeline):
    a, b = electors("replica-a"), electors("replica-b")
    leader = leader_of([a, b], LEASE_S + SLACK)
    follower = b if leader is a else a
    assert leader.generation == 0, "the replica that created the Lease starts at generation 0"
    spec = lease_spec(api)
    assert spec["holderIdentity"] == leader.identity
    assert spec["leaseTransitions"] == 0
    assert spec["leaseDurationSeconds"] == LEASE_S

    # Several lease durations of renewals: the leader keeps it, the follower never leads.
    renewed = spec["renewTime"]
    assert wait_for(lambda: lease_spec(api)["renewTime"] != renewed, RETRY_S * 2 + SLACK, 0.05)
    end = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < end:
        assert leader.is_leader and not follower.is_leader
        time.sleep(0.05)
    assert follower.holder == leader.identity
    assert [(who, gen) for who, gen, _, _ in timeline.terms()] == [(leader.identity, 0)]


def test_leader_that_stops_renewing_is_replaced_within_the_lease(api, electors, timeline):
    a = electors("replica-a")
    assert leader_of([a], LEASE_S + SLACK) is a
    b = electors("replica-b")
    assert wait_for(lambda: b.holder == "replica-a", SLACK, 0.02)

    a.stop(release=False)  # as if it crashed: the Lease still names it
    crashed = time.monotonic()
    assert lease_spec(api)["holderIdentity"] == "replica-a"
    assert leader_of([a, b], LEASE_S + RETRY_S * 1.2 + SLACK) is b
    took_over, generation = timeline.last_start("replica-b")
    assert took_over - crashed <= LEASE_S + RETRY_S * 1.2 + SLACK
    assert took_over - crashed >= LEASE_S - RETRY_S * 1.2 - 0.1, "took over before the lease could expire"
    assert generation == b.generation == 1 > a.generation == 0
    assert lease_spec(api)["leaseTransitions"] == 1 and lease_spec(api)["holderIdentity"] == "replica-b"


def test_follower_measures_expiry_on_its_own_clock(api):
    """Expiry counts from when the follower saw the Lease change, on its clock: not wall time, not the
    renewTime another host wrote (clock skew between hosts cannot cut a lease short)."""
    timings = {"lease_duration": LEASE_S, "renew_deadline": RENEW_S, "retry_period": RETRY_S}
    a = LeaderElector(api.api_client(), NS, LEASE, "replica-a", **timings).start()
    now = [1000.0]
    b = LeaderElector(api.api_client(), NS, LEASE, "replica-b", **timings, clock=lambda: now[0])
    try:
        assert wait_for(lambda: a.is_leader, LEASE_S + SLACK, 0.02)
        b.start()
        assert wait_for(lambda: b.holder == "replica-a", SLACK, 0.02)
        a.stop(release=False)
        end = time.monotonic() + LEASE_S + 5 * RETRY_S  # real time well past the lease
        while time.monotonic() < end:
            assert not b.is_leader, "took over although its own clock says the lease is fresh"
            time.sleep(0.05)
        now[0] += LEASE_S
        assert wait_for(lambda: b.is_leader, RETRY_S * 1.2 + SLACK, 0.02)
        assert b.generation == 1
    finally:
        b.stop()
        a.stop()


def test_partitioned_leader_steps_down_before_the_other_takes_over(api, electors, timeline):
    cut_off = api.api_client()
    a = electors("replica-a", cut_off)
    assert leader_of([a], LEASE_S + SLACK) is a
    b = electors("replica-b")
    assert wait_for(lambda: b.holder == "replica-a", SLACK, 0.02)

    cut_off.configuration.host = f"http://127.0.0.1:{free_port()}"  # a's API calls are refused from now
    cut = time.monotonic()
    assert wait_for(lambda: not a.is_leader, RENEW_S + RETRY_S + SLACK, 0.02), "a led without a lease"
    assert timeline.last_stop("replica-a") - cut <= RENEW_S + RETRY_S + SLACK
    assert leader_of([a, b], LEASE_S + RETRY_S * 1.2 + SLACK) is b
    assert timeline.last_start("replica-b")[0] > timeline.last_stop("replica-a")
    assert b.generation == 1

    cut_off.configuration.host = api.url  # healed: a finds b holding the Lease and follows
    assert wait_for(lambda: a.holder == "replica-b", SLACK, 0.02)
    end = time.monotonic() + LEASE_S
    while time.monotonic() < end:
        assert b.is_leader and not a.is_leader
        time.sleep(0.05)


def test_clean_stop_releases_at_once_and_generations_increase_across_handovers(api, electors, timeline):
    names = ["replica-a", "replica-b"]
    current = {name: electors(name) for name in names}
    leader = leader_of(list(current.values()), LEASE_S + SLACK)
    generations = [leader.generation]
    for _ in range(4):
        stopping = leader.identity
        leader.stop()
        stopped = time.monotonic()
        spec = lease_spec(api)
        assert not spec.get("holderIdentity"), f"stop did not release the Lease: {spec}"
        leader = leader_of(list(current.values()), RETRY_S * 1.2 + SLACK)
        assert leader.identity != stopping
        assert timeline.last_start(leader.identity)[0] - stopped < RETRY_S * 1.2 + SLACK < LEASE_S
        generations.append(leader.generation)
        assert lease_spec(api)["leaseTransitions"] == leader.generation
        current[stopping] = electors(stopping)  # the replica restarts and campaigns again
        restarted, holder = current[stopping], leader.identity
        assert wait_for(lambda: restarted.holder == holder, SLACK, 0.02)  # noqa: B023 (used at once)
    assert generations == sorted(set(generations)) and len(generations) == 5, generations


def test_api_unavailable_no_leader_then_a_new_generation(api, electors, timeline):
    a, b = electors("replica-a"), electors("replica-b")
    first = leader_of([a, b], LEASE_S + SLACK)
    first_generation = first.generation
    api.pause()
    paused = time.monotonic()
    assert wait_for(lambda: not a.is_leader and not b.is_leader, RENEW_S + RETRY_S + SLACK, 0.02)
    assert timeline.last_stop(first.identity) - paused <= RENEW_S + RETRY_S + SLACK
    api.resume()
    second = leader_of([a, b], LEASE_S + RETRY_S * 1.2 + SLACK)
    assert second.generation > first_generation == 0
    assert lease_spec(api)["holderIdentity"] == second.identity


def test_bad_timings_are_refused(api):
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElector(api.api_client(), NS, LEASE, "x", lease_duration=2, renew_deadline=2, retry_period=0.2)
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(api.api_client(), NS, LEASE, "", lease_duration=2, renew_deadline=1, retry_period=0.2)
