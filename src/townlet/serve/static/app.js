// townlet live view: draws the frames the server streams over its websocket (/ws, or /run/<name>/ws for a run of
// a runs root: the page's own path + /ws) and sends the controls back.
// The protocol is in docs/serve.md: a "hello" with the level once, then one self-contained "frame" per tick.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CELL = 64;
const METER_COLORS = {
  energy: "#e8a317", hygiene: "#3d9bd1", satiation: "#e0703a", money: "#4c9a4c",
  mood: "#a55fc4", social: "#d9547f", health: "#cf3f3f", fitness: "#2f8f83",
};
const CAUSE_COLORS = { truncated: "#4c9a4c", energy: "#e8a317", health: "#cf3f3f" };
const CAUSE_LABELS = { truncated: "reached the cap" };
const $ = (id) => document.getElementById(id);

const state = {
  hello: null, frame: null, socket: null, follow: 0, dragging: false,
  norms: new Map(),  // agent -> {episode, values}: the hidden state's norm this episode
};

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  if (parent) parent.appendChild(node);
  return node;
}

function send(cmd, value) {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(value === undefined ? { cmd } : { cmd, value }));
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${location.pathname.replace(/\/+$/, "")}/ws`);
  state.socket = socket;
  socket.onopen = () => setConnection("live", "live");
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") setup(message);
    else if (message.type === "frame") render(message);
    else if (message.type === "error") showNotice(message.message);
  };
  socket.onclose = () => {
    setConnection("closed", "disconnected: retrying");
    setTimeout(connect, 1000);
  };
}

function setConnection(status, text) {
  const node = $("connection");
  node.dataset.state = status;
  node.textContent = text;
}

function showNotice(text) {
  const node = $("notice");
  node.hidden = !text;
  node.textContent = text || "";
}

function mix(hex, amount) {  // the colour blended toward white: 0 = itself, 1 = white
  const n = parseInt(hex.slice(1), 16);
  const channel = (shift) => Math.round(((n >> shift) & 255) * (1 - amount) + 255 * amount);
  return `rgb(${channel(16)}, ${channel(8)}, ${channel(0)})`;
}

// ---------------------------------------------------------------- set-up from the hello
function setup(hello) {
  state.hello = hello;
  state.norms.clear();
  const wanted = Number.parseInt(new URLSearchParams(location.search).get("agent") || "0", 10);
  state.follow = Math.min(Math.max(Number.isNaN(wanted) ? 0 : wanted, 0), hello.agents - 1);
  $("level").textContent = hello.level;
  $("description").textContent = `${hello.description} · ${hello.source}`;
  document.title = `townlet · ${hello.level}`;
  buildGrid(hello);
  buildLegend(hello);
  buildMeters(hello);
  buildActions(hello);
  const agent = $("agent");
  agent.replaceChildren();
  for (let i = 0; i < hello.agents; i++) el("option", { value: i, text: `agent ${i}` }, agent);
  agent.value = state.follow;
  const policy = $("policy");
  policy.replaceChildren();
  for (const name of hello.policies) el("option", { value: name, text: name }, policy);
}

function buildGrid(hello) {
  const g = hello.grid_size;
  const svg = $("grid");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${g * CELL} ${g * CELL}`);
  const cells = el("g", { id: "cells" }, svg, SVG);
  for (let y = 0; y < g; y++) {
    for (let x = 0; x < g; x++) el("rect", { class: "cell", x: x * CELL, y: y * CELL, width: CELL, height: CELL }, cells, SVG);
  }
  const affordances = el("g", { id: "affordances" }, svg, SVG);
  hello.affordances.forEach((a, i) => {
    const color = METER_COLORS[a.meter] || "#8a8f98";
    const tile = el("g", { class: "aff", "data-index": i, "data-name": a.name }, affordances, SVG);
    el("title", { text: affordanceTitle(a) }, tile, SVG);
    el("rect", { x: 3, y: 3, width: CELL - 6, height: CELL - 6, rx: 7, fill: mix(color, 0.72), stroke: color }, tile, SVG);
    el("text", { class: "abbrev", x: CELL / 2, y: 32, "text-anchor": "middle", text: a.abbrev }, tile, SVG);
    el("text", { class: "name", x: CELL / 2, y: 50, "text-anchor": "middle", text: a.name.slice(0, 11) }, tile, SVG);
  });
  const fog = el("g", { id: "fog" }, svg, SVG);
  for (let y = 0; y < g; y++) {
    for (let x = 0; x < g; x++) {
      el("rect", { class: "fog", x: x * CELL, y: y * CELL, width: CELL, height: CELL, "data-x": x, "data-y": y }, fog, SVG);
    }
  }
  fog.style.display = hello.view === "partial" ? "" : "none";
  const agents = el("g", { id: "agents" }, svg, SVG);
  for (let i = 0; i < hello.agents; i++) {
    el("circle", { class: "agent", r: CELL * 0.17, "data-agent": i, cx: -CELL, cy: -CELL }, agents, SVG);
  }
}

