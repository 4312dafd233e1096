#!/usr/bin/env node
"use strict";
// A Colyseus 0.16 game server for frameworks_test.go: plain HTTP and
// WebSocket on 127.0.0.1 (sluice terminates TLS in front of it).
//
//   node colyseus-server.js --port 9001 --id a      (or PORT=9001 NODE_ID=a)
//
// One room type, "game" (up to --max-clients players a room). Matchmaking is
// Colyseus's own: POST /matchmake/joinOrCreate/game reserves a seat in a room
// of THIS process and answers { sessionId, room: { roomId, processId, ... } };
// the client then opens a WebSocket to /<processId>/<roomId>?sessionId=...,
// which only this process can honour: with the default LocalPresence and
// LocalDriver (no Redis) each process knows only its own rooms and seats, and
// the WebSocket transport looks the room up by id in its own process
// ("seat reservation expired." otherwise). So the load balancer must send the
// WebSocket to the process that answered the POST.
//
// - room message "ping" {seq}: answered with "pong" { node, processId, roomId, seq };
// - GET /healthz (and GET /) : 200 { ok, node, processId } (the health check);
// - GET /stats : counters (matchmake requests, upgrades, joins).

const http = require("node:http");
const { Server, Room, matchMaker } = require("@colyseus/core");
const { WebSocketTransport } = require("@colyseus/ws-transport");
const { flags } = require("./lib.js");

const opt = flags({
  port: { env: "PORT", type: "number", default: 0 },
  id: { env: "NODE_ID" },
  host: { env: "HOST", default: "127.0.0.1" },
  "max-clients": { env: "MAX_CLIENTS", type: "number", default: 10 },
});
const node = opt.id || `node-${opt.port}`;
const stats = { node, processId: null, matchmake: 0, upgrades: 0, joins: 0, rooms: 0 };

class GameRoom extends Room {
  onCreate() {
    this.maxClients = opt["max-clients"];
    stats.rooms++;
    this.onMessage("ping", (client, msg) => {
      client.send("pong", { node, processId: matchMaker.processId, roomId: this.roomId, seq: msg && msg.seq });
    });
  }
  onJoin(client) {
    stats.joins++;
    client.send("welcome", { node, processId: matchMaker.processId, roomId: this.roomId });
  }
}

const srv = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (req.method === "GET" && (path === "/" || path === "/healthz")) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, node, processId: matchMaker.processId }));
    return;
  }
  if (req.method === "GET" && path === "/stats") {
    stats.processId = matchMaker.processId;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(stats));
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

const gameServer = new Server({
  transport: new WebSocketTransport({ server: srv }),
  greet: false,
  // The test kills this process by PID; no signal handlers of Colyseus's own.
  gracefullyShutdown: false,
});
// Counted beside Colyseus's own handlers (they answer; these only count).
srv.on("request", (req) => {
  if (req.url.includes("/matchmake/")) stats.matchmake++;
});
srv.on("upgrade", () => stats.upgrades++);

gameServer.define("game", GameRoom);
gameServer.listen(opt.port, opt.host).then(() => {
  console.log(JSON.stringify({ listening: srv.address().port, node, processId: matchMaker.processId, framework: "colyseus" }));
});
