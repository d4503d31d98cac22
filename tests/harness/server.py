"""A real ComfyUI server for the tests and the demo: `main.py --cpu` on a free loopback port with this
pack (and the test-only nodes) loaded through an extra-model-paths YAML, driven over its HTTP API.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import websocket

from .paths import REPO, comfy_root, host_python

log = logging.getLogger(__name__)
PACK_DIR_NAME = "ComfyUI-PatchVSR"
TEST_NODES_DIR = Path(__file__).parent / "test_nodes"
PROGRESS_TEXT = (3).to_bytes(4, "big")  # ComfyUI's binary event type of a node's progress text (protocol.py)


@dataclass
class PromptResult:
    """What a submitted prompt came to: `status` is 'success', 'error', 'interrupted' or 'rejected'."""

    status: str
    prompt_id: str | None = None
    outputs: dict = field(default_factory=dict)  # node id -> its UI output, from /history
    error: dict = field(default_factory=dict)  # the rejection body, or the execution_error message
    messages: list = field(default_factory=list)  # every websocket message about this prompt
    # (node id, text) of the progress texts nodes sent while it ran (binary event 3; they name no prompt)
    texts: list = field(default_factory=list)

    def files(self, output_dir: Path, suffix: str = ".mp4") -> list[Path]:
        """Paths of the files that output nodes saved to the output folder (not temp previews)."""
        paths = []
        for out in self.outputs.values():
            items = [i for v in out.values() if isinstance(v, list) for i in v if isinstance(i, dict)]
            for item in items:
                if item.get("type") == "output" and item.get("filename", "").endswith(suffix):
                    paths.append(output_dir / item.get("subfolder", "") / item["filename"])
        return paths


class PortTaken(RuntimeError):
    """The server could not bind its port: another process took it after free_port chose it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start with `with ComfyServer(base_dir, models_dir) as server:`; the server is always stopped."""

    def __init__(
        self,
        base_dir: Path,
        models_dir: Path,
        with_test_nodes: bool = True,
        start_timeout: float = 240,
        threads: int | None = None,
        frontend: bool | Path = False,
        preview_method: str | None = None,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.with_test_nodes = with_test_nodes
        self.start_timeout = start_timeout
        # torch's CPU threads in the server; None keeps torch's default (one per core). Tiny models run many
        # small ops, where a second thread costs more in synchronisation than it brings (the sampler matrix
        # on the pinned host: 573 s with one thread, 891 s with two, on an idle 2-core machine).
        self.threads = threads
        # The real web frontend for the browser tests: True serves the host's pinned comfyui-frontend-package,
        # a folder another frontend build (its `static` folder, through --front-end-root). API-only servers
        # get an empty frontend folder, which keeps the package's files off their start-up.
        self.frontend = frontend
        # --preview-method (latent2rgb, auto, taesd): the live previews the sampler sends while it denoises.
        self.preview_method = preview_method
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _write_config(self) -> Path:
        """Custom nodes and models reach the server the way an artist's second install would: a YAML."""
        nodes_dir = self.base_dir / "extra_custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        links = {PACK_DIR_NAME: REPO}
        if self.with_test_nodes:
            links["patchvsr_test_nodes"] = TEST_NODES_DIR
        for name, target in links.items():
            link = nodes_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        yaml_path = self.base_dir / "extra_model_paths.yaml"
        yaml_path.write_text(
            "patchvsr_tests:\n"
            f"  base_path: {self.models_dir}\n"
            "  diffusion_models: diffusion_models\n"
            "  vae: vae\n"
            "  loras: loras\n"
            "  patchvsr: patchvsr\n"
            f"  custom_nodes: {nodes_dir}\n"
        )
        return yaml_path

    def start(self) -> ComfyServer:
        # Another test run on this machine (the other host's, run beside this one) may take the free port
        # between its choice and the server's bind: then the server exits at once and gets another port.
        for _ in range(3):
            try:
                return self._start()
            except PortTaken:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                log.warning("port taken while the server started; retrying on %d", self.port)
        return self._start()

    def _start(self) -> ComfyServer:
        for sub in ("input", "output", "frontend", "custom_nodes"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        yaml_path = self._write_config()
        root = comfy_root()
        cmd = [
            host_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-api-nodes", "--disable-auto-launch",
            "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(yaml_path),
        ]  # fmt: skip
        if self.frontend is False:
            cmd += ["--front-end-root", str(self.base_dir / "frontend")]
        elif self.frontend is not True:
            cmd += ["--front-end-root", str(self.frontend)]
        if self.preview_method is not None:
            cmd += ["--preview-method", self.preview_method]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads is not None:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                tail = self.log_tail()
                if "address already in use" in tail.lower() or "errno 98" in tail.lower():
                    raise PortTaken(tail)
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting:\n{tail}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not serve within {self.start_timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    # -- API ---------------------------------------------------------------------------------------------
    def get(self, path: str) -> dict:
        r = requests.get(self.url + path, timeout=60)
        r.raise_for_status()
        return r.json()

    def object_info(self) -> dict:
        return self.get("/object_info")

    def interrupt(self) -> None:
        requests.post(self.url + "/interrupt", timeout=30).raise_for_status()

    def clear_cache(self) -> None:
        """Empties the server's node-output cache (POST /free with free_memory, which also unloads models).
        The queue's worker applies the flag after its current prompt or when it wakes, so a tiny prompt run
        after it proves it applied: the worker checks the flags after every prompt, before the next."""
        requests.post(self.url + "/free", json={"free_memory": True}, timeout=30).raise_for_status()
        sentinel = {
            "1": {"class_type": "PatchVSRTest_RandomLatent",
                  "inputs": {"channels": 1, "frames": 1, "height": 1, "width": 1, "seed": int(time.time_ns() % 2**31)}},
            "2": {"class_type": "PatchVSRTest_LatentStats", "inputs": {"samples": ["1", 0]}},
        }  # fmt: skip
        result = self.run(sentinel, timeout=120)
        assert result.status == "success", result.error

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """Removes prompts still waiting in the queue (every waiting one when `prompt_ids` is empty)."""
        body = {"delete": prompt_ids} if prompt_ids else {"clear": True}
        requests.post(self.url + "/queue", json=body, timeout=30).raise_for_status()

    def submit(self, prompt: dict) -> tuple[str | None, dict]:
        """POST /prompt: (prompt_id, body). A rejected prompt gives (None, body with node_errors)."""
        r = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=60)
        body = r.json()
        if r.status_code != 200:
            return None, body
        return body["prompt_id"], body

    def run(self, prompt: dict, timeout: float = 1800, on_message=None) -> PromptResult:
        """Submits an API-format prompt and follows /ws until it finishes. `on_message(msg)` sees each
        websocket message of this prompt (a test can interrupt from there)."""
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        try:
            prompt_id, body = self.submit(prompt)
            if prompt_id is None:
                return PromptResult("rejected", error=body)
            result = PromptResult("running", prompt_id)
            deadline = time.monotonic() + timeout
            while result.status == "running":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prompt {prompt_id} still running after {timeout}s:\n{self.log_tail()}")
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log_tail()}")
                raw = ws.recv()
                if not isinstance(raw, str):
                    if raw[:4] == PROGRESS_TEXT:  # then the node id's length, the node id, the text
                        size = int.from_bytes(raw[4:8], "big")
                        result.texts.append((raw[8 : 8 + size].decode(), raw[8 + size :].decode(errors="replace")))
                    continue  # binary preview frames
                msg = json.loads(raw)
                data = msg.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                result.messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                kind = msg.get("type")
                if kind == "execution_error":
                    result.status, result.error = "error", data
                elif kind == "execution_interrupted":
                    result.status = "interrupted"
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                    result.status = "success"
        finally:
            ws.close()
        result.outputs = self.wait_for_history(prompt_id).get("outputs", {})
        return result

    def wait_for_history(self, prompt_id: str, timeout: float = 60) -> dict:
        """The prompt's /history entry. ComfyUI sends the websocket's end-of-prompt messages before its
        queue stores the history, so reading it once right after them races (CI saw an empty entry)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} finished but has no /history entry after {timeout}s")
            time.sleep(0.05)
