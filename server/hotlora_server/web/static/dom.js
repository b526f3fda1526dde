// Building the page from code: elements with text set as text (never parsed as HTML), and the error bar.

// `h("button", { class: "x", onclick: f }, "text", child)`: an element; strings become text nodes.
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name in element && name !== "list") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

// Shows an error as the API worded it (an ApiError's message is OpenAI's `error.message`).
export function showError(error) {
  if (error && error.name === "AbortError") return;
  const bar = $("#errors");
  const message = error instanceof Error ? error.message : String(error);
  const item = h("div", { class: "error", role: "alert" }, h("span", {}, message), h("button", { class: "close", title: "dismiss", onclick: () => item.remove() }, "×"));
  bar.append(item);
}

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function formatTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}
