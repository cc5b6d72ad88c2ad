"""``ryu-nsm``: plan (dry run), controller, status, observe, demo, certs (a development CA)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ryu_nsm.observe.status_api import DEFAULT_ADDRESS
from ryu_nsm.qos.measure import PROBE_BUDGET
from ryu_nsm.trust.options import add_identity_arguments, identity_source

REPO = Path(__file__).resolve().parent.parent
# Open vSwitch's own database socket (also ryu_nsm.sources.ovsdb.DEFAULT_REMOTE, not imported here:
# the ovs package takes 0.2 s to import).
OVSDB_SOCKET = "unix:/var/run/openvswitch/db.sock"
EXIT_INVALID = 1  # some document was invalid (the rest was still planned)
EXIT_USAGE = 2  # bad arguments, unreadable topology, controller unreachable
EXIT_ERROR = 1  # observe: the controller's Hubble API failed or refused the request
HUBBLE_ADDRESS = "127.0.0.1:4244"  # Hubble's own default port
METRICS_PORT = 9181  # --metrics-listen without a port (deploy/controller.yaml's)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host, int(port)


def _openflow_target(text: str) -> tuple[str, str, int]:
    """``ssl:HOST:PORT``, ``tcp:HOST:PORT`` (Open vSwitch's target syntax) or ``HOST:PORT`` (TCP) as
    (scheme, host, port); ValueError otherwise."""
    scheme, _, rest = text.partition(":")
    if scheme not in ("ssl", "tcp") or not rest:
        scheme, rest = "tcp", text
    host, port = _host_port(rest, 6653)
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"expected ssl:HOST:PORT, tcp:HOST:PORT or HOST:PORT, got {text!r}")
    return scheme, host, port


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def _load_fabric(args):
    from ryu_nsm.sources.topology import TopologyError, load_topology

    try:
        return load_topology(args.topology, _params(args.param))
    except (TopologyError, OSError) as exc:
        print(f"ryu-nsm: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def cmd_plan(args) -> int:
    from ryu_nsm.core.planner import make_plan
    from ryu_nsm.observe.report import chains, connection_entry, render_text
    from ryu_nsm.sources.files import load_paths
    from ryu_nsm.sources.topology import fabric_warnings

    fabric = _load_fabric(args)
    warnings = fabric_warnings(fabric)  # printed, but they do not change the exit status
    resources = load_paths(args.requests)
    plan = make_plan(fabric, resources, now=time.time())  # endpoints expire by the wall clock
    report = {
        "fabric": fabric.name,
        "connections": [connection_entry(pc, pc.state) for pc in plan.connections.values()],
        "flows": {sw: [f.to_ofctl() for f in sorted(flows)] for sw, flows in sorted(plan.flows.items())},
        "problems": [str(p) for p in plan.problems],
        "reservations": plan.reservations(),
        "meters": {sw: [m.to_ofctl() for m in sorted(meters)] for sw, meters in sorted(plan.meters.items())},
    }
    report["chains"] = chains(report["connections"])
    if args.dot:
        from ryu_nsm.observe.picture import fabric_description, to_dot

        print(to_dot(fabric_description(fabric), report), end="")
    elif args.json:
        print(json.dumps(report, indent=1))
    else:
        print(render_text(report))
    for warning in [*warnings, *resources.warnings]:  # said, but not a reason to fail
        print(f"ryu-nsm: warning: {warning}", file=sys.stderr)
    for problem in plan.problems:
        print(f"ryu-nsm: invalid: {problem}", file=sys.stderr)
    return EXIT_INVALID if plan.problems else 0


def cmd_controller(args) -> int:
    from ryu_nsm.wiring import FlowOptions, KubernetesOptions, run_controller

    fabric = _load_fabric(args)
    kubernetes = None
    if args.kubernetes:
        kubernetes = KubernetesOptions(
            kubeconfig=args.kubeconfig, context=args.context, namespaces=args.namespace or None,
            leader_elect=args.leader_elect, lease_namespace=args.lease_namespace,
            lease_name=args.lease_name, identity=args.identity or socket.gethostname(),
            lease_duration=args.lease_duration, renew_deadline=args.lease_duration * 2 / 3,
            retry_period=args.lease_duration / 7.5, shards=args.shards,
        )
    elif args.leader_elect:
        print("ryu-nsm: --leader-elect needs --kubernetes (the Lease lives in the cluster)", file=sys.stderr)
        return EXIT_USAGE
    problem = _shards_problem(args)
    if problem:
        print(f"ryu-nsm: {problem}", file=sys.stderr)
        return EXIT_USAGE
    flows = FlowOptions(buffer=args.flow_buffer, hubble_listen=args.hubble_listen, log=args.flow_log,
                        log_max_bytes=args.flow_log_max_bytes, log_keep=args.flow_log_keep)
    if flows.buffer < 1 or flows.log_max_bytes < 1 or flows.log_keep < 0:
        print("ryu-nsm: --flow-buffer and --flow-log-max-bytes must be >= 1, --flow-log-keep >= 0",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        scheme, host, port = _openflow_target(args.listen)
        shost, sport = _host_port(args.status_listen, DEFAULT_ADDRESS[1])
        metrics_address = _host_port(args.metrics_listen, METRICS_PORT) if args.metrics_listen else None
        ipfix = _ipfix_options(args)
        identity = identity_source(args)  # one SVID for every channel: OpenFlow, NSM gRPC, status
    except (OSError, ValueError) as exc:  # IdentityOptionsError is a ValueError
        print(f"ryu-nsm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if scheme == "ssl" and identity is None:
            print("ryu-nsm: --listen ssl: needs an identity: --spiffe-socket or "
                  "--tls-cert/--tls-key/--tls-ca", file=sys.stderr)
            return EXIT_USAGE
        try:
            status_access = _status_access(args, identity, shost)
        except (OSError, ValueError) as exc:
            print(f"ryu-nsm: {exc}", file=sys.stderr)
            return EXIT_USAGE
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with run_controller(
            fabric, args.requests, host, port, (shost, sport),
            watch_interval=args.watch_interval, kubernetes=kubernetes, use_bundles=not args.no_bundles,
            audit_interval=args.audit_interval, ovsdb_remote=args.ovsdb, nsm_listen=args.nsm_listen or (),
            counter_interval=args.counter_interval, probe_interval=args.probe_interval,
            probe_budget=args.probe_budget, flows=flows,
            identity=identity,
            openflow_identity=identity if scheme == "ssl" else None, status_access=status_access,
            metrics_address=metrics_address, ipfix=ipfix,
        ) as running:
            logging.getLogger("ryu_nsm").info(
                "controller for fabric %s: OpenFlow on %s:%s:%d, status on %s/status",
                fabric.name, scheme, host, port, running.status_url)
            stop.wait()
    finally:
        if identity is not None:
            identity.close()
    return 0


def _status_access(args, identity, host: str):
    """Who may read the status endpoint (--status-token-file, --status-allow, the identity)."""
    from ryu_nsm.observe.status_access import StatusAccess, TokenFile

    token = TokenFile(args.status_token_file) if args.status_token_file else None
    access = StatusAccess(identity, frozenset(args.status_allow or ()), token)
    if access.open and host not in ("127.0.0.1", "::1", "localhost"):
        logging.getLogger("ryu_nsm").warning(
            "the status endpoint on %s serves anyone: give the controller an identity or "
            "--status-token-file (docs/security.md)", host)
    return access


def cmd_status(args) -> int:
    from ryu_nsm.observe.report import render_text
    from ryu_nsm.observe.status_api import StatusRefused, fetch_status

    if args.nsm:
        from ryu_nsm.monitor_client import status_from_monitor

        return status_from_monitor(args)
    identity = None
    try:
        client, identity = _status_client(args)
        report = fetch_status(args.url, client=client)
        fabric = fetch_status(args.url, what="/status/fabric", client=client) if args.dot else None
    except StatusRefused as exc:
        print(f"ryu-nsm: the controller at {args.url} refused this client: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"ryu-nsm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"ryu-nsm: cannot reach the controller at {args.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if identity is not None:
            identity.close()
    if fabric is not None:
        from ryu_nsm.observe.picture import to_dot

        print(to_dot(fabric, report), end="")
    else:
        print(json.dumps(report, indent=1) if args.json else render_text(report))
    return 0


def _status_client(args):
    """The status client the flags ask for (mutual TLS, a CA alone to check the server, a token),
    and the identity source to close after."""
    from ryu_nsm.observe.status_access import status_client

    if args.tls_ca and not (args.tls_cert or args.tls_key or args.spiffe_socket):
        return status_client(ca_file=args.tls_ca, token_file=args.token_file), None
    identity = identity_source(args)
    return status_client(identity, token_file=args.token_file), identity


def cmd_observe(args) -> int:
    """Flows from the controller's Hubble API, printed as they come (``--follow``) or as kept."""
    import grpc

    from hubble_api import observer_pb2_grpc
    from ryu_nsm.observe.flow_client import flow_request, render
    from ryu_nsm.observe.flow_output import table_header

    try:
        request = flow_request(args.follow, args.last, args.first, args.since, args.until, time.time(),
                               pods=args.pod or (), services=args.service or (), ports=args.port or (),
                               verdicts=args.verdict or (), protocols=args.protocol or (),
                               labels=args.label or (), from_labels=args.from_label or (),
                               to_labels=args.to_label or ())
    except ValueError as exc:
        print(f"ryu-nsm: observe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    channel = grpc.insecure_channel(args.server)
    try:
        if args.output == "table":
            print(table_header())
        stub = observer_pb2_grpc.ObserverStub(channel)
        for response in stub.GetFlows(request, timeout=None if args.follow else 30):
            print(render(response, args.output), flush=args.follow)
    except grpc.RpcError as exc:
        print(f"ryu-nsm: observe: Hubble API at {args.server}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return EXIT_USAGE if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
    except KeyboardInterrupt:
        pass
    finally:
        channel.close()
    return 0


def cmd_demo(args) -> int:
    from ryu_nsm.lab.demo import run_demo

    return run_demo(args)


def cmd_certs(args) -> int:
    from ryu_nsm.trust import devca

    try:
        if args.certs_command == "init":
            authority = devca.init_ca(args.dir, args.trust_domain, days=args.days)
            print(f"CA for trust domain {authority.trust_domain} in {args.dir} "
                  f"({devca.CA_CERT}, {devca.CA_KEY}), valid until {authority.cert.not_valid_after_utc}")
        else:
            identity = devca.issue(args.dir, args.spiffe_id, args.out, days=args.days,
                                   dns_names=tuple(args.dns or ()))
            print(f"SVID {identity.spiffe_id} in {args.out or args.dir} ({devca.SVID}, {devca.SVID_KEY}, "
                  f"{devca.SVID_BUNDLE}), valid until {identity.not_after}")
    except (OSError, ValueError) as error:
        print(f"ryu-nsm certs {args.certs_command}: {error}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations here: argparse would read a subcommand's `--log` as an ambiguous `--log-…`.
    p = argparse.ArgumentParser(prog="ryu-nsm", description=__doc__, allow_abbrev=False)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line (time, level, logger, message) for log collectors")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_plan, _add_controller, _add_status, _add_observe, _add_demo, _add_certs):
        add(sub)
    return p


def _add_plan(sub) -> None:
    """``ryu-nsm plan``."""
    plan = sub.add_parser("plan", help="dry run: chains, paths and flows; touches nothing")
    plan.add_argument("topology", help="topology YAML")
    plan.add_argument("requests", nargs="+", help="YAML files or directories of NSM resources and Pods")
    plan.add_argument("--json", action="store_true", help="one JSON object")
    plan.add_argument("--dot", action="store_true", help="the fabric with the chains drawn on it (Graphviz)")
    plan.add_argument("--param", action="append", help="topology generator parameter, e.g. k=8")
    plan.set_defaults(func=cmd_plan)


def _add_controller(sub) -> None:
    """``ryu-nsm controller``."""
    ctl = sub.add_parser("controller", help="run the controller against a real fabric")
    ctl.add_argument("--topology", required=True, help="topology YAML")
    ctl.add_argument("--requests", nargs="*", default=[], help="files/directories watched for resources")
    ctl.add_argument("--listen", default="127.0.0.1:6653",
                     help="OpenFlow listen address: HOST:PORT or tcp:HOST:PORT (plain), ssl:HOST:PORT "
                          "(TLS with the identity below; switches need a certificate from its bundle)")
    ctl.add_argument("--status-listen", default=f"{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}")
    ctl.add_argument("--no-bundles", action="store_true", help="plain flow mods instead of ONF bundles")
    ctl.add_argument("--audit-interval", type=float, default=30.0, help="seconds between flow audits")
    ctl.add_argument("--counter-interval", type=float, default=5.0,
                     help="seconds between reads of the ingress flow counters (per-connection "
                          "throughput; 0: never)")
    ctl.add_argument("--probe-interval", type=float, default=1.0,
                     help="seconds between rounds of link latency probes (one probe per link; 0: "
                          "none, links keep their declared latency)")
    ctl.add_argument("--probe-budget", type=int, default=PROBE_BUDGET,
                     help="link probes a round at most; a bigger fabric probes its link ends in turn "
                          "(0: every link end every round)")
    ctl.add_argument("--watch-interval", type=float, default=1.0,
                     help="seconds between polls of the request files")
    ctl.add_argument("--param", action="append", help="topology generator parameter, e.g. k=8")
    _add_kubernetes_options(ctl)
    ctl.add_argument("--ovsdb", nargs="?", const=OVSDB_SOCKET, metavar="REMOTE",
                     help="also bind the interfaces that the forwarder plumbed into the fabric's bridges, "
                          f"watched in this OVSDB (without a value: {OVSDB_SOCKET}); they are clients "
                          "and endpoints in namespace 'nsm', their NetworkServices come from files or "
                          "Kubernetes")
    ctl.add_argument("--nsm-listen", action="append", metavar="ADDRESS",
                     help="serve NSM's NetworkService and MonitorConnections gRPC here (repeatable; "
                          "unix:///path or host:port): connections asked for become client requests "
                          "in namespace 'nsm'")
    _add_flow_options(ctl)
    add_identity_arguments(ctl)
    _add_status_access_options(ctl)
    _add_ipfix_options(ctl)
    ctl.add_argument("--log", action="append", default=[], metavar="LOGGER=LEVEL",
                     help="one logger's level, e.g. ryu_nsm.sources.kubernetes=debug (repeatable)")
    ctl.set_defaults(func=cmd_controller)


def _add_kubernetes_options(ctl: argparse.ArgumentParser) -> None:
    """The controller's Kubernetes options."""
    kube = ctl.add_argument_group("Kubernetes")
    kube.add_argument("--kubernetes", action="store_true",
                      help="also watch NSM's CRDs and annotated Pods; report in NetworkServiceConnections")
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    kube.add_argument("--context", help="kubeconfig context")
    kube.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    kube.add_argument("--leader-elect", action="store_true",
                      help="run as one of several replicas: only the Lease holder programs switches")
    kube.add_argument("--lease-namespace", default="ryu-nsm")
    kube.add_argument("--lease-name", default="ryu-nsm-controller")
    kube.add_argument("--identity", help="leader election identity (default: host name; use the Pod name)")
    kube.add_argument("--lease-duration", type=float, default=15.0, help="seconds a Lease holds")
    kube.add_argument("--shards", type=int, default=1, metavar="N",
                      help="with --leader-elect: split the switches into N shards, one Lease each, so "
                           "that replicas share them (docs/sharding.md); 1: one leader programs all")


def _shards_problem(args) -> str | None:
    """What is wrong with ``--shards`` as given, if anything."""
    if args.shards < 1:
        return "--shards must be >= 1"
    if args.shards > 1 and not args.leader_elect:
        return "--shards needs --leader-elect (each shard is a Lease)"
    return None


def _add_flow_options(ctl: argparse.ArgumentParser) -> None:
    """The controller's flow event options."""
    flows = ctl.add_argument_group("flow events (docs/observability.md)")
    flows.add_argument("--flow-buffer", type=int, default=4096, metavar="N",
                       help="flow events kept for observe and the Hubble API")
    flows.add_argument("--hubble-listen", action="append", metavar="ADDRESS",
                       help=f"serve Hubble's Observer gRPC API here (unix:PATH or host:port, e.g. "
                            f"{HUBBLE_ADDRESS}; repeatable); default: not served")
    flows.add_argument("--flow-log", metavar="FILE", help="write every flow event here as a JSON line")
    flows.add_argument("--flow-log-max-bytes", type=int, default=10 * 1024 * 1024, metavar="BYTES",
                       help="rotate the flow log when it would pass this size")
    flows.add_argument("--flow-log-keep", type=int, default=5, metavar="N", help="rotated flow logs kept")


def _add_status_access_options(ctl: argparse.ArgumentParser) -> None:
    """Who may read the controller's status endpoint, and the open metrics listener."""
    access = ctl.add_argument_group("status endpoint access (docs/security.md)")
    access.add_argument("--status-token-file", metavar="FILE",
                        help="also accept this bearer token (read again when the file changes)")
    access.add_argument("--status-allow", action="append", metavar="SPIFFE_ID",
                        help="with an identity: only these client SPIFFE IDs (repeatable; default: any "
                             "certificate from the trust bundle)")
    access.add_argument("--metrics-listen", metavar="ADDRESS",
                        help="also serve /metrics and /healthz alone here, plain HTTP, for scrapers "
                             "without a client certificate (default: not served)")


def _add_ipfix_options(ctl: argparse.ArgumentParser) -> None:
    """The controller's flow sampling options (docs/observability.md)."""
    ipfix = ctl.add_argument_group("flow sampling over IPFIX (docs/observability.md)")
    ipfix.add_argument("--ipfix-listen", metavar="HOST:PORT",
                       help="run the IPFIX collector here (e.g. 127.0.0.1:4739) and sample the wires' "
                            "flows into flow events; default: neither")
    ipfix.add_argument("--flow-sampling", default="1/64", metavar="FRACTION",
                       help="the fraction of a wire's frames sampled when its ServiceLevel sets no "
                            "flowSampling (default 1/64)")
    ipfix.add_argument("--drop-sampling", default="1", metavar="FRACTION",
                       help="the fraction of dropped frames sampled (default 1: all)")
    ipfix.add_argument("--no-flow-sampling", action="store_true",
                       help="no sample actions in any flow (the collector, if any, still listens)")
    ipfix.add_argument("--ipfix-collector-set", type=int, default=1, metavar="ID",
                       help="the Flow_Sample_Collector_Set id the bridges export with (default 1)")
    ipfix.add_argument("--ipfix-ovsdb", nargs="?", const=OVSDB_SOCKET, metavar="REMOTE",
                       help="create the collector sets on the fabric's bridges through this OVSDB "
                            f"(without a value: {OVSDB_SOCKET}) and remove them at exit; default: "
                            "the operator creates them (docs/observability.md)")
    ipfix.add_argument("--ipfix-target", metavar="HOST:PORT",
                       help="with --ipfix-ovsdb: the collector's address as the switches reach it "
                            "(default: --ipfix-listen)")


def _ipfix_options(args):
    """IpfixOptions from the flags, None without --ipfix-listen; ValueError on a bad value."""
    from ryu_nsm.core.sampling import FlowSampling
    from ryu_nsm.qos.service_level import parse_sampling
    from ryu_nsm.wiring import IpfixOptions

    if not args.ipfix_listen:
        return None
    if not 0 < args.ipfix_collector_set < 2**32:
        raise ValueError("--ipfix-collector-set must be 1..4294967295")
    try:
        sampling = FlowSampling(args.ipfix_collector_set, parse_sampling(args.flow_sampling),
                                parse_sampling(args.drop_sampling))
    except ValueError as exc:
        raise ValueError(f"--flow-sampling/--drop-sampling: {exc}") from None
    return IpfixOptions(_host_port(args.ipfix_listen, 4739), None if args.no_flow_sampling else sampling,
                        args.ipfix_ovsdb, args.ipfix_target)


def _add_status(sub) -> None:
    """``ryu-nsm status``."""
    st = sub.add_parser("status", help="connections, paths and state from the running controller")
    st.add_argument("--url", default=f"http://{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}",
                    help="the status endpoint; https:// when the controller has an identity")
    st.add_argument("--token-file", metavar="FILE", help="send this bearer token (with --tls-ca alone "
                    "to check the server of an https:// URL)")
    add_identity_arguments(st)
    st.add_argument("--json", action="store_true")
    st.add_argument("--dot", action="store_true", help="the fabric with the chains drawn on it (Graphviz)")
    _add_nsm_monitor_options(st)
    st.set_defaults(func=cmd_status)


def _add_nsm_monitor_options(status: argparse.ArgumentParser) -> None:
    """``status``'s --nsm flags (ryu_nsm/monitor_client.py; the identity flags are the command's own)."""
    nsm = status.add_argument_group("NSM MonitorConnections (--nsm; docs/security.md)")
    nsm.add_argument("--nsm", metavar="ADDRESS",
                     help="read the controller's NSM MonitorConnections stream instead (unix:///path or "
                          "host:port, as given to --nsm-listen): the connections asked for over gRPC; "
                          "over mTLS with the identity flags")
    nsm.add_argument("--service", action="append", help="with --nsm: only this network service (repeatable)")
    nsm.add_argument("--watch", action="store_true", help="with --nsm: follow the stream until Ctrl-C")
    nsm.add_argument("--server-name", metavar="DNS_NAME",
                     help="with --nsm and an identity: the DNS SAN of the controller's SVID that gRPC "
                          "checks (default: the address's host; localhost for a unix socket)")
    nsm.add_argument("--server-spiffe-id", metavar="SPIFFE_ID",
                     help="with --nsm and an identity: refuse a controller whose SVID holds another "
                          "SPIFFE ID (checked on a handshake of its own before each channel)")


def _add_observe(sub) -> None:
    """``ryu-nsm observe``."""
    obs = sub.add_parser("observe", help="flows with their verdicts, from the controller's Hubble API "
                                          "(shaped like hubble observe)")
    obs.add_argument("--server", default=HUBBLE_ADDRESS, help="the controller's --hubble-listen address")
    obs.add_argument("-f", "--follow", action="store_true", help="keep printing new flows until Ctrl-C")
    count = obs.add_mutually_exclusive_group()
    count.add_argument("--last", type=int, metavar="N", help="the last N flows (default 20 without "
                       "--since or --follow)")
    count.add_argument("--first", type=int, metavar="N", help="the first N flows kept")
    obs.add_argument("--since", help="flows since a duration ago (5m, 1h30m) or an RFC 3339 time")
    obs.add_argument("--until", help="flows until a duration ago or an RFC 3339 time")
    obs.add_argument("--pod", action="append", metavar="[NS/]NAME",
                     help="flows from or to this pod (a name prefix; NS/ alone: the namespace); repeatable")
    obs.add_argument("--service", action="append", metavar="[NS/]NAME",
                     help="flows on wires of this network service; repeatable")
    obs.add_argument("--verdict", action="append", choices=["FORWARDED", "DROPPED"], type=str.upper)
    obs.add_argument("--protocol", action="append", help="tcp, udp, sctp, icmp, icmpv4, icmpv6")
    obs.add_argument("--port", action="append", help="source or destination L4 port")
    labels = "a Kubernetes label selector (app=web, k8s:app in (a,b), !canary), as hubble observe's"
    obs.add_argument("-l", "--label", action="append", metavar="SELECTOR",
                     help=f"flows from or to a workload whose labels match {labels}; repeatable")
    obs.add_argument("--from-label", action="append", metavar="SELECTOR",
                     help="flows from a workload whose labels match the selector; repeatable")
    obs.add_argument("--to-label", action="append", metavar="SELECTOR",
                     help="flows to a workload whose labels match the selector; repeatable")
    obs.add_argument("-o", "--output", default="compact", choices=["compact", "json", "table"])
    obs.set_defaults(func=cmd_observe)


def _add_demo(sub) -> None:
    """``ryu-nsm demo``."""
    demo = sub.add_parser(
        "demo", help="Mininet fabric + controller + the chain client → firewall → dpi → gateway")
    demo.add_argument("--topology", default=str(REPO / "topologies" / "demo-chain.yaml"))
    demo.add_argument("--requests", default=str(REPO / "examples" / "demo-chain"))
    demo.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    demo.add_argument("--tls", action="store_true",
                      help="OpenFlow over TLS: a dev CA and SVIDs in a temporary directory, the switches "
                           "on ssl: targets (sets Open vSwitch's set-ssl for the run)")
    demo.set_defaults(func=cmd_demo)


def _add_certs(sub) -> None:
    """``ryu-nsm certs init|issue``."""
    certs = sub.add_parser("certs", help="a development CA and SPIFFE X509-SVIDs (labs and tests, not SPIRE)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="a new EC P-256 CA in DIR (ca.pem, ca_key.pem)")
    init.add_argument("dir")
    init.add_argument("--trust-domain", default="example.org")
    init.add_argument("--days", type=float, default=365.0)
    issue = certs_sub.add_parser("issue",
                                 help="an SVID from DIR's CA (svid.pem, svid_key.pem, svid_bundle.pem)")
    issue.add_argument("dir")
    issue.add_argument("spiffe_id", help="spiffe://TRUST-DOMAIN/PATH")
    issue.add_argument("--out", help="directory for the SVID files (default: DIR)")
    issue.add_argument("--days", type=float, default=1.0)
    issue.add_argument("--dns", action="append",
                       help="also a DNS SAN (repeatable): the name gRPC clients check")
    certs.set_defaults(func=cmd_certs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ryu_nsm.observe.logs import configure

    configure(args.log_level, args.log_format)
    for setting in getattr(args, "log", []):
        name, _, level = setting.partition("=")
        if not name or level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            print(f"ryu-nsm: --log {setting!r}: expected LOGGER=LEVEL (debug, info, warning, error)",
                  file=sys.stderr)
            return EXIT_USAGE
        logging.getLogger(name).setLevel(level.upper())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
