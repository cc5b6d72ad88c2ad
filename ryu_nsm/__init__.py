"""ryu-nsm: Network Service Mesh semantics on an OpenFlow fabric of Open vSwitch bridges."""

__version__ = "0.1.0"
