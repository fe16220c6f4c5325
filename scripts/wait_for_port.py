"""Wait until a TCP port accepts connections (used by `make demo`); exit 1 after a timeout."""

import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + float(sys.argv[3] if len(sys.argv) > 3 else 15)
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
print(f"error: nothing is listening on {host}:{port} after waiting", file=sys.stderr)
sys.exit(1)
