"""No network at run time: a case's child reaches for no hub (`request.child_env`'s offline switch).

bitsandbytes 0.50, imported on a CPU with AVX512-BF16, asks the `kernels` package for a CPU kernel
from the hub (`kernels-community`), which checks its publisher online first. This host's CPU may
lack AVX512-BF16, where bitsandbytes never asks: `FORCE_AVX512BF16` makes it take that branch as
on one that has it (the flag only; the training path never calls the branch's CPU kernel). The
network is "unavailable" through a proxy on a local port that counts and drops every connection:
any attempt, by any library that honours the proxy variables, is counted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.models.registry import needs_hub
from qlora_core.process.request import OFFLINE_ENV, RunOptions, child_env
from qlora_core.process.runner import run_case

FORCE_AVX512BF16 = '''
import importlib.abc, importlib.machinery, sys


class _AsIfAvx512Bf16(importlib.abc.MetaPathFinder):
    """bitsandbytes' CPU backend module, executed as on a CPU with AVX512-BF16."""

    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.backends.cpu.ops":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            import bitsandbytes.functional as functional

            real = functional.has_avx512bf16
            functional.has_avx512bf16 = lambda: True
            try:
                run(module)
            finally:
                functional.has_avx512bf16 = real

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AsIfAvx512Bf16())
'''
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
# What a hub or network attempt leaves in a log.
ATTEMPT_MARKS = ("trust status", "ConnectError", "ProxyError", "Connection", "Max retries", "timed out")


class DroppingProxy:
    """A local port that accepts and closes every connection, counting them."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DroppingProxy]:
    """Every proxy variable pointing to a `DroppingProxy`; bitsandbytes' hub branch taken."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FORCE_AVX512BF16)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proxy = DroppingProxy()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    for name in ("NO_PROXY", "no_proxy", OFFLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    yield proxy
    proxy.server.close()


def _import_bitsandbytes(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import bitsandbytes"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_without_the_offline_switch_bitsandbytes_reaches_for_the_hub(no_network) -> None:
    """The check can fail: a child environment with the switch off (a parent that set it to 0)
    reaches the proxy and logs the publisher check that failed; with it, nothing connects."""
    online = _import_bitsandbytes({**child_env(), OFFLINE_ENV: "0"})
    assert no_network.connections > 0
    assert "kernels-community" in online and "trust status" in online
    before = no_network.connections
    offline = _import_bitsandbytes(child_env())
    assert no_network.connections == before
    assert "trust status" not in offline


@pytest.mark.slow
def test_a_cases_log_shows_no_network_attempt(no_network, tmp_path: Path, tmp_cache) -> None:
    case = Case("tiny", batch_size=1, seq_len=32, warmup_steps=0, measured_steps=1)
    result = run_case(case, RunOptions(profile="cpu", timeout_s=600), tmp_path / "case.json")
    assert result.status == "ok", result.reason
    log = (tmp_path / "case.log").read_text()
    assert no_network.connections == 0
    attempts = [line for line in log.splitlines() if any(mark in line for mark in ATTEMPT_MARKS)]
    assert attempts == [], attempts
    # Nor the libraries' notices that the hub kernel is not in the local cache (offline): the
    # child drops them (`request.quiet_offline_kernel_notices`); bitsandbytes uses its own kernel.
    assert "kernels-community" not in log


def test_only_a_hub_model_runs_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    (tmp_path / "org" / "local").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    local = ("tiny", "smollm2-135m-instruct", "org/local")  # a shape, the real model, a directory
    assert not any(needs_hub(name) for name in local)
    assert needs_hub("meta-llama/Llama-3.1-8B")
    assert child_env()[OFFLINE_ENV] == "1"
    assert OFFLINE_ENV not in child_env(hub_model=True)
    monkeypatch.setenv(OFFLINE_ENV, "0")  # the user's own choice is kept
    assert child_env()[OFFLINE_ENV] == "0"
