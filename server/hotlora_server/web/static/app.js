// The web app's entry: tabs, the API key dialog, and the model lists every tab shares.

import { AdaptersTab } from "./adapters.js";
import { getJSON, hasKey, onKeyNeeded, storeKey } from "./api.js";
import { ChatTab } from "./chat.js";
import { CompareTab } from "./compare.js";
import { $, showError } from "./dom.js";
import { TrainTab } from "./train.js";

let base = null;
let pendingKey = null;

// One dialog at a time, however many requests were refused together (compare streams in parallel).
function askForKey(message) {
  pendingKey ??= new Promise((resolve) => {
    const dialog = $("#key-dialog");
    const input = $("#key-input");
    $("#key-message").textContent = message;
    input.value = "";
    dialog.returnValue = ""; // Escape closes it without a value: that is a cancel
    dialog.onclose = () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) storeKey(key);
      resolve(Boolean(key));
    };
    dialog.showModal();
    input.focus();
  }).finally(() => {
    pendingKey = null;
  });
  return pendingKey;
}

function showTab(name) {
  for (const button of document.querySelectorAll("nav [data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const panel of document.querySelectorAll("main > section")) panel.hidden = panel.id !== name;
  if (name === "adapters") tabs.adapters.refresh();
  if (name === "train") tabs.train.refresh();
}

async function refreshModels() {
  try {
    const { data } = await getJSON("/v1/models");
    const baseCard = data.find((model) => !model.parent) ?? data[0];
    base = baseCard.id;
    $("#base").textContent = base;
    const adapters = data.filter((model) => model.parent).map((model) => model.id);
    for (const tab of [tabs.chat, tabs.compare, tabs.adapters]) tab.setModels(base, adapters);
  } catch (error) {
    showError(error);
  }
}

function openInChat(model) {
  showTab("chat");
  refreshModels().then(() => tabs.chat.open(model));
}

onKeyNeeded(askForKey);
const tabs = {
  chat: new ChatTab($("#chat")),
  compare: new CompareTab($("#compare")),
  adapters: new AdaptersTab($("#adapters"), { onChange: refreshModels, onChat: openInChat }),
  train: new TrainTab($("#train"), { base: () => base, onChat: openInChat, onTrained: refreshModels }),
};
for (const button of document.querySelectorAll("nav [data-tab]")) button.addEventListener("click", () => showTab(button.dataset.tab));
$("#key-button").addEventListener("click", async () => {
  if (await askForKey(hasKey() ? "Replace the API key kept for this tab." : "The API key of this server.")) refreshModels();
});
showTab("chat");
refreshModels();
