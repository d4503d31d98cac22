// Frontend extension of ComfyUI-PatchVSR: gives the pack's nodes one colour so the PatchVSR chain stands
// out in a large workflow. Served by ComfyUI from WEB_DIRECTORY ("./js").
import { app } from "../../scripts/app.js";

const PREFIX = "PatchVSR_";

app.registerExtension({
  name: "PatchVSR.NodeColours",
  nodeCreated(node) {
    if (node.comfyClass?.startsWith(PREFIX)) {
      node.color = "#223a5e";
      node.bgcolor = "#2b4a78";
    }
  },
});
