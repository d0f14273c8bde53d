"""The child request: what the runner writes and every process of a case reads back, typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.process.request import REQUEST_VERSION, ChildRequest, RequestError, RunOptions, child_env

CASE = Case("tiny", seq_len=64, measured_steps=2, extra=(("fault", "exit@prepare"),))


def _request(tmp_path: Path, **options: object) -> ChildRequest:
    options_ = RunOptions(profile="t4", repeat=2, **options)
    return ChildRequest(CASE, options_, tmp_path / "r.json", parent_pid=123, spawned_at=1.5)


def test_a_request_reads_back_equal_to_what_was_written(tmp_path: Path) -> None:
    request = _request(tmp_path, memory_cap_gib=3.0, inject_fault="oom@training")
    request.write(request.path)
    assert request.path == tmp_path / "r.json.request" and request.log_path == tmp_path / "r.log"
    assert ChildRequest.read(request.path) == request
    assert json.loads(request.path.read_text())["version"] == REQUEST_VERSION


def test_the_runs_fault_wins_over_the_cases_own_and_a_rank_selector_picks_its_rank(tmp_path: Path) -> None:
    assert _request(tmp_path).fault() == "exit@prepare"  # the case's own
    assert _request(tmp_path, inject_fault="oom@training").fault() == "oom@training"
    one_rank = _request(tmp_path, inject_fault="sigkill@training@rank1")
    assert (one_rank.fault(0), one_rank.fault(1)) == ("", "sigkill@training@rank1")


def _refusal(path: Path, text: str) -> RequestError:
    path.write_text(text)
    with pytest.raises(RequestError) as err:
        ChildRequest.read(path)
    assert str(path) in str(err.value)
    return err.value


def test_a_malformed_request_is_refused_with_every_problem_named(tmp_path: Path) -> None:
    good = _request(tmp_path).to_dict()
    path = tmp_path / "bad.request"
    assert "unreadable" in str(_refusal(path, "{not json"))
    assert "must be a JSON object, got list" in str(_refusal(path, "[]"))
    keys = _refusal(path, json.dumps({**{k: v for k, v in good.items() if k != "case"}, "cases": {}}))
    assert keys.problems[:2] == ["missing key(s) ['case']", "unknown key(s) ['cases']"]
    assert "the keys ['version', 'case', 'options', 'result', 'parent_pid', 'spawned_at']" in str(keys)
    values = _refusal(
        path,
        json.dumps(
            {
                **good,
                "case": {**good["case"], "batch_size": 0},
                "options": {**good["options"], "timeout": 5},
                "parent_pid": "123",
                "result": "",
                "spawned_at": "now",
            }
        ),
    )
    assert len(values.problems) == 5, values.problems  # all at once
    assert "case: invalid case" in values.problems[0] and "batch_size" in values.problems[0]
    known = "known fields: ['profile', 'timeout_s'"
    assert "options: unknown field(s) ['timeout']" in values.problems[1] and known in values.problems[1]
    assert "result='' must be a non-empty path" in values.problems[2]
    assert "parent_pid='123' must be a process id" in values.problems[3]
    assert "spawned_at='now' must be a wall-clock time" in values.problems[4]
    # The good request itself reads back: the refusals above come from what was broken.
    path.write_text(json.dumps(good))
    assert ChildRequest.read(path) == _request(tmp_path)


@pytest.mark.parametrize("version", [REQUEST_VERSION + 1, 0, None, "1"])
def test_a_request_of_another_version_is_refused(tmp_path: Path, version: object) -> None:
    data = {**_request(tmp_path).to_dict(), "version": version}
    err = _refusal(tmp_path / "r.request", json.dumps(data))
    assert err.problems == [f"version {version!r}: this code reads version {REQUEST_VERSION} only"]


def test_a_child_given_a_malformed_request_says_why_and_writes_nothing(tmp_path: Path) -> None:
    request = _request(tmp_path)
    data = {**request.to_dict(), "version": REQUEST_VERSION + 1}
    request.path.write_text(json.dumps(data))
    proc = subprocess.run(
        [sys.executable, "-m", "qlora_core.process.child", str(request.path)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"RequestError: request {request.path} cannot be run" in proc.stderr
    assert f"this code reads version {REQUEST_VERSION} only" in proc.stderr
    assert not request.result_path.exists()


def test_the_environment_of_a_cases_first_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    one = _request(tmp_path).env()
    assert one["CUDA_VISIBLE_DEVICES"] == "2" and one["HF_HUB_OFFLINE"] == "1"
    ddp = Case("tiny", engine="trainer", num_gpus=2, strategy="ddp")
    two_gpus = ChildRequest(ddp, RunOptions(), tmp_path, os.getpid())
    assert two_gpus.env()["CUDA_VISIBLE_DEVICES"] == "2,3"
    hub = ChildRequest(Case("meta-llama/Llama-3.1-8B"), RunOptions(), tmp_path, os.getpid())
    assert "HF_HUB_OFFLINE" not in hub.env()
