#!/usr/bin/env node
"use strict";
// socket.io failover through a sticky load balancer, for frameworks_test.go.
//
//   node sio-failover.js --url https://127.0.0.1:8443 [--sessions 200]
//        [--events 5] [--interval 100] [--ramp 1000] [--timeout 20000]
//        [--ack-timeout 10000] [--reconnection-delay 500]
//        [--reconnection-delay-max 1000] [--cookie sluice_sticky]
//        [--wait 20000] [--notice-wait 60000] [--procs 2]
//
// 1. Opens --sessions browser-like sessions (sio-lib.js: one cookie jar per
//    session for its whole life, as a browser tab) with the DEFAULT
//    transports and socket.io's reconnection ON, with reconnectionDelay and
//    reconnectionDelayMax set (default randomizationFactor 0.5: a
//    reconnection attempt waits at most reconnectionDelayMax). Each sends
//    --events acked events; then one line is printed:
//      { phase: "ready", connected, acks, expectedAcks, nodes: {id: sessions},
//        transports: {name: sessions}, errorCounts }
// 2. Waits for one line on stdin, "killed ID" (the caller SIGKILLed server
//    ID), at most --notice-wait ms.
// 3. Every session of the killed node must see "disconnect" and then
//    "connect" again (socket.io reconnects by itself; the jar still holds the
//    sticky cookie naming the dead server), within --wait ms of the notice.
//    The time from a session's "disconnect" event to its next "connect"
//    event is measured in the client, per session.
// 4. Once they have (or --wait ms passed), one line is printed,
//      { phase: "failedover", ms, clientCpuMs, loopDelayMs: {p99, max} }
//    (since the kill notice: wall time, the client's CPU time, its worst
//    event-loop delays), then every session sends --events acked events
//    again; then, once all are done, one line is printed:
//      { phase: "done", sessions, connected, acks, nodes, killed, onKilled,
//        disconnected, reconnected, unexpectedDisconnects,
//        reconnectMs: {n, p50, p90, max}, recookied, connectedAfter,
//        acksAfter, expectedAcksAfter, nodesAfter: {id: sessions},
//        disconnectReasons, reconnectAttempts, waitMs, attemptMs, errors,
//        errorCounts, elapsedMs }
//    onKilled: sessions whose acks named the killed node before the kill;
//    disconnected / reconnected: how many of those saw "disconnect" / then
//    "connect"; unexpectedDisconnects: disconnects of the other sessions;
//    recookied: sessions of the killed node whose sticky cookie changed;
//    connectedAfter: sessions connected at the end; nodesAfter: the node
//    every after-kill ack of a session named ("mixed" if they differ);
//    waitMs: socket.io's backoff before each attempt; attemptMs: from the
//    start of the successful attempt to "connect".
//
// The sessions run in --procs worker processes (this script, forked), so
// that the client is not one Node thread doing the work of 200 browsers:
// on a busy 2-core machine a single thread's queue would be measured as
// reconnection time. The exit code is 0 whatever the numbers: the caller
// judges them.

const { fork } = require("node:child_process");
const readline = require("node:readline");
const { performance, monitorEventLoopDelay } = require("node:perf_hooks");
const { flags, Errors, errText, count, withTimeout, sleep } = require("./lib.js");

const spec = {
  url: { env: "URL", default: "https://127.0.0.1:8443" },
  sessions: { env: "SESSIONS", type: "number", default: 200 },
  events: { env: "EVENTS", type: "number", default: 5 },
  interval: { env: "INTERVAL_MS", type: "number", default: 100 },
  ramp: { env: "RAMP_MS", type: "number", default: 1000 },
  timeout: { env: "TIMEOUT_MS", type: "number", default: 20000 },
  "ack-timeout": { env: "ACK_TIMEOUT_MS", type: "number", default: 10000 },
  "reconnection-delay": { env: "RECONNECTION_DELAY_MS", type: "number", default: 500 },
  "reconnection-delay-max": { env: "RECONNECTION_DELAY_MAX_MS", type: "number", default: 1000 },
  cookie: { env: "STICKY_COOKIE", default: "sluice_sticky" },
  wait: { env: "WAIT_MS", type: "number", default: 20000 },
  "notice-wait": { env: "NOTICE_WAIT_MS", type: "number", default: 60000 },
  procs: { env: "PROCS", type: "number", default: 2 },
};
const opt = flags(spec);
// A worker's share of the sessions: indexes [from, to).
const worker = process.env.SIO_FAILOVER_WORKER ? JSON.parse(process.env.SIO_FAILOVER_WORKER) : null;

