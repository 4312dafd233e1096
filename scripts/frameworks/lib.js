"use strict";
// Shared bits of the framework servers and load clients: flags (with
// environment fallbacks) and the JSON summary helpers.

const { parseArgs } = require("node:util");

// flags parses --name value / --name=value; a missing flag falls back to the
// environment variable env[name], then to the default.
function flags(spec) {
  const options = {};
  for (const [name, s] of Object.entries(spec)) {
    options[name] = { type: s.type === "boolean" ? "boolean" : "string" };
  }
  const { values } = parseArgs({ options, allowPositionals: false });
  const out = {};
  for (const [name, s] of Object.entries(spec)) {
    let v = values[name];
    if (v === undefined && s.env && process.env[s.env] !== undefined) {
      v = s.type === "boolean" ? /^(1|true|yes)$/i.test(process.env[s.env]) : process.env[s.env];
    }
    if (v === undefined) v = s.default;
    if (s.type === "number") v = Number(v);
    out[name] = v;
  }
  return out;
}

// Errors keeps a count per message and the first few in full.
class Errors {
  constructor(keep = 5) {
    this.keep = keep;
    this.first = [];
    this.counts = {};
  }
  add(where, err) {
    const msg = errText(err);
    const key = `${where}: ${msg}`.slice(0, 200);
    this.counts[key] = (this.counts[key] || 0) + 1;
    if (this.first.length < this.keep) this.first.push(key);
  }
}

function errText(err) {
  if (err == null) return "unknown";
  if (typeof err === "string") return err;
  let s = err.message || String(err);
  // socket.io-client / engine.io put the HTTP status and body in description/context.
  if (err.description !== undefined) {
    const d = err.description;
    s += ` (${typeof d === "object" ? (d.message || d.status || JSON.stringify(d)) : d})`;
  }
  if (err.context && err.context.status) s += ` [status ${err.context.status}]`;
  if (err.code !== undefined && typeof err.code !== "object") s += ` [code ${err.code}]`;
  return s;
}

function count(obj, key) {
  obj[key] = (obj[key] || 0) + 1;
}

function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timeout after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { flags, Errors, errText, count, withTimeout, sleep };
