// framechain web page: polls the odin-control REST adapter once a second.
// No build step; plain DOM. Adapter name from ?adapter=NAME (default framechain).
"use strict";

const ADAPTER = new URLSearchParams(location.search).get("adapter") || "framechain";
const API = `/api/${ADAPTER}/`;
// a server opened beyond loopback needs a bearer token on PUTs: ?token=... once, kept for this browser tab
const TOKEN = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("framechain-token") || "";
if (TOKEN) sessionStorage.setItem("framechain-token", TOKEN);
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

let lastLiveMessages = -1;
let lastG2Messages = -1;
let colormapsFilled = false;

async function apiGet(path) {
  const resp = await fetch(API + path, { cache: "no-store" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

async function apiPut(path, body) {
  let text;
  try {
    const resp = await fetch(API + path, {
      method: "PUT", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", ...(TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {}) },
    });
    const data = await resp.json();
    text = `${new Date().toLocaleTimeString()} PUT ${path} -> HTTP ${resp.status}\n` +
      (data.error ? `error: ${data.error}\n` : "") + JSON.stringify(data.replies || data, null, 1);
    $("response").className = "response " + (resp.ok ? "ok" : "bad");
  } catch (err) {
    text = `PUT ${path} failed: ${err.message}`;
    $("response").className = "response bad";
  }
  $("response").textContent = text;
  poll();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const fmt = (v) => (v === undefined || v === null ? "–" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(1) : String(v));
const fmtRate = (v) => (v === undefined || v === null ? "–" : v >= 100 ? `${v.toFixed(0)}/s` : `${v.toFixed(1)}/s`);

// every frame a plugin did not pass on: frames_dropped*, frames_wrong_*, frames_rejected (as the TUI's drops column)
function dropCounters(p) {
  return Object.entries(p).filter(([k, v]) => Number.isInteger(v) &&
    (k.startsWith("frames_dropped") || k.startsWith("frames_wrong_") || k === "frames_rejected"));
}

function counterTable(name, pairs) {
  const head = el("tr"), row = el("tr");
  for (const [label, value, cls, key] of pairs) {
    head.append(el("th", {}, label));
    row.append(el("td", { id: `${name}-${key}`, class: cls || "" }, value));
  }
  return el("table", {}, head, row);
}

function daemonCard(name, d) {
  const card = el("div", { class: "daemon", "data-daemon": name });
  const state = d.connected ? el("span", { class: "ok", id: `${name}-state` }, "connected")
    : el("span", { class: "bad", id: `${name}-state` }, "disconnected");
  card.append(el("h3", {}, `${name} ${d.kind} ${d.endpoint} `, state,
    d.error ? el("span", { class: "bad" }, ` ${d.error}`) : ""));
  const st = d.status || {}, fr = st.frames || {}, r = d.rates || {};
  if (d.kind === "receiver") {
    const b = st.buffers || {}, src = st.source || {};
    card.append(counterTable(name, [
      ["received", fmt(fr.received), "", "received"], ["rate", fmtRate(r["frames/received"]), "", "rate"],
      ["released", fmt(fr.released), "", "released"],
      ["dropped", fmt(fr.dropped), fr.dropped ? "bad" : "", "dropped"],
      ["timed out", fmt(fr.timedout), fr.timedout ? "bad" : "", "timedout"],
      ["buffers empty", `${fmt(b.empty)}/${fmt(b.total)}`, b.consistent === false ? "bad" : "", "buffers"],
      ["source", `${fmt(src.state)} ${fmt(src.frame)}/${fmt(src.frames)}`, "", "source"],
    ]));
    return card;
  }
  card.append(counterTable(name, [
    ["received", fmt(fr.received), "", "received"], ["rate", fmtRate(r["frames/received"]), "", "rate"],
    ["released", fmt(fr.released), "", "released"], ["bad", fmt(fr.bad), fr.bad ? "bad" : "", "bad"],
  ]));
  const names = (st.plugins && st.plugins.names) || [];
  if (names.length) {
    const t = el("table", {}, el("tr", {}, ...["plugin", "queue", "processed", "rate", "dropped", "errors", "mean µs", "notes"]
      .map((h) => el("th", {}, h))));
    for (const idx of names) {
      const p = st[idx] || {}, q = p.queue || {}, tm = p.timing || {};
      const dropList = dropCounters(p), drops = dropList.reduce((sum, [, v]) => sum + v, 0);
      let notes = "";
      if ("writing" in p) notes = `${p.writing ? "WRITING" : "not writing"}, ${fmt(p.frames_written)} written`;
      if (p.last_error) notes += ` ${p.last_error}`;
      t.append(el("tr", { id: `${name}-plugin-${idx}` },
        el("td", {}, idx), el("td", {}, `${fmt(q.size)}/${fmt(q.max)}`),
        el("td", { id: `${name}-${idx}-processed` }, fmt(p.frames_processed)),
        el("td", {}, fmtRate(r[`${idx}/frames_processed`])),
        el("td", { id: `${name}-${idx}-drops`, class: drops ? "bad" : "",
                   title: dropList.map(([k, v]) => `${k} ${v}`).join(", ") }, fmt(drops)),
        el("td", { class: p.errors ? "bad" : "" }, fmt(p.errors)),
        el("td", {}, tm.mean_process === undefined ? "–" : Number(tm.mean_process).toFixed(1)),
        el("td", { class: p.last_error ? "bad" : "" }, notes)));
    }
    card.append(t);
  } else {
    card.append(el("p", { class: "dim" }, "no plugins loaded"));
  }
  return card;
}

function chainText(status, config) {
  const lines = [];
  for (const [name, d] of Object.entries(status)) {
    if (d.kind !== "processor") continue;
    lines.push(`${name} (${d.endpoint})${d.connected ? "" : "  [disconnected]"}`);
    const plugin = (config[name] || {}).plugin || {};
    const kids = {};
    for (const c of plugin.connect || []) (kids[c.connection] = kids[c.connection] || []).push(c.index);
    const lib = {};
    for (const l of plugin.load || []) lib[l.index] = `${l.name} (${l.library})`;
    const walk = (node, prefix, depth, seen) => {
      lines.push(`  ${prefix}${depth ? "└─ " : ""}${node}${lib[node] ? "  " + lib[node] : ""}`);
      if (seen.has(node)) return;
      for (const k of kids[node] || []) walk(k, prefix + (depth ? "   " : ""), depth + 1, new Set([...seen, node]));
    };
    walk("frame_receiver", "", 0, new Set());
  }
  return lines.join("\n") || "no processors";
}

function updateWriter(status) {
  const select = $("writer-index");
  const writers = [];
  for (const d of Object.values(status)) {
    const st = d.status || {};
    for (const idx of (st.plugins && st.plugins.names) || []) {
      if (st[idx] && "writing" in st[idx] && !writers.includes(idx)) writers.push(idx);
    }
  }
  if (writers.length && [...select.options].map((o) => o.value).join() !== writers.join()) {
    const keep = select.value;
    select.replaceChildren(...writers.map((w) => el("option", { value: w }, w)));
    if (writers.includes(keep)) select.value = keep;
  }
  const idx = select.value;
  let writing = null, written = 0, file = "";
  for (const d of Object.values(status)) {
    const p = (d.status || {})[idx];
    if (p && "writing" in p) {
      writing = writing || p.writing;
      written += p.frames_written || 0;
      file = p.current_file_path || p.last_file_path || file;
    }
  }
  $("writer-state").textContent = writing === null ? `no '${idx}' writer loaded` : writing ? "writing" : "not writing";
  $("writer-state").className = writing ? "ok" : "";
  $("writer-written").textContent = String(written);
  $("writer-file").textContent = file;
}

function updateLive(live, colormaps) {
  if (!colormapsFilled && colormaps) {
    $("colormap").replaceChildren(...colormaps.map((c) => el("option", { value: c }, c)));
    $("colormap").value = colormaps.includes("viridis") ? "viridis" : colormaps[0];
    colormapsFilled = true;
  }
  if (!live.enabled) { $("live-note").textContent = "live view disabled in the adapter"; return; }
  if (live.last_error) $("live-note").textContent = live.last_error;
  if (!live.frame) { $("live-frame").textContent = `no frame yet from ${live.endpoint}`; lastLiveMessages = -1; return; }
  $("live-frame").textContent = `frame ${live.frame.frame_num} ${live.frame.shape.join("×")} ${live.frame.dtype}`;
  if (live.messages !== lastLiveMessages) {
    lastLiveMessages = live.messages;
    loadImage();
  }
}

function loadImage() {
  if (lastLiveMessages < 1) return;          // nothing to show yet (a 404 would litter the console)
  const img = $("live-image");
  const q = new URLSearchParams({ colormap: $("colormap").value || "viridis", log: $("log-scale").checked ? "1" : "0", n: String(lastLiveMessages) });
  img.src = `${API}live/image.png?${q}`;
  img.hidden = false;
}

function drawG2(msg) {
  const cv = $("g2-canvas"), ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, L = 50, R = 10, T = 10, B = 35;
  ctx.clearRect(0, 0, W, H);
  const x = msg.delays_s && msg.frame_time ? msg.delays_s : msg.delays;
  const g2 = msg.g2 || [];
  if (!x || !x.length || !g2.length) return;
  const pts = [];
  for (const series of g2) for (let i = 0; i < series.length; i++) if (series[i] !== null && x[i] > 0) pts.push(series[i]);
  if (!pts.length) return;
  const lx = x.filter((v) => v > 0).map(Math.log10);
  const x0 = Math.min(...lx), x1 = Math.max(...lx) + 1e-9;
  let y0 = Math.min(...pts), y1 = Math.max(...pts);
  if (y1 - y0 < 1e-6) { y0 -= 0.05; y1 += 0.05; }
  const px = (v) => L + (Math.log10(v) - x0) / (x1 - x0) * (W - L - R);
  const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#888"; ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.fillStyle = "#444"; ctx.font = "11px sans-serif";
  ctx.fillText(y1.toFixed(3), 2, T + 10); ctx.fillText(y0.toFixed(3), 2, H - B);
  ctx.fillText(`τ (${x === msg.delays ? "frames" : "s"}, log)`, W / 2 - 30, H - 5);
  ctx.fillText(fmt(Math.min(...x.filter((v) => v > 0))), L, H - B + 14);
  ctx.fillText(fmt(Math.max(...x)), W - R - 40, H - B + 14);
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  g2.forEach((series, b) => {
    ctx.strokeStyle = colors[b % colors.length]; ctx.beginPath();
    let started = false;
    series.forEach((v, i) => {
      if (v === null || !(x[i] > 0)) return;
      if (started) ctx.lineTo(px(x[i]), py(v)); else { ctx.moveTo(px(x[i]), py(v)); started = true; }
    });
    ctx.stroke();
  });
}

function updateXpcs(xpcs) {
  if (!xpcs.enabled) { $("g2-info").textContent = "correlator subscription disabled in the adapter"; return; }
  const msg = xpcs.latest;
  if (!msg) { $("g2-info").textContent = `no correlator results yet from ${xpcs.endpoint}`; return; }
  if (xpcs.messages !== lastG2Messages) {
    lastG2Messages = xpcs.messages;
    drawG2(msg);
  }
  const bins = (msg.g2 || []).length;
  $("g2-info").textContent = `${bins} q-bin(s), ${(msg.delays || []).length} delays, ` +
    `${fmt(msg.frames_used ?? msg.frames)} frames used${msg.final ? " (final)" : ""}` +
    `${msg.acquisition_id ? ", acquisition " + msg.acquisition_id : ""}`;
}

async function poll() {
  try {
    const tree = await apiGet("");
    $("server-state").textContent = "server connected";
    $("server-state").className = "pill ok";
    const daemons = $("daemons");
    daemons.replaceChildren(...Object.entries(tree.status).map(([n, d]) => daemonCard(n, d)));
    $("chain").textContent = chainText(tree.status, tree.config);
    updateWriter(tree.status);
    updateLive(tree.live, tree.adapter.colormaps);
    updateXpcs(tree.xpcs);
  } catch (err) {
    $("server-state").textContent = `server unreachable: ${err.message}`;
    $("server-state").className = "pill bad";
  }
  $("clock").textContent = new Date().toLocaleTimeString();
}

function firstOfKind(kind, tree) {
  return Object.entries(tree || {}).filter(([, d]) => d.kind === kind).map(([n]) => n);
}

let lastStatus = {};
async function refreshStatusCache() {
  try { lastStatus = await apiGet("status"); } catch (err) { /* shown by poll() */ }
}

$("start-writing").addEventListener("click", () => apiPut(`execute/${$("writer-index").value}`, { command: "start_writing" }));
$("stop-writing").addEventListener("click", () => apiPut(`execute/${$("writer-index").value}`, { command: "stop_writing" }));
$("start-source").addEventListener("click", async () => {
  await refreshStatusCache();
  for (const fr of firstOfKind("receiver", lastStatus)) await apiPut(`execute/${fr}/source`, { command: "start" });
});
$("stop-source").addEventListener("click", async () => {
  await refreshStatusCache();
  for (const fr of firstOfKind("receiver", lastStatus)) await apiPut(`execute/${fr}/source`, { command: "stop" });
});
$("reset-stats").addEventListener("click", () => apiPut("reset_statistics", {}));
$("colormap").addEventListener("change", loadImage);
$("log-scale").addEventListener("change", loadImage);
$("writer-index").addEventListener("change", poll);

poll();
setInterval(poll, POLL_MS);
