#!/usr/bin/env node
"use strict";
// A Colyseus 0.16 load client (colyseus.js) for frameworks_test.go.
//
//   node colyseus-client.js --url https://127.0.0.1:8443 [--clients 50]
//        [--room game] [--timeout 15000] [--no-cookies]
//
// --clients players at once, each its own colyseus.js Client: joinOrCreate
// (an HTTP POST to /matchmake/joinOrCreate/ROOM that reserves a seat in one
// server process), then the WebSocket to /<processId>/<roomId> that consumes
// the seat, then one "ping" answered by "pong". Like a browser, each client
// keeps the cookies the matchmaking answer set and sends them with its
// WebSocket upgrade (colyseus.js in Node has no cookie jar of its own;
// --no-cookies turns this off). TLS certificates are not verified (sluice's
// self-signed one). All players stay in their rooms until all are done; then
// one JSON line is printed:
//
//   { framework, clients, joined, failed, exchanged, nodes: {id: players},
//     processes: {processId: reservations}, rooms, errors, errorCounts, elapsedMs }
//
// joined: clients whose WebSocket joined the room; exchanged: joined and got
// the pong; failed = clients - exchanged. The exit code is 0 whatever the
// numbers.

// colyseus.js's HTTP (httpie) and WebSocket (ws) take no TLS options.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
process.removeAllListeners("warning"); // the warning the line above causes

const { Client } = require("colyseus.js");
const { flags, Errors, count, withTimeout } = require("./lib.js");

const opt = flags({
  url: { env: "URL", default: "https://127.0.0.1:8443" },
  clients: { env: "CLIENTS", type: "number", default: 50 },
  room: { env: "ROOM", default: "game" },
  timeout: { env: "TIMEOUT_MS", type: "number", default: 15000 },
  "no-cookies": { env: "NO_COOKIES", type: "boolean", default: false },
});

const errors = new Errors(5);
const rooms = new Set();
const summary = {
  framework: "colyseus",
  clients: opt.clients,
  joined: 0,
  failed: 0,
  exchanged: 0,
  nodes: {},
  processes: {},
  rooms: 0,
  cookies: !opt["no-cookies"],
  errors: errors.first,
  errorCounts: errors.counts,
  elapsedMs: 0,
};

let allDone;
const finished = new Promise((r) => (allDone = r));
let atBarrier = 0;
function reachBarrier() {
  if (++atBarrier === opt.clients) allDone();
  return finished;
}

// keepCookies makes a Client behave like a browser tab for cookies: Set-Cookie
// on an HTTP answer is stored in the headers it sends on later requests and on
// its WebSocket upgrade (colyseus.js passes client.http.headers to ws).
function keepCookies(client) {
  const jar = new Map();
  const request = client.http.request.bind(client.http);
  client.http.request = async (method, path, options) => {
    const res = await request(method, path, options);
    let set = res && res.headers && res.headers["set-cookie"];
    if (set) {
      if (!Array.isArray(set)) set = [set];
      for (const c of set) {
        const [pair] = c.split(";");
        const eq = pair.indexOf("=");
        if (eq > 0) jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
      }
      client.http.headers.Cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    }
    return res;
  };
}

async function player(i) {
  const client = new Client(opt.url);
  if (!opt["no-cookies"]) keepCookies(client);
  let room = null;
  let stage = "matchmake";
  try {
    // Learn which process reserved the seat (the POST's answer).
    const post = client.http.post.bind(client.http);
    client.http.post = async (path, options) => {
      const res = await post(path, options);
      if (res && res.data && res.data.room) count(summary.processes, res.data.room.processId);
      stage = "websocket";
      return res;
    };
    room = await withTimeout(client.joinOrCreate(opt.room, { player: i }), opt.timeout, stage);
    summary.joined++;
    rooms.add(room.roomId);
    stage = "message";
    const pong = await withTimeout(
      new Promise((resolve) => {
        room.onMessage("pong", resolve);
        room.onMessage("welcome", () => {});
        room.send("ping", { seq: i });
      }),
      opt.timeout,
      "pong",
    );
    summary.exchanged++;
    count(summary.nodes, pong.node);
  } catch (err) {
    errors.add(stage, err);
  }
  await reachBarrier();
  if (room) {
    try {
      await withTimeout(room.leave(true), 5000, "leave");
    } catch {
      // the summary is about joining; a slow leave is not a failure
    }
  }
}

async function main() {
  const start = Date.now();
  const all = [];
  for (let i = 0; i < opt.clients; i++) all.push(player(i));
  setTimeout(() => allDone(), 2 * opt.timeout + 5000).unref();
  await Promise.allSettled(all);
  summary.elapsedMs = Date.now() - start;
  summary.failed = opt.clients - summary.exchanged;
  summary.rooms = rooms.size;
  console.log(JSON.stringify(summary));
  process.exit(0);
}

main();
