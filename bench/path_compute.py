"""Path computation for one 3-function chain on a fat-tree, against one raw networkx BFS.

The chain is client → firewall → dpi → gateway: the client on an edge switch of pod 0, the three
functions on edge switches of three other pods, so each of its 3 connections crosses the core.
Two figures per fat-tree, both against the same limit (one ``single_source_shortest_path_length``
BFS from the client's switch, which reaches the gateway's, on the graph ryu-nsm routes on):

- ``path compute (cached view)``: routing the 3 connections with a FabricView built beforehand
  (its graph; no path found yet), what a change costs while the fabric's state stays the same;
- ``plan``: the whole ``make_plan`` (resolve, build the view, route, compile every switch's flows),
  what a change of the fabric's state costs.

And the latency-bounded search (``qos.routing.search_path``, the fastest path's latency as bound)
of the same 3 connections against 3 networkx ``bidirectional_dijkstra`` by latency: once with the
per-destination bounds found anew (the first connection to a destination), once with them kept
(every further connection to it, as the view keeps them).

Usage: ``path_compute.py [--quick]``; ``--quick`` runs k=4 only with few repetitions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import networkx as nx
from common import figure, measure

from ryu_nsm.core.fabric import Fabric, Host, HostInterface
from ryu_nsm.core.model import (
    ClientRequest,
    Destination,
    Endpoint,
    FrozenMap,
    Match,
    NetworkService,
    Resources,
)
from ryu_nsm.core.pathing import FabricView
from ryu_nsm.core.planner import PLANNED, Plan, make_plan
from ryu_nsm.qos.routing import search_path
from ryu_nsm.sources.topology import fat_tree

SERVICE = "secure-internet"
FUNCTIONS = ("firewall", "dpi", "gateway")
LIMIT_LABEL = "one networkx BFS"


@dataclass(frozen=True)
class ChainSetup:
    """A fat-tree with the chain's hosts attached, the resources asking for the chain, and its hops."""

    fabric: Fabric
    resources: Resources
    # (client switch, endpoint switch) of each connection, in chain order.
    hops: tuple[tuple[str, str], ...]


def _interfaces(fabric: Fabric, host: str, switch: str, count: int) -> tuple[HostInterface, ...]:
    """``count`` interfaces of ``host`` on the first ports of ``switch`` that no link uses."""
    first = 1 + max((link.port_on(switch) for link in fabric.links if switch in (link.a, link.b)), default=0)
    return tuple(
        HostInterface(host, f"eth{i}", switch, first + i, f"{switch}-{host[:3]}{i}") for i in range(count)
    )


