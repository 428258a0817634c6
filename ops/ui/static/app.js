// shoal web UI: polls the admin API (same origin, bearer token from
// sessionStorage) and this node's /ui/api/metrics, and draws the tables
// and the chart. No libraries, nothing loaded from elsewhere.
"use strict";

const REFRESH_MS = 1500;
const WINDOW_MS = 30000;        // percentiles over the last 30 s of samples
const CHART_MS = 5 * 60 * 1000; // the chart shows the last five minutes
const TOKEN_KEY = "shoal.adminToken";

const $ = (id) => document.getElementById(id);
const state = { samples: [], cluster: null, breakers: [], batching: {}, timer: null, busy: false };

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

// ApiError carries the status and the admin API's error message.
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = {};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "network", "cannot reach this node: " + e.message);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: reported below */ }
  if (!resp.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : (text.slice(0, 200) || resp.statusText);
    const code = data && data.error && data.error.code ? data.error.code : "";
    throw new ApiError(resp.status, code, msg);
  }
  if (data === null) throw new ApiError(resp.status, "bad_json", "the answer to " + method + " " + path + " is not JSON");
  return data;
}

function describe(path, e) {
  const status = e.status ? e.status + " " : "";
  return status + (e.code ? "(" + e.code + ") " : "") + e.message + "  [" + path + "]";
}

function showError(id, path, e) {
  const el = $(id);
  if (!e) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = describe(path, e);
}

// A 401 or 403 anywhere means the token is wrong or the API is off: say so
// at the top, where the token field is.
function showAuth(errors) {
  const banner = $("banner");
  const auth = errors.find((e) => e && (e.status === 401 || e.status === 403));
  if (auth && auth.status === 401) {
    banner.hidden = false;
    banner.className = "banner";
    banner.textContent = token()
      ? "401 Unauthorized: the admin token in use was refused. Enter the right token above."
      : "401 Unauthorized: this node's admin API needs a token. Enter it above (it is kept in this tab's sessionStorage only).";
    $("auth-state").textContent = "not signed in";
  } else if (auth) {
    banner.hidden = false;
    banner.className = "banner";
    banner.textContent = "403 Forbidden: " + auth.message;
    $("auth-state").textContent = "";
  } else {
    banner.hidden = true;
    $("auth-state").textContent = token() ? "token in use" : "open (dev mode)";
  }
}

// setHTML replaces el's markup only when it changed, so a button being
// clicked or text being selected survives the refresh.
const rendered = new WeakMap();
function setHTML(el, html) {
  if (rendered.get(el) === html) return;
  rendered.set(el, html);
  el.innerHTML = html;
}

