"""tools/run_cases.py: hand-picked cases, parsed and validated before anything runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from qlora_core.cases.case import Case, CaseError
from qlora_core.process.shared_options import case_timeout_problem, parse_gpu, parse_repeat
from qlora_plugin.options import parse_force
from reports.run.folder import holding_run_dir

_PATH = Path(__file__).resolve().parents[2] / "tools" / "run_cases.py"
_spec = importlib.util.spec_from_file_location("run_cases", _PATH)
assert _spec is not None and _spec.loader is not None
rc = importlib.util.module_from_spec(_spec)
sys.modules["run_cases"] = rc
_spec.loader.exec_module(rc)


def test_fields_are_typed_like_the_case_fields_as_force_reads_them() -> None:
    case = rc.parse_case(
        "model=llama-3.1-8b,batch_size=4,seq_len=2048,engine=trainer,double_quant=false,lr=1e-4"
    )
    assert case == Case(
        "llama-3.1-8b", batch_size=4, seq_len=2048, engine="trainer", double_quant=False, lr=1e-4
    )
    forced = dict(parse_force(["batch_size=4", "double_quant=off", "target_modules=q_proj,v_proj"]))
    assert rc.parse_case("model=tiny,batch_size=4,double_quant=off,target_modules=q_proj,v_proj") == Case(
        "tiny", **forced
    )


def test_every_problem_is_named_before_any_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(CaseError, match="batch_size"):
        rc.parse_case("model=tiny,batch_size=0")
    with pytest.raises(CaseError, match="FIELD=VALUE"):
        rc.parse_case("model=tiny,oops")
    assert rc.main(["--out", str(tmp_path / "run"), "--case", "model=tiny,engine=nope"]) == 2
    assert "engine='nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_options_it_shares_with_pytest_bench_are_checked_alike(tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "run")]
    assert (
        rc.main([*out, "--case", "model=tiny", "--repeat", "0", "--gpu", "nope", "--case-timeout", "0"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("run_cases options:\n")
    for problem in (parse_repeat("0")[1], parse_gpu("nope")[2], case_timeout_problem(0)):
        assert f"  {problem}\n" in err  # the text pytest bench gives, every problem at once
    assert "--repeat '0' must be an integer >= 1" in err
    assert not (tmp_path / "run").exists()


def test_a_folder_another_session_holds_is_refused_before_any_run(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    with holding_run_dir(run_dir):
        assert rc.main(["--out", str(run_dir), "--case", "model=tiny"]) == 2
    assert "in use by another qlora-bench session" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written, the lock file gone
