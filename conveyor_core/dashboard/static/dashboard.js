// Live states on a flow's page: server-sent events recolour the tree's nodes.
"use strict";

function applyState(message) {
  for (const node of document.querySelectorAll("#flow-tree .node")) {
    if (node.dataset.queue !== message.queue || node.dataset.id !== message.id) continue;
    node.dataset.state = message.state;
    const badge = node.querySelector(".state");
    if (badge) {
      badge.className = "state state-" + message.state;
      badge.dataset.state = message.state;
      badge.textContent = message.state;
    }
  }
}

function watchFlow(tree) {
  const live = document.getElementById("live");
  const show = (what, text) => {
    if (!live) return;
    live.dataset.live = what;
    live.textContent = text;
  };
  const source = new EventSource(tree.dataset.stream);
  source.addEventListener("state", (event) => applyState(JSON.parse(event.data)));
  source.addEventListener("ready", () => show("live", "live"));
  source.onerror = () => show("reconnecting", "reconnecting…");
  window.addEventListener("pagehide", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const tree = document.getElementById("flow-tree");
  if (tree && tree.dataset.stream) watchFlow(tree);
});
