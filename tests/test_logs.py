"""--log-format json: every log line a JSON object a collector can filter by level and logger."""

import json
import subprocess
import sys

SCRIPT = """
import logging
from ryu_nsm.observe.logs import configure
configure("info", "json")
logging.getLogger("ryu_nsm.core.controller").warning("connection %s: %s", "default/c/nsm-1", "moved → s1-s3")
logging.getLogger("ryu_nsm.core.controller").debug("not shown at info")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("ovs_forwarder").exception("plumbing failed")
"""


def test_json_lines_carry_level_logger_message_and_traceback():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    first, second = [json.loads(line) for line in out.stderr.splitlines()]
    assert first["level"] == "warning" and first["logger"] == "ryu_nsm.core.controller"
    assert first["message"] == "connection default/c/nsm-1: moved → s1-s3"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "ZeroDivisionError" in second["exception"]


def test_both_commands_take_the_option():
    for command in (["-m", "ryu_nsm.cli"], ["-m", "ovs_forwarder.cli"]):
        out = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=30)
        assert "--log-format" in out.stdout
