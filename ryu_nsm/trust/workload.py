"""``WorkloadApiSource``: the identity that the SPIFFE Workload API (SPIRE's agent, or NSM's own)
serves, through py-spiffe's X509Source, which streams X509-SVID updates; each is a rotation."""

from __future__ import annotations

import logging
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import X509Source
from spiffe.errors import PySpiffeError

from ryu_nsm.trust.identity import Identity, Subscribers

log = logging.getLogger("ryu_nsm.trust.workload")


class WorkloadApiSource:
    """The default X509-SVID of the Workload API at ``socket_address`` (``unix:///path``; empty: the
    SPIFFE_ENDPOINT_SOCKET environment variable) and the bundles that come with it. Construction waits
    up to ``timeout`` seconds for the first SVID; ConnectionError without one."""

    def __init__(self, socket_address: str | None = None, timeout: float = 30.0):
        self._subscribers = Subscribers()
        try:
            self._x509 = X509Source(socket_path=socket_address or None, timeout_in_seconds=timeout)
        except PySpiffeError as error:
            raise ConnectionError(
                f"no X509-SVID from the Workload API at {socket_address}: {error}") from error
        self._identity = self._read()
        self._x509.subscribe_for_updates(self._updated)

    def current(self) -> Identity:
        return self._identity

    def subscribe(self, callback: Callable[[Identity], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        self._x509.close()

    def _read(self) -> Identity:
        context = self._x509.get_x509_context()
        svid = context.default_svid
        if not isinstance(svid.private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"the SVID of {svid.spiffe_id} has no EC key")
        own = str(svid.spiffe_id.trust_domain)
        # the own trust domain's authorities first, then federated ones
        bundles = sorted(context.x509_bundle_set.bundles, key=lambda bundle: (str(bundle.trust_domain) != own,
                                                                 str(bundle.trust_domain)))
        anchors = tuple(cert for bundle in bundles
                        for cert in sorted(bundle.x509_authorities, key=lambda cert: cert.serial_number))
        return Identity(str(svid.spiffe_id), tuple(svid.cert_chain), svid.private_key, anchors)

    def _updated(self) -> None:
        try:
            identity = self._read()
        except Exception:
            log.exception("Workload API update unusable, keeping %s", self._identity.spiffe_id)
            return
        if (identity.chain, identity.bundle) == (self._identity.chain, self._identity.bundle):
            return  # the same SVID again (keys do not compare: the chain names the key)
        self._identity = identity
        log.info("identity rotated (Workload API): %s until %s", identity.spiffe_id, identity.not_after)
        self._subscribers.notify(identity)
