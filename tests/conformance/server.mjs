// The conformance fixture: an MCP server (TypeScript SDK, Streamable HTTP,
// stateful sessions) with exactly what the server scenarios of
// @modelcontextprotocol/conformance ask for. It must pass the suite on its
// own; scripts/conformance.sh then runs the suite through vmcp against it.
//
// Usage: node server.mjs PORT   (prints "listening PORT" when ready)
import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  CallToolRequestSchema, CompleteRequestSchema, CreateMessageResultSchema, ElicitResultSchema,
  GetPromptRequestSchema, ListPromptsRequestSchema, ListResourceTemplatesRequestSchema,
  ListResourcesRequestSchema, ListToolsRequestSchema, ReadResourceRequestSchema,
  SetLevelRequestSchema, SubscribeRequestSchema, UnsubscribeRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

// 1x1 red PNG and a 44-byte silent WAV.
const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (t) => ({ content: [{ type: "text", text: t }] });
const noArgs = { type: "object", properties: {} };

const tools = [
  ["test_simple_text", "Returns simple text", noArgs],
  ["test_image_content", "Returns an image", noArgs],
  ["test_audio_content", "Returns audio", noArgs],
  ["test_embedded_resource", "Returns an embedded resource", noArgs],
  ["test_multiple_content_types", "Returns text, image and resource", noArgs],
  ["test_tool_with_logging", "Logs three times", noArgs],
  ["test_tool_with_progress", "Reports progress", noArgs],
  ["test_error_handling", "Always fails", noArgs],
  ["test_sampling", "Asks the client's LLM",
    { type: "object", properties: { prompt: { type: "string" } }, required: ["prompt"] }],
  ["test_elicitation", "Asks the user",
    { type: "object", properties: { message: { type: "string" } }, required: ["message"] }],
  ["test_elicitation_sep1034_defaults", "Asks with defaults", noArgs],
  ["test_elicitation_sep1330_enums", "Asks with enums", noArgs],
  ["test_reconnection", "Closes its SSE stream mid-call; the client resumes it", noArgs],
  ["json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    type: "object",
    $defs: { address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } } },
    properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } },
    additionalProperties: false,
  }],
].map(([name, description, inputSchema]) => ({ name, description, inputSchema }));

const elicit = (extra, params) => extra.sendRequest({ method: "elicitation/create", params }, ElicitResultSchema);

