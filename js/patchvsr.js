// Frontend extension of ComfyUI-PatchVSR, served by ComfyUI from WEB_DIRECTORY ("./js"):
// 1. one colour for the pack's nodes, so the PatchVSR chain stands out in a large workflow;
// 2. the partitioner's cost text (computed by the server, nodes/partition.py) shown on the node, with the
//    total for the PatchVSR sampler connected to its plan, looked up in the server's run totals by the
//    sampler's and stitcher's current widgets (so it follows them before the next run).
// The app and the widget constructors come from window.comfyAPI, the object the frontend publishes for
// extensions (every frontend this pack is tested with has it): the legacy module shims under scripts/ make
// newer frontends log that the pack imports an internal module. A frontend without window.comfyAPI loads
// the shims instead, imported only there so no other frontend evaluates them.
const comfyAPI = window.comfyAPI;
const { app } = comfyAPI?.app ?? (await import("../../scripts/app.js"));
const { ComfyWidgets } = comfyAPI?.widgets ?? (await import("../../scripts/widgets.js"));

const PREFIX = "PatchVSR_";
const PARTITIONER = "PatchVSR_Partitioner";
const COST_WIDGET = "patchvsr_cost";

function widgetValue(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

// The nodes fed by `node`'s output slot `slot`. Connectivity goes through the node's methods, not
// through `output.links` / `input.link`, which newer frontends report as deprecated on every read.
function targets(node, slot) {
  return node.getOutputNodes?.(slot) ?? [];
}

// The stitcher feeding a sampler's `stitcher` input, if any.
function stitcherOf(sampler) {
  const slot = sampler.findInputSlot?.("stitcher") ?? -1;
  return slot < 0 ? null : (sampler.getInputNode?.(slot) ?? null);
}

// Patch evaluations of a run: the server's total for this mode and step count (models/cost.py run_totals,
// counted by the sampler's own schedule), twice that when cfg != 1 adds an uncond row per patch.
export function runTotal(totals, mode, steps, cfg) {
  const total = totals?.[mode]?.[steps - 1];
  if (total === undefined) return null;
  return cfg === 1 ? total : 2 * total;
}

function connectedRuns(node, totals) {
  return targets(node, 0)
    .filter((n) => n.comfyClass === "PatchVSR_Sampler")
    .map((sampler) => {
      const steps = Number(widgetValue(sampler, "steps"));
      const cfg = Number(widgetValue(sampler, "cfg"));
      // No stitcher: the sampler's default, models/blend.py StitchConfig's (shifted).
      const mode = widgetValue(stitcherOf(sampler), "mode") ?? "shifted";
      const total = runTotal(totals, mode, steps, cfg);
      if (total === null) return `Connected sampler: ${steps} steps, ${mode} stitch.`;
      return `Connected sampler: ${steps} steps, cfg ${cfg}, ${mode} stitch: ${total} patch evaluations in total.`;
    });
}

function costLines(node) {
  const { text, totals } = node.patchvsrCost;
  return [text, ...connectedRuns(node, totals)].join("\n");
}

// The text widget's textarea: `element` on current frontends, where reading the older `inputEl` alias logs
// a deprecation; `inputEl` only where `element` does not exist.
function textArea(widget) {
  return widget.element ?? widget.inputEl;
}

function showCost(node) {
  if (!node.patchvsrCost) return;
  const lines = costLines(node);
  let widget = node.widgets?.find((w) => w.name === COST_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, COST_WIDGET, ["STRING", { multiline: true }], app).widget;
    // Display only: never saved in the workflow's widget values nor sent to the server.
    widget.serialize = false;
    if (widget.options) widget.options.serialize = false;
    const el = textArea(widget);
    if (el) el.readOnly = true;
    // Room for the text below the widgets the node already has.
    const [w, h] = node.computeSize?.() ?? node.size;
    node.setSize?.([Math.max(node.size[0], w), Math.max(node.size[1], h + 140)]);
  }
  if (widget.value !== lines) {
    widget.value = lines;
    const el = textArea(widget);
    if (el) el.value = lines;
    node.setDirtyCanvas?.(true, true);
  }
}

app.registerExtension({
  name: "PatchVSR.NodeColours",
  nodeCreated(node) {
    if (node.comfyClass?.startsWith(PREFIX)) {
      node.color = "#223a5e";
      node.bgcolor = "#2b4a78";
    }
  },
});

app.registerExtension({
  name: "PatchVSR.PlanCost",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== PARTITIONER) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.[0] && message?.patchvsr_cost?.[0]) {
        this.patchvsrCost = { text: message.text[0], totals: message.patchvsr_cost[0] };
        showCost(this);
      }
    };
    // The connected-run total follows the sampler's and stitcher's widgets: looked up again as the node
    // draws, rewritten only when it changes.
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      onDrawForeground?.apply(this, arguments);
      showCost(this);
    };
  },
});
