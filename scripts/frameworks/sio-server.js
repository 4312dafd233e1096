#!/usr/bin/env node
"use strict";
// A socket.io 4.8 game server for frameworks_test.go: plain HTTP on
// 127.0.0.1 (sluice terminates TLS in front of it).
//
//   node sio-server.js --port 9001 --id a       (or PORT=9001 NODE_ID=a)
//
// - socket.io at /socket.io/ with its default transports (polling, websocket);
// - event "ack": the callback gets { node, seq, transport };
// - on connection the server emits "hello" { node };
// - GET /healthz (and GET /) : 200 { ok, node } (the health check);
// - GET /stats : this process's counters, including engine.io's
//   connection_error messages (e.g. "Session ID unknown" when a polling
//   request or an upgrade reached the wrong process).

const http = require("node:http");
const { Server } = require("socket.io");
const { flags, count } = require("./lib.js");

const opt = flags({
  port: { env: "PORT", type: "number", default: 0 },
  id: { env: "NODE_ID" },
  host: { env: "HOST", default: "127.0.0.1" },
});
const node = opt.id || `node-${opt.port}`;

const stats = { node, connections: 0, acks: 0, upgrades: 0, transports: {}, connectionErrors: {} };

const srv = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (req.method === "GET" && (path === "/" || path === "/healthz")) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, node }));
    return;
  }
  if (req.method === "GET" && path === "/stats") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(stats));
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

// cors: browsers' withCredentials needs a reflected origin; the Node client
// ignores CORS but the server is the same one a browser would meet.
const io = new Server(srv, { cors: { origin: true, credentials: true } });

io.engine.on("connection_error", (err) => {
  count(stats.connectionErrors, `${err.code} ${err.message}`);
});

io.on("connection", (socket) => {
  stats.connections++;
  count(stats.transports, socket.conn.transport.name);
  socket.conn.once("upgrade", () => stats.upgrades++);
  socket.emit("hello", { node });
  socket.on("ack", (data, cb) => {
    stats.acks++;
    if (typeof cb === "function") {
      cb({ node, seq: data && data.seq, transport: socket.conn.transport.name });
    }
  });
});

srv.listen(opt.port, opt.host, () => {
  console.log(JSON.stringify({ listening: srv.address().port, node, framework: "socket.io" }));
});