async function callTool(req, extra, server) {
  const { name, arguments: args = {} } = req.params;
  const token = req.params._meta?.progressToken;
  const log = (data) => extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
  switch (name) {
    case "test_simple_text": return text("This is a simple text response for testing.");
    case "test_image_content": return { content: [{ type: "image", data: PNG, mimeType: "image/png" }] };
    case "test_audio_content": return { content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] };
    case "test_embedded_resource": return { content: [{ type: "resource", resource: {
      uri: "test://embedded-resource", mimeType: "text/plain", text: "This is an embedded resource content." } }] };
    case "test_multiple_content_types": return { content: [
      { type: "text", text: "Multiple content types test:" },
      { type: "image", data: PNG, mimeType: "image/png" },
      { type: "resource", resource: { uri: "test://mixed-content-resource", mimeType: "application/json",
        text: JSON.stringify({ test: "data", value: 123 }) } }] };
    case "test_tool_with_logging":
      await log("Tool execution started"); await sleep(50);
      await log("Tool processing data"); await sleep(50);
      await log("Tool execution completed");
      return text("Tool with logging executed successfully");
    case "test_tool_with_progress":
      for (const progress of [0, 50, 100]) {
        if (token !== undefined) {
          await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress, total: 100 } });
        }
        if (progress < 100) await sleep(50);
      }
      return text("Tool with progress executed successfully");
    case "test_error_handling":
      return { isError: true, ...text("This tool intentionally returns an error for testing") };
    case "test_sampling": {
      if (!server.getClientCapabilities()?.sampling) throw new Error("client does not support sampling");
      const answer = await extra.sendRequest({ method: "sampling/createMessage", params: {
        messages: [{ role: "user", content: { type: "text", text: args.prompt } }], maxTokens: 100 } },
      CreateMessageResultSchema);
      return text(`LLM response: ${answer.content?.text ?? JSON.stringify(answer.content)}`);
    }
    case "test_elicitation": {
      if (!server.getClientCapabilities()?.elicitation) throw new Error("client does not support elicitation");
      const answer = await elicit(extra, { message: args.message, requestedSchema: { type: "object", properties: {
        username: { type: "string", description: "User's response" },
        email: { type: "string", description: "User's email address" } }, required: ["username", "email"] } });
      return text(`User response: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    }
    case "test_elicitation_sep1034_defaults": {
      const answer = await elicit(extra, { message: "Please review your details", requestedSchema: { type: "object", properties: {
        name: { type: "string", default: "John Doe" },
        age: { type: "integer", default: 30 },
        score: { type: "number", default: 95.5 },
        status: { type: "string", enum: ["active", "inactive", "pending"], default: "active" },
        verified: { type: "boolean", default: true } } } });
      return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    }
    case "test_elicitation_sep1330_enums": {
      const answer = await elicit(extra, { message: "Pick options", requestedSchema: { type: "object", properties: {
        untitledSingle: { type: "string", enum: ["option1", "option2", "option3"] },
        titledSingle: { type: "string", oneOf: [
          { const: "value1", title: "First Option" }, { const: "value2", title: "Second Option" },
          { const: "value3", title: "Third Option" }] },
        legacyEnum: { type: "string", enum: ["opt1", "opt2", "opt3"], enumNames: ["Option One", "Option Two", "Option Three"] },
        untitledMulti: { type: "array", items: { type: "string", enum: ["option1", "option2", "option3"] } },
        titledMulti: { type: "array", items: { anyOf: [
          { const: "value1", title: "First Choice" }, { const: "value2", title: "Second Choice" },
          { const: "value3", title: "Third Choice" }] } } } } });
      return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
    }
    case "json_schema_2020_12_tool": return text(`Received ${JSON.stringify(args)}`);
    case "test_reconnection":
      // SEP-1699 polling: end the POST stream now; the answer comes on the resumed one.
      await sleep(50);
      extra.closeSSEStream?.();
      await sleep(200);
      return text("Reconnection test completed");
    default: throw new Error(`unknown tool ${name}`);
  }
}

const resources = [
  { uri: "test://static-text", name: "static-text", description: "A static text resource", mimeType: "text/plain" },
  { uri: "test://static-binary", name: "static-binary", description: "A static binary resource", mimeType: "image/png" },
  { uri: "test://watched-resource", name: "watched-resource", description: "A resource to subscribe to", mimeType: "text/plain" },
];

function readResource(uri) {
  if (uri === "test://static-text") return { uri, mimeType: "text/plain", text: "This is the content of the static text resource." };
  if (uri === "test://static-binary") return { uri, mimeType: "image/png", blob: PNG };
  if (uri === "test://watched-resource") return { uri, mimeType: "text/plain", text: "Watched resource content." };
  const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
  if (m) return { uri, mimeType: "application/json", text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) };
  throw new Error(`unknown resource ${uri}`);
}

const prompts = [
  { name: "test_simple_prompt", description: "A simple prompt" },
  { name: "test_prompt_with_arguments", description: "A prompt with arguments", arguments: [
    { name: "arg1", description: "First test argument", required: true },
    { name: "arg2", description: "Second test argument", required: true }] },
  { name: "test_prompt_with_embedded_resource", description: "A prompt with a resource", arguments: [
    { name: "resourceUri", description: "URI of the resource to embed", required: true }] },
  { name: "test_prompt_with_image", description: "A prompt with an image" },
];

function getPrompt({ name, arguments: args = {} }) {
  const user = (content) => ({ role: "user", content });
  switch (name) {
    case "test_simple_prompt": return { messages: [user({ type: "text", text: "This is a simple prompt for testing." })] };
    case "test_prompt_with_arguments": return { messages: [user({ type: "text",
      text: `Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'` })] };
    case "test_prompt_with_embedded_resource": return { messages: [
      user({ type: "resource", resource: { uri: args.resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." } }),
      user({ type: "text", text: "Please process the embedded resource above." })] };
    case "test_prompt_with_image": return { messages: [
      user({ type: "image", data: PNG, mimeType: "image/png" }),
      user({ type: "text", text: "Please analyze the image above." })] };
    default: throw new Error(`unknown prompt ${name}`);
  }
}

function newServer() {
  const server = new Server({ name: "vmcp-conformance-fixture", version: "1.0.0" }, { capabilities: {
    tools: {}, prompts: {}, resources: { subscribe: true }, logging: {}, completions: {} } });
  const subscribed = new Set();
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools }));
  server.setRequestHandler(CallToolRequestSchema, (req, extra) => callTool(req, extra, server));
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: [
    { uriTemplate: "test://template/{id}/data", name: "template", description: "A resource template", mimeType: "application/json" }] }));
  server.setRequestHandler(ReadResourceRequestSchema, async (req) => ({ contents: [readResource(req.params.uri)] }));
  server.setRequestHandler(SubscribeRequestSchema, async (req) => { subscribed.add(req.params.uri); return {}; });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => { subscribed.delete(req.params.uri); return {}; });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts }));
  server.setRequestHandler(GetPromptRequestSchema, async (req) => getPrompt(req.params));
  server.setRequestHandler(SetLevelRequestSchema, async () => ({}));
  server.setRequestHandler(CompleteRequestSchema, async (req) => {
    const all = ["paris", "park", "party"];
    const values = all.filter((v) => v.startsWith(req.params.argument?.value ?? ""));
    return { completion: { values, total: values.length, hasMore: false } };
  });
  return server;
}

