"""Tools for the lab, the demo and the tests: Mininet fabrics with service functions, the user-space
impairment element, the demo, and running the controller as a child process.

Not used by the controller itself; may import anything.
"""
