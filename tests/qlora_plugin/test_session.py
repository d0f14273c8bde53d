"""BenchSession pieces that need no child process: --force parsing and its effect on identity."""

from __future__ import annotations

import pytest

from qlora_core.gpus import get_profile
from qlora_core.matrix import PlannedCase
from qlora_core.spec import Case, CaseError
from qlora_plugin.options import BenchOptions, parse_force
from qlora_plugin.session import BenchSession
from reports.thresholds import Thresholds


def test_parse_force_types_values_like_the_case_fields():
    forced = dict(parse_force(["prepare_kbit=true", "batch_size=2", "lr=1e-3", "compute_dtype=fp16"]))
    assert forced == {"prepare_kbit": True, "batch_size": 2, "lr": 1e-3, "compute_dtype": "fp16"}
    assert dict(parse_force(["target_modules=q_proj,v_proj"])) == {"target_modules": ("q_proj", "v_proj")}


def test_parse_force_collects_every_problem():
    with pytest.raises(CaseError) as err:
        parse_force(["batchsize=2", "prepare_kbit=maybe", "model=x", "lr=fast"])
    assert len(err.value.problems) == 4
    assert "batch_size" in str(err.value)  # the allowed fields are listed


def test_forced_case_runs_changed_but_keeps_the_matrix_identity(tmp_path):
    options = BenchOptions(
        gpu="cpu",
        profile=get_profile("cpu"),
        gpu_present=None,
        matrix="smoke",
        models=(),
        out=tmp_path,
        resume=None,
        case_timeout_s=60,
        baseline=None,
        save_baseline=None,
        thresholds=Thresholds(),
        force=parse_force(["prepare_kbit=true"]),
        command_line="pytest bench --force prepare_kbit=true",
    )
    session = BenchSession.open(options, write_line=lambda _: None)
    planned = PlannedCase(Case("tiny", prepare_kbit=False), ["prepare"])
    executed = session.executed_case(planned)
    assert executed.prepare_kbit is True and planned.case.prepare_kbit is False
    assert executed.hash != planned.case.hash
    env = session.environment()
    assert env["forced"] == {"prepare_kbit": True} and env["commands"] == [options.command_line]
