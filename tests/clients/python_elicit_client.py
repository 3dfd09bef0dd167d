"""The official Python SDK's `Client` (mcp 2.3.0) in `auto` mode, answering
an elicitation: it calls `t_ask`, whose backend (a handshake-era server)
asks the client for a name mid-call. Through vmcp the client sees an
`InputRequiredResult`, answers it from its callback, and retries.

Usage: python_elicit_client.py URL TOKEN NAME
Prints one JSON object with what it saw.
"""
import asyncio
import json
import sys

import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str, name: str) -> None:
    asked: list[str] = []

    async def answer(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": name})

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="auto", elicitation_callback=answer) as client:
            result = await client.call_tool("t_ask", {})
            print(json.dumps({
                "version": client.protocol_version,
                "asked": asked,
                "text": result.content[0].text,
            }))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