function affordanceTitle(a) {
  const effects = Object.entries(a.effects).map(([m, v]) => `${m} ${v > 0 ? "+" : ""}${v}`).join(", ");
  const hours = a.hours ? `, open ${a.hours[0]}–${a.hours[1]}h` : "";
  return `${a.name}: $${a.cost}${hours}; ${effects}`;
}

function buildLegend(hello) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const a of hello.affordances) {
    const item = el("li", { title: affordanceTitle(a) }, legend);
    el("span", { class: "swatch", style: `background:${METER_COLORS[a.meter] || "#8a8f98"}` }, item);
    el("b", { text: a.abbrev }, item);
    item.append(` ${a.name}${a.hours ? ` ${a.hours[0]}–${a.hours[1]}h` : ""}`);
  }
  if (hello.view === "partial") el("li", { text: `shaded: outside the agent's ${2 * hello.vision_range + 1}×${2 * hello.vision_range + 1} view` }, legend);
  if (hello.layout === "random") el("li", { text: "the town is re-drawn every episode" }, legend);
}

function buildMeters(hello) {
  const box = $("meters");
  box.replaceChildren();
  for (const m of hello.meters) {
    const row = el("div", { class: "meter", "data-meter": m.name }, box);
    el("span", { class: "name", text: m.name + (m.terminal ? " †" : "") }, row);
    const track = el("div", { class: "track" }, row);
    el("div", { class: "fill", style: `background:${METER_COLORS[m.name]}; width:0%` }, track);
    const byValue = new Map();
    for (const t of m.thresholds) byValue.set(t.value, [...(byValue.get(t.value) || []), t.target]);
    for (const [value, targets] of byValue) {
      el("div", { class: "threshold", style: `left:${value * 100}%`, title: `below ${value} it drains ${targets.join(", ")}` }, track);
    }
    el("span", { class: "value", text: "–" }, row);
  }
}

function buildActions(hello) {
  const box = $("actions");
  box.replaceChildren();
  for (const name of hello.actions) {
    const row = el("div", { class: "action", "data-action": name }, box);
    el("span", { class: "name", text: name }, row);
    const track = el("div", { class: "track" }, row);
    el("div", { class: "bar", style: "width:0%" }, track);
    el("span", { class: "value", text: "–" }, row);
    el("span", { class: "tag" }, row);
  }
}

// ---------------------------------------------------------------- one frame
function render(frame) {
  const hello = state.hello;
  if (!hello) return;
  state.frame = frame;
  const follow = Math.min(state.follow, frame.agents.length - 1);
  const agent = frame.agents[follow];
  $("tick").textContent = frame.tick;
  $("followed").textContent = follow;
  $("pause").textContent = frame.paused ? "Resume" : "Pause";
  $("pause").dataset.paused = frame.paused;
  if (!state.dragging) {
    $("speed").value = frame.speed;
    $("speed-value").textContent = frame.speed;
  }
  $("speed-capped").hidden = !frame.capped;
  $("policy").value = frame.policy;
  $("driver").textContent = frame.driver === frame.policy ? frame.driver : `${frame.driver} (no checkpoint yet)`;
  $("network").textContent = frame.network || (hello.policies.includes("network") ? "waiting for the first checkpoint" : "none (a level)");
  showNotice(frame.notice);
  drawGrid(hello, frame, follow);
  drawStatus(hello, agent);
  drawMeters(hello, agent);
  drawActions(hello, frame, agent);
  drawMemory(follow, agent);
  drawEpisodes(hello, frame, follow);
}

