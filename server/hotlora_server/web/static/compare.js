// Compare: one prompt to two or three models side by side, streamed in parallel.

import { h, showError } from "./dom.js";
import { ModelPicker } from "./picker.js";
import { samplingFields, streamInto } from "./stream.js";

export class CompareTab {
  constructor(root) {
    this.models = null;
    this.columns = [];
    this.controller = null;
    this.sampling = samplingFields();
    this.system = h("textarea", { class: "system", rows: 2, placeholder: "System prompt (optional)" });
    this.prompt = h("textarea", { class: "prompt", rows: 3, placeholder: "One prompt for every column" });
    this.grid = h("div", { class: "columns" });
    this.third = h("button", { class: "third", onclick: () => this.toggleThird() }, "Add a third column");
    this.run = h("button", { class: "run primary", onclick: () => this.compare() }, "Compare");
    root.append(
      h("div", { class: "settings" }, this.system, this.sampling.element),
      h("div", { class: "composer" }, this.prompt, h("div", { class: "buttons" }, this.run, h("button", { onclick: () => this.controller?.abort() }, "Stop"), this.third)),
      this.grid,
    );
    this.addColumn();
    this.addColumn();
  }

  addColumn() {
    const picker = new ModelPicker({ label: `Model ${this.columns.length + 1}` });
    const answer = h("div", { class: "answer" });
    const element = h("div", { class: "column" }, picker.element, answer);
    this.columns.push({ picker, answer, element });
    this.grid.append(element);
    if (this.models) this.fill(this.columns.length - 1, true);
  }

  // A column's model list; a new column starts on another model: the base, then the adapters in turn.
  fill(index, fresh) {
    const [base, adapters] = this.models;
    const { picker } = this.columns[index];
    picker.setModels(base, adapters);
    if (fresh && index > 0 && adapters.length) picker.choose(adapters[(index - 1) % adapters.length]);
  }

  toggleThird() {
    if (this.columns.length === 3) {
      this.columns.pop().element.remove();
      this.third.textContent = "Add a third column";
    } else {
      this.addColumn();
      this.third.textContent = "Remove the third column";
    }
  }

  setModels(base, adapters) {
    const fresh = this.models === null;
    this.models = [base, adapters];
    this.columns.forEach((_, index) => this.fill(index, fresh));
  }

  async compare() {
    const prompt = this.prompt.value.trim();
    if (!prompt || this.controller) return;
    const system = this.system.value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: prompt }];
    this.controller = new AbortController();
    this.run.disabled = true;
    const runs = this.columns.map(({ picker, answer }) =>
      streamInto(answer, { model: picker.value, messages, ...this.sampling.values() }, this.controller.signal),
    );
    const results = await Promise.allSettled(runs);
    for (const result of results) if (result.status === "rejected") showError(result.reason);
    this.controller = null;
    this.run.disabled = false;
  }
}