// The longest a phase with acks may take, whatever a session does.
const phaseBound = opt.timeout + opt.events * (opt.interval + opt["ack-timeout"]) + 5000;

// barrier(n).reach() resolves for every caller once n callers reached it,
// or once release() is called (a bound on a whole phase); done is the same
// promise for a waiter that does not count.
function barrier(n) {
  let release;
  const done = new Promise((r) => (release = r));
  let at = 0;
  if (n === 0) release();
  const reach = () => {
    if (++at === n) release();
    return done;
  };
  return { reach, release, done };
}

// message waits for the parent's (or a worker's) next message of type.
function message(from, type) {
  return new Promise((resolve) => {
    const on = (m) => {
      if (m && m.type === type) {
        from.off("message", on);
        resolve(m);
      }
    };
    from.on("message", on);
  });
}

// ---- worker: its share of the sessions -------------------------------------

async function runWorker() {
  const { browserSession, cookieValue } = require("./sio-lib.js");
  process.on("disconnect", () => process.exit(1)); // the parent is gone
  const n = worker.to - worker.from;
  const errors = new Errors(5);
  const waitMs = [];
  const attemptMs = [];
  const ready = barrier(n);
  const failedOver = barrier(n);
  const go = barrier(1); // the parent's go for the acks after the kill
  const finished = barrier(n);
  const records = [];
  let noticeAt = null;
  let noticeCpu = null;
  let lastReconnect = null; // { at, cpu } of this worker's last reconnection

  const killedNode = message(process, "killed").then((m) => {
    noticeAt = performance.now();
    noticeCpu = process.cpuUsage();
    return m.node;
  });
  message(process, "go").then(go.release);

  async function acks(socket, st, i, phase) {
    let node = null;
    for (let seq = 0; seq < opt.events; seq++) {
      if (seq > 0) await sleep(opt.interval);
      const r = await socket.timeout(opt["ack-timeout"]).emitWithAck("ack", { seq, session: i, phase });
      st[phase]++;
      if (node === null) node = r.node;
      else if (node !== r.node) node = "mixed";
    }
    return node;
  }

  async function session(i) {
    if (opt.ramp > 0) await sleep((i * opt.ramp) / opt.sessions);
    const { socket, agent, jar } = browserSession(opt.url, {
      reconnection: true,
      reconnectionDelay: opt["reconnection-delay"],
      reconnectionDelayMax: opt["reconnection-delay-max"],
      timeout: opt.timeout,
    });
    const st = {
      connected: false,
      transport: null, // when the kill may come
      node: null,
      nodeAfter: null,
      before: 0, // acks before the kill
      after: 0, // acks after it
      disconnects: 0,
      reasons: [],
      attempts: 0, // reconnection attempts
      reconnects: [], // ms from "disconnect" to "connect", per reconnection
      staleCookie: null, // the sticky cookie when the session was disconnected
      cookieAtEnd: null,
      connectedAtEnd: false,
    };
    records.push(st);
    let disconnectedAt = null;
    let attemptAt = null;
    let closing = false;
    let reconnected;
    const reconnectedOnce = new Promise((r) => (reconnected = r));
    socket.io.on("reconnect_attempt", () => {
      st.attempts++;
      attemptAt = performance.now();
      if (disconnectedAt !== null) waitMs.push(attemptAt - disconnectedAt);
    });
    socket.io.on("reconnect_error", (err) => errors.add("reconnect attempt", errText(err)));
    socket.on("disconnect", (reason, details) => {
      if (closing) return; // socket.close() at the end
      st.disconnects++;
      const d = details && details.description;
      st.reasons.push(d ? `${reason} (${errText(d)})` : reason);
      disconnectedAt = performance.now();
      if (st.staleCookie === null) st.staleCookie = cookieValue(jar, opt.cookie);
    });
    socket.on("connect", () => {
      if (disconnectedAt === null) return; // the first connection
      const now = performance.now();
      lastReconnect = { at: now, cpu: process.cpuUsage() };
      st.reconnects.push(now - disconnectedAt);
      if (attemptAt !== null) attemptMs.push(now - attemptAt);
      disconnectedAt = null;
      reconnected();
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
      st.node = await acks(socket, st, i, "before");
    } catch (err) {
      errors.add(st.connected ? "before the kill" : "connect", errText(err));
    }
    const eng = socket.io.engine;
    st.transport = socket.connected && eng && eng.transport ? eng.transport.name : "closed";
    await ready.reach();

    const killed = await killedNode;
    if (killed === null) {
      errors.add("kill", "no kill notice");
    } else if (st.node === killed) {
      try {
        const left = Math.max(0, noticeAt + opt.wait - performance.now());
        await withTimeout(reconnectedOnce, left, st.disconnects ? "reconnect" : "disconnect");
      } catch (err) {
        errors.add("failover", errText(err));
      }
    }
    // The acks after the kill start once every session (of every worker)
    // failed over: they do not compete with the reconnections for CPU.
    await failedOver.reach();
    await go.done;
    if (killed !== null && st.connected && socket.connected) {
      try {
        st.nodeAfter = await acks(socket, st, i, "after");
      } catch (err) {
        errors.add("after the kill", errText(err));
      }
    }
    await finished.reach();
    st.connectedAtEnd = socket.connected;
    st.cookieAtEnd = cookieValue(jar, opt.cookie);
    closing = true;
    socket.close();
    if (agent) agent.destroy();
  }

  const all = [];
  for (let i = worker.from; i < worker.to; i++) all.push(session(i));
  const readyBound = setTimeout(ready.release, opt.ramp + phaseBound);
  await ready.done;
  clearTimeout(readyBound);
  process.send({ type: "ready", records, errors: errors.counts });

  await killedNode;
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const failedOverBound = setTimeout(failedOver.release, opt.wait + 1000);
  await failedOver.done;
  clearTimeout(failedOverBound);
  lag.disable();
  let cpuMs = 0;
  if (lastReconnect !== null && lastReconnect.at > noticeAt) {
    const c = lastReconnect.cpu;
    cpuMs = (c.user + c.system - noticeCpu.user - noticeCpu.system) / 1000;
  }
  process.send({ type: "failedover", cpuMs, lagP99: lag.percentile(99) / 1e6, lagMax: lag.max / 1e6 });

  const finishedBound = setTimeout(finished.release, phaseBound);
  await finished.done;
  clearTimeout(finishedBound);
  await Promise.race([Promise.allSettled(all), sleep(5000)]);
  process.send({ type: "done", records, errors: errors.counts, waitMs, attemptMs }, () => process.exit(0));
}

// ---- parent: workers, the caller's dialogue, the summary -------------------

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const k = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[k]);
}