/// Events of every stream, for resumption with Last-Event-ID (ids sort in order).
class EventStore {
  constructor() { this.events = []; this.next = 0; }
  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${String(this.next++).padStart(10, "0")}`;
    this.events.push({ eventId, streamId, message });
    return eventId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const from = this.events.findIndex((e) => e.eventId === lastEventId);
    if (from < 0) return "";
    const { streamId } = this.events[from];
    for (const e of this.events.slice(from + 1)) if (e.streamId === streamId) await send(e.eventId, e.message);
    return streamId;
  }
}

const LOCAL = /^(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$/;
const sessions = new Map();

const httpServer = http.createServer(async (req, res) => {
  // DNS rebinding protection: a localhost server accepts only localhost Host/Origin.
  const origin = req.headers.origin ? new URL(req.headers.origin).host : undefined;
  if (!LOCAL.test(req.headers.host ?? "") || (origin !== undefined && !LOCAL.test(origin))) {
    res.writeHead(403).end("forbidden host");
    return;
  }
  const id = req.headers["mcp-session-id"];
  let transport = id ? sessions.get(id) : undefined;
  if (!transport) {
    if (id || req.method !== "POST") {
      res.writeHead(id ? 404 : 400, { "content-type": "application/json" }).end(JSON.stringify(
        { jsonrpc: "2.0", id: null, error: { code: -32000, message: id ? "session not found" : "no session" } }));
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new EventStore(),
      retryInterval: 100,
      onsessioninitialized: (sid) => sessions.set(sid, transport),
    });
    transport.onclose = () => transport.sessionId && sessions.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res);
});

const port = Number(process.argv[2] ?? 0);
httpServer.listen(port, "127.0.0.1", () => console.log(`listening ${httpServer.address().port}`));
