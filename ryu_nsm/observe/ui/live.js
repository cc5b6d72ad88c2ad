// The live page: draws /ui/events' scenes as SVG and keeps the flow table. No library, no build.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const VIEW = { width: 1000, height: 470, margin: 60 };
const MAX_ROWS = 300;
let stream = null;

function el(tag, attrs, text, ns) {
  const node = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
const svg = (tag, attrs, text) => el(tag, attrs, text, true);

function titled(node, text) {
  node.appendChild(svg("title", {}, text));
  return node;
}

function bits(value) {
  for (const [unit, scale] of [["G", 1e9], ["M", 1e6], ["k", 1e3]]) {
    if (value >= scale) return (value / scale).toFixed(1).replace(/\.0$/, "") + unit;
  }
  return Math.round(value) + "";
}

const ms = (seconds) => (seconds * 1e3).toFixed(1) + " ms";

// Scene coordinates ([0, 1], ends a little outside) to the SVG's, keeping the aspect.
function projector(points) {
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const minX = Math.min(...xs), minY = Math.min(...ys);
  const spanX = Math.max(Math.max(...xs) - minX, 1e-6), spanY = Math.max(Math.max(...ys) - minY, 1e-6);
  // Stretched to the wide view, but never more than twice as wide as it is tall.
  const sy = (VIEW.height - 2 * VIEW.margin) / spanY;
  const sx = Math.min((VIEW.width - 2 * VIEW.margin) / spanX, 2 * sy);
  const ox = (VIEW.width - spanX * sx) / 2, oy = (VIEW.height - spanY * sy) / 2;
  return (p) => ({ x: ox + (p.x - minX) * sx, y: oy + (p.y - minY) * sy });
}

function drawMap(scene) {
  const map = document.getElementById("map");
  for (const node of [...map.children]) if (node.tagName !== "desc") node.remove();
  const at = {};
  const points = [...scene.switches, ...scene.ends];
  if (!points.length) return;
  const project = projector(points);
  for (const s of scene.switches) at[s.name] = project(s);
  for (const e of scene.ends) at[e.id] = project(e);

  const links = svg("g", { id: "links" }), wires = svg("g", { id: "wires" }), nodes = svg("g", { id: "nodes" });
  map.append(links, wires, nodes);
  for (const e of scene.ends) {
    links.appendChild(svg("line", { class: "attach", x1: at[e.id].x, y1: at[e.id].y,
      x2: at[e.switch].x, y2: at[e.switch].y }));
  }
  for (const link of scene.links) drawLink(links, link, at[link.a], at[link.b]);
  scene.wires.forEach((wire, index) => drawWire(wires, wire, at, index + 1));
  for (const s of scene.switches) {
    const g = titled(svg("g", { class: "switch" + (s.connected === false ? " down" : ""), "data-switch": s.name }),
      `${s.name}: ${s.connected === false ? "disconnected" : "connected"}` +
      (s.dropped ? `, ${s.dropped} frames dropped on no wire` : ""));
    g.append(svg("circle", { cx: at[s.name].x, cy: at[s.name].y, r: 24 }),
      svg("text", { x: at[s.name].x, y: at[s.name].y }, s.name));
    if (s.connected === false) g.appendChild(svg("text", { x: at[s.name].x, y: at[s.name].y + 36 }, "disconnected"));
    if (s.dropped) g.appendChild(svg("text", { class: "badge broken", x: at[s.name].x, y: at[s.name].y - 34 },
      `✗ ${s.dropped} dropped`));
    nodes.appendChild(g);
  }
  for (const e of scene.ends) {
    const width = Math.max(64, 8 * e.name.length + 14), p = at[e.id];
    const g = titled(svg("g", { class: "end", "data-end": e.id }), `${e.id} at ${e.switch}`);
    g.append(svg("rect", { x: p.x - width / 2, y: p.y - 13, width: width, height: 26, rx: 4 }),
      svg("text", { x: p.x, y: p.y }, e.name));
    nodes.appendChild(g);
  }
}

function drawLink(group, link, a, b) {
  const g = titled(svg("g", { "data-link": link.name, "data-state": link.state }),
    `link ${link.name}: ${link.label.join(", ")}`);
  g.appendChild(svg("line", { class: "link " + link.state, x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
  // The label: one line a fact, beside the middle of the link.
  const dx = b.x - a.x, dy = b.y - a.y, length = Math.hypot(dx, dy) || 1;
  const side = dy / length > 0 ? 1 : -1;  // to the right of a steep link, below a flat one
  const mx = (a.x + b.x) / 2 + Math.abs(dy / length) * 14 * side + 4, my = (a.y + b.y) / 2 + Math.abs(dx / length) * 16;
  const text = svg("text", { class: "link-label " + link.state, x: mx, y: my, "data-link-label": link.name,
    "text-anchor": Math.abs(dy) > Math.abs(dx) ? "start" : "middle" });
  link.label.forEach((line, i) => text.appendChild(svg("tspan", { x: mx, dy: i ? "1.15em" : 0 }, line)));
  g.appendChild(text);
  group.appendChild(g);
}

function drawWire(group, wire, at, offset) {
  if (wire.nodes.length < 2) return;
  const points = wire.nodes.map((n) => at[n]).filter(Boolean);
  let d = "";
  for (let i = 0; i + 1 < points.length; i++) {
    const a = points[i], b = points[i + 1];
    const length = Math.hypot(b.x - a.x, b.y - a.y) || 1;
    const ox = (-(b.y - a.y) / length) * offset * 5, oy = ((b.x - a.x) / length) * offset * 5;
    d += `M${a.x + ox},${a.y + oy}L${b.x + ox},${b.y + oy}`;
  }
  const g = titled(svg("g", { "data-connection": wire.id, "data-sla": wire.sla }),
    `${wire.id} (${wire.service}), hop ${wire.hop + 1}: ${wire.state}, service level ${wire.sla}`);
  g.appendChild(svg("path", { class: "wire", d: d, stroke: wire.colour }));
  if (wire.sla === "met" || wire.sla === "broken") {
    const mid = Math.floor((points.length - 1) / 2), a = points[mid], b = points[mid + 1];
    // A third of the way along, clear of the link's label at the middle.
    g.appendChild(svg("text", { class: "badge " + wire.sla, x: a.x + (b.x - a.x) / 3 + 10,
      y: a.y + (b.y - a.y) / 3 - 8 + (offset - 1) * 14 }, `hop ${wire.hop + 1} ${wire.sla === "met" ? "✓ met" : "✗ BROKEN"}`));
  }
  group.appendChild(g);
}

function hopLines(wire) {
  const lines = [`${wire.client} → ${wire.endpoint || "✗"} (${wire.service}): ${wire.state}`];
  const path = wire.nodes.slice(1, -1);
  if (path.length) lines.push("path " + path.join("–"));
  if (wire.sla !== "none") {
    let sla = `service level ${wire.sla === "broken" ? "BROKEN" : wire.sla}`;
    if (wire.measured_latency !== null) sla += `, measured ${ms(wire.measured_latency)}`;
    if (wire.loss) sla += `, ${(wire.loss * 100).toFixed(0)}% loss`;
    if (wire.level) sla += ` (${wire.level})`;
    lines.push(sla);
  }
  const t = wire.throughput || {};
  if (Object.keys(t).length) {
    lines.push(`throughput → ${bits(t.from_client || 0)}bit/s, ← ${bits(t.from_endpoint || 0)}bit/s`);
  }
  lines.push(`dropped (sampled): ${wire.dropped}`);
  return lines;
}

function drawChains(scene) {
  const wires = Object.fromEntries(scene.wires.map((w) => [w.id, w]));
  const box = document.getElementById("chains");
  box.replaceChildren();
  scene.chains.forEach((chain, index) => {
    const div = el("div", { class: "chain", "data-chain": index });
    const head = el("h3");
    head.append(el("span", { class: "swatch", style: `background:${chain.colour}`, "aria-hidden": "true" }),
      el("span", {}, `chain ${index + 1}: ${chain.names.join(" → ")}`));
    div.appendChild(head);
    for (const id of chain.wires) {
      const wire = wires[id];
      const hop = el("div", { class: "hop", style: `border-left-color:${wire.colour}`, "data-connection": id });
      hopLines(wire).forEach((line, i) => {
        const cls = line.startsWith("service level") ? "sla " + wire.sla : null;
        hop.appendChild(el("div", { class: cls }, (i === 0 ? `hop ${wire.hop + 1}: ` : "") + line));
      });
      div.appendChild(hop);
    }
    box.appendChild(div);
  });
  const failed = document.getElementById("failed");
  failed.replaceChildren(...scene.failed.map((f) => el("p", {}, `✗ failed ${f.id}: ${f.reason}`)));
}

function addFlows(data) {
  const body = document.querySelector("#flows tbody");
  if (data.lost) {
    body.prepend(el("tr", { class: "lost" }, null));
    body.firstChild.appendChild(el("td", { colspan: 6 }, `${data.lost} flow events lost (the page fell behind)`));
  }
  for (const row of data.rows) {
    const tr = el("tr", { class: row.verdict.startsWith("DROPPED") ? "dropped" : "forwarded",
      "data-connection": row.connection });
    for (const key of ["time", "node", "source", "destination", "verdict", "summary"]) {
      tr.appendChild(el("td", { class: key }, row[key]));
    }
    body.prepend(tr);
  }
  while (body.children.length > MAX_ROWS) body.lastChild.remove();
}

function connect() {
  if (stream) stream.close();
  const form = new FormData(document.getElementById("filters"));
  const query = new URLSearchParams();
  for (const [key, value] of form.entries()) if (value.trim()) query.append(key, value.trim());
  document.querySelector("#flows tbody").replaceChildren();
  document.getElementById("filter-error").textContent = "";
  const state = document.getElementById("stream-state");
  stream = new EventSource("/ui/events?" + query.toString());
  stream.addEventListener("scene", (event) => {
    const scene = JSON.parse(event.data);
    document.getElementById("fabric-name").textContent = "fabric " + scene.fabric;
    drawMap(scene);
    drawChains(scene);
    state.textContent = "live, updated " + new Date().toLocaleTimeString();
    state.className = "";
  });
  stream.addEventListener("flows", (event) => addFlows(JSON.parse(event.data)));
  stream.onerror = () => {
    state.textContent = "connection to the controller lost, retrying…";
    state.className = "down";
    // A refused filter answers 400: EventSource gives up, so say why.
    if (stream.readyState === EventSource.CLOSED) {
      const asked = new AbortController();
      fetch("/ui/events?" + query.toString(), { signal: asked.signal })
        .then((reply) => { if (reply.ok) { asked.abort(); return null; } return reply.text(); })
        .then((text) => { if (text) document.getElementById("filter-error").textContent = text; })
        .catch(() => {});
    }
  };
}

document.getElementById("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
connect();
