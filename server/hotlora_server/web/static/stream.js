// One streamed answer into one element: markdown re-rendered as the text grows, then a line of usage.

import { streamChat } from "./api.js";
import { h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

// Streams `body` into `target` (an element of class "answer"); resolves to the answer's text. Errors,
// the API's own message included, are written into the answer and thrown.
export async function streamInto(target, body, signal) {
  const content = h("div", { class: "content" });
  const meta = h("div", { class: "meta" }, "…");
  target.replaceChildren(content, meta);
  target.classList.add("streaming");
  let text = "";
  let finish = null;
  let usage = null;
  let scheduled = false;
  const render = () => {
    scheduled = false;
    content.innerHTML = renderMarkdown(text); // escaped by renderMarkdown: model output never runs
  };
  const started = performance.now();
  try {
    for await (const chunk of streamChat(body, signal)) {
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        if (choice.delta && choice.delta.content) text += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(render);
      }
    }
    render();
    const seconds = (performance.now() - started) / 1000;
    const tokens = usage ? `${usage.completion_tokens} tokens, ` : "";
    meta.textContent = `${body.model} · ${tokens}${seconds.toFixed(1)} s · ${finish ?? "stopped"}`;
    target.dataset.done = "true";
    return text;
  } catch (error) {
    render();
    meta.textContent = error.name === "AbortError" ? "stopped" : "";
    if (error.name !== "AbortError") target.append(h("div", { class: "error" }, error.message));
    target.dataset.done = "true";
    throw error;
  } finally {
    target.classList.remove("streaming");
  }
}

// The sampling options the chat and compare forms share.
export function samplingFields() {
  const temperature = h("input", { type: "number", min: "0", max: "2", step: "0.1", value: "0.7", class: "temperature" });
  const maxTokens = h("input", { type: "number", min: "1", max: "8192", step: "1", value: "256", class: "max-tokens" });
  const element = h("div", { class: "row" }, h("label", {}, "Temperature ", temperature), h("label", {}, "Max tokens ", maxTokens));
  return {
    element,
    values: () => ({ temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) }),
  };
}
