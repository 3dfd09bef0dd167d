"""The official Python SDK's `Client` (mcp 2.3.0) against vmcp, in a given
mode: `auto` (probes `server/discover`, settles on 2026-07-28 if the server
speaks it) or `legacy` (the initialize handshake).

Usage: python_modern_client.py URL MODE [TOKEN]
Prints one JSON object with what it saw; the Rust test asserts on it.
"""
import asyncio
import json
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, mode: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            first = await client.call_tool("t_counter", {})
            second = await client.call_tool("t_counter", {})
            echo = await client.call_tool("t_echo", {"message": f"hello from {mode}"})
            print(json.dumps({
                "version": client.protocol_version,
                "tools": sorted(t.name for t in tools.tools),
                "counter": [first.content[0].text, second.content[0].text],
                "echo": echo.content[0].text,
            }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
