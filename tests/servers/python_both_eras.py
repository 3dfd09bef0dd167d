"""A backend built with the Python MCP SDK 2.3.0 (`MCPServer`), which answers
both eras on one /mcp. Its `era` tool says which era the request came in.

Usage: python_both_eras.py PORT [sse]
With `sse`, it serves MCP 2024-11-05's HTTP+SSE instead (GET /sse, POST /messages/).
"""
import sys
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel

app = MCPServer("py-both")


@app.tool()
def era(ctx: Context) -> str:
    """The protocol version of the request that called this tool."""
    return ctx.protocol_version or "unknown"


class Name(BaseModel):
    name: str


def ask_name() -> Elicit[Name]:
    return Elicit("your name?", Name)


@app.tool()
def greet(person: Annotated[Name, Resolve(ask_name)]) -> str:
    """Greets whoever the client says it is (asking mid-call)."""
    return f"hello {person.name}"


@app.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


@app.resource("note://a")
def note() -> str:
    """A resource whose updates `touch` announces."""
    return "a note"


@app.tool()
async def grow(name: str, ctx: Context) -> str:
    """Adds a tool called `name` and announces the change (on `subscriptions/listen`)."""

    def grown() -> str:
        return name

    app.add_tool(grown, name=name, description="added at run time")
    await ctx.notify_tools_changed()
    return "grown"


@app.tool()
async def touch(uri: str, ctx: Context) -> str:
    """Announces an update of resource `uri` (on `subscriptions/listen`)."""
    await ctx.notify_resource_updated(uri)
    return "touched"


transport = "sse" if sys.argv[2:] == ["sse"] else "streamable-http"
app.run(transport=transport, host="127.0.0.1", port=int(sys.argv[1]))
