"""The official Python SDK's OAuth client (client credentials) connecting to
vmcp from nothing but its URL: 401 -> protected resource metadata ->
authorization server metadata -> token (with the resource) -> session.

Usage: python_oauth_client.py URL ISSUER CLIENT_ID CLIENT_SECRET
Prints one JSON object with what it saw; the Rust test asserts on it.
"""
import asyncio
import json
import sys

import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


class MemoryStorage:
    def __init__(self):
        self.tokens, self.client_info = None, None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


async def main(url: str, issuer: str, client_id: str, secret: str) -> None:
    storage = MemoryStorage()
    auth = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=storage,
        client_id=client_id,
        client_secret=secret,
        issuer=issuer,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                tools = await session.list_tools()
                echo = await session.call_tool("t_echo", {"message": "with a token"})
                print(json.dumps({
                    "server": init.server_info.name,
                    "tools": sorted(t.name for t in tools.tools),
                    "echo": echo.content[0].text,
                    "token_type": storage.tokens.token_type if storage.tokens else None,
                }))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