function drawGrid(hello, frame, follow) {
  const agent = frame.agents[follow];
  const svg = $("grid");
  svg.dataset.agentX = agent.x;
  svg.dataset.agentY = agent.y;
  svg.dataset.follow = follow;
  svg.dataset.tick = frame.tick;
  document.querySelectorAll("#affordances .aff").forEach((tile) => {
    const i = Number(tile.dataset.index);
    const [x, y] = agent.layout[i];
    tile.setAttribute("transform", `translate(${x * CELL} ${y * CELL})`);
    tile.dataset.x = x;
    tile.dataset.y = y;
    tile.classList.toggle("closed", agent.open !== null && !agent.open[i]);
    tile.classList.toggle("here", agent.here === i);
  });
  if (hello.view === "partial") {
    const r = hello.vision_range;
    document.querySelectorAll("#fog .fog").forEach((cell) => {
      const far = Math.max(Math.abs(cell.dataset.x - agent.x), Math.abs(cell.dataset.y - agent.y)) > r;
      cell.style.display = far ? "" : "none";
    });
  }
  const layout = JSON.stringify(agent.layout);
  document.querySelectorAll("#agents .agent").forEach((dot) => {
    const i = Number(dot.dataset.agent);
    const other = frame.agents[i];
    const visible = i === follow || JSON.stringify(other.layout) === layout;  // only agents in the same town
    // on an affordance, in the tile's corner so its label stays readable; others a little apart
    const at = other.here >= 0 ? 0.8 : 0.5;
    const offset = i === follow ? 0 : ((i % 4) - 1.5) * 5;
    dot.setAttribute("cx", visible ? (other.x + at) * CELL + offset : -CELL);
    dot.setAttribute("cy", visible ? (other.y + at) * CELL + offset : -CELL);
    dot.setAttribute("r", CELL * (i === follow ? 0.17 : 0.11));
    dot.classList.toggle("followed", i === follow);
    dot.classList.toggle("dead", other.done && other.cause !== "truncated");
  });
  $("agents").appendChild(document.querySelector(`#agents .agent[data-agent="${follow}"]`));  // drawn on top
}

function drawStatus(hello, agent) {
  $("survival").textContent = `${agent.steps} / ${hello.max_steps}`;
  $("return").textContent = agent.return.toFixed(1);
  const here = agent.here >= 0 ? hello.affordances[agent.here].name : "–";
  $("here").textContent = agent.progress > 0 ? `${here} (${Math.round(agent.progress * 100)}%)` : here;
  $("clock").textContent = agent.hour === null ? "–" : `${String(agent.hour).padStart(2, "0")}:00 of ${hello.day_length}`;
  const end = $("episode-end");
  end.hidden = !agent.done;
  if (agent.done) {
    const survived = agent.cause === "truncated";
    end.classList.toggle("survived", survived);
    end.textContent = survived ? `survived to the cap: ${agent.steps} ticks`
      : `died after ${agent.steps} ticks: ${agent.cause} ran out`;
  }
}

function drawMeters(hello, agent) {
  hello.meters.forEach((m, i) => {
    const row = document.querySelector(`#meters .meter[data-meter="${m.name}"]`);
    const value = agent.meters[i];
    row.dataset.value = value;
    row.querySelector(".fill").style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
    row.querySelector(".value").textContent = m.name === "money" ? `$${(value * hello.money_scale).toFixed(2)}` : value.toFixed(2);
    const lowest = m.thresholds.length ? Math.min(...m.thresholds.map((t) => t.value)) : (m.terminal ? 0.2 : -1);
    row.classList.toggle("critical", value < lowest);
  });
}

function drawActions(hello, frame, agent) {
  const kind = frame.values_kind;
  $("values-kind").textContent = kind === "q" ? "the network's action values (Q)"
    : kind === "probability" ? "the network's action probabilities" : "no network: the scripted policy's choice";
  const values = agent.values;
  const allowed = agent.mask || hello.actions.map(() => true);
  let low = 0, high = 1;
  if (values && kind === "q") {
    const shown = values.filter((v, i) => allowed[i] && v !== null);
    if (shown.length) {
      low = Math.min(...shown);
      high = Math.max(...shown);
      if (high - low < 1e-9) low = high - 1;
    }
  }
  hello.actions.forEach((name, i) => {
    const row = document.querySelector(`#actions .action[data-action="${name}"]`);
    const masked = !allowed[i];
    row.classList.toggle("masked", masked);
    row.classList.toggle("chosen", agent.action === name);
    const value = values ? values[i] : null;  // null: none shown, or not a number
    let width = 0;
    if (value !== null) width = masked ? 100 : Math.max(0.02, (value - low) / (high - low)) * 100;
    row.querySelector(".bar").style.width = `${width}%`;
    row.querySelector(".value").textContent = value === null ? "" : kind === "q" ? value.toFixed(2) : `${(value * 100).toFixed(1)}%`;
    const tags = [];
    if (masked) tags.push("masked");
    if (agent.action === name) tags.push(agent.invalid ? "taken: no-op" : "taken");
    if (agent.net_action === name && frame.driver !== "network") tags.push("network's pick");
    row.querySelector(".tag").textContent = tags.join(", ");
  });
}

function decodeMemory(text) {
  const bytes = atob(text);
  const values = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes.charCodeAt(i);
    values[i] = (b > 127 ? b - 256 : b) / 127;
  }
  return values;
}

