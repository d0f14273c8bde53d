"""An offline bundle for a GPU runner that reaches no package index (air-gapped hardware runners).

`build BUNDLE --runner-packages FILE --cuda N` on a connected machine, `install BUNDLE` on the
runner. Only the standard library and `packaging` are needed (both present wherever pip is), so
the script runs before the project is installed. See docs/offline.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
WHEELS = "wheels"
MANIFEST_VERSION = 1
_PIP = (sys.executable, "-m", "pip")
_MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014")
_BNB_LIBRARY = re.compile(r"^bitsandbytes/libbitsandbytes_(?P<kind>[a-z]+)(?P<ver>\d*)[^/]*$")


class BundleError(RuntimeError):
    """The bundle cannot be built or installed; the message says what to do."""


# -- what the runner has ------------------------------------------------------------------------
def read_runner_packages(path: Path) -> dict[str, str | None]:
    """`pip list --format=freeze` / `pip freeze` output -> {canonical name: version or None}.

    A bare name (no `==`) means "present, any version": package lists published without versions
    can be used as they are. Editable and URL lines keep their name and no version.
    """
    have: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if " @ " in line:
            have[canonicalize_name(line.split(" @ ", 1)[0])] = None
        elif "==" in line:
            name, version = line.split("==", 1)
            have[canonicalize_name(name)] = version.strip()
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            have[canonicalize_name(line)] = None
        else:
            raise BundleError(f"{path}: cannot read line {raw!r}; expected NAME==VERSION or NAME")
    return have


def satisfied(requirement: Requirement, have: dict[str, str | None]) -> bool:
    """True when the runner's package satisfies `requirement` (a bare name satisfies any)."""
    name = canonicalize_name(requirement.name)
    if name not in have:
        return False
    version = have[name]
    if version is None or not requirement.specifier:
        return True
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def applies(requirement: Requirement, python_version: str) -> bool:
    """Whether a requirement's marker holds on a Linux x86-64 runner with `python_version`."""
    if requirement.marker is None:
        return True
    env: dict[str, Any] = dict(default_environment())
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        extra="",
    )
    return requirement.marker.evaluate(env)


def project_requirements() -> list[Requirement]:
    """qlora-bench's declared dependencies, from its pyproject.toml (the one source)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    if block is None:
        raise BundleError(f"{ROOT / 'pyproject.toml'} has no [project] dependencies list")
    return [Requirement(m) for m in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)]


def real_model_requirement() -> Requirement:
    """The real model's wheel, as the model registry pins it."""
    sys.path.insert(0, str(ROOT))
    from qlora_core.models import REAL_MODEL_WHEEL  # torch-free registry

    return Requirement(REAL_MODEL_WHEEL)


# -- building -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The runner's interpreter and CUDA runtime."""

    python_version: str = "3.12"
    cuda_major: str = "13"

    def platforms(self) -> list[str]:
        return [f"{tag}_x86_64" for tag in _MANYLINUX] + ["linux_x86_64", "any"]


