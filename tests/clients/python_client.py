"""A third-party MCP client (the official Python SDK) driving vmcp.

Usage: python_client.py URL
Prints one JSON object with what it saw; the Rust test asserts on it.
"""
import asyncio
import json
import sys

from mcp import types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


def text(result):
    return result.content[0].text


async def main(url: str) -> None:
    progress, loggers, questions = [], [], []

    async def on_progress(value, total, message):
        progress.append(value)

    async def on_log(params):
        loggers.append(params.logger)

    async def on_elicit(context, params):
        questions.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "py"})

    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write, elicitation_callback=on_elicit, logging_callback=on_log) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            first = await session.call_tool("alpha_counter", {})
            second = await session.call_tool("alpha_counter", {})
            echo = await session.call_tool("beta_echo", {"message": "from python"})
            resource = await session.read_resource("mem://beta/info")
            prompt = await session.get_prompt("alpha_greet", {"who": "python"})
            # What the backend sends back mid-call: progress, and a question to the user.
            worked = await session.call_tool("alpha_progress", {}, progress_callback=on_progress)
            asked = await session.call_tool("alpha_ask", {})
            print(json.dumps({
                "protocol": str(init.protocol_version),
                "server": init.server_info.name,
                "tools": sorted(t.name for t in tools.tools),
                "counter": [text(first), text(second)],
                "echo": text(echo),
                "resource": resource.contents[0].text,
                "prompt": prompt.messages[0].content.text,
                "progress": progress,
                "worked": text(worked),
                "questions": questions,
                "asked": text(asked),
                "loggers": loggers,
            }))


asyncio.run(main(sys.argv[1]))
