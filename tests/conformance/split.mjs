// A front for two vmcp replicas that makes the conformance suite enter at a
// non-owner: `initialize` (no session yet) goes to the first replica, which
// mints and owns the session; everything that names a session goes to the
// second, which must forward it to the owner. Bodies stream both ways.
//
// Usage: node split.mjs PORT FIRST_PORT SECOND_PORT   (prints "listening PORT")
import http from "node:http";

const [port, first, second] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: true });

const front = http.createServer((req, res) => {
  const target = req.headers["mcp-session-id"] ? second : first;
  const upstream = http.request({ host: "127.0.0.1", port: target, method: req.method, path: req.url,
    headers: req.headers, agent }, (answer) => {
    res.writeHead(answer.statusCode ?? 502, answer.headers);
    answer.pipe(res);
  });
  upstream.on("error", () => { if (!res.headersSent) res.writeHead(502); res.end(); });
  res.on("close", () => upstream.destroy());
  req.pipe(upstream);
});
front.listen(port, "127.0.0.1", () => console.log(`listening ${front.address().port}`));
