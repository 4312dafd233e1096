"use strict";
// What sio-client.js and sio-failover.js share: one socket.io session that
// behaves like a browser tab where a load balancer can tell.
//
// - Its own engine.io connection (forceNew) and its own keep-alive agent: a
//   browser reuses its TLS connections for polling requests
//   (engine.io-client's Node default, agent: false, opens one per request).
// - withCredentials, and ONE cookie jar for the whole life of the session:
//   engine.io-client in Node creates a new jar with every engine, i.e. on
//   every reconnection, so a reconnecting Node client would forget the
//   sticky cookie a browser still sends. browserSession gives each session's
//   engines the same jar (the Manager is opened with it in place).
// - Certificates are not verified (sluice's self-signed one).

const http = require("node:http");
const https = require("node:https");
const path = require("node:path");
const tls = require("node:tls");
const { io } = require("socket.io-client");

// engine.io-client's Node globals; socket.io-client's copy of engine.io-client
// is this one (one node_modules tree, npm ci).
const eioGlobals = require(path.join(path.dirname(require.resolve("engine.io-client")), "globals.node.js"));
let jarInUse = null;
const createCookieJar = eioGlobals.createCookieJar;
eioGlobals.createCookieJar = () => jarInUse || createCookieJar();

// One TLS context for every agent: Node builds one per connection
// otherwise, CPU that 200 browsers would each spend on their own machine.
let secureContext = null;

function newAgent(url) {
  if (!url.startsWith("https:")) return new http.Agent({ keepAlive: true, maxSockets: 6 });
  secureContext = secureContext || tls.createSecureContext();
  return new https.Agent({ keepAlive: true, maxSockets: 6, rejectUnauthorized: false, secureContext });
}

// browserSession opens one session to url with the socket.io client options
// options (forceNew, withCredentials, rejectUnauthorized and the agent are
// set here) and returns { socket, agent, jar }. keepAlive false: no agent.
function browserSession(url, options, keepAlive = true) {
  const agent = keepAlive ? newAgent(url) : false;
  const socket = io(url, {
    ...options,
    agent,
    forceNew: true, // without it every io(url) shares one Manager: one connection for all
    withCredentials: true,
    rejectUnauthorized: false,
    autoConnect: false, // opened below, once the jar is in place
  });
  const jar = createCookieJar();
  const manager = socket.io;
  const open = manager.open.bind(manager);
  manager.open = (fn) => {
    // The engine's constructor takes its jar and sends its first request
    // synchronously, so the jar only needs to be in place for this call.
    jarInUse = jar;
    try {
      return open(fn);
    } finally {
      jarInUse = null;
    }
  };
  socket.connect();
  return { socket, agent, jar };
}

// cookieValue is the value of cookie name in jar, "" if none.
function cookieValue(jar, name) {
  for (const [n, c] of jar.cookies) if (n === name) return c.value;
  return "";
}

module.exports = { browserSession, cookieValue };
