"""The controller's IPFIX collector sets, written through OVSDB (``--ipfix-ovsdb``).

OpenFlow cannot create a Flow_Sample_Collector_Set; with an OVSDB remote the controller puts one on
each bridge of its fabric, exporting to its collector, when the collector starts (so Open vSwitch
sends its templates to a collector that is listening) and removes them when it stops. A set with
the same id on one of those bridges is replaced. One short-lived IDL connection per change; the
columns it needs are declared here, so no schema file is needed where the controller runs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

with warnings.catch_warnings():
    # ovs.poller probes for eventlet at import; eventlet (an os-ken dependency) warns on import.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import ovs.db.idl as idl
    import ovs.poller


def _ref(table: str, least: int) -> dict:
    return {"type": {"key": {"type": "uuid", "refTable": table}, "min": least, "max": 1}}


_SCHEMA = {
    "name": "Open_vSwitch",
    "tables": {
        "Bridge": {"columns": {"name": {"type": "string"}}, "isRoot": True},
        "IPFIX": {"columns": {"targets": {"type": {"key": "string", "min": 0, "max": "unlimited"}}}},
        "Flow_Sample_Collector_Set": {"columns": {
            "id": {"type": {"key": {"type": "integer", "minInteger": 0, "maxInteger": 4294967295}}},
            "bridge": _ref("Bridge", 1), "ipfix": _ref("IPFIX", 0)}, "isRoot": True},
    },
}


class OvsdbIpfixError(RuntimeError):
    """OVSDB could not be reached, or refused the change."""


def set_collector_sets(remote: str, bridges: Sequence[str], target: str, set_id: int,
                       timeout: float = 10.0) -> None:
    """Each of ``bridges`` (those that exist) exports collector set ``set_id`` to ``target``."""
    def build(replica: idl.Idl, txn: idl.Transaction) -> None:
        for bridge in _bridges(replica, bridges):
            ipfix = txn.insert(replica.tables["IPFIX"])
            ipfix.targets = [target]
            row = txn.insert(replica.tables["Flow_Sample_Collector_Set"])
            row.id, row.bridge, row.ipfix = set_id, bridge, ipfix

    _transact(remote, bridges, set_id, build, timeout)


def remove_collector_sets(remote: str, bridges: Sequence[str], set_id: int, timeout: float = 10.0) -> None:
    """Remove collector set ``set_id`` from ``bridges`` (their IPFIX rows go with them)."""
    _transact(remote, bridges, set_id, lambda replica, txn: None, timeout)


def _bridges(replica: idl.Idl, names: Sequence[str]) -> list:
    return [row for row in replica.tables["Bridge"].rows.values() if row.name in names]


def _transact(remote: str, bridges: Sequence[str], set_id: int,
              build: Callable[[idl.Idl, idl.Transaction], None], timeout: float) -> None:
    """Delete the sets ``set_id`` on ``bridges``, then ``build`` more, in one transaction."""
    helper = idl.SchemaHelper(schema_json=_SCHEMA)
    helper.register_all()
    replica = idl.Idl(remote, helper)
    deadline = time.monotonic() + timeout
    try:
        while replica.change_seqno == 0:  # until the first copy of the tables is in
            if time.monotonic() > deadline:
                raise OvsdbIpfixError(f"no answer from OVSDB at {remote} in {timeout} s")
            replica.run()
            poller = ovs.poller.Poller()
            replica.wait(poller)
            poller.timer_wait(100)
            poller.block()
        txn = idl.Transaction(replica)
        ours = {row.uuid for row in _bridges(replica, bridges)}
        for row in list(replica.tables["Flow_Sample_Collector_Set"].rows.values()):
            if row.id == set_id and row.bridge.uuid in ours:
                row.delete()
        build(replica, txn)
        status = txn.commit_block()
        if status not in (idl.Transaction.SUCCESS, idl.Transaction.UNCHANGED):
            raise OvsdbIpfixError(f"OVSDB at {remote} refused the collector sets: {status} "
                                  f"{txn.get_error()}")
    finally:
        replica.close()
