// One backend: summary, terminate buttons, timeline (decisions marked apart from
// inputs), connections over time, live logs, spawn config (redacted by the API).

import { getJson, isAbort, post, readText } from "./api.js";
import { duration, el, isoTime, isoTimeMs, keyText, planeStatusOf, stateOf } from "./format.js";
import { loadState } from "./overview.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MAX_LOG_CHARS = 200000;

export class BackendPage {
  constructor({ onError, types }) {
    this.onError = onError;
    this.types = types; // GET /ctrl/event-types
    this.decisions = new Set(types.decisions);
    this.id = null;
    this.controller = null;
    this.seen = new Set();
    this.events = [];
    $("b-soft").addEventListener("click", () => this.terminate("soft"));
    $("b-hard").addEventListener("click", () => this.terminate("hard"));
  }

  async show(id) {
    this.close();
    this.id = id;
    this.controller = new AbortController();
    this.seen = new Set();
    this.events = [];
    $("b-title").textContent = `Backend ${id}`;
    $("b-title").focus();
    $("b-summary").replaceChildren();
    $("b-timeline").querySelector("tbody").replaceChildren();
    $("b-logs").textContent = "";
    $("b-config").textContent = "";
    $("b-action-status").textContent = "";
    try {
      await this.refresh();
      const { events } = await getJson(`/ctrl/b/${encodeURIComponent(id)}/events`, { signal: this.controller.signal });
      if (this.id !== id) return;
      for (const event of events) this.add(event);
      this.chart();
      this.follow(id, this.controller.signal);
    } catch (error) {
      if (!isAbort(error)) this.onError(error);
    }
  }

  close() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.id = null;
  }

  // A feed event: ours if it is in this backend's stream.
  onEvent(event) {
    if (!this.id || event.stream !== this.id) return;
    this.add(event);
    this.chart();
    this.refresh().catch((error) => { if (!isAbort(error)) this.onError(error); });
  }

  async refresh() {
    const id = this.id;
    const state = await loadState(null, [id]);
    if (this.id !== id) return;
    const b = state.backends[0];
    if (!b) throw new Error(`no backend ${id}`);
    this.summary(b);
  }

  summary(b) {
    const state = stateOf(b);
    const fields = [
      ["State", el("span", { class: `state state-${state}`, id: "b-state", text: state })],
      ["Plane status", planeStatusOf(b) || "—"],
      ["Reason", b.reason || b.termination_reason || ""],
      ["Key", keyText(b.key)],
      ["Engine", b.engine || ""],
      ["Connections", String(b.connections ?? "")],
      ["Address", b.address || ""],
      ["Requested", `${isoTime(b.requested_at)} (${duration(Date.now() - b.requested_at)} ago)`],
      ["Idle deadline", b.idle_deadline ? isoTime(b.idle_deadline) : ""],
      ["Exit code", b.exit_code === null || b.exit_code === undefined ? "" : String(b.exit_code)],
      ["Message", b.message || ""],
    ];
    $("b-summary").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
    $("b-config").textContent = JSON.stringify(b.spawn_config, null, 2);
    const over = state === "terminated" || state === "terminating";
    $("b-soft").disabled = over;
    $("b-hard").disabled = state === "terminated";
  }

  add(event) {
    if (this.seen.has(event.seq)) return;
    this.seen.add(event.seq);
    this.events.push(event);
    const decision = this.decisions.has(event.type);
    const data = { ...event.data };
    const at = data.at;
    delete data.at;
    delete data.spawn_config;
    const details = JSON.stringify(data);
    const row = el("tr", { class: decision ? "decision" : "input", dataset: { seq: String(event.seq), type: event.type } },
      el("td", { class: "num", text: String(event.seq) }),
      el("td", { class: "num", text: String(event.version) }),
      el("td", { class: "mono", text: isoTimeMs(at * 1000) }),
      el("td", {}, el("span", { class: `mark ${decision ? "decision" : "input"}`, text: decision ? "decision" : "input" })),
      el("td", { class: "mono", text: event.type }),
      el("td", { class: "mono", text: details.length > 120 ? `${details.slice(0, 117)}...` : details }),
    );
    $("b-timeline").querySelector("tbody").append(row);
  }

  // Open long-lived connections after each event, as a step line.
  chart() {
    const points = [];
    let open = 0;
    let ended = false;
    for (const event of this.events) {
      if (event.type === this.types.connection_opened) open += 1;
      else if (event.type === this.types.connection_closed) open = Math.max(0, open - 1);
      else if (event.type === this.types.terminated) { open = 0; ended = true; }
      points.push([event.data.at * 1000, open]);
    }
    const box = $("b-conns");
    if (!points.length) { box.replaceChildren(); return; }
    const start = points[0][0];
    const end = ended ? points[points.length - 1][0] : Math.max(Date.now(), points[points.length - 1][0]);
    const peak = Math.max(1, ...points.map((p) => p[1]));
    const width = Math.max(300, box.clientWidth - 10);
    const height = 90;
    const left = 28;
    const x = (t) => left + ((t - start) / Math.max(1, end - start)) * (width - left - 6);
    const y = (n) => height - 14 - (n / peak) * (height - 24);
    let path = `${x(points[0][0])},${y(0)}`;
    let last = 0;
    for (const [t, n] of points) { path += ` ${x(t)},${y(last)} ${x(t)},${y(n)}`; last = n; }
    path += ` ${x(end)},${y(last)}`;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `open connections over time; now ${last}, peak ${peak}`);
    const make = (tag, attrs, text) => {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      svg.append(node);
    };
    make("line", { class: "axis", x1: left, y1: y(0), x2: width - 6, y2: y(0) });
    make("text", { x: 2, y: y(peak) + 4 }, String(peak));
    make("text", { x: 2, y: y(0) + 4 }, "0");
    make("text", { x: left, y: height - 2 }, isoTime(start));
    make("text", { x: width - 6, y: height - 2, "text-anchor": "end" }, ended ? isoTime(end) : "now");
    make("polyline", { class: "line", points: path });
    box.replaceChildren(svg);
  }

  async follow(id, signal) {
    const pre = $("b-logs");
    const status = $("b-logs-status");
    status.textContent = "(following)";
    try {
      await readText(`/ctrl/b/${encodeURIComponent(id)}/logs?follow=1`, (text) => {
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        let all = pre.textContent + text;
        if (all.length > MAX_LOG_CHARS) all = all.slice(all.length - MAX_LOG_CHARS);
        pre.textContent = all;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }, signal);
      if (this.id === id) status.textContent = "(ended)";
    } catch (error) {
      if (isAbort(error)) return;
      status.textContent = `(${error.message})`;
    }
  }

  async terminate(kind) {
    const id = this.id;
    const text = kind === "hard"
      ? `Hard terminate ${id}? It is killed at once.`
      : `Soft terminate ${id}? It gets a stop signal, then a grace period, then a kill.`;
    if (!(await confirmDialog(text))) return;
    $("b-action-status").textContent = `${kind} terminate sent…`;
    try {
      await post(`/ctrl/b/${encodeURIComponent(id)}/${kind}-terminate`);
      $("b-action-status").textContent = `${kind} terminate accepted`;
    } catch (error) {
      $("b-action-status").textContent = "";
      this.onError(error);
    }
  }
}

function confirmDialog(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}