function badge(v) { return '<span class="badge ' + esc(v) + '">' + esc(v) + "</span>"; }
function num(v, digits) { return v === undefined || v === null || Number.isNaN(v) ? "–" : Number(v).toFixed(digits ?? 0); }
function ms(v) { return v === undefined || v === null || Number.isNaN(v) ? "–" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms"); }

function renderMembers(c) {
  $("node-name").textContent = "· " + c.node;
  $("leader").textContent = "leader: " + (c.leader || "none") + " · raft index " + c.raft_applied_index;
  const members = c.members || [];
  $("members-count").textContent = "(" + members.length + ")";
  const rows = members.map((m) => {
    const loads = Object.keys(m.models || {}).sort().map((name) => {
      const l = m.models[name];
      return "<span>" + esc(name) + ": " + l.queue_depth + " / " + l.running + " / " + l.slots + "</span>";
    }).join("") || '<span class="muted">no models</span>';
    const g = m.gpu || {};
    const gpu = g.count ? esc(g.count + " GPU · " + g.memory_free_mb + "/" + g.memory_total_mb + " MB free · " + num(g.utilization_pct) + "% busy") : '<span class="muted">none</span>';
    return '<tr data-member="' + esc(m.name) + '"><td>' + esc(m.name) + (m.name === c.node ? ' <span class="muted">(this node)</span>' : "") +
      "</td><td>" + badge(m.role) + "</td><td>" + badge(m.state) + "</td><td>" + esc(m.http_addr) +
      "</td><td>" + esc(m.version) + "</td><td>" + gpu + '</td><td class="loads">' + loads + "</td><td>" + esc(m.load_age) + "</td></tr>";
  });
  setHTML($("members").tBodies[0], rows.join(""));
}

// quantile is histogram_quantile over cumulative counts (ops/ui.Quantile).
function quantile(q, upper, cum, count) {
  if (!(count > 0) || !upper || upper.length === 0 || upper.length !== cum.length) return NaN;
  const rank = q * count;
  let i = cum.findIndex((c) => c >= rank);
  if (i < 0) return upper[upper.length - 1];
  const lo = i > 0 ? upper[i - 1] : 0, below = i > 0 ? cum[i - 1] : 0;
  const inside = cum[i] - below;
  if (inside <= 0) return upper[i];
  return lo + (upper[i] - lo) * (rank - below) / inside;
}

// windowed compares the newest sample with the oldest one inside the
// window: requests per second and latency percentiles of that interval.
function windowed(pick, windowMs) {
  const s = state.samples;
  if (s.length === 0) return null;
  const cur = pick(s[s.length - 1].data);
  if (!cur) return null;
  let old = null;
  for (let i = s.length - 2; i >= 0; i--) {
    if (s[s.length - 1].t - s[i].t > windowMs) break;
    old = s[i];
  }
  if (!old) return { rps: NaN, p50: cur.p50_ms || NaN, p95: cur.p95_ms || NaN };
  const prev = pick(old.data) || {};
  const dt = (s[s.length - 1].t - old.t) / 1000;
  const cum = (cur.bucket_counts || []).map((v, i) => v - ((prev.bucket_counts || [])[i] || 0));
  const count = cur.count - (prev.count || 0);
  return {
    rps: dt > 0 ? (cur.requests - (prev.requests || 0)) / dt : NaN,
    p50: quantile(0.5, cur.bucket_upper_ms, cum, count),
    p95: quantile(0.95, cur.bucket_upper_ms, cum, count),
  };
}

function renderModels(c, batching) {
  const models = {};
  for (const m of c.members || []) {
    for (const [name, l] of Object.entries(m.models || {})) {
      const e = models[name] || (models[name] = { nodes: [], queue: 0, active: 0, tps: 0 });
      e.nodes.push(m.name);
      e.queue += l.queue_depth;
      e.active += l.active_batches;
      e.tps += l.tokens_per_sec || 0;
    }
  }
  for (const name of Object.keys(batching)) if (!models[name]) models[name] = { nodes: [], queue: 0, active: 0, tps: 0 };
  const names = Object.keys(models).sort();
  setHTML($("models").tBodies[0], names.map((name) => {
    const e = models[name], b = batching[name] || {};
    const w = windowed((d) => d.models && d.models[name], WINDOW_MS) || {};
    return '<tr data-model="' + esc(name) + '"><td>' + esc(name) + "</td><td>" + (esc(e.nodes.sort().join(", ")) || '<span class="muted">none</span>') +
      '</td><td class="num">' + e.queue + '</td><td class="num">' + e.active + '</td><td class="num">' + num(e.tps, 1) +
      '</td><td class="num">' + ms(w.p50) + '</td><td class="num">' + ms(w.p95) + '</td><td class="num max-size">' + esc(b.max_size ?? "–") +
      '</td><td class="flush">' + esc(b.flush_timeout ?? "–") + "</td></tr>";
  }).join(""));
  const sel = $("bf-model"), current = sel.value;
  const have = Array.from(sel.options).map((o) => o.value).join("\n");
  if (have !== names.join("\n")) {
    sel.innerHTML = names.map((n) => '<option value="' + esc(n) + '">' + esc(n) + "</option>").join("");
    if (names.includes(current)) sel.value = current;
  }
}

function renderCache(v) {
  const st = v.stats || {}, h = v.health || {};
  const rows = [
    ["hit ratio", (100 * (v.hit_ratio || 0)).toFixed(1) + "% (" + (st.Hits || 0) + " hits, " + (st.Misses || 0) + " misses)"],
    ["members", st.Members ?? h.Members ?? "–"],
    ["backend", st.Backend || "–"],
    ["health", badge(h.Status || "unknown") + (h.Detail ? " " + esc(h.Detail) : "")],
    ["entries", (st.Entries ?? "–") + " · " + (st.Bytes ?? "–") + " bytes"],
    ["errors", (st.Errors ?? 0) + " (" + (st.Timeouts ?? 0) + " timeouts)"],
  ];
  setHTML($("cache"), rows.map(([k, val]) => "<dt>" + esc(k) + "</dt><dd>" + (k === "health" ? val : esc(val)) + "</dd>").join(""));
}

function renderLimits(p) {
  const parts = ["<dl><dt>default rpm</dt><dd>" + esc(p.default_rpm || "unlimited") + "</dd><dt>auth required</dt><dd>" + esc(p.auth_required ? "yes" : "no") + "</dd></dl>"];
  const eps = Object.entries(p.endpoints || {}).sort();
  if (eps.length) {
    parts.push("<h3 class=\"small\">Endpoints</h3><table><thead><tr><th>Path</th><th>rpm</th><th>rph</th></tr></thead><tbody>" +
      eps.map(([k, e]) => "<tr><td>" + esc(k) + '</td><td class="num">' + esc(e.rpm) + '</td><td class="num">' + esc(e.rph) + "</td></tr>").join("") + "</tbody></table>");
  }
  const keys = Object.values(p.keys || {}).sort((a, b) => String(a.prefix).localeCompare(String(b.prefix)));
  parts.push("<h3 class=\"small\">Keys by prefix (" + keys.length + ")</h3>");
  if (keys.length) {
    parts.push("<table><thead><tr><th>Prefix</th><th>rpm</th><th>tpm</th><th>Tenant</th></tr></thead><tbody>" +
      keys.map((k) => "<tr><td>" + esc(k.prefix) + '…</td><td class="num">' + esc(k.rpm) + '</td><td class="num">' + esc(k.tpm) + "</td><td>" + esc(k.tenant || "") + "</td></tr>").join("") + "</tbody></table>");
  }
  const tenants = Object.entries(p.tenants || {}).sort();
  if (tenants.length) {
    parts.push("<h3 class=\"small\">Tenants</h3><table><thead><tr><th>Tenant</th><th>rpm</th><th>tpm</th></tr></thead><tbody>" +
      tenants.map(([k, t]) => "<tr><td>" + esc(k) + '</td><td class="num">' + esc(t.rpm) + '</td><td class="num">' + esc(t.tpm) + "</td></tr>").join("") + "</tbody></table>");
  }
  setHTML($("limits"), parts.join(""));
}

// renderBreakers lists every node and model pair: the replicated entries,
// and closed breakers (which have no entry) for what members serve.
function renderBreakers(c, list) {
  const rows = new Map();
  for (const m of (c && c.members) || []) {
    for (const model of Object.keys(m.models || {})) rows.set(m.name + "/" + model, { node: m.name, model, state: "closed", trips: 0 });
  }
  for (const b of list) rows.set(b.node + "/" + b.model, b);
  const keys = Array.from(rows.keys()).sort();
  const t = (v) => (v ? new Date(v).toLocaleTimeString() : "");
  setHTML($("breakers").tBodies[0], keys.map((k) => {
    const b = rows.get(k);
    const act = (a) => '<button type="button" data-action="' + a + '" data-node="' + esc(b.node) + '" data-model="' + esc(b.model) + '">' + a + "</button>";
    return '<tr data-breaker="' + esc(k) + '"><td>' + esc(b.node) + "</td><td>" + esc(b.model) + '</td><td class="state">' + badge(b.state) +
      "</td><td>" + esc(t(b.since)) + "</td><td>" + esc(t(b.open_until)) + '</td><td class="num">' + esc(b.trips) + "</td><td>" + esc(b.reason || "") +
      "</td><td>" + act("open") + " " + act("close") + " " + act("reset") + "</td></tr>";
  }).join(""));
}

function renderChart() {
  const svg = $("chart");
  const W = Math.max(200, svg.clientWidth || 800), H = 200, pad = 34;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const now = Date.now();
  const pts = [];
  const s = state.samples;
  for (let i = 1; i < s.length; i++) {
    const a = s[i - 1], b = s[i];
    if (now - b.t > CHART_MS) continue;
    const dt = (b.t - a.t) / 1000;
    const ca = a.data.total, cb = b.data.total;
    const cum = cb.bucket_counts ? cb.bucket_counts.map((v, j) => v - ((ca.bucket_counts || [])[j] || 0)) : [];
    pts.push({ t: b.t, rps: dt > 0 ? Math.max(0, (cb.requests - ca.requests) / dt) : 0, p95: quantile(0.95, cb.bucket_upper_ms, cum, cb.count - ca.count) });
  }
  const maxR = Math.max(1, ...pts.map((p) => p.rps));
  const maxL = Math.max(1, ...pts.map((p) => (Number.isNaN(p.p95) ? 0 : p.p95)));
  const x = (t) => pad + (W - 2 * pad) * (1 - (now - t) / CHART_MS);
  const line = (key, max) => pts.filter((p) => !Number.isNaN(p[key])).map((p) => x(p.t).toFixed(1) + "," + (H - pad / 2 - (H - pad) * p[key] / max).toFixed(1)).join(" ");
  svg.innerHTML =
    '<line class="grid" x1="' + pad + '" y1="' + (H - pad / 2) + '" x2="' + (W - pad) + '" y2="' + (H - pad / 2) + '"/>' +
    '<line class="grid" x1="' + pad + '" y1="' + (pad / 2) + '" x2="' + (W - pad) + '" y2="' + (pad / 2) + '"/>' +
    '<text x="2" y="' + (pad / 2 + 4) + '">' + esc(num(maxR, 1)) + "/s</text>" +
    '<text x="' + (W - pad + 2) + '" y="' + (pad / 2 + 4) + '">' + esc(num(maxL)) + "ms</text>" +
    '<text x="' + pad + '" y="' + (H - 2) + '">-5 min</text><text x="' + (W - pad - 20) + '" y="' + (H - 2) + '">now</text>' +
    '<polyline class="rps" points="' + line("rps", maxR) + '"/><polyline class="p95" points="' + line("p95", maxL) + '"/>';
  // A dot on each series' newest point, so a single sample still shows.
  for (const [key, max] of [["rps", maxR], ["p95", maxL]]) {
    const p = pts.filter((q) => !Number.isNaN(q[key])).pop();
    if (p) svg.innerHTML += '<circle class="' + key + '" r="3" cx="' + x(p.t).toFixed(1) + '" cy="' + (H - pad / 2 - (H - pad) * p[key] / max).toFixed(1) + '"/>';
  }
  const last = pts[pts.length - 1];
  $("chart-rps").textContent = last ? num(last.rps, 1) : "";
  $("chart-p95").textContent = last ? ms(last.p95) : "";
}

// section shows a fetch's error in the section's box, then renders it; a
// rendering bug shows in the same box rather than stopping every refresh.
function section(id, path, e, render) {
  showError(id, path, e);
  try {
    render();
  } catch (ex) {
    const el = $(id);
    el.hidden = false;
    el.textContent = (e ? el.textContent + "\n" : "") + "page error: " + ex.message;
    console.error(ex);
  }
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const paths = ["/admin/v1/cluster", "/admin/v1/batching", "/admin/v1/limits", "/admin/v1/breakers", "/admin/v1/cache", "/ui/api/metrics"];
    const got = await Promise.allSettled(paths.map((p) => api("GET", p)));
    const err = (i) => (got[i].status === "rejected" ? got[i].reason : null);
    const val = (i) => (got[i].status === "fulfilled" ? got[i].value : null);
    showAuth(got.map((g, i) => err(i)));

    if (val(5)) {
      state.samples.push({ t: Date.now(), data: val(5) });
      while (state.samples.length && Date.now() - state.samples[0].t > CHART_MS + 10000) state.samples.shift();
    }
    if (val(0)) state.cluster = val(0);
    if (val(1)) state.batching = val(1).models || {};
    if (val(3)) state.breakers = val(3).breakers || [];

    section("members-error", paths[0], err(0), () => val(0) && renderMembers(val(0)));
    section("models-error", err(1) ? paths[1] : paths[5], err(1) || err(5), () => state.cluster && renderModels(state.cluster, state.batching));
    section("limits-error", paths[2], err(2), () => val(2) && renderLimits(val(2)));
    section("breakers-error", paths[3], err(3), () => val(3) && renderBreakers(state.cluster, state.breakers));
    section("cache-error", paths[4], err(4), () => val(4) && renderCache(val(4)));
    section("chart-error", paths[5], err(5), renderChart);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } finally {
    state.busy = false;
  }
}

