// The dashboard's entry: asks for the key when the API wants one, loads the state,
// follows the event feed (no polling), routes between the table and one backend.

import { auth, getJson, isAbort, publicJson, readEvents } from "./api.js";
import { BackendPage } from "./backend.js";
import { sleep } from "./format.js";
import { Overview, loadPanel, loadState } from "./overview.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 150;

let overview = null;
let backendPage = null;
let feed = null;
let settings = { auth: false, panels: {} };
const dirty = new Set();
let refreshTimer = null;

function showError(error) {
  if (error && error.status === 401) { askForKey("That key was refused."); return; }
  const box = $("error");
  box.textContent = error ? `${error.kind ? `${error.kind}: ` : ""}${error.message}` : "";
  box.hidden = !error;
}

function setFeed(text, live) {
  $("feed-status").textContent = text;
  $("feed-status").classList.toggle("live", !!live);
}

function stop() {
  if (feed) feed.abort();
  feed = null;
  if (backendPage) backendPage.close();
}

function askForKey(message) {
  stop();
  auth.key = null;
  for (const id of ["overview", "backend"]) $(id).hidden = true;
  $("forget-key").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setFeed("no key", false);
  $("key-input").focus();
}

// Coalesces the backends the feed touched into one /ctrl/state request.
function touch(id) {
  dirty.add(id);
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const ids = [...dirty];
    dirty.clear();
    try {
      for (let i = 0; i < ids.length; i += 200) {
        const state = await loadState(null, ids.slice(i, i + 200));
        overview.update(state.backends);
      }
    } catch (error) { showError(error); }
  }, REFRESH_MS);
}

async function follow(after, signal) {
  let seq = after;
  let delay = 500;
  while (!signal.aborted) {
    try {
      setFeed("live", true);
      await readEvents(`/ctrl/events?after=${seq}`, (event) => {
        seq = Math.max(seq, event.seq);
        overview.setLastSeq(event.seq);
        if (event.stream === "_plane") refreshPanels();
        else touch(event.stream);
        backendPage.onEvent(event);
      }, signal);
    } catch (error) {
      if (isAbort(error)) return;
      if (error.status === 401) { askForKey("That key was refused."); return; }
    }
    setFeed("reconnecting…", false);
    await sleep(delay);
    delay = Math.min(delay * 2, 10000);
  }
}

function refreshPanels() {
  for (const [name, present] of Object.entries(settings.panels || {})) {
    if (present) loadPanel(name).catch(() => { $(`${name}-panel`).hidden = true; });
  }
}

function route() {
  if ($("login").hidden === false) return;
  const match = location.hash.match(/^#\/b\/(.+)$/);
  $("overview").hidden = !!match;
  $("backend").hidden = !match;
  if (match) {
    backendPage.show(decodeURIComponent(match[1]));
  } else {
    backendPage.close();
    overview.render();
  }
}

async function start() {
  $("login").hidden = true;
  $("forget-key").hidden = !settings.auth;
  showError(null);
  try {
    const types = await getJson("/ctrl/event-types");
    backendPage = backendPage || new BackendPage({ onError: showError, types });
    overview = overview || new Overview({ onError: showError });
    const state = await loadState(null);
    overview.setLive(state);
    feed = new AbortController();
    follow(state.last_seq, feed.signal);
    refreshPanels();
    route();
  } catch (error) {
    showError(error);
  }
}

function keys(event) {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName);
  if (typing || event.ctrlKey || event.metaKey || event.altKey || !$("login").hidden) return;
  if (event.key === "/") { event.preventDefault(); location.hash = "#/"; $("filter-key").focus(); }
  else if (event.key === "t") { event.preventDefault(); location.hash = "#/"; $("travel-slider").focus(); }
  else if (event.key === "[" && !$("page-prev").disabled) $("page-prev").click();
  else if (event.key === "]" && !$("page-next").disabled) $("page-next").click();
  else if (event.key === "Escape" && !$("backend").hidden && !$("confirm").open) location.hash = "#/";
}

async function main() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    auth.key = $("key-input").value.trim();
    $("key-input").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => askForKey(""));
  window.addEventListener("hashchange", () => { if (overview) route(); });
  document.addEventListener("keydown", keys);
  try {
    settings = await publicJson("/ui/settings.json");
  } catch (error) {
    showError(error);
    return;
  }
  if (settings.auth && !auth.key) askForKey("");
  else start();
}

main();
