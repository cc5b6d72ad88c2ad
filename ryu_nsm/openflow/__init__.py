"""The OpenFlow side: the thin os-ken shell around the controller core, the only encoder of
OpenFlow 1.3 bytes, and starting os-ken from code.

May import ``ryu_nsm.core``, ``ryu_nsm.qos`` and ``ryu_nsm.observe`` (logs), plus os-ken.
"""
