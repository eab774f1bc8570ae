"""The image's runtime dependencies, installed into a venv (the Dockerfile's `deps` stage).

    python3 docker/install_deps.py --venv /opt/venv --extras "$EXTRAS"

Installs pyproject.toml's dependencies plus the chosen extras with the exact pins of
constraints.txt, then removes what the runtime never loads, and proves the rest consistent with
`pip check`, allowing only the gaps this file makes on purpose:

- An image without the `gpu` extra gets `tensorflow-cpu` (the same release, built without the
  CUDA kernels: ~0.6 GB smaller) in place of `tensorflow`; the distributions that ask for
  `tensorflow` by name (this project, tensorflow-serving-api) import the same `tensorflow` package.
- PRUNED distributions and PRUNED_PATHS: see their comments.

Nothing from the `test`, `bench` or `kfp` extras is installed (the runtime runs the compiled KFP
spec's `transfer-pipeline step` and needs no KFP SDK), and pip keeps no cache.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the image is 3.11, the tests may run on 3.10
    import tomli as tomllib

# Distributions the runtime never imports, removed after the install: name -> why.
PRUNED = {
    # TensorFlow's requirement for its own build tooling (API and stub generation); no module of
    # tensorflow, keras or this project imports `clang`.
    "libclang": "TensorFlow's build tooling",
    # Beam's Arrow/Parquet IO and BigQuery reads; `apache_beam` imports it only when present, and
    # the pipeline reads image folders and TFRecords. Kept with the `gcp` extra (BigQuery clients).
    "pyarrow": "Beam's Arrow and Parquet IO",
}
KEEP_WITH_EXTRA = {"pyarrow": "gcp"}
# Files inside installed packages the runtime never reads (globs relative to site-packages).
PRUNED_PATHS = [
    "tensorflow/include",  # C++ headers for compiling custom ops (tf.sysconfig.get_include)
    "nvidia/*/include",  # CUDA headers (the gpu extra): TensorFlow links the libraries only
    "nvidia/*/lib/*.a",  # static CUDA libraries, for linking; TensorFlow loads the .so files
    "numpy/**/tests",  # the packages' own test suites
    "matplotlib/tests",
    "h5py/tests",
]
# Packages whose shared libraries ship their full static symbol tables (.symtab: 240 MB of
# TensorFlow's 1 GB); the dynamic loader reads only .dynsym, so `strip --strip-unneeded` drops
# what only a debugger or linker reads. Not the `*.libs` folders auditwheel vendors: patchelf
# rewrote those, and strip breaks them ("ELF load command address/offset not page-aligned").
STRIPPED = ["tensorflow", "apache_beam"]
TENSORFLOW = "tensorflow"
TENSORFLOW_CPU = "tensorflow-cpu"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of each extra, in pyproject.toml's order; without
    the gpu extra, tensorflow's requirement names tensorflow-cpu at the same version."""
    project = pyproject["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    if "gpu" in extras:
        return wanted
    return [re.sub(rf"^{TENSORFLOW}(?=\s*[=<>!~\[;]|$)", TENSORFLOW_CPU, r) for r in wanted]


def pruned(extras: list[str]) -> list[str]:
    return [name for name in PRUNED if KEEP_WITH_EXTRA.get(name) not in extras]


def allowed_check_line(line: str, removed: list[str], cpu: bool) -> bool:
    """A `pip check` complaint this file causes on purpose."""
    m = re.match(r"^(\S+) \S+ requires (\S+), which is not installed\.$", line.strip())
    if not m:
        return False
    missing = canonical(m[2])
    return missing in map(canonical, removed) or (cpu and missing == TENSORFLOW)


def pip(venv: str, *args: str) -> str:
    """Run the venv's pip; its stdout for `pip check`, which exits 1 on any complaint."""
    out = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-m", "pip", *args],
        check=False,
        text=True,
        stdout=subprocess.PIPE if args[0] == "check" else None,
    )
    if out.returncode != 0 and args[0] != "check":
        sys.exit(f"install_deps: pip {args[0]} failed (exit {out.returncode})")
    return out.stdout or ""


def name_of(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9._-]+", requirement.strip())[0])  # type: ignore[index]


def install(venv: str, extras: list[str], pyproject_path: str, constraints: str) -> None:
    with open(pyproject_path, "rb") as f:
        wanted = requirements(tomllib.load(f), extras)
    cpu = "gpu" not in extras
    # tensorflow-serving-api asks for `tensorflow` by name: with its dependencies pip would add
    # the full CUDA-capable wheel beside tensorflow-cpu. Its other requirements are in `wanted`.
    no_deps = [r for r in wanted if cpu and name_of(r) == "tensorflow-serving-api"]
    common = ["install", "--no-cache-dir", "-c", constraints]
    pip(venv, *common, *[r for r in wanted if r not in no_deps])
    if no_deps:
        pip(venv, *common, "--no-deps", *no_deps)
    removed = pruned(extras)
    if removed:
        pip(venv, "uninstall", "--yes", *removed)
    site = glob.glob(os.path.join(venv, "lib", "python3.*", "site-packages"))[0]
    prune(site)
    strip_symbols(site)
    check(venv, extras)
    print(f"install_deps: {len(wanted)} requirements installed; removed {', '.join(removed)}")


def prune(site: str) -> None:
    for pattern in PRUNED_PATHS:
        for path in glob.glob(os.path.join(site, pattern), recursive=True):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)


def strip_symbols(site: str) -> None:
    strip = shutil.which("strip")
    if strip is None:
        sys.exit("install_deps: no `strip` (binutils) on PATH")
    libraries = [
        path
        for package in STRIPPED
        for path in glob.glob(os.path.join(site, package, "**", "*.so*"), recursive=True)
        if os.path.isfile(path) and not os.path.islink(path)
    ]
    subprocess.run([strip, "--strip-unneeded", *libraries], check=True)


def check(venv: str, extras: list[str]) -> None:
    """`pip check`, failing on any complaint but those this file causes on purpose."""
    removed, cpu = pruned(extras), "gpu" not in extras
    problems = [
        line
        for line in pip(venv, "check").splitlines()
        if not allowed_check_line(line, removed, cpu)
    ]
    if problems:
        sys.exit("install_deps: pip check: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", default="/opt/venv", help="an existing venv to install into")
    p.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml")
    p.add_argument("--pyproject", default="pyproject.toml")
    p.add_argument("--constraints", default="constraints.txt")
    p.add_argument("--print-requirements", action="store_true", help="print them, install none")
    p.add_argument("--check", action="store_true", help="only run the venv's pip check")
    args = p.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e.strip()]
    if args.print_requirements:
        with open(args.pyproject, "rb") as f:
            print("\n".join(requirements(tomllib.load(f), extras)))
    elif args.check:
        check(args.venv, extras)
    else:
        install(args.venv, extras, args.pyproject, args.constraints)


if __name__ == "__main__":
    main()
