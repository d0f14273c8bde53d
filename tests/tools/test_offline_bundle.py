"""tools/offline_bundle.py: what goes into an air-gapped runner's bundle, and its integrity."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

_PATH = Path(__file__).resolve().parents[2] / "tools" / "offline_bundle.py"
_spec = importlib.util.spec_from_file_location("offline_bundle", _PATH)
assert _spec is not None and _spec.loader is not None
ob = importlib.util.module_from_spec(_spec)
sys.modules["offline_bundle"] = ob
_spec.loader.exec_module(ob)


def test_runner_packages_read_freeze_and_bare_names(tmp_path: Path) -> None:
    listing = tmp_path / "runner.txt"
    listing.write_text("torch==2.11.0\nPyYAML==6.0.2\n# comment\nsentencepiece\nfoo @ file:///x\n\n")
    have = ob.read_runner_packages(listing)
    assert have == {"torch": "2.11.0", "pyyaml": "6.0.2", "sentencepiece": None, "foo": None}
    listing.write_text("torch>=2\n")
    with pytest.raises(ob.BundleError, match="NAME==VERSION"):
        ob.read_runner_packages(listing)


def test_a_requirement_is_satisfied_only_by_a_matching_version() -> None:
    have = {"torch": "2.11.0", "trl": "0.9.0", "gguf": None}
    assert ob.satisfied(Requirement("torch>=2.11,<2.14"), have)
    assert not ob.satisfied(Requirement("torch>=2.12"), have)
    assert not ob.satisfied(Requirement("trl>=1.16"), have)  # present but too old: bundled
    assert ob.satisfied(Requirement("gguf>=0.17"), have)  # a bare name counts as present
    assert not ob.satisfied(Requirement("datasets"), have)


def test_markers_are_judged_for_the_runner_not_this_machine() -> None:
    assert ob.applies(Requirement("tomli; python_version < '3.11'"), "3.10")
    assert not ob.applies(Requirement("tomli; python_version < '3.11'"), "3.12")
    assert not ob.applies(Requirement("pywin32; sys_platform == 'win32'"), "3.12")
    assert not ob.applies(Requirement("pytest; extra == 'test'"), "3.12")


def test_project_requirements_come_from_pyproject() -> None:
    names = {r.name for r in ob.project_requirements()}
    assert {"torch", "bitsandbytes", "peft", "transformers"} <= names


def _fake_bnb_wheel(path: Path, libraries: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bitsandbytes/__init__.py", "")
        for lib in libraries:
            z.writestr(f"bitsandbytes/{lib}", b"\0" * 16)
        z.writestr("bitsandbytes-0.50.2.dist-info/METADATA", "Name: bitsandbytes\n")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "")
    return path


def test_bitsandbytes_keeps_cpu_and_the_runners_cuda_only(tmp_path: Path) -> None:
    libs = [
        "libbitsandbytes_cpu.so",
        "libbitsandbytes_cuda128.so",
        "libbitsandbytes_cuda130.so",
        "libbitsandbytes_cuda132.so",
        "libbitsandbytes_rocm72.so",
    ]
    wheel = _fake_bnb_wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", libs)
    kept = ob.strip_bitsandbytes(wheel, "13")
    assert sorted(Path(k).name for k in kept) == [
        "libbitsandbytes_cpu.so",
        "libbitsandbytes_cuda130.so",
        "libbitsandbytes_cuda132.so",
    ]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_rocm72.so" not in names
    # Every file left is in the rewritten RECORD, so pip installs the slimmer wheel.
    assert all(n in record for n in names)
    wheel = _fake_bnb_wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-any.whl", libs)
    with pytest.raises(ob.BundleError, match="CUDA 11"):
        ob.strip_bitsandbytes(wheel, "11")


def test_verify_refuses_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    wheel = tmp_path / "wheels" / "x-1-py3-none-any.whl"
    wheel.write_bytes(b"good")
    manifest = {
        "manifest_version": ob.MANIFEST_VERSION,
        "files": {"wheels/x-1-py3-none-any.whl": ob.sha256_of(wheel)},
    }
    (tmp_path / ob.MANIFEST).write_text(json.dumps(manifest))
    assert ob.verify(tmp_path)["files"]
    wheel.write_bytes(b"bad!")
    with pytest.raises(ob.BundleError, match="sha256 differs"):
        ob.verify(tmp_path)
    wheel.unlink()
    with pytest.raises(ob.BundleError, match="missing"):
        ob.verify(tmp_path)
    with pytest.raises(ob.BundleError, match="not a bundle manifest"):
        ob.verify(tmp_path / "nowhere")


def test_collect_downloads_only_what_the_runner_lacks(tmp_path: Path) -> None:
    """A real download from the package index: gguf is missing, its dependencies are present."""
    have = {"numpy": None, "pyyaml": None, "tqdm": None, "requests": None, "sentencepiece": None}
    wheels = ob.collect([Requirement("gguf>=0.17")], have, ob.Target("3.12", "13"), tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["gguf"]
    # The same walk with numpy missing brings numpy, for the runner's Python and platform.
    have.pop("numpy")
    wheels = ob.collect([Requirement("gguf>=0.17")], have, ob.Target("3.12", "13"), tmp_path)
    names = {w.name.split("-")[0] for w in wheels}
    assert names == {"gguf", "numpy"}
    numpy = next(w for w in wheels if w.name.startswith("numpy"))
    assert "cp312" in numpy.name and "x86_64" in numpy.name


def test_main_names_bad_arguments_before_any_download(tmp_path: Path, capsys) -> None:
    listing = tmp_path / "runner.txt"
    listing.write_text("torch==2.11.0\n")
    assert ob.main(["build", str(tmp_path / "b"), "--runner-packages", str(listing), "--python", "312"]) == 2
    assert "expected X.Y" in capsys.readouterr().err
    assert ob.main(["build", str(tmp_path / "b"), "--runner-packages", str(listing), "--cuda", "x"]) == 2
    assert "major version" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_real_models_wheel_comes_from_the_registry_without_torch() -> None:
    import subprocess

    code = (
        "import importlib.util, sys; s = importlib.util.spec_from_file_location('ob', sys.argv[1]);"
        " m = importlib.util.module_from_spec(s); sys.modules['ob'] = m; s.loader.exec_module(m);"
        " print(m.real_model_requirement()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(_PATH)], capture_output=True, text=True, check=True)
    requirement, torch_loaded = out.stdout.split()
    from qlora_core.models import REAL_MODEL_WHEEL

    assert requirement == REAL_MODEL_WHEEL
    assert torch_loaded == "False"  # the bundle is built before the project's dependencies exist