def wheel_requirements(wheel: Path, python_version: str) -> list[Requirement]:
    """The Requires-Dist entries of a wheel that apply on the target (no extras)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    out = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if applies(requirement, python_version):
                out.append(requirement)
    return out


def download(requirement: Requirement, target: Target, dest: Path) -> Path:
    """pip-download one wheel for the target platform (no dependencies) and return its path."""
    before = set(dest.glob("*.whl"))
    cmd = [*_PIP, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--python-version", target.python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in target.platforms():
        cmd += ["--platform", platform]
    done = subprocess.run([*cmd, str(requirement)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BundleError(f"pip could not download {requirement}:\n{done.stderr.strip()[-1500:]}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if new:
        return new[0]
    # Already there from an earlier requirement: find it by name.
    name = canonicalize_name(requirement.name)
    found = [w for w in dest.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) == name]
    if not found:
        raise BundleError(f"pip reported success for {requirement} but no wheel appeared in {dest}")
    return found[0]


def collect(
    requirements: list[Requirement], have: dict[str, str | None], target: Target, dest: Path
) -> list[Path]:
    """Download every requirement the runner lacks, and recursively what those need."""
    wheels: list[Path] = []
    seen: set[str] = set()
    queue = list(requirements)
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in seen or satisfied(requirement, have) or not applies(requirement, target.python_version):
            continue
        seen.add(name)
        wheel = download(requirement, target, dest)
        wheels.append(wheel)
        queue += wheel_requirements(wheel, target.python_version)
    return wheels


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _keep_library(kind: str, version: str, cuda_major: str) -> bool:
    return kind == "cpu" or (kind == "cuda" and version.startswith(cuda_major))


def strip_bitsandbytes(wheel: Path, cuda_major: str) -> list[str]:
    """Keep only the CPU library and CUDA `cuda_major`'s in a bitsandbytes wheel; returns the kept ones.

    The full wheel carries a library for every CUDA runtime (~100 MB); a runner loads one. The
    RECORD is rewritten so that the slimmer wheel still installs and verifies.
    """
    kept: list[str] = []
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            if info.filename == record:
                continue
            match = _BNB_LIBRARY.match(info.filename)
            if match and not (
                match["kind"] == "cpu" or (match["kind"] == "cuda" and match["ver"].startswith(cuda_major))
            ):
                continue
            if match:
                kept.append(info.filename)
            data = src.read(info.filename)
            dst.writestr(info, data)
            lines.append(_record_line(info.filename, data))
        dst.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
    if not any(_BNB_LIBRARY.match(k)["kind"] == "cuda" for k in kept):  # type: ignore[index]
        tmp.unlink()
        raise BundleError(f"{wheel.name} has no library for CUDA {cuda_major}; pick another --cuda")
    os.replace(tmp, wheel)
    return kept


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(out: Path, target: Target, have: dict[str, str | None], runner_packages: str) -> dict:
    """Fill `out` with the wheels the runner lacks and a manifest; returns the manifest."""
    wheels_dir = out / WHEELS
    wheels_dir.mkdir(parents=True, exist_ok=True)
    wheels = collect(project_requirements(), have, target, wheels_dir)
    # The real model's wheel is data the suite pip-downloads with --no-deps, never installed:
    # its own requirements (a llama.cpp runtime) are not walked.
    wheels.append(download(real_model_requirement(), target, wheels_dir))
    notes = []
    for wheel in wheels:
        if canonicalize_name(wheel.name.split("-")[0]) == "bitsandbytes":
            kept = strip_bitsandbytes(wheel, target.cuda_major)
            notes.append(f"bitsandbytes libraries kept: {', '.join(Path(k).name for k in kept)}")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "python_version": target.python_version,
        "cuda_major": target.cuda_major,
        "runner_packages": runner_packages,
        "notes": notes,
        "files": {f"{WHEELS}/{w.name}": sha256_of(w) for w in sorted(wheels)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- installing -----------------------------------------------------------------------------------
def verify(bundle: Path) -> dict:
    """The manifest, after checking that every file it lists is there with its sha256."""
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: not a bundle manifest ({error}); build the bundle first") from error
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise BundleError(
            f"{path}: manifest_version {manifest.get('manifest_version')!r}, expected {MANIFEST_VERSION}"
        )
    problems = []
    for name, expected in manifest["files"].items():
        file = bundle / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif sha256_of(file) != expected:
            problems.append(f"{name}: sha256 differs from the manifest (corrupt or partial copy)")
    if problems:
        raise BundleError(f"bundle {bundle} is not intact:\n  " + "\n  ".join(problems))
    return manifest


def install(bundle: Path, *, editable: bool = True) -> None:
    """Install qlora-bench from the bundle alone, then put the real model into the suite's cache."""
    verify(bundle)
    wheels = str((bundle / WHEELS).resolve())
    offline_env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheels}
    cmd = [*_PIP, "install", "--no-index", "--find-links", wheels, "--no-build-isolation"]
    cmd += ["-e", str(ROOT)] if editable else [str(ROOT)]
    subprocess.run(cmd, check=True, env=offline_env)
    # The registry's own download path, pointed at the bundle: the same code a connected user runs.
    code = "from qlora_core.models import REAL_MODEL; from qlora_core.models.resolve import resolve_model;"
    code += " print(resolve_model(REAL_MODEL, device='cpu').path)"
    subprocess.run([sys.executable, "-c", code], check=True, env=offline_env, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="on a connected machine: collect the wheels the runner lacks")
    b.add_argument("out", type=Path, metavar="BUNDLE")
    b.add_argument(
        "--runner-packages",
        type=Path,
        required=True,
        metavar="FILE",
        help="the runner's `python3 -m pip list --format=freeze` (bare names count as present)",
    )
    b.add_argument("--python", default="3.12", metavar="X.Y", help="the runner's Python. Default: 3.12.")
    b.add_argument(
        "--cuda", default="13", metavar="MAJOR", help="the runner's CUDA major version. Default: 13."
    )
    i = sub.add_parser("install", help="on the runner: install from BUNDLE with no package index")
    i.add_argument("bundle", type=Path, metavar="BUNDLE")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            if not re.fullmatch(r"3\.\d+", args.python):
                raise BundleError(f"--python {args.python!r}: expected X.Y, e.g. 3.12")
            if not args.cuda.isdigit():
                raise BundleError(f"--cuda {args.cuda!r}: expected a major version such as 12 or 13")
            have = read_runner_packages(args.runner_packages)
            manifest = build(args.out, Target(args.python, args.cuda), have, args.runner_packages.name)
            print(f"{args.out}: {len(manifest['files'])} wheels")
            for name in manifest["files"]:
                print(f"  {name}")
            for note in manifest["notes"]:
                print(f"  {note}")
        else:
            install(args.bundle)
    except BundleError as error:
        print(f"offline_bundle: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