def chain_setup(k: int) -> ChainSetup:
    """The chain on fat-tree ``k``: client on e0_0, functions on the last edge switch of 3 other pods."""
    fabric = fat_tree(k)
    half = k // 2
    client_switch = "e0_0"
    function_switches = [f"e{pod}_{half - 1}" for pod in (k // 4, k // 2, k - 1)]
    client = Host("client", _interfaces(fabric, "client", client_switch, 1))
    # Firewall and dpi serve on eth0 and ask for the next hop on eth1; the gateway only serves.
    functions = [
        Host(name, _interfaces(fabric, name, switch, 1 if name == "gateway" else 2), "function")
        for name, switch in zip(FUNCTIONS, function_switches, strict=True)
    ]
    fabric = replace(fabric, hosts=(client, *functions))

    def app(name: str) -> FrozenMap:
        return FrozenMap(app=name)

    service = NetworkService(SERVICE, matches=(
        Match(app("firewall"), (Destination(app("dpi")),)),
        Match(app("dpi"), (Destination(app("gateway")),)),
        Match(FrozenMap(), (Destination(app("firewall")),)),
    ))
    endpoints = tuple(
        Endpoint(host.name, services=(SERVICE,), service_labels=FrozenMap({SERVICE: app(host.name)}),
                 attachments=(host.interfaces[0].attachment,))
        for host in functions
    )
    requests = (
        ClientRequest("client", "nsm-1", SERVICE, attachment=client.interfaces[0].attachment),
        *(ClientRequest(host.name, "nsm-1", SERVICE, labels=app(host.name),
                        attachment=host.interfaces[1].attachment) for host in functions[:2]),
    )
    stops = [client_switch, *function_switches]
    hops = tuple(zip(stops[:-1], stops[1:], strict=True))
    return ChainSetup(fabric, Resources((service,), endpoints, requests), hops)


def check_plan(setup: ChainSetup, plan: Plan) -> None:
    """Refuse to time a plan that does not route the chain as built: the figures would mean nothing."""
    routed = sorted(
        (pc.path.switches[0], pc.path.switches[-1])
        for pc in plan.connections.values() if pc.state == PLANNED and pc.path is not None
    )
    if routed != sorted(setup.hops) or len(plan.connections) != len(setup.hops):
        reasons = [f"{pc.id}: {pc.state} {pc.reason}" for pc in plan.connections.values()]
        raise RuntimeError(f"the chain was not planned as built: routed {routed}; {reasons}")


def run(k: int, repeats: int, round_seconds: float, budget_seconds: float) -> list[str]:
    """The figure lines of fat-tree ``k``."""
    setup = chain_setup(k)
    view = FabricView(setup.fabric)
    source, target = setup.hops[0][0], setup.hops[-1][1]
    if target not in nx.single_source_shortest_path_length(view.graph, source):
        raise RuntimeError(f"the limit's BFS from {source} does not reach {target}")

    def timed(fn: Callable[[], object]) -> float:
        return measure(fn, repeats, round_seconds, budget_seconds).median * 1e3

    limit = timed(lambda: nx.single_source_shortest_path_length(view.graph, source))
    # The view remembers what it found: every repetition starts from none, so searches are timed.
    cached = timed(lambda: (view.forget_paths(), [view.shortest(a, b) for a, b in setup.hops]))
    # The timed calls keep their last result, to be checked without paying for another plan.
    last: dict[str, Plan] = {}
    plan = timed(lambda: last.update(plan=make_plan(setup.fabric, setup.resources)))
    check_plan(setup, last["plan"])
    chain = f"3-function chain, fat-tree k={k}"
    return [
        figure(f"path compute (cached view), {chain}", cached, "ms", limit, "ms", LIMIT_LABEL),
        figure(f"plan, {chain}", plan, "ms", limit, "ms", LIMIT_LABEL),
        *_bounded(setup, view, timed, chain),
    ]


def _bounded(setup: ChainSetup, view: FabricView, timed: Callable[[Callable[[], object]], float],
             chain: str) -> list[str]:
    """The latency-bounded searches' figures (see the module docstring)."""
    def latency(u: str, v: str, d: dict) -> float:
        return d["link"].latency

    fastest = [nx.bidirectional_dijkstra(view.graph, a, b, weight=latency)[0] for a, b in setup.hops]
    limit = timed(lambda: [nx.bidirectional_dijkstra(view.graph, a, b, weight=latency)
                           for a, b in setup.hops])
    graph, none = view.routing, frozenset()

    def searches() -> list:
        found = [search_path(graph, a, b, 0, bound, None, none, none)
                 for (a, b), bound in zip(setup.hops, fastest, strict=True)]
        if None in found:
            raise RuntimeError(f"a latency-bounded search found no path: {found}")
        return found

    cold = timed(lambda: (view.forget_paths(), searches()))
    warm = timed(searches)
    label = "3 networkx bidirectional_dijkstra by latency"
    return [figure(f"latency-bounded path, bounds found anew, {chain}", cold, "ms", limit, "ms", label),
            figure(f"latency-bounded path, bounds kept, {chain}", warm, "ms", limit, "ms", label)]


def main(argv: list[str] | None = None) -> int:
    """Print the figure lines; --quick for k=4 only."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k=4 only, few repetitions (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, repeats, round_seconds, budget_seconds = (4,), 3, 0.005, 1.0
    else:
        sizes, repeats, round_seconds, budget_seconds = (16, 32), 7, 0.02, 5.0
    for k in sizes:
        for line in run(k, repeats, round_seconds, budget_seconds):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
