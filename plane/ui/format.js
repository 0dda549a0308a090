// Small pure helpers: the two wire shapes of a backend, and text for times.

// Our state: `state` where the API sends both vocabularies, else `status` (ours then).
export const stateOf = (b) => (b.state !== undefined && b.state !== null ? b.state : b.status) || "";

// Plane's status: `status` when the API also sends `state`; unknown otherwise.
export const planeStatusOf = (b) => (b.state !== undefined ? b.status || "" : "");

export function keyText(key) {
  if (!key) return "";
  const name = key.namespace ? `${key.namespace}/${key.name}` : key.name;
  return key.tag ? `${name} (${key.tag})` : name;
}

export function isoTime(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function isoTimeMs(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toISOString().replace("T", " ");
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  const sign = ms < 0 ? "-" : "";
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d) return `${sign}${d}d ${h}h`;
  if (h) return `${sign}${h}:${two(m)}:${two(s)}`;
  return `${sign}${m}:${two(s)}`;
}

// el("td", {class: "num", text: "3"}, child...) without innerHTML.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
