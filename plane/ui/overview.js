// The backends table: live rows (kept current by the event feed) or the state at a
// past point of the log (time travel); filters, counts by state, pages.

import { getJson } from "./api.js";
import { duration, el, isoTime, keyText, planeStatusOf, stateOf } from "./format.js";

const PAGE = 50;
const STATES = ["requested", "starting", "ready", "idle", "terminating", "terminated"];
const $ = (id) => document.getElementById(id);

// Every page of /ctrl/state at `at` (null: now), optionally for some backends only.
export async function loadState(at, ids) {
  const rows = [];
  let cursor = null;
  let first = null;
  for (;;) {
    const q = new URLSearchParams({ limit: "1000" });
    if (at !== null && at !== undefined) q.set("at", at);
    if (cursor) q.set("cursor", cursor);
    for (const id of ids || []) q.append("backend", id);
    const page = await getJson(`/ctrl/state?${q}`);
    first = first || page;
    rows.push(...page.backends);
    if (!page.next) break;
    cursor = page.next;
  }
  return { ...first, backends: rows };
}

export class Overview {
  constructor({ onError }) {
    this.onError = onError;
    this.live = new Map();
    this.past = null; // {rows: Map, seq, time, at}
    this.page = 0;
    this.pending = null;
    this.lastSeq = 0;
    this.travelTimer = null;
    this.travelToken = 0;
    this.tbody = $("backends").querySelector("tbody");
    this.trs = new Map(); // backend id -> its <tr>, reused across renders
    $("filter-state").addEventListener("change", () => { this.page = 0; this.render(); });
    $("filter-key").addEventListener("input", () => { this.page = 0; this.render(); });
    $("page-prev").addEventListener("click", () => this.turn(-1));
    $("page-next").addEventListener("click", () => this.turn(1));
    const slider = $("travel-slider");
    slider.addEventListener("input", () => {
      clearTimeout(this.travelTimer);
      this.travelTimer = setTimeout(() => this.travel(slider.value), 200);
    });
    $("travel-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const at = $("travel-at").value.trim();
      if (at) this.travel(at);
    });
    $("travel-now").addEventListener("click", () => this.backToNow());
    setInterval(() => this.tick(), 1000);
  }

  // ------------------------------------------------------------------ data

  setLive(state) {
    this.live = new Map(state.backends.map((b) => [b.backend_id, b]));
    this.setLastSeq(state.last_seq);
    this.render();
  }

  update(rows) {
    for (const b of rows) {
      const old = this.live.get(b.backend_id);
      if (!old || (b.version || 0) >= (old.version || 0)) this.live.set(b.backend_id, b);
    }
    if (!this.past) this.render();
  }

  setLastSeq(seq) {
    if (seq <= this.lastSeq) return;
    this.lastSeq = seq;
    const slider = $("travel-slider");
    const following = !this.past;
    slider.max = String(seq);
    if (following) slider.value = String(seq);
  }

  async travel(at) {
    const token = ++this.travelToken;
    $("travel-status").textContent = `loading the state at ${at}…`;
    try {
      const state = await loadState(at);
      if (token !== this.travelToken) return;
      this.past = {
        rows: new Map(state.backends.map((b) => [b.backend_id, b])),
        seq: state.seq, time: state.time, at,
      };
      $("travel-slider").value = String(state.seq);
      $("travel").classList.add("past");
      $("travel-now").disabled = false;
      $("travel-status").textContent =
        `The past: the state after seq ${state.seq}` +
        (state.time ? ` (${isoTime(state.time)})` : "") + ` of ${state.last_seq}; not live.`;
      this.page = 0;
      this.render();
    } catch (error) {
      if (token === this.travelToken) {
        $("travel-status").textContent = `cannot travel to ${at}: ${error.message}`;
        this.onError(error);
      }
    }
  }

  backToNow() {
    this.travelToken++;
    this.past = null;
    $("travel").classList.remove("past");
    $("travel-now").disabled = true;
    $("travel-status").textContent = "live";
    $("travel-slider").value = String(this.lastSeq);
    $("travel-at").value = "";
    this.render();
  }

  // --------------------------------------------------------------- display

  rows() { return this.past ? this.past.rows : this.live; }

  // The moment rows are shown at: now, or the travelled-to time.
  moment() { return this.past ? this.past.time || 0 : Date.now(); }

  filtered() {
    const wanted = $("filter-state").value;
    const key = $("filter-key").value.trim().toLowerCase();
    const out = [];
    for (const b of this.rows().values()) {
      if (wanted && stateOf(b) !== wanted) continue;
      if (key && !keyText(b.key).toLowerCase().includes(key)) continue;
      out.push(b);
    }
    out.sort((a, b) => (b.requested_at - a.requested_at) || (a.backend_id < b.backend_id ? -1 : 1));
    return out;
  }

  turn(step) {
    this.page += step;
    this.render();
  }

  render() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  }

  draw() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const b of this.rows().values()) counts[stateOf(b)] = (counts[stateOf(b)] || 0) + 1;
    const list = $("counts");
    list.replaceChildren(...Object.entries(counts).map(([s, n]) =>
      el("li", { dataset: { state: s } }, el("span", { class: `state state-${s}`, text: s }), el("b", { text: String(n) }))));

    const rows = this.filtered();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    this.page = Math.min(Math.max(this.page, 0), pages - 1);
    const shown = rows.slice(this.page * PAGE, (this.page + 1) * PAGE);
    const now = this.moment();
    // Rows are kept by backend id and patched in place, so a live update never
    // takes the keyboard focus away from a row's link.
    const wanted = shown.map((b) => this.patch(b, now));
    const body = this.tbody;
    wanted.forEach((tr, i) => {
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    while (body.children.length > wanted.length) body.lastElementChild.remove();
    $("empty").hidden = rows.length > 0;
    $("shown").textContent = `${rows.length} of ${this.rows().size}`;
    $("page-info").textContent = `page ${this.page + 1} of ${pages}`;
    $("page-prev").disabled = this.page === 0;
    $("page-next").disabled = this.page >= pages - 1;
  }

  patch(b, now) {
    let tr = this.trs.get(b.backend_id);
    if (!tr) {
      const link = el("a", { href: `#/b/${encodeURIComponent(b.backend_id)}`, class: "mono", text: b.backend_id });
      tr = el("tr", { dataset: { id: b.backend_id } },
        el("td", {}, link), el("td", { class: "key" }), el("td", { class: "st" }, el("span")),
        el("td", { class: "plane" }), el("td", { class: "engine" }), el("td", { class: "num conns" }),
        el("td", { class: "num idle" }), el("td", { class: "num age" }));
      this.trs.set(b.backend_id, tr);
    }
    const state = stateOf(b);
    const idle = b.idle_deadline && (state === "ready" || state === "idle") ? b.idle_deadline : null;
    const cells = tr.children;
    tr.dataset.state = state;
    cells[1].textContent = keyText(b.key);
    cells[2].firstChild.className = `state state-${state}`;
    cells[2].firstChild.textContent = state;
    cells[3].textContent = planeStatusOf(b) || "—";
    cells[4].textContent = b.engine || "";
    cells[5].textContent = String(b.connections ?? "");
    if (idle) cells[6].dataset.deadline = String(idle);
    else delete cells[6].dataset.deadline;
    cells[6].textContent = idle ? duration(Math.max(0, idle - now)) : "";
    cells[7].dataset.since = String(b.requested_at);
    cells[7].textContent = duration(now - b.requested_at);
    return tr;
  }

  // Counts the idle timers down and the ages up (in the past, time stands still).
  tick() {
    if (this.past || document.hidden || $("overview").hidden) return;
    const now = Date.now();
    for (const cell of this.tbody.querySelectorAll("td.idle[data-deadline]")) {
      cell.textContent = duration(Math.max(0, Number(cell.dataset.deadline) - now));
    }
    for (const cell of this.tbody.querySelectorAll("td.age")) {
      cell.textContent = duration(now - Number(cell.dataset.since));
    }
  }
}

// Optional panels (engines, proxies): a plain table of whatever the endpoint lists.
export async function loadPanel(name) {
  const data = await getJson(`/ctrl/${name}`);
  const items = Array.isArray(data) ? data : (data[name] || []);
  const columns = [...new Set(items.flatMap((item) => Object.keys(item)))];
  // times (ms since the epoch) in fields named *_at or last_* are shown as ISO times
  const isTime = (c) => c.endsWith("_at") || c.startsWith("last_");
  const show = (c, v) => (v === null || v === undefined ? ""
    : typeof v === "number" && isTime(c) ? isoTime(v)
      : typeof v === "object" ? JSON.stringify(v) : String(v));
  $(name).replaceChildren(
    el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { scope: "col", text: c.replaceAll("_", " ") })))),
    el("tbody", {}, ...items.map((item) => el("tr", {}, ...columns.map((c) => el("td", { text: show(c, item[c]) }))))),
  );
  if (items.length === 0) {
    $(name).replaceChildren(el("tbody", {}, el("tr", {}, el("td", { text: `no ${name} reported` }))));
  }
  $(`${name}-panel`).hidden = false;
}
