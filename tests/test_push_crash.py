"""A push is correct after a crash at any point (issue 26, defect 2).

Every write of the push sequence is failed in turn (fsutil's write hook): once as an error at that
write (the Pusher's own cleanup and repair run), once as a crash (that write and every later one
fail, so no cleanup reaches the disk: what a kill -9 leaves). Then the Pusher's next execution, and
separately `transfer-pipeline versions`, repair it; afterwards every client view agrees (the
latest version, each label in models.config, the registry) and nothing is left over. A poller
watches the base path throughout: no version directory is ever visible half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evalfixtures import export_threshold_model
from pipeline_components import cli
from pipeline_components.core import artifacts, fsutil
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher import journal
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.pusher.versions import ModelVersions
from serving.model_config import load_model_config_file

pytestmark = pytest.mark.timeout(600)
MODEL = "m"


class InjectedFault(OSError):
    pass


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [export_threshold_model(root / name, t) for name, t in (("a", 0.3), ("b", 0.6))]


def bless(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / f"blessing-{model.name}.json"
    fp = fsutil.tree_fingerprint(str(model))
    path.write_text(json.dumps({"blessed": True, "accuracy": 0.9, "model_fingerprint": fp}))
    return path


def push(serving: Path, model: Path, blessing: Path, keep: int = 1) -> dict:
    return pusher.run_pusher(
        str(model),
        str(blessing),
        None,
        PusherConfig(keep_versions=keep),
        serving_dir=str(serving),
        model_name=MODEL,
        run_id="run-b",
    )


def relative_sizes(path: str) -> dict[str, int]:
    """{relative path: size} of the files under path; one deleted meanwhile is left out."""
    sizes = {}
    for d, _dirs, files in os.walk(path):
        for n in files:
            with contextlib.suppress(FileNotFoundError):
                full = os.path.join(d, n)
                sizes[os.path.relpath(full, path)] = os.lstat(full).st_size
    return sizes


class Poller(threading.Thread):
    """Watches a base path like TF Serving: a directory named by digits that holds
    saved_model.pb is a version, and must then hold one of the models, whole."""

    def __init__(self, base: Path, models: list[Path]):
        super().__init__(daemon=True)
        self.base, self.stop = base, threading.Event()
        self.whole = [relative_sizes(str(m)) for m in models]
        self.half: list[str] = []
        self.looks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e

    def _watch(self) -> None:
        while not self.stop.is_set():
            names = os.listdir(self.base) if self.base.is_dir() else []
            for name in names:
                path = self.base / name
                if not artifacts.VERSION_DIR.fullmatch(name):
                    continue
                seen = relative_sizes(str(path))
                # checked after the walk: deletion removes saved_model.pb first, so a version
                # that still has it now had it, untouched, during the whole walk
                if (path / "saved_model.pb").exists() and seen not in self.whole:
                    self.half.append(f"{name}: {sorted(seen)}")
                self.looks += 1
            time.sleep(0.001)


def client_view(serving: Path) -> dict:
    """What clients get, read the way the server reads it, checked against the registry."""
    base = serving / MODEL
    registry = json.loads((serving / "_versions" / f"{MODEL}.json").read_text())
    assert "pending" not in registry, registry["pending"]
    served = artifacts.served_versions(str(base))
    assert sorted(os.listdir(base)) == sorted(map(str, served)), "only complete versions"
    prints = {v: fsutil.tree_fingerprint(p) for v, p in served.items()}
    for v, fp in prints.items():
        entry = registry["versions"][str(v)]
        assert (entry["state"], entry["fingerprint"]) == ("served", fp), entry
    assert {int(k) for k, e in registry["versions"].items() if e["state"] == "served"} == set(
        served
    )
    (config,) = load_model_config_file(str(serving / "models.config"))
    assert config.name == MODEL and config.policy == "all"
    assert config.labels == registry["labels"], (config.labels, registry["labels"])
    assert set(config.labels.values()) <= set(served), "a label on a missing version"
    latest = max(served)
    assert config.labels["stable"] == latest, f"latest {latest}, labels {config.labels}"
    leftovers = [
        str(p.relative_to(serving))
        for p in serving.rglob("*")
        if fsutil.TEMPORARY.fullmatch(p.name) or p.name.startswith(".claim-")
    ]
    assert not leftovers and not (serving / ".staging").exists(), leftovers
    return {"latest": latest, "fingerprint": prints[latest], "labels": config.labels}


def fail_at(k: int, crash: bool, log: list):
    """A write hook: the k-th write raises; with crash=True every later one too."""
    count = {"n": 0}

    def hook(op: str, path: str) -> None:
        count["n"] += 1
        if count["n"] == k or (crash and count["n"] > k):
            log.append((count["n"], op, path))
            raise InjectedFault(f"injected failure of write {count['n']}: {op} {path}")

    return hook


def test_every_write_of_the_push_failed_in_turn_is_repaired(models, tmp_path, capsys):
    a, b = models
    fp_b = fsutil.tree_fingerprint(str(b))
    blessing = bless(tmp_path, b)
    template = tmp_path / "template"
    push(template, a, bless(tmp_path, a))  # version 1, stable
    # the writes of one push of B over that state
    record = tmp_path / "record"
    shutil.copytree(template, record)
    writes: list[tuple[str, str]] = []
    with fsutil.write_hook(lambda op, path: writes.append((op, os.path.relpath(path, record)))):
        assert push(record, b, blessing)["version"] == 2
    assert client_view(record)["fingerprint"] == fp_b
    print(f"{len(writes)} writes:", *(f"{i}. {op} {p}" for i, (op, p) in enumerate(writes, 1)))
    ops = [op for op, _ in writes]
    assert "rename" in ops and "copy" in ops and "remove" in ops  # version, retention of 1
    outcomes = {"finished": 0, "rolled_back": 0}
    for k in range(1, len(writes) + 1):
        for crash in (False, True):
            where = f"write {k} ({writes[k - 1][0]} {writes[k - 1][1]}), crash={crash}"
            serving = tmp_path / f"s{k}{'c' if crash else 'e'}"
            shutil.copytree(template, serving)
            poller = Poller(serving / MODEL, [a, b])
            poller.start()
            injected: list = []
            try:
                with fsutil.write_hook(fail_at(k, crash, injected)), pytest.raises(InjectedFault):
                    push(serving, b, blessing)
                assert injected, where
                registry = json.loads((serving / "_versions" / f"{MODEL}.json").read_text())
                interrupted = "pending" in registry
                if not crash:  # an error, not a crash: the failing Pusher repaired at once
                    assert not interrupted, where
                    client_view(serving)
                by_cli = tmp_path / f"v{k}{'c' if crash else 'e'}"
                shutil.copytree(serving, by_cli)
                # the Pusher's next execution repairs, then pushes B only if it is not served
                again = push(serving, b, blessing)
                actions = [r["action"] for r in again.get("repaired", [])]
                if interrupted:
                    assert {"finished", "rolled_back"} & set(actions), (where, actions)
                view = client_view(serving)
                assert view["fingerprint"] == fp_b and view["latest"] == 2, (where, view)
                # `transfer-pipeline versions` repairs the same state and says so
                capsys.readouterr()
                assert (
                    cli.main(["versions", "--serving-dir", str(by_cli), "--model-name", MODEL]) == 0
                )
                out = capsys.readouterr().out
                view = client_view(by_cli)
                if interrupted:
                    assert "repaired: finished" in out or "repaired: rolled back" in out, out
                    finished = "repaired: finished" in out
                    outcomes["finished" if finished else "rolled_back"] += 1
                    assert view["latest"] == (2 if finished else 1), (where, out)
                    assert (view["fingerprint"] == fp_b) == finished, where
                assert push(by_cli, b, blessing)["version"] == 2  # then the push goes on
                assert client_view(by_cli)["fingerprint"] == fp_b, where
            finally:
                poller.stop.set()
                poller.join()
            assert poller.error is None and poller.looks > 0, (where, poller.error)
            assert not poller.half, (where, poller.half)
    # both repairs happen: before the rename a push is rolled back, after it finished
    assert outcomes["finished"] and outcomes["rolled_back"], outcomes


def test_registry_write_failing_after_the_rename_is_repaired_by_the_next_push(
    models, tmp_path, monkeypatch
):
    """The audit's case: every write after the version directory appeared fails. The next
    push must not call the split state "already served": it finishes the push."""
    a, b = models
    serving = tmp_path / "serving"
    push(serving, a, bless(tmp_path, a), keep=3)
    real = fsutil.write_atomic

    def fails_once_version_2_exists(path, data):
        if (serving / MODEL / "2").exists():
            raise InjectedFault(f"disk full writing {path} (injected)")
        return real(path, data)

    monkeypatch.setattr(fsutil, "write_atomic", fails_once_version_2_exists)
    with pytest.raises(InjectedFault):
        push(serving, b, bless(tmp_path, b), keep=3)
    monkeypatch.undo()
    assert (serving / MODEL / "2" / "saved_model.pb").exists()  # served as the latest already
    again = push(serving, b, bless(tmp_path, b), keep=3)
    view = client_view(serving)
    assert view["latest"] == 2 and view["labels"] == {"stable": 2}
    assert view["fingerprint"] == fsutil.tree_fingerprint(str(b))
    assert [r["action"] for r in again["repaired"]] == ["finished"]
    assert "finished the interrupted push of version 2" in again["repaired_text"][0]


KILLER = """
import os, signal, sys
from pipeline_components import cli
from pipeline_components.core import fsutil

