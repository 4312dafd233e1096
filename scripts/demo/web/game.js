// sluice wss:// game demo. Opens wss://<this host>/ws (ws:// when the page
// is http:), or the address given by ?ws=..., sends the player's position
// every 200 ms with a sequence number and the client clock, and checks that
// every echo matches what was sent. The DOM ids state, count, backend, rtt,
// result and error are read by scripts/browser-test.sh; after 10 verified
// round trips the title becomes "sluice-ok" and result "ok ..."; when it
// gives up (6 failed connections) result becomes "failed ...".
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const WANT = 10;       // verified round trips before "sluice-ok"
  const PERIOD = 200;    // ms between messages
  const params = new URLSearchParams(location.search);
  const url = params.get("ws") ||
    `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  $("url").textContent = url;

  const canvas = $("field");
  const g = canvas.getContext("2d");
  const me = { x: canvas.width / 2, y: canvas.height / 2, vx: 130, vy: 95 }; // px/s
  let seen = null;         // position the server last echoed
  const keys = new Set();
  let lastKey = -Infinity;
  addEventListener("keydown", (e) => { keys.add(e.key); lastKey = performance.now(); });
  addEventListener("keyup", (e) => keys.delete(e.key));

  const pending = new Map(); // seq -> sent text
  let seq = 0, count = 0, sum = 0, max = 0, timer = 0, done = false, ws;
  let retries = 0;         // reconnects so far (a backend may still be starting)
  const MAX_RETRIES = 5;

  function setState(s) { const el = $("state"); el.textContent = s; el.className = s; }
  function showError(msg) {
    const el = $("error");
    el.hidden = false;
    el.textContent = (el.textContent ? el.textContent + "\n" : "") + msg;
    console.error("sluice demo:", msg);
  }
  function log(line) {
    const li = document.createElement("li");
    li.textContent = line;
    const ul = $("log");
    ul.prepend(li);
    while (ul.children.length > 30) ul.lastChild.remove();
  }

  function send() {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (pending.size > 50) { showError("no echo for " + pending.size + " messages"); ws.close(4000, "no echoes"); return; }
    seq++;
    const text = JSON.stringify({ seq, t: performance.timeOrigin + performance.now(), x: Math.round(me.x), y: Math.round(me.y) });
    pending.set(seq, text);
    ws.send(text);
  }

  function onMessage(ev) {
    const now = performance.timeOrigin + performance.now();
    let reply, sent;
    try {
      reply = JSON.parse(ev.data);
      sent = JSON.parse(reply.echo);
    } catch (e) {
      showError("bad reply: " + String(ev.data).slice(0, 200));
      return;
    }
    if (pending.get(sent.seq) !== reply.echo) {
      showError("echo mismatch for seq " + sent.seq + ": " + String(reply.echo).slice(0, 200));
      return;
    }
    pending.delete(sent.seq);
    const rtt = now - sent.t;
    count++; sum += rtt; max = Math.max(max, rtt);
    seen = { x: sent.x, y: sent.y };
    $("count").textContent = String(count);
    $("backend").textContent = reply.backend;
    $("rtt").textContent = rtt.toFixed(1);
    $("avg").textContent = (sum / count).toFixed(1);
    $("max").textContent = max.toFixed(1);
    log(`#${sent.seq} ${reply.backend} rtt ${rtt.toFixed(1)} ms`);
    if (count >= WANT && !done) {
      done = true;
      $("result").textContent = `ok rtt_ms=${(sum / count).toFixed(1)} backend=${reply.backend} count=${count}`;
      document.title = "sluice-ok";
    }
  }

  function connect() {
    setState("connecting");
    try {
      ws = new WebSocket(url);
    } catch (e) {
      setState("error");
      showError("cannot open " + url + ": " + e.message);
      return;
    }
    ws.onopen = () => {
      setState("open");
      log("connected to " + url);
      pending.clear();
      timer = setInterval(send, PERIOD);
      send();
    };
    ws.onmessage = onMessage;
    ws.onerror = () => { setState("error"); showError("WebSocket error on " + url + " (see the browser console)"); };
    ws.onclose = (ev) => {
      clearInterval(timer);
      if ($("state").textContent !== "error") setState("closed");
      log(`closed (code ${ev.code})`);
      if (done) return;
      showError(`closed: code ${ev.code}${ev.reason ? " " + ev.reason : ""}`);
      if (retries < MAX_RETRIES) {
        retries++;
        log(`reconnecting in 1 s (${retries}/${MAX_RETRIES})`);
        setTimeout(connect, 1000);
      } else {
        $("result").textContent = `failed after ${retries + 1} connection attempts (last close code ${ev.code})`;
      }
    };
  }

  // The game: a dot that bounces by itself, or follows the keys. A 30 Hz
  // tick moves and draws it (a timer, not requestAnimationFrame, which a
  // headless or hidden tab hardly runs); motion is per second of real time.
  const TICK = 33;
  let lastTick = performance.now();
  function step() {
    const now = performance.now();
    const dt = Math.min(0.25, (now - lastTick) / 1000);
    lastTick = now;
    const idle = now - lastKey > 2000;
    if (idle) {
      me.x += me.vx * dt; me.y += me.vy * dt;
      if (me.x < 10 || me.x > canvas.width - 10) me.vx = -me.vx;
      if (me.y < 10 || me.y > canvas.height - 10) me.vy = -me.vy;
    } else {
      const v = 180 * dt;
      if (keys.has("ArrowLeft") || keys.has("a")) me.x -= v;
      if (keys.has("ArrowRight") || keys.has("d")) me.x += v;
      if (keys.has("ArrowUp") || keys.has("w")) me.y -= v;
      if (keys.has("ArrowDown") || keys.has("s")) me.y += v;
    }
    me.x = Math.min(canvas.width - 10, Math.max(10, me.x));
    me.y = Math.min(canvas.height - 10, Math.max(10, me.y));
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (seen) {
      g.strokeStyle = "#81c784"; g.lineWidth = 2;
      g.beginPath(); g.arc(seen.x, seen.y, 12, 0, 2 * Math.PI); g.stroke();
    }
    g.fillStyle = "#4fc3f7";
    g.beginPath(); g.arc(me.x, me.y, 8, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#8a8f98"; g.font = "12px monospace";
    g.fillText(`sent ${seq}  echoed ${count}`, 8, 16);
  }

  addEventListener("error", (e) => showError("script error: " + e.message));
  setInterval(step, TICK);
  connect();
})();
