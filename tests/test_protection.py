"""Protected connections: a fast-failover group at each end carries the wire onto its backup path the
moment the primary's first link is cut, in the data plane, before the controller re-plans."""

from ryu_nsm.model import ClientRequest, Endpoint, NetworkService, Resources
from ryu_nsm.planner import PLANNED, make_plan
from ryu_nsm.sla import ServiceLevel

from .fabrics import ring
from .flowsim import FabricSim


def protected_plan(protection="disjoint"):
    fabric = ring(4, {"client": ("s1",), "server": ("s2",)})
    client = next(h for h in fabric.hosts if h.name == "client").interfaces[0]
    server = next(h for h in fabric.hosts if h.name == "server").interfaces[0]
    level = ServiceLevel("safe", "svc", protection=protection, dscp=46) if protection != "none" else None
    resources = Resources((NetworkService("svc"),),
                          (Endpoint("server", services=("svc",), attachments=(server.attachment,)),),
                          (ClientRequest("client", "nsm-1", "svc", attachment=client.attachment),),
                          service_levels=(level,) if level else ())
    return fabric, client, server, make_plan(fabric, resources)


def deliveries(fabric, plan, start, down=()):
    sim = FabricSim(fabric, plan.flows, plan.groups, down)
    return [(d.switch, d.port, d.vlans) for d in sim.send(start.switch, start.port)]


def test_a_cut_primary_link_fails_over_in_the_data_plane_both_ways():
    fabric, client, server, plan = protected_plan()
    (pc,) = plan.connections.values()
    assert pc.state == PLANNED and pc.path.switches == ("s1", "s2")
    assert pc.backup.switches == ("s1", "s4", "s3", "s2")
    assert {sw for sw, _ in pc.groups} == {"s1", "s2"}
    first = pc.path.links[0]
    for down in ((), ((first.a, first.a_port),)):
        assert deliveries(fabric, plan, client, down) == [(server.switch, server.port, ())]
        assert deliveries(fabric, plan, server, down) == [(client.switch, client.port, ())]


def test_without_protection_the_same_cut_loses_the_frames():
    fabric, client, server, plan = protected_plan("none")
    (pc,) = plan.connections.values()
    first = pc.path.links[0]
    assert not pc.groups
    assert deliveries(fabric, plan, client, ((first.a, first.a_port),)) == []
