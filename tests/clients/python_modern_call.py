"""The official Python SDK's `Client` (mcp 2.3.0) in `auto` mode calling one
tool through vmcp. Usage: python_modern_call.py URL TOOL ARGUMENTS_JSON
Prints {"version": ..., "tools": [...], "text": ...}."""
import asyncio
import json
import sys

from mcp.client.client import Client


async def main(url: str, tool: str, arguments: str) -> None:
    async with Client(url, mode="auto") as client:
        tools = await client.list_tools()
        result = await client.call_tool(tool, json.loads(arguments))
        print(json.dumps({
            "version": client.protocol_version,
            "tools": sorted(t.name for t in tools.tools),
            "text": result.content[0].text,
        }))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
