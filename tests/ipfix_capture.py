"""Capture IPFIX export packets from this Open vSwitch once, for the decoder's golden tests.

Run as root: ``python -m tests.ipfix_capture OUT.hex``. A throwaway netdev bridge ``fxcap`` with two
namespaces samples every frame (ping v4 and v6, a TCP SYN, frames to no one) with
obs_domain_id/obs_point_id of ryu-nsm's sampling, and the datagrams OVS sends are written one hex
line each. Everything it made is removed, also on failure.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

BR = "fxcap"
PORT = 4739
_ROWS: list[str] = []  # the IPFIX and collector set rows made here


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def setup() -> None:
    sh("ovs-vsctl", "add-br", BR, "--", "set", "bridge", BR, "datapath_type=netdev", "fail_mode=secure",
       "protocols=OpenFlow13")
    for i, ns in ((1, "fxcapa"), (2, "fxcapb")):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{ns}-p", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.9.0.{i}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"fd00:9::{i}/64", "dev", "eth0", "nodad")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off")
        sh("ovs-vsctl", "add-port", BR, f"{ns}-p", "--", "set", "interface", f"{ns}-p", f"ofport_request={i}")
        sh("ip", "link", "set", f"{ns}-p", "up")
    made = sh("ovs-vsctl", "--", "--id=@br", "get", "bridge", BR, "--", "--id=@i", "create", "IPFIX",
       f"targets=\"127.0.0.1:{PORT}\"", "--", "create", "Flow_Sample_Collector_Set", "id=1", "bridge=@br",
       "ipfix=@i")
    _ROWS.extend(made.split())
    # As ryu-nsm samples a wire whose ends share a switch (core/sampling.py): ingress and delivery
    # each way, on wire hash 0x123 in domain 1; the table miss as a drop on no wire.
    sample = "sample(probability=65535,collector_set_id=1,obs_domain_id=1,obs_point_id={:#x})"
    flows = [
        f"table=0,priority=1000,in_port=1,actions={sample.format(0x10000123)},{sample.format(0x20000123)},"
        "output:2",
        f"table=0,priority=1000,in_port=2,actions={sample.format(0x18000123)},{sample.format(0x28000123)},"
        "output:1",
        f"table=0,priority=0,actions={sample.format(0x30000000)}",
    ]
    for flow in flows:
        sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", BR, flow)


def traffic() -> None:
    ns = ("ip", "netns", "exec", "fxcapa")
    sh(*ns, "ping", "-c", "2", "-i", "0.2", "10.9.0.2", check=False)
    sh(*ns, "ping", "-6", "-c", "1", "fd00:9::2", check=False)
    sh(*ns, "bash", "-c", "exec 3<>/dev/tcp/10.9.0.2/8080", check=False)  # SYN, answered by RST
    sh("ovs-vsctl", "add-port", BR, "fxcapx", "--", "set", "interface", "fxcapx", "type=internal",
       "ofport_request=3")
    sh("ip", "link", "set", "fxcapx", "up")
    sh("ip", "addr", "add", "10.9.0.99/24", "dev", "fxcapx")
    sh("ping", "-c", "1", "-W", "1", "-I", "fxcapx", "10.9.0.1", check=False)  # the miss: sampled, dropped


def cleanup() -> None:
    # The collector set refers to the bridge: it goes first, or the bridge row would outlive del-br.
    for row in reversed(_ROWS):
        sh("ovs-vsctl", "--if-exists", "destroy", "Flow_Sample_Collector_Set", row, check=False)
    sh("ovs-vsctl", "--if-exists", "del-br", BR, check=False)
    for ns in ("fxcapa", "fxcapb"):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", f"{ns}-p", check=False)


def main(out: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", PORT))
    listener.settimeout(0.2)
    packets = []
    try:
        setup()
        traffic()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                packets.append(listener.recv(65535))
            except TimeoutError:
                pass
    finally:
        cleanup()
        listener.close()
    with open(out, "w") as f:
        f.writelines(p.hex() + "\n" for p in packets)
    print(f"{len(packets)} datagrams")


if __name__ == "__main__":
    main(sys.argv[1])
