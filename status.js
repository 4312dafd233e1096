// sluice status page: polls api/v1/state and renders routes, pools and
// backends; the Drain / Maint / Ready buttons POST to
// api/v1/backends/{pool}/{address}/{state}. No framework, no build step.
//
// Stable hooks for tests and scripts: tr[data-backend="<pool>/<address>"]
// with td.state (text ready|drain|maint), td.health[data-healthy] and
// button[data-action="drain|maint|ready"].
"use strict";

const REFRESH_MS = 1500;
const TOKEN_KEY = "sluice-admin-token";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}

function token() {
  return ($("#token").value || "").trim();
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

let errorText = "";
function showError(msg) {
  errorText = msg || "";
  const box = $("#error");
  box.textContent = errorText;
  box.hidden = !errorText;
}

let inflight = false;
async function refresh() {
  if (inflight) return;
  inflight = true;
  try {
    const r = await fetch("api/v1/state", { cache: "no-store" });
    if (!r.ok) throw new Error("GET /api/v1/state: HTTP " + r.status);
    render(await r.json());
    const u = $("#updated");
    u.textContent = "updated " + new Date().toLocaleTimeString();
    u.dataset.ok = "true";
    if (errorText.startsWith("sluice unreachable")) showError("");
  } catch (e) {
    const u = $("#updated");
    u.textContent = "stale: " + e.message;
    u.dataset.ok = "false";
    showError("sluice unreachable: " + e.message);
  } finally {
    inflight = false;
  }
}

function render(st) {
  $("#version").textContent = st.version || "–";
  $("#sluice-version").textContent = st.sluice_version || "–";
  $("#active").textContent = st.active;
  renderRoutes(st.routes || []);
  renderPools(st.pools || []);
  renderListeners(st.listeners || []);
}

function renderRoutes(routes) {
  const body = $("#routes tbody");
  body.replaceChildren(...routes.map((r) => {
    const names = el("td", { class: "sni" });
    for (const n of r.sni) names.append(el("code", {}, n), " ");
    if (r.default) names.append(el("span", { class: "badge tag" }, "default route"));
    if (r.plain) names.append(el("span", { class: "badge tag" }, "not TLS"));
    const serves = el("td", { class: "serves" });
    if (r.pool) serves.append("pool ", el("code", {}, r.pool));
    for (const l of r.locations || []) {
      const what = l.pool ? ["pool ", el("code", {}, l.pool)] : l.root ? ["files ", el("code", {}, l.root)] : ["redirect ", el("code", {}, l.redirect)];
      serves.append(el("div", {}, el("code", {}, l.path), " → ", ...what));
    }
    return el("tr", { "data-route": r.listener + "/" + r.name },
      el("td", {}, el("strong", {}, r.name)),
      el("td", {}, r.listener),
      el("td", {}, el("span", { class: "badge mode-" + r.mode }, r.mode)),
      names, serves,
      el("td", { class: "num active" }, String(r.active)));
  }));
}

function renderListeners(listeners) {
  $("#listeners tbody").replaceChildren(...listeners.map((l) =>
    el("tr", { "data-listener": l.name },
      el("td", {}, el("strong", {}, l.name)),
      el("td", { class: "addr" }, l.address),
      el("td", { class: "addr" }, l.bound || "not bound"),
      el("td", {}, l.tls ? "TLS (SNI routing)" : "cleartext HTTP"))));
}

// Backend rows are updated in place (keyed by pool/address), so a button
// under the pointer is never replaced between press and release.
function renderPools(pools) {
  const root = $("#pools");
  const seen = new Set();
  for (const p of pools) {
    const id = "pool-" + p.name;
    seen.add(id);
    let card = document.getElementById(id);
    if (!card) {
      card = el("div", { class: "pool", id: id, "data-pool": p.name },
        el("h3", {}, p.name, el("span", { class: "meta" })),
        el("table", {},
          el("thead", {}, el("tr", {},
            el("th", {}, "backend"), el("th", {}, "health"), el("th", {}, "state"),
            el("th", { class: "num" }, "active"), el("th", { class: "num" }, "max"),
            el("th", { class: "num" }, "weight"), el("th", { class: "num" }, "dials"),
            el("th", { class: "num" }, "failures"), el("th", {}, "last check"), el("th", {}, "admin"))),
          el("tbody")));
      root.append(card);
    }
    card.querySelector("h3 .meta").textContent =
      "balance " + p.balance + (p.hash_key ? " by " + p.hash_key : "") + " · " + p.backends.length + " backends";
    const body = card.querySelector("tbody");
    const keep = new Set();
    for (const b of p.backends) {
      const key = p.name + "/" + b.address;
      keep.add(key);
      let row = [...body.children].find((r) => r.dataset.backend === key);
      if (!row) {
        row = backendRow(p.name, b.address);
        body.append(row);
      }
      updateRow(row, b);
    }
    for (const r of [...body.children]) if (!keep.has(r.dataset.backend)) r.remove();
  }
  for (const c of [...root.children]) if (!seen.has(c.id)) c.remove();
}

function backendRow(pool, address) {
  const actions = el("td", { class: "actions" });
  for (const [action, label] of [["drain", "Drain"], ["maint", "Maint"], ["ready", "Ready"]]) {
    const b = el("button", { type: "button", "data-action": action, title: label + " " + address }, label);
    b.addEventListener("click", () => setState(pool, address, action));
    actions.append(b);
  }
  return el("tr", { "data-backend": pool + "/" + address, "data-pool": pool, "data-address": address },
    el("td", { class: "addr" }, address),
    el("td", { class: "health" }, el("span", { class: "badge" })),
    el("td", { class: "state" }),
    el("td", { class: "num active" }), el("td", { class: "num max" }),
    el("td", { class: "num weight" }), el("td", { class: "num dials" }),
    el("td", { class: "num failures" }), el("td", { class: "check" }),
    actions);
}

function updateRow(row, b) {
  const set = (sel, text) => { const c = row.querySelector(sel); if (c.textContent !== text) c.textContent = text; };
  row.dataset.healthy = String(b.healthy);
  row.dataset.state = b.state;
  const h = row.querySelector("td.health");
  h.dataset.healthy = String(b.healthy);
  set("td.health .badge", b.healthy ? "up" : "down");
  const s = row.querySelector("td.state");
  s.dataset.state = b.state;
  set("td.state", b.state);
  set("td.active", String(b.active));
  set("td.max", b.max_connections ? String(b.max_connections) : "∞");
  set("td.weight", String(b.weight) + (b.backup ? " (backup)" : ""));
  set("td.dials", String(b.dials));
  set("td.failures", String(b.failures));
  const check = row.querySelector("td.check");
  const text = b.last_check_error ? b.last_check_error : b.last_check_ms ? "ok in " + b.last_check_ms.toFixed(1) + " ms" : "–";
  if (check.textContent !== text) check.textContent = text;
  check.classList.toggle("failing", !!b.last_check_error);
  for (const btn of row.querySelectorAll("button[data-action]")) {
    if (!btn.dataset.busy) btn.disabled = btn.dataset.action === b.state;
  }
}

async function setState(pool, address, action) {
  const row = [...document.querySelectorAll("tr[data-backend]")].find((r) => r.dataset.backend === pool + "/" + address);
  const buttons = row ? [...row.querySelectorAll("button[data-action]")] : [];
  for (const b of buttons) { b.disabled = true; b.dataset.busy = "1"; }
  try {
    const url = "api/v1/backends/" + encodeURIComponent(pool) + "/" + encodeURIComponent(address) + "/" + action;
    const r = await fetch(url, { method: "POST", headers: headers(), cache: "no-store" });
    let body = {};
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    if (r.status === 401) {
      showError("The admin server needs a token for changes: enter [admin] token in the field above.");
      $("#token").focus();
    } else if (!r.ok) {
      showError(action + " " + pool + "/" + address + ": " + (body.error || "HTTP " + r.status));
    } else {
      showError("");
      if (row) {
        for (const b of buttons) delete b.dataset.busy;
        updateRow(row, body);
      }
    }
  } catch (e) {
    showError(action + " " + pool + "/" + address + ": " + e.message);
  } finally {
    for (const b of buttons) delete b.dataset.busy;
    refresh();
  }
}

function init() {
  const input = $("#token");
  try { input.value = localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { /* storage disabled */ }
  input.addEventListener("change", () => {
    try { localStorage.setItem(TOKEN_KEY, token()); } catch (_) { /* storage disabled */ }
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

init();
