#!/usr/bin/env python3
"""Memory an idle keep-alive client connection holds in vmcp.

Starts `target/release/vmcp serve` (build it first: cargo build --release)
with no backend, opens N connections that each make one request and then
stay idle (as a load balancer's pool or a leaky client leaves them), and
prints vmcp's RSS growth per connection (from /proc).

    scripts/idle-connection-memory.py [N]      # default 5000
"""

import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def idle_connection(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"ok\n")
    return reader, writer


async def measure(port, pid):
    before = rss_kb(pid)
    held = []
    for start in range(0, N, 200):
        batch = min(200, N - start)
        held += await asyncio.gather(*(idle_connection(port) for _ in range(batch)))
    await asyncio.sleep(1)
    after = rss_kb(pid)
    print(f"{N} idle connections: vmcp RSS {before} -> {after} KB, {(after - before) / N:.1f} KB per connection")


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = N + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"needs {need} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(f"listen: 127.0.0.1:{port}\nbackends: []\n")
    vmcp = subprocess.Popen(
        [os.path.join(root, "target/release/vmcp"), "serve", "--config", config.name],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        asyncio.run(measure(port, vmcp.pid))
    finally:
        vmcp.kill()
        os.unlink(config.name)


if __name__ == "__main__":
    main()
