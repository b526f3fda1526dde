// Train: upload a JSONL file (POST /v1/files), start a fine-tuning job, follow its events and live loss
// curve, and open the adapter it registers in the playground.

import { call, getJSON } from "./api.js";
import { lossChart } from "./chart.js";
import { formatTime, h, showError } from "./dom.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);

function numberField(label, cls, props) {
  const input = h("input", { type: "number", class: cls, ...props });
  return { input, element: h("label", {}, `${label} `, input) };
}

export class TrainTab {
  constructor(root, { base, onChat, onTrained }) {
    this.base = base; // () => the served base id
    this.onChat = onChat;
    this.onTrained = onTrained;
    this.fileId = null;
    this.jobId = null;
    this.timer = null;
    this.file = h("input", { type: "file", class: "file", accept: ".jsonl,application/jsonl,application/json,text/plain" });
    this.uploaded = h("span", { class: "uploaded hint" }, "no file uploaded");
    this.suffix = h("input", { class: "suffix", placeholder: "my-adapter", maxLength: 40 });
    this.fields = {
      n_epochs: numberField("Epochs", "n-epochs", { min: "1", step: "1", placeholder: "auto" }),
      batch_size: numberField("Batch size", "batch-size", { min: "1", step: "1", placeholder: "auto" }),
      learning_rate_multiplier: numberField("LR multiplier", "lr-multiplier", { min: "0", step: "any", placeholder: "auto" }),
    };
    this.lora = {
      r: numberField("LoRA r", "lora-r", { min: "1", max: "64", step: "1", placeholder: "default" }),
      max_steps: numberField("Max steps", "max-steps", { min: "1", step: "1", placeholder: "all" }),
      max_length: numberField("Max length", "max-length", { min: "16", step: "1", placeholder: "default" }),
    };
    this.start = h("button", { class: "start primary", disabled: true, onclick: () => this.startJob() }, "Start fine-tuning");
    this.jobs = h("ul", { class: "jobs" });
    this.job = h("div", { class: "job" });
    root.append(
      h(
        "section",
        {},
        h("h3", {}, "1. Training data"),
        h("p", { class: "hint" }, 'JSONL, one row per line: {"messages": [...]}, {"prompt", "completion"} or {"text"}.'),
        h("div", { class: "row" }, this.file, h("button", { class: "upload", onclick: () => this.upload() }, "Upload"), this.uploaded),
      ),
      h(
        "section",
        {},
        h("h3", {}, "2. Fine-tuning job"),
        h("div", { class: "row" }, h("label", {}, "Suffix ", this.suffix), ...Object.values(this.fields).map((f) => f.element)),
        h("div", { class: "row" }, ...Object.values(this.lora).map((f) => f.element)),
        this.start,
      ),
      h("section", {}, h("h3", {}, "3. Jobs"), h("button", { onclick: () => this.refresh() }, "Refresh"), this.jobs, this.job),
    );
  }

  async upload() {
    const file = this.file.files[0];
    if (!file) return showError(new Error("choose a JSONL file first"));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    try {
      const uploaded = await getJSON("/v1/files", { method: "POST", form });
      this.fileId = uploaded.id;
      this.uploaded.textContent = `${uploaded.filename}: ${uploaded.id} (${uploaded.bytes} bytes)`;
      this.start.disabled = false;
    } catch (error) {
      this.uploaded.textContent = "upload refused";
      showError(error);
    }
  }

  static values(fields) {
    return Object.fromEntries(
      Object.entries(fields)
        .filter(([, f]) => f.input.value !== "")
        .map(([key, f]) => [key, Number(f.input.value)]),
    );
  }

  async startJob() {
    const body = { model: this.base(), training_file: this.fileId };
    const suffix = this.suffix.value.trim();
    if (suffix) body.suffix = suffix;
    const hyperparameters = TrainTab.values(this.fields);
    if (Object.keys(hyperparameters).length) body.method = { type: "supervised", supervised: { hyperparameters } };
    const lora = TrainTab.values(this.lora);
    if (Object.keys(lora).length) body.hotlora = lora;
    try {
      const job = await getJSON("/v1/fine_tuning/jobs", { method: "POST", json: body });
      await this.refresh();
      this.follow(job.id);
    } catch (error) {
      showError(error);
    }
  }

  async refresh() {
    try {
      const { data } = await getJSON("/v1/fine_tuning/jobs?limit=20");
      this.jobs.replaceChildren(
        ...data.map((job) =>
          h(
            "li",
            { "data-job": job.id, class: job.id === this.jobId ? "selected" : "", onclick: () => this.follow(job.id) },
            h("span", { class: `status ${job.status}` }, job.status),
            ` ${job.fine_tuned_model ?? job.id} · ${formatTime(job.created_at)}`,
          ),
        ),
      );
    } catch (error) {
      showError(error);
    }
  }

  // Polls the job and its events every second until it ends.
  follow(jobId) {
    clearTimeout(this.timer);
    this.jobId = jobId;
    for (const li of this.jobs.querySelectorAll("li")) li.classList.toggle("selected", li.dataset.job === jobId);
    const tick = async () => {
      if (this.jobId !== jobId) return;
      try {
        const id = encodeURIComponent(jobId);
        const [job, events] = await Promise.all([getJSON(`/v1/fine_tuning/jobs/${id}`), getJSON(`/v1/fine_tuning/jobs/${id}/events?limit=1000`)]);
        if (this.jobId !== jobId) return;
        this.render(job, events.data.slice().reverse());
        if (ENDED.has(job.status)) {
          await this.refresh();
          if (job.status === "succeeded") this.onTrained();
          return;
        }
      } catch (error) {
        showError(error);
        return;
      }
      this.timer = setTimeout(tick, 1000);
    };
    tick();
  }

  render(job, events) {
    const metrics = events.filter((e) => e.type === "metrics" && e.data);
    const points = (key) => metrics.filter((e) => typeof e.data[key] === "number").map((e) => [e.data.step, e.data[key]]);
    const last = metrics.at(-1);
    const progress = last ? `step ${last.data.step} of ${last.data.total_steps}` : "";
    const actions = [];
    if (!ENDED.has(job.status)) {
      actions.push(h("button", { class: "cancel", onclick: () => call(`/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }).catch(showError) }, "Cancel"));
    }
    if (job.status === "succeeded" && job.fine_tuned_model) {
      actions.push(h("button", { class: "open-chat primary", onclick: () => this.onChat(job.fine_tuned_model) }, `Chat with ${job.fine_tuned_model}`));
    }
    this.job.replaceChildren(
      h("h3", {}, job.id),
      h("p", {}, h("span", { class: `status job-status ${job.status}` }, job.status), ` ${progress}`, job.fine_tuned_model ? ` · model ${job.fine_tuned_model}` : ""),
      job.error && job.error.message ? h("p", { class: "error" }, job.error.message) : "",
      h("div", { class: "row" }, ...actions),
      lossChart([
        { name: "train loss", points: points("train_loss"), className: "train" },
        { name: "valid loss", points: points("valid_loss"), className: "eval" },
      ]),
      h("ol", { class: "events" }, ...events.map((e) => h("li", { class: e.level }, `${formatTime(e.created_at)} ${e.message}`))),
    );
  }
}
