"""Wheels that let scripts/gpu_smoke.sh run on a GPU machine that reaches no package registry.

Run here (a machine with PyPI and the project's .venv), through scripts/gpu_smoke_wheels.sh:

    .venv/bin/python scripts/gpu_wheels.py --out .whl [--list]

1. The dependency closure of what the smoke run imports (deepspeed, ray[default,train], omegaconf, lpips,
   webdataset) is walked through the requirements of the versions installed in this .venv (the
   combination the test suite passes with), with environment markers evaluated for the GPU machine's
   CPython 3.12 on x86-64 Linux. Packages that machine already has (scripts/gpu_machine_packages.txt)
   are left out, and so are py-spy and virtualenv, which Ray only runs for profiling and pip runtime
   environments.
2. Each one is fetched with `pip download --no-deps` for that platform; a package published as source
   only (DeepSpeed) is built here into a pure-Python wheel instead (its ops are JIT-compiled at run time).
3. Ray's wheel (79.3 MB for cp312, over the device tool's 64 MiB working-tree limit on its own) is
   repacked without its Java jars, RLlib and JavaScript source maps, which Ray Train never loads.
s3fs is left out on purpose: it is imported only for s3:// paths, which the smoke run does not use.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata as md
import os
import subprocess
import sys
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = (("deepspeed", ()), ("ray", ("default", "train")), ("omegaconf", ()), ("lpips", ()), ("webdataset", ()))
EXCLUDED = {"py-spy", "virtualenv"}  # Ray starts without them: profiling / pip runtime_env only
# Carried even though the GPU machine has them, at the versions tested here: Ray's and OpenTelemetry's
# generated protobuf code checks the protobuf runtime's version at import, and pydantic-core needs a recent
# typing-extensions. Both are small and backward compatible; which versions the machine has is not listed.
FORCED = ("protobuf", "typing-extensions")
RAY_DROPPED = ("ray/jars/", "ray/rllib/")  # Java workers and RLlib: never imported by Ray Train
BUDGET_MB = 60  # the device tool carries 64 MiB of working tree in all; the repository takes ~1 MB
HERE = os.path.dirname(os.path.abspath(__file__))


def target_env(python: str) -> dict:
    """PEP 508 marker values of the GPU machine (KINDS.md: CPython 3.12.3, x86-64 Linux)."""
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{python}.0", "platform_release": "", "platform_version": ""}


def read_present(path: str) -> set:
    """Canonical names of the packages the GPU machine already has (one a line, # comments)."""
    with open(path) as f:
        return {canonicalize_name(line.strip()) for line in f if line.strip() and not line.startswith("#")}


def applies(req: Requirement, extras: tuple, env: dict) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or ("",)))


def closure(present: set, env: dict, roots=ROOTS) -> dict:
    """{canonical name: version installed here} of every dependency the GPU machine lacks."""
    need = {canonicalize_name(name): md.version(name) for name in (*(n for n, _ in roots), *FORCED)}
    todo = [(name, extras) for name, extras in roots]
    while todo:
        name, extras = todo.pop()
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            key = canonicalize_name(req.name)
            if key in present or key in need or key in EXCLUDED or not applies(req, extras, env):
                continue
            need[key] = md.version(req.name)  # a missing one raises: install the project first (scripts/setup.sh)
            todo.append((req.name, tuple(req.extras)))
    return need


def _platforms() -> list:
    # pip matches manylinux_2_N exactly (device README), so every glibc up to Ubuntu 24.04's 2.39 is named.
    tags = ["manylinux1_x86_64", "manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def have(name: str, version: str, out: str) -> bool:
    """A wheel of exactly name==version is already in `out` (a re-run fetches only what is new)."""
    for path in glob.glob(os.path.join(out, "*.whl")):
        dist, ver = os.path.basename(path).split("-")[:2]
        if canonicalize_name(dist) == name and ver == version:
            return True
    return False


def fetch(name: str, version: str, out: str, python: str) -> None:
    """A binary wheel for the GPU machine, or (source-only packages) a pure-Python wheel built here."""
    if have(name, version, out):
        return
    pip = [sys.executable, "-m", "pip", "-q"]
    spec = f"{name}=={version}"
    download = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", python,
                      "--implementation", "cp", *_platforms(), "-d", out, spec]
    if subprocess.run(download, capture_output=True).returncode == 0:
        return
    # DeepSpeed ships only an sdist; built without DS_BUILD_OPS it is py3-none-any (ops JIT-built later).
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", out, spec], check=True)


def slim_ray(out: str) -> None:
    """Rewrite Ray's wheel without RAY_DROPPED and *.map files, its RECORD to match."""
    for path in glob.glob(os.path.join(out, "ray-*.whl")):
        with zipfile.ZipFile(path) as src:
            if not any(n.startswith(RAY_DROPPED) or n.endswith(".map") for n in src.namelist()):
                continue  # slimmed by an earlier run
        tmp = path + ".tmp"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
            for info in src.infolist():
                if info.filename.startswith(RAY_DROPPED) or info.filename.endswith(".map"):
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    data = _filtered_record(data)
                dst.writestr(info, data, compresslevel=9)
        os.replace(tmp, path)


def _filtered_record(data: bytes) -> bytes:
    keep = [line for line in data.decode().splitlines()
            if not line.startswith(RAY_DROPPED) and not line.split(",")[0].endswith(".map")]
    return ("\n".join(keep) + "\n").encode()


def remove_stale(need: dict, out: str) -> None:
    """Delete wheels of other versions or packages: pip --no-deps stops at two versions of one package."""
    for path in glob.glob(os.path.join(out, "*.whl")):
        dist, ver = os.path.basename(path).split("-")[:2]
        if need.get(canonicalize_name(dist)) != ver:
            print(f"gpu_wheels: removing {os.path.basename(path)} (not in the list)", file=sys.stderr)
            os.remove(path)


def total_mb(out: str) -> float:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "*.whl"))) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".whl", help="folder for the wheels (ignored by git; pass it to `run` as carry)")
    p.add_argument("--present", default=os.path.join(HERE, "gpu_machine_packages.txt"))
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (KINDS.md: 3.12.3)")
    p.add_argument("--list", action="store_true", help="print the name==version list only, download nothing")
    args = p.parse_args(argv)
    need = closure(read_present(args.present), target_env(args.python))
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in sorted(need.items())))
        return 0
    os.makedirs(args.out, exist_ok=True)
    for name, version in sorted(need.items()):
        print(f"gpu_wheels: {name}=={version}", file=sys.stderr)
        fetch(name, version, args.out, args.python)
    remove_stale(need, args.out)
    slim_ray(args.out)
    size = total_mb(args.out)
    print(f"gpu_wheels: {len(need)} packages, {size:.1f} MB in {args.out}")
    if size > BUDGET_MB:
        print(f"gpu_wheels: {size:.1f} MB is over the {BUDGET_MB} MB the device tool can carry: remove stale wheels from {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
