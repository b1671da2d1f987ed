"""`noisecraft serve`: user errors are one line and exit 2; the command really serves."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.server.live import free_port
from tests.test_cli import assert_user_error, run


@pytest.mark.parametrize("args, match", [
    (["--host", "0.0.0.0"], "--api-key"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--port", "0"], "1..65535"),
    (["--workers", "0"], "workers must be >= 1"),
    (["--max-steps", "0"], "--max-steps and --max-batch"),
])
def test_serve_user_errors(args, match, capsys, monkeypatch):
    monkeypatch.delenv("NOISECRAFT_API_KEY", raising=False)
    monkeypatch.delenv("AIP_HTTP_PORT", raising=False)
    code, _, err = run(["serve", *args], capsys)
    assert_user_error(code, err, match)


def test_serve_refuses_a_port_in_use(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, _, err = run(["serve", "--port", s.getsockname()[1]], capsys)
    assert_user_error(code, err, "pick another --port")


def test_serve_answers_on_its_port_and_stops_on_sigint():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "noisecraft", "serve", "--port", str(port), "--no-ui"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", json.dumps({"steps": 2}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert len(json.load(r)["images"]) == 1
    finally:
        proc.send_signal(2)
        assert proc.wait(20) == 0