function stats(ms) {
  const sorted = [...ms].sort((a, b) => a - b);
  return { n: sorted.length, p50: percentile(sorted, 50), p90: percentile(sorted, 90), max: percentile(sorted, 100) };
}

async function runParent() {
  const start = Date.now();
  const errors = new Errors(5);
  const merge = (counts) => {
    for (const [k, v] of Object.entries(counts)) {
      errors.counts[k] = (errors.counts[k] || 0) + v;
      if (errors.first.length < errors.keep) errors.first.push(k);
    }
  };
  const procs = Math.max(1, Math.min(opt.procs, opt.sessions));
  const workers = [];
  for (let w = 0; w < procs; w++) {
    const from = Math.floor((w * opt.sessions) / procs);
    const to = Math.floor(((w + 1) * opt.sessions) / procs);
    const child = fork(__filename, process.argv.slice(2), {
      env: { ...process.env, SIO_FAILOVER_WORKER: JSON.stringify({ from, to }) },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    child.on("exit", (code) => {
      if (code !== 0) {
        console.error(`worker ${w} exited with ${code}`);
        process.exit(1);
      }
    });
    workers.push(child);
  }
  const fromAll = (type) => Promise.all(workers.map((c) => message(c, type)));

  // Phase 1: connected and acked.
  const readies = await fromAll("ready");
  const before = { connected: 0, acks: 0, nodes: {}, transports: {} };
  for (const r of readies) {
    merge(r.errors);
    for (const st of r.records) {
      if (st.connected) before.connected++;
      before.acks += st.before;
      if (st.node !== null) count(before.nodes, st.node);
      count(before.transports, st.transport);
    }
  }
  console.log(JSON.stringify({ phase: "ready", ...before, expectedAcks: opt.sessions * opt.events, errorCounts: errors.counts }));

  // Phase 2: the kill notice, forwarded; the failover.
  const killed = await new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin });
    const bound = setTimeout(() => resolve(null), opt["notice-wait"]);
    rl.on("line", (line) => {
      const m = /^killed (\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(bound);
        resolve(m[1]); // before close: its handler resolves null
        rl.close();
      }
    });
    rl.on("close", () => resolve(null));
  });
  const noticeAt = performance.now();
  for (const c of workers) c.send({ type: "killed", node: killed });
  const fos = await fromAll("failedover");
  console.log(
    JSON.stringify({
      phase: "failedover",
      ms: Math.round(performance.now() - noticeAt),
      clientCpuMs: Math.round(fos.reduce((s, f) => s + f.cpuMs, 0)),
      loopDelayMs: { p99: Math.round(Math.max(...fos.map((f) => f.lagP99))), max: Math.round(Math.max(...fos.map((f) => f.lagMax))) },
    }),
  );

  // Phase 3: acks again, then the summary.
  for (const c of workers) c.send({ type: "go" });
  const dones = await fromAll("done");
  const done = {
    phase: "done",
    sessions: opt.sessions,
    ...before,
    killed,
    onKilled: 0,
    disconnected: 0,
    reconnected: 0,
    unexpectedDisconnects: 0,
    reconnectMs: null,
    recookied: 0,
    connectedAfter: 0,
    acksAfter: 0,
    expectedAcksAfter: opt.sessions * opt.events,
    nodesAfter: {},
    disconnectReasons: {},
    reconnectAttempts: {}, // attempts: sessions of the killed node
    waitMs: null,
    attemptMs: null,
    errors: errors.first,
    errorCounts: errors.counts,
    elapsedMs: 0,
  };
  const reconnectMs = [];
  const waitMs = [];
  const attemptMs = [];
  errors.counts = {};
  errors.first.length = 0;
  for (const d of dones) {
    merge(d.errors);
    waitMs.push(...d.waitMs);
    attemptMs.push(...d.attemptMs);
    for (const st of d.records) {
      if (st.connectedAtEnd) done.connectedAfter++;
      done.acksAfter += st.after;
      if (st.nodeAfter !== null) count(done.nodesAfter, st.nodeAfter);
      for (const r of st.reasons) count(done.disconnectReasons, r);
      if (st.node !== null && st.node === killed) {
        done.onKilled++;
        if (st.disconnects > 0) done.disconnected++;
        if (st.reconnects.length > 0) done.reconnected++;
        reconnectMs.push(...st.reconnects);
        count(done.reconnectAttempts, st.attempts);
        if (st.staleCookie && st.cookieAtEnd && st.staleCookie !== st.cookieAtEnd) done.recookied++;
      } else if (st.disconnects > 0) {
        done.unexpectedDisconnects++;
      }
    }
  }
  done.errorCounts = errors.counts;
  done.reconnectMs = stats(reconnectMs);
  done.waitMs = stats(waitMs);
  done.attemptMs = stats(attemptMs);
  done.elapsedMs = Date.now() - start;
  console.log(JSON.stringify(done));
  process.exit(0);
}

if (worker) runWorker();
else runParent();
