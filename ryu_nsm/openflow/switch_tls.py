"""OpenFlow over TLS (Open vSwitch's ``ssl:`` targets): the handshake of an accepted switch, done with
a deadline before os-ken sees the socket, and the check of the switch's certificate against the dpid
it announces (docs/security.md).

The chain is checked by the handshake (``ryu_nsm.trust.tls.server_context``: a client certificate
from the trust bundle is required). Who the switch is comes later, in its FEATURES_REPLY: a switch
whose fabric entry names a certificate (``Switch.certificate``) must present that SPIFFE ID or CN,
and a certificate that names one switch cannot announce another's dpid.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from os_ken.controller import ofp_event

from ryu_nsm.core.fabric import Fabric, Switch
from ryu_nsm.trust.identity import spiffe_id_of

log = logging.getLogger("ryu_nsm.openflow.switch_tls")

# (dpid, the switch's leaf certificate) → why it is refused, or None when it may stay
SwitchCheck = Callable[[int, x509.Certificate], "str | None"]


@dataclass(frozen=True)
class SwitchTls:
    """How the OpenFlow listener speaks TLS: the (mutual, rotating) server context, the per-switch
    check, and how long a connecting peer may take for its handshake."""

    context: ssl.SSLContext
    check: SwitchCheck | None = None
    handshake_timeout: float = 5.0


def accept(sock: socket.socket, addr: tuple, tls: SwitchTls) -> tuple[ssl.SSLSocket, x509.Certificate] | None:
    """The TLS connection over a duplicate of accepted ``sock`` (the caller keeps ``sock`` to shut the
    connection down) and the switch's certificate; None, logged, when the handshake fails or times out."""
    raw = sock.dup()
    raw.settimeout(tls.handshake_timeout)  # a silent peer gives up its thread after this
    try:
        conn = tls.context.wrap_socket(raw, server_side=True)
    except (OSError, ssl.SSLError) as error:
        raw.close()
        log.warning("OpenFlow TLS handshake with %s:%s refused: %s", *addr[:2], error)
        return None
    return conn, x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _matches(switch: Switch, spiffe_id: str | None, cn: str | None) -> bool:
    want = switch.certificate
    return ((want.spiffe_id is None or want.spiffe_id == spiffe_id)
            and (want.cn is None or want.cn == cn))


def fabric_check(fabric: Fabric) -> SwitchCheck:
    """The check of a switch's certificate against what ``fabric`` says of the dpid it announces."""
    bound = [switch for switch in fabric.switches if switch.certificate is not None]

    def check(dpid: int, cert: x509.Certificate) -> str | None:
        spiffe_id, cn = spiffe_id_of(cert), common_name(cert)
        shown = spiffe_id or f"CN={cn}"
        switch = fabric.switch_by_dpid.get(dpid)
        if switch is not None and switch.certificate is not None:
            if _matches(switch, spiffe_id, cn):
                return None
            return f"{shown} is not switch {switch.name}'s identity"
        owners = [other.name for other in bound if _matches(other, spiffe_id, cn)]
        return f"{shown} is the identity of switch {owners[0]}" if owners else None

    return check


class GatedBrick:
    """os-ken's OpenFlow event hub as one TLS connection sees it: its FEATURES_REPLY (the first message
    that names the dpid) goes to the apps only when ``check`` accepts the certificate for that dpid;
    refused, the connection is logged, closed, and delivers nothing more (it never gets a dpid)."""

    def __init__(self, brick, datapath, cert: x509.Certificate, check: SwitchCheck) -> None:
        self._brick, self._datapath, self._cert, self._check = brick, datapath, cert, check
        self._refused = False

    def _admit(self, ev) -> bool:
        if self._refused:
            return False
        if isinstance(ev, ofp_event.EventOFPSwitchFeatures):
            reason = self._check(ev.msg.datapath_id, self._cert)
            if reason is not None:
                self._refused = True
                log.error("switch at %s:%s announcing dpid %#x refused: %s", *self._datapath.address[:2],
                          ev.msg.datapath_id, reason)
                with contextlib.suppress(OSError):
                    self._datapath.close()
                return False
        return True

    def send_event_to_observers(self, ev, state=None) -> None:
        if self._admit(ev) or isinstance(ev, ofp_event.EventOFPStateChange):
            self._brick.send_event_to_observers(ev, state)

    def get_handlers(self, ev, state=None) -> list:
        # os-ken asks for the handlers right after sending the event: refused by then, there are none
        return [] if self._refused else self._brick.get_handlers(ev, state)
