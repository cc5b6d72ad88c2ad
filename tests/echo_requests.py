"""The smallest request set: service ``echo``, endpoint ``server``, Pod ``client``, as YAML files."""

from __future__ import annotations

import textwrap
from pathlib import Path


def echo_service(namespace: str | None = None) -> str:
    """The NetworkService ``echo`` (payload ETHERNET) as YAML, in ``namespace`` if given."""
    where = f", namespace: {namespace}" if namespace else ""
    return f"apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: echo{where}}}\n" \
           "spec: {payload: ETHERNET}\n"


def write_echo_requests(directory: Path, client: str, server: str) -> Path:
    """Write service.yaml (service + endpoint at ``server``) and client.yaml (Pod at ``client``).

    ``client`` and ``server`` are attachments, "bridge/port". Returns ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "service.yaml").write_text(echo_service() + textwrap.dedent(f"""\
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata:
          name: server
          annotations: {{ryu-nsm.io/attachments: {server}}}
        spec: {{network_service_names: [echo]}}
        """))
    (directory / "client.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: client
          annotations:
            networkservicemesh.io: kernel://echo/nsm-1
            ryu-nsm.io/attachments: nsm-1={client}
        """))
    return directory