function drawMemory(follow, agent) {
  const box = $("memory");
  box.hidden = !agent.memory;
  if (!agent.memory) return;
  let history = state.norms.get(follow);
  if (!history || history.episode !== agent.episode) {
    history = { episode: agent.episode, values: [] };
    state.norms.set(follow, history);
  }
  history.values.push(agent.memory.norm);
  if (history.values.length > 300) history.values.shift();
  $("memory-value").textContent = agent.memory.norm.toFixed(2);
  const line = $("memory-norm");
  const ctx = line.getContext("2d");
  ctx.clearRect(0, 0, line.width, line.height);
  const top = Math.max(1, ...history.values);
  ctx.strokeStyle = "#e06c1f";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  history.values.forEach((v, i) => {
    const x = (i / 299) * line.width;
    const y = line.height - 2 - (v / top) * (line.height - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  const cells = decodeMemory(agent.memory.h);
  const canvas = $("memory-cells");
  const c2 = canvas.getContext("2d");
  const columns = Math.ceil(Math.sqrt(cells.length * (canvas.width / canvas.height)));
  const rows = Math.ceil(cells.length / columns);
  const w = canvas.width / columns, h = canvas.height / rows;
  c2.clearRect(0, 0, canvas.width, canvas.height);
  cells.forEach((v, i) => {  // blue below zero, red above, white at zero
    const a = Math.min(1, Math.abs(v));
    c2.fillStyle = v >= 0 ? `rgba(207, 63, 63, ${a})` : `rgba(61, 118, 209, ${a})`;
    c2.fillRect((i % columns) * w, Math.floor(i / columns) * h, Math.ceil(w), Math.ceil(h));
  });
}

function drawEpisodes(hello, frame, follow) {
  const svg = $("survival-chart");
  const recent = frame.episodes.recent;
  const width = 800, height = 120, slots = 40;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  el("line", { x1: 0, x2: width, y1: 1, y2: 1, stroke: "#dcdad3", "stroke-dasharray": "4 4" }, svg, SVG);
  const bar = width / slots;
  recent.forEach(([agent, length, cause, policy], i) => {
    const h = Math.max(2, (length / hello.max_steps) * (height - 4));
    const rect = el("rect", {
      x: i * bar + 1, y: height - h, width: bar - 2, height: h, fill: CAUSE_COLORS[cause] || "#8a8f98",
      opacity: agent === follow ? 1 : 0.55, "data-length": length,
    }, svg, SVG);
    el("title", { text: `agent ${agent}, ${policy}: ${length} ticks, ${CAUSE_LABELS[cause] || `${cause} ran out`}` }, rect, SVG);
  });
  const causes = $("causes");
  causes.replaceChildren();
  const counts = Object.entries(frame.episodes.causes);
  if (!counts.length) {
    causes.textContent = "no episode has ended yet";
    return;
  }
  for (const [cause, count] of counts) {
    const item = el("span", {}, causes);
    el("span", { class: "swatch", style: `background:${CAUSE_COLORS[cause] || "#8a8f98"}` }, item);
    item.append(`${CAUSE_LABELS[cause] || `died: ${cause}`} ${count}`);
  }
  const mean = recent.length ? recent.reduce((s, e) => s + e[1], 0) / recent.length : null;
  el("span", { text: `${frame.episodes.finished} episodes ended` + (mean === null ? "" : `; mean of these ${recent.length}: ${mean.toFixed(1)} ticks`) }, causes);
}

// ---------------------------------------------------------------- controls
function follow(agent) {
  state.follow = agent;
  $("agent").value = agent;
  const url = new URL(location.href);
  url.searchParams.set("agent", agent);
  history.replaceState(null, "", url);
  if (state.frame) render(state.frame);
}

$("pause").addEventListener("click", () => send(state.frame && state.frame.paused ? "resume" : "pause"));
$("step").addEventListener("click", () => send("step"));
$("next-episode").addEventListener("click", () => send("next_episode"));
$("agent").addEventListener("change", (event) => follow(Number(event.target.value)));
$("policy").addEventListener("change", (event) => send("policy", event.target.value));
$("speed").addEventListener("input", (event) => {
  state.dragging = true;
  $("speed-value").textContent = event.target.value;
});
$("speed").addEventListener("change", (event) => {
  state.dragging = false;
  send("speed", Number(event.target.value));
});
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (event.key === " ") { event.preventDefault(); $("pause").click(); }
  else if (event.key === "s") send("step");
  else if (event.key === "n") send("next_episode");
});

$("all-runs").hidden = !location.pathname.startsWith("/run/");  // a run of a runs root: back to the list
connect();
