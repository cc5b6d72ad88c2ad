"""What the core took from each switch's last read: its flows by key, and the tags and conntrack
zones those flows carry, kept so the next read costs what changed on the switch, not all it holds.

At size a core switch holds ~19,000 flows; indexing them, comparing them with what was believed and
reading their tags again at each read after a program had touched the switch took ~25 ms of core
time, and held up the requests behind it. The shell's reader says what a read found that the one
before did not (``FlowsRead``); the core applies only that to its copy of the last read (~10 ms,
most of it naming the tags by connection).
"""

from __future__ import annotations

from collections.abc import Iterable

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import FlowSpec, Priority, Table, is_ours
from ryu_nsm.core.reconcile import FlowKey
from ryu_nsm.core.router import ZONE_SCOPE


class FlowsRead(list):
    """A whole read's flows (a list, in the switch's order) numbered ``serial`` in its switch's
    reads, with ``added`` and ``gone``: the flows that were not, or no longer are, in read ``since``
    (None: no read before it to compare with)."""

    def __init__(self, flows: Iterable[FlowSpec], serial: int, since: int | None = None,
                 added: tuple[FlowSpec, ...] = (), gone: tuple[FlowSpec, ...] = ()):
        super().__init__(flows)
        self.serial, self.since, self.added, self.gone = serial, since, added, gone


class TakenRead:
    """One switch's last read: ours by key, their tag entries by key, and the tags they give."""

    __slots__ = ("flows", "serial", "entries", "tags")

    def __init__(self, flows: dict[FlowKey, FlowSpec], serial: int | None,
                 entries: dict[FlowKey, tuple], tags: dict[tuple[int, str], int]):
        self.flows, self.serial, self.entries, self.tags = flows, serial, entries, tags


class SwitchReads:
    """Each switch's last read, and how the next one is taken against it."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self._last: dict[str, TakenRead] = {}
        self._links: dict[str, dict[int, str]] = {}

    def take(self, switch: str, flows: Iterable[FlowSpec]) -> tuple[dict[FlowKey, FlowSpec], set | None]:
        """(Our flows of the read by key, a new dict the caller may change; the keys where they
        differ from the last read's, or None when the read was taken whole.)"""
        last = self._last.get(switch)
        read = flows if isinstance(flows, FlowsRead) else None
        serial = read.serial if read is not None else None
        if read is not None and last is not None and last.serial is not None and (
                last.serial in (read.serial, read.since)):
            # The last read's dict is this object's own and is replaced here: brought up to this
            # read in place, one copy of a core switch's 19,000 flows fewer.
            by_key, changed = last.flows, set()
            if read.serial != last.serial:
                for flow in read.gone:
                    if is_ours(flow.cookie) and by_key.get(flow.key) is flow:
                        del by_key[flow.key]
                        changed.add(flow.key)
                for flow in read.added:
                    if is_ours(flow.cookie):
                        by_key[flow.key] = flow
                        changed.add(flow.key)
            self._remember(switch, last, by_key, serial, changed)
            return by_key.copy(), changed
        by_key = {f.key: f for f in flows if is_ours(f.cookie)}
        self._remember(switch, last, by_key, serial, None)
        return by_key.copy(), None

    def tags(self, switch: str) -> dict[tuple[int, str], int]:
        """(wire cookie, link) → tag, read off the switch's FORWARD flows; (wire cookie,
        ZONE_SCOPE) → conntrack zone, off the flows where its frames enter or leave the wire. The
        same object while the flows that carry them are the same."""
        return self._last[switch].tags

    def _remember(self, switch: str, last: TakenRead | None, by_key: dict, serial: int | None,
                  changed: set | None) -> None:
        """Keep ``by_key`` as the switch's read, its tag entries worked out for the flows that are not
        the very ones of the last read (by cookie, each flow once: the tags of a core switch's 18,000
        flows, looked at again, were 0.1 s a request)."""
        links = self._links.get(switch)
        if links is None:
            links = self._links[switch] = {link.port_on(switch): link.name for link in self.fabric.links
                                           if switch in (link.a, link.b)}
        if last is not None and changed is not None:
            entries, moved = last.entries, False
            for key in changed:
                flow = by_key.get(key)
                entry = _tag_entry(flow, links) if flow is not None else None
                if entries.get(key) != entry:
                    if not moved:
                        entries, moved = entries.copy(), True
                    if entry is None:
                        del entries[key]
                    else:
                        entries[key] = entry
            tags = _tags_of(entries) if moved else last.tags
        else:
            seen, before = (last.flows, last.entries) if last is not None else ({}, {})
            entries = {}
            same = last is not None and len(seen) == len(by_key)
            for key, flow in by_key.items():
                if seen.get(key) is flow:
                    entry = before.get(key)
                else:
                    same, entry = False, _tag_entry(flow, links)
                if entry is not None:
                    entries[key] = entry
            tags = last.tags if same else _tags_of(entries)
        self._last[switch] = TakenRead(by_key, serial, entries, tags)


def _tags_of(entries: dict[FlowKey, tuple]) -> dict[tuple[int, str], int]:
    """The tags the entries give (where two flows give one wire and link different tags, drift, the
    later entry's: a hint, the plan checks it)."""
    return dict(entries.values())


def _tag_entry(flow: FlowSpec, links: dict[int, str]) -> tuple[tuple[int, str], int] | None:
    """((wire cookie, link or ZONE_SCOPE), tag or zone) that ``flow`` carries, if any."""
    if flow.table != Table.FORWARD:
        if flow.table in (Table.CLASSIFY, Table.WIRE_ENTRY):
            zone = next((a[1] for a in flow.actions if a[0] in ("ct_commit", "ct")), None)
            if zone is not None:
                return (flow.cookie, ZONE_SCOPE), zone
        return None
    # Only the wire's own flows: a crankback flow arrives on the same port with another tag.
    if flow.priority != Priority.WIRE:
        return None
    match = flow.match_dict()
    link = links.get(match.get("in_port"))
    if link and match.get("vlan_vid"):
        return (flow.cookie, link), match["vlan_vid"] & 0xFFF
    return None
