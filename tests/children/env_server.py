"""A minimal MCP stdio server for tests/faults_children.rs (standard library only).

At start it spawns a long-lived grandchild (`sleep 300`), as `npx` does with
the real server. Its tool `env` answers with the child's environment and
the grandchild's pid, so a test can check what the child inherited and that
closing the session kills the whole process group. Its tool `noise` first
writes to stderr what real servers do write there: bytes that are not UTF-8,
and a 2 MB line (a progress bar redrawn with CRs, a dumped blob). `huge` and
`huge_id_last` answer with a 1 MB line, the id first (as the Python SDK and
rmcp write it) or last (as the TypeScript SDK does).
"""

import json
import os
import subprocess
import sys

grandchild = subprocess.Popen(
    ["sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)


def reply(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        continue
    if method == "initialize":
        reply(msg_id, {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "env-server", "version": "1"},
        })
    elif method == "tools/list":
        names = ("env", "noise", "huge", "huge_id_last")
        tools = [{"name": name, "inputSchema": {"type": "object"}} for name in names]
        reply(msg_id, {"tools": tools})
    elif method == "tools/call" and msg["params"]["name"] == "huge":
        reply(msg_id, {"content": [{"type": "text", "text": "x" * 1_000_000}]})
    elif method == "tools/call" and msg["params"]["name"] == "huge_id_last":
        # The TypeScript SDK's order: the result first, the id last.
        result = {"content": [{"type": "text", "text": "y" * 1_000_000}]}
        sys.stdout.write(json.dumps({"result": result, "jsonrpc": "2.0", "id": msg_id}) + "\n")
        sys.stdout.flush()
    elif method == "tools/call" and msg["params"]["name"] == "noise":
        sys.stderr.buffer.write(b"caf\xe9 \xff\xfe not UTF-8\n")
        sys.stderr.buffer.write(b"\r".join([b"progress"] * 250_000) + b"\n")
        sys.stderr.buffer.flush()
        reply(msg_id, {"content": [{"type": "text", "text": "noisy"}]})
    elif method == "tools/call":
        text = json.dumps({"env": dict(os.environ), "grandchild": grandchild.pid, "pid": os.getpid()})
        reply(msg_id, {"content": [{"type": "text", "text": text}]})
    else:
        reply(msg_id, {})