function result(id, ok, text) {
  const el = $(id);
  el.className = "result " + (ok ? "ok" : "bad");
  el.textContent = text;
}

// act runs a write and shows its answer or its error next to the control.
async function act(id, fn) {
  try {
    result(id, true, await fn());
  } catch (e) {
    result(id, false, describe("", e).replace(/\s+\[\]$/, ""));
  }
  refresh();
}

function setup() {
  $("token").value = token();
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    refresh();
  });
  $("batching-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { model: $("bf-model").value };
    const size = $("bf-max-size").value.trim(), flush = $("bf-flush").value.trim();
    if (size !== "") body.max_size = Number(size);
    if (flush !== "") body.flush_timeout = flush;
    act("bf-result", async () => {
      const r = await api("PUT", "/admin/v1/batching", body);
      return "applied to " + r.model + ": max size " + r.max_size + ", flush timeout " + r.flush_timeout;
    });
  });
  $("purge-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const model = $("purge-model").value.trim();
    act("purge-result", async () => {
      await api("DELETE", "/admin/v1/cache" + (model ? "?model=" + encodeURIComponent(model) : ""));
      return "purged " + (model || "all models");
    });
  });
  $("breakers").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const { action, node, model } = b.dataset;
    act("breaker-result", async () => {
      await api("POST", "/admin/v1/breakers/" + encodeURIComponent(node) + "/" + encodeURIComponent(model) + "/" + action);
      return action + " " + node + "/" + model + ": done";
    });
  });
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", setup);
