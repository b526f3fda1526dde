// Choosing what to chat with: the base, an adapter, or a blend of adapters with a weight slider each.
// A blend is written as the model string the server parses ("a*0.7+b*0.3", docs/api.md).

import { h } from "./dom.js";

const BLEND = "__blend__";

export function formatWeight(weight) {
  return String(Number(weight.toFixed(2)));
}

export function blendModel(components) {
  return components.map(([name, weight]) => `${name}*${formatWeight(weight)}`).join("+");
}

export function parseBlend(model) {
  if (!model.includes("*") && !model.includes("+")) return null;
  return model.split("+").map((part) => {
    const [name, weight] = part.trim().split("*");
    return [name.trim(), weight === undefined ? 1 : Number(weight)];
  });
}

export class ModelPicker {
  constructor({ label = "Model", onchange = () => {} } = {}) {
    this.base = null;
    this.adapters = [];
    this.onchange = onchange;
    this.select = h("select", { class: "model-select", onchange: () => this.changed() });
    this.sliders = h("div", { class: "sliders" });
    this.shown = h("code", { class: "model-string" });
    this.blend = h("div", { class: "blend", hidden: true }, h("p", { class: "hint" }, "Weights: 0 leaves an adapter out; negative ones subtract it."), this.sliders);
    this.element = h("div", { class: "picker" }, h("label", {}, `${label} `, this.select), this.blend, h("div", { class: "hint" }, "model: ", this.shown));
  }

  // The served base id and the adapter names (GET /v1/models); keeps the choice when it still exists.
  setModels(base, adapters) {
    const before = this.value;
    const weights = this.weights();
    this.base = base;
    this.adapters = adapters;
    this.select.replaceChildren(
      h("option", { value: base }, `${base} (base)`),
      ...adapters.map((name) => h("option", { value: name }, name)),
      h("option", { value: BLEND, disabled: adapters.length === 0 }, "Blend of adapters…"),
    );
    this.sliders.replaceChildren(...adapters.map((name) => this.slider(name, weights.get(name) ?? 0)));
    this.choose(before ?? base);
  }

  slider(name, weight) {
    const output = h("output", {}, formatWeight(weight));
    const input = h("input", {
      type: "range",
      min: "-1",
      max: "2",
      step: "0.05",
      value: String(weight),
      "data-adapter": name,
      "aria-label": `weight of ${name}`,
      oninput: () => {
        output.textContent = formatWeight(Number(input.value));
        this.changed();
      },
    });
    return h("label", { class: "slider" }, h("span", { class: "name" }, name), input, output);
  }

  weights() {
    const weights = new Map();
    for (const input of this.sliders.querySelectorAll("input")) weights.set(input.dataset.adapter, Number(input.value));
    return weights;
  }

  // The model string of the choice: an id, or the blend of the adapters whose weight is not 0.
  get value() {
    if (this.base === null) return null;
    if (this.select.value !== BLEND) return this.select.value;
    const components = [...this.weights()].filter(([, weight]) => weight !== 0);
    return components.length ? blendModel(components) : this.base;
  }

  // Show `model`: the base, an adapter, or a blend string (its sliders set to its weights).
  choose(model) {
    const blend = parseBlend(model);
    if (blend) {
      for (const input of this.sliders.querySelectorAll("input")) {
        const component = blend.find(([name]) => name === input.dataset.adapter);
        input.value = String(component ? component[1] : 0);
        input.nextElementSibling.textContent = formatWeight(Number(input.value));
      }
      this.select.value = BLEND;
    } else {
      this.select.value = [this.base, ...this.adapters].includes(model) ? model : this.base;
    }
    this.changed();
  }

  changed() {
    this.blend.hidden = this.select.value !== BLEND;
    this.shown.textContent = this.value ?? "";
    this.onchange(this.value);
  }
}
