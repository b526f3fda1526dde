// The adapter store: status, rank, targets, size and manifest of each adapter, its loss curve from the
// trainer's log, and the management actions (load, unload, delete, save a blend).

import { ApiError, call, getJSON } from "./api.js";
import { historySeries, lossChart } from "./chart.js";
import { formatBytes, formatTime, h, showError } from "./dom.js";
import { ModelPicker, parseBlend } from "./picker.js";

export class AdaptersTab {
  constructor(root, { onChange, onChat }) {
    this.onChange = onChange; // the store changed: refresh every model list
    this.onChat = onChat;
    this.selected = null;
    this.body = h("tbody");
    this.detail = h("div", { class: "detail" });
    this.blendPicker = new ModelPicker({ label: "Blend" });
    this.blendName = h("input", { class: "blend-name", placeholder: "new-adapter-name", pattern: "[a-z0-9][a-z0-9._-]{0,63}" });
    this.blendMethod = h(
      "select",
      { class: "blend-method" },
      ...["cat", "linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"].map((m) => h("option", { value: m }, m)),
    );
    root.append(
      h("div", { class: "row" }, h("button", { onclick: () => this.refresh() }, "Refresh")),
      h(
        "table",
        { class: "adapters" },
        h("thead", {}, h("tr", {}, ...["name", "status", "rank", "targets", "size", "source", "created", ""].map((c) => h("th", {}, c)))),
        this.body,
      ),
      this.detail,
      h(
        "section",
        { class: "save-blend" },
        h("h3", {}, "Save a blend as a new adapter"),
        this.blendPicker.element,
        h("div", { class: "row" }, h("label", {}, "Name ", this.blendName), h("label", {}, "Method ", this.blendMethod), h("button", { class: "primary", onclick: () => this.saveBlend() }, "Save blend")),
      ),
    );
  }

  setModels(base, adapters) {
    this.blendPicker.setModels(base, adapters);
  }

  async refresh() {
    try {
      const { data } = await getJSON("/v1/adapters");
      this.body.replaceChildren(...data.map((card) => this.row(card)));
      const still = data.find((card) => card.id === this.selected);
      if (still) await this.show(still);
      else this.detail.replaceChildren();
    } catch (error) {
      showError(error);
    }
  }

  row(card) {
    const m = card.manifest ?? {};
    const t = card.target_modules ?? m.target_modules ?? [];
    const targets = Array.isArray(t) ? t.join(", ") : t;
    return h(
      "tr",
      { "data-adapter": card.id, class: card.id === this.selected ? "selected" : "", onclick: () => this.show(card) },
      h("td", {}, card.id),
      h("td", {}, h("span", { class: `status ${card.status}`, title: card.error ?? "" }, card.status)),
      h("td", {}, card.rank ?? m.r ?? ""),
      h("td", { class: "targets", title: targets }, targets),
      h("td", {}, formatBytes(card.size_bytes)),
      h("td", {}, m.source ?? ""),
      h("td", {}, formatTime(card.created)),
      h("td", {}, card.status === "disabled" || card.status === "invalid" ? "" : h("button", { class: "chat", onclick: (e) => { e.stopPropagation(); this.onChat(card.id); } }, "Chat")),
    );
  }

  async show(card) {
    this.selected = card.id;
    for (const tr of this.body.querySelectorAll("tr")) tr.classList.toggle("selected", tr.dataset.adapter === card.id);
    const act = (label, fn, cls = "") => h("button", { class: cls, onclick: () => this.act(fn) }, label);
    const name = encodeURIComponent(card.id);
    const chart = h("div", { class: "loss" }, "loading the training log…");
    this.detail.replaceChildren(
      h("h3", {}, card.id),
      card.error ? h("p", { class: "error" }, card.error) : "",
      h(
        "div",
        { class: "row actions" },
        act("Load", () => call("/v1/adapters", { method: "POST", json: { name: card.id } }), "load"),
        act("Unload", () => call(`/v1/adapters/${name}`, { method: "DELETE" }), "unload"),
        act("Delete", async () => {
          if (confirm(`Delete ${card.id} from the store? This cannot be undone.`)) await call(`/v1/adapters/${name}?purge=true`, { method: "DELETE" });
        }, "delete danger"),
      ),
      chart,
      h("details", {}, h("summary", {}, "manifest"), h("pre", { class: "manifest" }, JSON.stringify(card.manifest, null, 2))),
    );
    try {
      const log = await getJSON(`/v1/adapters/${name}/training_log`);
      chart.replaceChildren(h("h4", {}, "loss (training log)"), lossChart(historySeries(log.log_history)));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) chart.replaceChildren(h("p", { class: "hint" }, error.message));
      else chart.replaceChildren(h("p", { class: "error" }, error.message));
    }
  }

  async act(fn) {
    try {
      await fn();
    } catch (error) {
      showError(error);
    }
    await this.refresh();
    this.onChange();
  }

  async saveBlend() {
    const model = this.blendPicker.value;
    const adapters = (parseBlend(model) ?? [[model, 1]]).map(([name, weight]) => ({ name, weight }));
    const name = this.blendName.value.trim();
    await this.act(async () => {
      await call("/v1/adapters/blend", { method: "POST", json: { name, adapters, method: this.blendMethod.value } });
      this.selected = name;
    });
  }
}
