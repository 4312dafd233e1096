#!/usr/bin/env node
"use strict";
// A socket.io load client for frameworks_test.go.
//
//   node sio-client.js --url https://127.0.0.1:8443 [--sessions 200]
//        [--events 10] [--interval 100] [--websocket-only] [--ramp 1000]
//        [--timeout 20000] [--ack-timeout 10000]
//
// Opens --sessions sessions, started evenly over --ramp ms (a thundering herd
// on a busy 2-core machine can outlast engine.io's 10 s upgrade timeout),
// each a browser-like session (sio-lib.js: its own engine.io connection,
// keep-alive agent and cookie jar, withCredentials, certificate not
// verified) with the client's DEFAULT transports (HTTP long-polling, then an
// upgrade to WebSocket) unless --websocket-only. Reconnection is off: a
// session that loses its server is counted as failed, not retried (the
// failover with reconnection is sio-failover.js). --timeout bounds the
// connect (engine.io's handshake and socket.io's CONNECT), --ack-timeout
// each ack.
// Each session sends --events "ack" events, one every --interval ms, each
// awaiting its acknowledgement (which names the server's node). Every session
// stays open until all have finished; then one JSON line is printed:
//
//   { framework, transports, sessions, connected, failed, completed, acks,
//     expectedAcks, nodes: {id: sessions}, mixedNodes, finalTransport,
//     droppedAfterConnect, errors: [first few], errorCounts, elapsedMs }
//
// connected: sessions that got "connect"; completed: sessions with every ack
// and no disconnect until the end; failed = sessions - completed.
// The exit code is 0 whatever the numbers: the caller judges them.

const { browserSession } = require("./sio-lib.js");
const { flags, Errors, errText, count, withTimeout, sleep } = require("./lib.js");

const opt = flags({
  url: { env: "URL", default: "https://127.0.0.1:8443" },
  sessions: { env: "SESSIONS", type: "number", default: 200 },
  events: { env: "EVENTS", type: "number", default: 10 },
  interval: { env: "INTERVAL_MS", type: "number", default: 100 },
  ramp: { env: "RAMP_MS", type: "number", default: 1000 },
  timeout: { env: "TIMEOUT_MS", type: "number", default: 20000 },
  "ack-timeout": { env: "ACK_TIMEOUT_MS", type: "number", default: 10000 },
  "websocket-only": { env: "WEBSOCKET_ONLY", type: "boolean", default: false },
  "no-keepalive": { env: "NO_KEEPALIVE", type: "boolean", default: false },
});

const errors = new Errors(5);
const summary = {
  framework: "socket.io",
  transports: opt["websocket-only"] ? "websocket" : "default",
  sessions: opt.sessions,
  connected: 0,
  failed: 0,
  completed: 0,
  acks: 0,
  expectedAcks: opt.sessions * opt.events,
  nodes: {},
  mixedNodes: 0,
  finalTransport: {},
  droppedAfterConnect: 0,
  errors: errors.first,
  errorCounts: errors.counts,
  elapsedMs: 0,
};

function connectOptions() {
  const o = { reconnection: false, timeout: opt.timeout };
  if (opt["websocket-only"]) o.transports = ["websocket"];
  return o;
}

// Every session waits at a barrier after its acks (or its failure) until all
// sessions got there: the load stays concurrent and a later drop still counts.
let allDone;
const finished = new Promise((r) => (allDone = r));
let atBarrier = 0;
function reachBarrier() {
  if (++atBarrier === opt.sessions) allDone();
  return finished;
}

async function session(i) {
  if (opt.ramp > 0) await sleep((i * opt.ramp) / opt.sessions);
  // --no-keepalive: engine.io-client's Node default, a new connection per
  // polling request.
  const { socket, agent } = browserSession(opt.url, connectOptions(), !opt["no-keepalive"]);
  const st = { node: null, acks: 0, connected: false, disconnected: null };
  socket.on("disconnect", (reason, desc) => {
    st.disconnected = reason + (desc && desc.description ? ` (${desc.description.message || desc.description})` : "");
  });
  try {
    await withTimeout(
      new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      }),
      opt.timeout,
      "connect",
    );
    st.connected = true;
    summary.connected++;
    for (let seq = 0; seq < opt.events; seq++) {
      if (seq > 0) await sleep(opt.interval);
      if (st.disconnected) throw new Error(`disconnected: ${st.disconnected}`);
      const r = await socket.timeout(opt["ack-timeout"]).emitWithAck("ack", { seq, session: i });
      st.acks++;
      summary.acks++;
      if (st.node === null) st.node = r.node;
      else if (st.node !== r.node) summary.mixedNodes++;
    }
  } catch (err) {
    let what = st.disconnected ? `disconnected: ${st.disconnected}` : errText(err);
    const eng = socket.io.engine;
    if (!st.connected && eng) what += ` (engine ${eng.readyState}${eng.id ? " with sid" : ""} on ${eng.transport && eng.transport.name})`;
    errors.add(st.connected ? "session" : "connect", what);
  }
  await reachBarrier();
  const ok = st.connected && st.acks === opt.events && !st.disconnected;
  if (st.connected && st.acks === opt.events && st.disconnected) {
    summary.droppedAfterConnect++;
    errors.add("after acks", `disconnected: ${st.disconnected}`);
  }
  if (ok) {
    summary.completed++;
    count(summary.nodes, st.node);
  }
  if (socket.io.engine) count(summary.finalTransport, st.disconnected ? "closed" : socket.io.engine.transport.name);
  socket.close();
  if (agent) agent.destroy();
  return ok;
}

async function main() {
  const start = Date.now();
  const all = [];
  for (let i = 0; i < opt.sessions; i++) all.push(session(i));
  // Every session's own steps are bounded; this bounds the whole run too.
  const bound = opt.ramp + opt.timeout + opt.events * (opt.interval + opt["ack-timeout"]) + 5000;
  setTimeout(() => allDone(), bound).unref();
  await Promise.allSettled(all);
  summary.elapsedMs = Date.now() - start;
  summary.failed = opt.sessions - summary.completed;
  console.log(JSON.stringify(summary));
  process.exit(0);
}

main();
