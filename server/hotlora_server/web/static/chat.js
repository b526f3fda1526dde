// The chat playground: a conversation with the base, an adapter or a blend, streamed and rendered.

import { h, showError } from "./dom.js";
import { ModelPicker } from "./picker.js";
import { samplingFields, streamInto } from "./stream.js";

export class ChatTab {
  constructor(root) {
    this.history = [];
    this.controller = null;
    this.picker = new ModelPicker();
    this.sampling = samplingFields();
    this.system = h("textarea", { class: "system", rows: 2, placeholder: "System prompt (optional)" });
    this.log = h("div", { class: "messages", "aria-live": "polite" });
    this.input = h("textarea", {
      class: "prompt",
      rows: 3,
      placeholder: "Message (Enter sends, Shift+Enter for a new line)",
      onkeydown: (event) => {
        if (event.key === "Enter" && !event.shiftKey) {
          event.preventDefault();
          this.send();
        }
      },
    });
    this.sendButton = h("button", { class: "send primary", onclick: () => this.send() }, "Send");
    this.stopButton = h("button", { class: "stop", disabled: true, onclick: () => this.controller?.abort() }, "Stop");
    root.append(
      h("div", { class: "settings" }, this.picker.element, this.system, this.sampling.element),
      this.log,
      h("div", { class: "composer" }, this.input, h("div", { class: "buttons" }, this.sendButton, this.stopButton, h("button", { class: "clear", onclick: () => this.clear() }, "Clear"))),
    );
  }

  setModels(base, adapters) {
    this.picker.setModels(base, adapters);
  }

  open(model) {
    this.picker.choose(model);
    this.input.focus();
  }

  clear() {
    this.controller?.abort();
    this.history = [];
    this.log.replaceChildren();
  }

  async send() {
    const text = this.input.value.trim();
    if (!text || this.controller) return;
    const model = this.picker.value;
    this.input.value = "";
    this.history.push({ role: "user", content: text });
    this.log.append(h("div", { class: "message user" }, h("div", { class: "role" }, "you"), h("div", { class: "content" }, text)));
    const answer = h("div", { class: "answer" });
    this.log.append(h("div", { class: "message assistant" }, h("div", { class: "role" }, model), answer));
    const system = this.system.value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...this.history];
    this.controller = new AbortController();
    this.sendButton.disabled = true;
    this.stopButton.disabled = false;
    try {
      const reply = await streamInto(answer, { model, messages, ...this.sampling.values() }, this.controller.signal);
      this.history.push({ role: "assistant", content: reply });
    } catch (error) {
      this.history.pop(); // the turn did not happen: the next one is sent without it
      showError(error);
    } finally {
      this.controller = null;
      this.sendButton.disabled = false;
      this.stopButton.disabled = true;
      this.log.scrollTop = this.log.scrollHeight;
    }
  }
}