def hook(op, path):  # a real SIGKILL at the first write after the version is in place
    if op == "write" and os.path.isdir(os.path.join(sys.argv[1], "m", "2")):
        os.kill(os.getpid(), signal.SIGKILL)

with fsutil.write_hook(hook):
    cli.main(sys.argv[2:])
"""


def test_kill_9_mid_push_is_finished_by_the_next_push(models, tmp_path, capsys):
    a, b = models
    serving = tmp_path / "serving"
    push(serving, a, bless(tmp_path, a), keep=3)
    argv = ["push", "--model", str(b), "--blessing", str(bless(tmp_path, b))]
    argv += ["--serving-dir", str(serving), "--model-name", MODEL, "--output", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(serving), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    lock = serving / "_versions" / f"{MODEL}.json.lock"
    assert lock.exists(), "the killed pusher's lock is left behind (its pid is gone)"
    registry = json.loads((serving / "_versions" / f"{MODEL}.json").read_text())
    assert registry["pending"]["version"] == 2 and registry["labels"] == {"stable": 1}
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "repaired: finished the interrupted push of version 2 as stable" in out
    assert "not pushed: identical to version 2" in out  # finished by the repair, not pushed twice
    record = json.loads((tmp_path / "push.json").read_text())
    assert record["repaired"][0]["action"] == "finished" and record["labels"] == {"stable": 2}
    view = client_view(serving)
    assert view["latest"] == 2 and view["fingerprint"] == fsutil.tree_fingerprint(str(b))


def test_versions_never_repairs_a_push_in_progress(models, tmp_path, capsys):
    """A journal whose pusher still holds the lock is a push in progress: `versions` lists
    what is there and says so, and leaves it to that pusher."""
    a, b = models
    serving = tmp_path / "serving"
    push(serving, a, bless(tmp_path, a), keep=3)
    registry = ModelVersions(str(serving), MODEL)
    with registry.locked("transfer-pipeline push", "run-live") as held:
        intent = {"version": 2, "fingerprint": "f" * 64, "label": "stable", "keep_versions": 3}
        journal.begin(held, {**intent, "run_id": "run-live"})
        capsys.readouterr()
        assert cli.main(["versions", "--serving-dir", str(serving), "--model-name", MODEL]) == 0
        out, err = capsys.readouterr()
        assert "a push of version 2 is in progress (run run-live)" in out
        assert "not repaired:" in err and "is locked by run run-live" in err
        assert "repaired:" not in out
    assert json.loads((serving / "_versions" / f"{MODEL}.json").read_text())["pending"]
