"""The code fingerprint of a component: what goes into its cache key instead of a version string.

A component's output changes when its code changes, so its cache key holds a sha256 over
- the source of every file of its package (`pipeline_components/trainer/*.py` for the Trainer),
- the source of every first-party module those files import, transitively (`core/`,
  `trainer/export.py` for the Evaluator, `serving/` for the InfraValidator, ...), found by
  reading the files' `import` statements (imports inside functions included),
- the installed versions of the project's dependencies (a TensorFlow, Keras or Beam upgrade
  can change what a component computes).

Editing `trainer/export.py` therefore changes the Trainer's key and the keys of the components
downstream of it (their inputs' fingerprints change with the new model), while ExampleGen, which
imports nothing of the Trainer, stays cached. Comments count: the fingerprint cannot tell a
comment from a behaviour change, and a needless re-run is the safe mistake.

`SOURCE_ROOTS` maps each first-party top-level package to the directory its files are read
from; tests point it at a copied package to prove that an edit re-runs what it should.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys

FIRST_PARTY = ("pipeline_components", "serving")
DISTRIBUTION = "transfer-pipeline"

# top-level package -> directory holding its sources (None: where it is imported from)
SOURCE_ROOTS: dict[str, str | None] = {name: None for name in FIRST_PARTY}


def _package_dir(top: str) -> str | None:
    configured = SOURCE_ROOTS.get(top)
    if configured:
        return configured
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def module_file(module: str) -> str | None:
    """The source file of a first-party module (`a.b` -> `<root>/b.py` or `<root>/b/__init__.py`),
    None for anything else."""
    parts = module.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    root = _package_dir(parts[0])
    if root is None:
        return None
    base = os.path.join(root, *parts[1:])
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def imported_modules(path: str, module: str) -> set[str]:
    """First-party modules a source file imports (relative imports resolved)."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import mod` imports a module when `mod` is one
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def _module_name(path: str) -> str | None:
    """The dotted name of a first-party source file."""
    real = os.path.realpath(path)
    for top in FIRST_PARTY:
        root = _package_dir(top)
        if root is None:
            continue
        root = os.path.realpath(root)
        if real == root or real.startswith(root + os.sep):
            rel = os.path.relpath(real, root)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            return ".".join([top, *rel])
    return None


def source_closure(seeds: list[str]) -> dict[str, str]:
    """{module name: file} of the seed files and every first-party module they import,
    transitively (each package's __init__ included, as Python runs it on import)."""
    files: dict[str, str] = {}
    pending = []
    for seed in seeds:
        name = _module_name(seed)
        if name is not None:
            pending.append((name, seed))
            continue
        # a file outside the first-party packages (a test's component, a plugin): it counts,
        # and so does what it imports of ours
        files[f"<{os.path.basename(seed)}>"] = seed
        for dep in imported_modules(seed, ""):
            if (dep_file := module_file(dep)) is not None:
                pending.append((dep, dep_file))
    while pending:
        name, path = pending.pop()
        if name in files:
            continue
        files[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for dep in [*parents, *imported_modules(path, name)]:
            if dep not in files and (dep_file := module_file(dep)) is not None:
                pending.append((dep, dep_file))
    return files


@functools.lru_cache(maxsize=1)
def dependency_versions() -> tuple[tuple[str, str], ...]:
    """(name, installed version) of the project's required distributions (extras left out)."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    versions = []
    for req in requires:
        if "extra ==" in req:
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        if not name:
            continue
        try:
            versions.append((name.group(0).lower(), importlib.metadata.version(name.group(0))))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name.group(0).lower(), "missing"))
    return tuple(sorted(set(versions)))


def seeds_for(module: str) -> list[str]:
    """The files a component's code starts from: every .py file of the package of the module
    that defines it (its config, spec, executor, present and internals), first-party or not (a
    plugin's package), or that module alone when it is in no package (a test's toy component)."""
    file = module_file(module)
    if file is None:
        file = getattr(sys.modules.get(module), "__file__", None)
        if not file:
            return []
    directory = os.path.dirname(file)
    if module.count(".") == 0:
        return [file]
    return sorted(
        os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".py")
    )


def code_fingerprint(module: str, extra_modules: tuple[str, ...] = ()) -> dict:
    """{"sha256", "files"} for the component defined in `module`, plus `extra_modules` it runs
    without importing them (see the module docstring)."""
    seeds = seeds_for(module)
    seeds += [path for m in extra_modules if (path := module_file(m)) is not None]
    named = source_closure(seeds)
    digest = hashlib.sha256()
    for name in sorted(named):
        with open(named[name], "rb") as f:
            digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    for dist, version in dependency_versions():
        digest.update(f"{dist}=={version}\0".encode())
    return {"sha256": digest.hexdigest(), "files": len(named)}
