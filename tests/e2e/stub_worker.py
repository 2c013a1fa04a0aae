"""A stand-in for `qdeploy worker`/`qdeploy beat` that launchers can run before the real worker
exists in a test: it records its argv, uid and environment to $STUB_RECORD_DIR/<instance>.json,
signals readiness the systemd way (READY=1 to $NOTIFY_SOCKET), then waits for SIGTERM.
With STUB_IGNORE_TERM=1 it ignores SIGTERM, to test escalation to SIGKILL."""

import json
import os
import signal
import socket
import sys
import time

argv = sys.argv
instance = argv[argv.index("--node") + 1] if "--node" in argv else argv[1]
record = {"argv": argv, "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "env": dict(os.environ)}
path = os.path.join(os.environ["STUB_RECORD_DIR"], f"{instance}.json")
with open(path + ".tmp", "w") as fh:
    json.dump(record, fh)
os.replace(path + ".tmp", path)

if os.environ.get("STUB_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

address = os.environ.get("NOTIFY_SOCKET")
if address:
    address = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")

while True:
    time.sleep(3600)
