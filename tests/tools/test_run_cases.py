"""tools/run_cases.py: hand-picked cases, parsed and validated before anything runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from qlora_core.spec import Case, CaseError
from reports.run_folder import holding_run_dir

_PATH = Path(__file__).resolve().parents[2] / "tools" / "run_cases.py"
_spec = importlib.util.spec_from_file_location("run_cases", _PATH)
assert _spec is not None and _spec.loader is not None
rc = importlib.util.module_from_spec(_spec)
sys.modules["run_cases"] = rc
_spec.loader.exec_module(rc)


def test_fields_parse_as_json_else_strings() -> None:
    case = rc.parse_case(
        "model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=trainer,double_quant=false,lr=1e-4"
    )
    assert case == Case(
        "llama-3.1-8b", batch_size=4, seq_len=2048, engine="trainer", double_quant=False, lr=1e-4
    )


def test_every_problem_is_named_before_any_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(CaseError, match="batch_size"):
        rc.parse_case("model=tiny,batch_size=0")
    with pytest.raises(CaseError, match="FIELD=VALUE"):
        rc.parse_case("model=tiny,oops")
    assert rc.main(["--out", str(tmp_path / "run"), "--case", "model=tiny,engine=nope"]) == 2
    assert "engine='nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_repeat_must_be_at_least_one(tmp_path: Path, capsys) -> None:
    assert rc.main(["--out", str(tmp_path / "run"), "--case", "model=tiny", "--repeat", "0"]) == 2
    assert "--repeat 0 must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_folder_another_session_holds_is_refused_before_any_run(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    with holding_run_dir(run_dir):
        assert rc.main(["--out", str(run_dir), "--case", "model=tiny"]) == 2
    assert "in use by another qlora-bench session" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written, the lock file gone
