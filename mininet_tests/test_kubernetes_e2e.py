"""End to end from the (emulated) Kubernetes API: applying the demo chain's objects makes traffic pass
through the Mininet fabric, the connections report back as NetworkServiceConnections, and deleting the
objects stops the traffic. The controller runs as in a cluster: ``--kubernetes --kubeconfig``, no files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ryu_nsm.lab.controller_process import ControllerProcess
from ryu_nsm.lab.mininet_commands import wait_until
from ryu_nsm.lab.mininet_fabric import build_network
from ryu_nsm.sources.topology import load_topology
from tests.k8s_emulator import Emulator

pytestmark = pytest.mark.mininet

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_IP = "10.0.0.254"
CHAIN = {"default/client/nsm-1", "default/firewall/nsm-1", "default/dpi/nsm-1"}


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "nobody", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "nobody"}}],
    }))
    return path


def demo_objects() -> list[dict]:
    docs = []
    for name in ("service.yaml", "endpoints.yaml", "pods.yaml"):
        docs += [d for d in yaml.safe_load_all((ROOT / "examples" / "demo-chain" / name).read_text()) if d]
    return docs


def reaches(net) -> bool:
    return net.ping("client", GATEWAY_IP, count=1, timeout=2).received == 1


def connection_states(api: Emulator) -> dict[str, str]:
    objects = api.objects("NetworkServiceConnection")
    return {o["metadata"]["name"]: o.get("status", {}).get("state") for o in objects}


def test_chain_from_the_api_carries_traffic_and_reports_status(tmp_path, clean_mininet):
    topology = ROOT / "topologies" / "demo-chain.yaml"
    with Emulator() as api:
        config = kubeconfig(tmp_path / "kubeconfig", api.url)
        args = ["--kubernetes", "--kubeconfig", str(config)]
        with ControllerProcess(topology, [], tmp_path / "controller.log", extra_args=args) as ctl:
            with build_network(load_topology(topology), ctl.of_port) as net:
                assert ctl.connections() == {}
                assert net.ping("client", GATEWAY_IP, count=1, timeout=2).received == 0

                for body in demo_objects():
                    api.create(body)
                ctl.wait_connections(
                    lambda cs: set(cs) == CHAIN and all(c["state"] == "up" for c in cs.values()), 60)
                assert wait_until(lambda: reaches(net), 15)
                assert net.ping("client", GATEWAY_IP, count=3, timeout=5).received == 3
                all_up = {"client-nsm-1": "Up", "firewall-nsm-1": "Up", "dpi-nsm-1": "Up"}
                assert wait_until(lambda: connection_states(api) == all_up, 15), connection_states(api)
                client = api.get("NetworkServiceConnection", "client-nsm-1", namespace="default")
                assert client["status"]["chain"] == ["client", "firewall", "dpi", "vpn-gateway"]
                ready = {c["type"]: c["status"] for c in client["status"]["conditions"]}
                assert ready["Ready"] == "True"

                # The API server goes away: traffic keeps flowing and nothing is torn down; a change
                # made meanwhile is picked up once it is back.
                api.pause()
                assert net.ping("client", GATEWAY_IP, count=3, timeout=5).received == 3
                assert set(ctl.connections()) == CHAIN
                dpi_pod = api.get("Pod", "dpi", namespace="default")
                api.delete("Pod", "dpi", namespace="default")
                api.resume()
                ctl.wait_connections(lambda cs: set(cs) == CHAIN - {"default/dpi/nsm-1"}, 60)
                keep = ("name", "namespace", "annotations")
                dpi_pod["metadata"] = {k: dpi_pod["metadata"][k] for k in keep}
                api.create(dpi_pod)
                ctl.wait_connections(
                    lambda cs: set(cs) == CHAIN and all(c["state"] == "up" for c in cs.values()), 30)
                assert wait_until(lambda: reaches(net), 15)

                # An invalid edit of the service is reported on it and changes nothing that works.
                service = api.get("NetworkService", "secure-internet", namespace="default")
                service["spec"]["matches"][0]["routes"][0]["weight"] = -1
                api.replace(service)
                assert wait_until(lambda: any(
                    "weight" in e.get("message", "") and e["involvedObject"]["name"] == "secure-internet"
                    for e in api.objects("Event", api_version="v1")), 15)
                assert net.ping("client", GATEWAY_IP, count=2, timeout=5).received == 2

                for kind, name in (("Pod", "client"), ("Pod", "firewall"), ("Pod", "dpi")):
                    api.delete(kind, name, namespace="default")
                ctl.wait_connections(lambda cs: cs == {}, 30)
                assert wait_until(lambda: not reaches(net), 10)
                assert wait_until(lambda: connection_states(api) == {}, 15), connection_states(api)
                assert ctl.errors() == []
