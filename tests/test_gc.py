"""What a dead run left is removed by `transfer-pipeline gc` and by the next run (issue 26,
defect 5b); the interrupted Trainer stays resumable; nothing is collected while a run lives.
The slow test kills a real run with SIGKILL while the InfraValidator's server is up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline_components import cli
from pipeline_components.core import fsutil, locking, registry
from pipeline_components.orchestration import executions, runner


def write_config(tmp_path: Path, data_root: Path, **extra) -> Path:
    cfg = {
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data_root),
        "serving_dir": str(tmp_path / "serving"),
        "model_name": "m",
        "trainer": {"weights": "none", "image_size": [32, 32], "epochs": 1, "augmentation": None},
        **extra,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def put(path: Path, data: str | bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path.stat().st_size


def record(path: Path, component: str, eid: int, status: str, owner: int) -> None:
    put(
        path / component / f"{eid}.json",
        json.dumps(
            {
                "component": component,
                "execution_id": eid,
                "cache_key": f"key-{component}",
                "status": status,
                "run_id": "20260101-030000-dead",
                "output_dir": str(path / component / str(eid)),
                "owner": {"host": socket.gethostname(), "pid": owner},
            }
        ),
    )


def dead_root(tmp_path: Path) -> dict:
    """A pipeline_root and serving_dir as a run killed in its InfraValidator leaves them."""
    root, serving, dead = tmp_path / "root", tmp_path / "serving", dead_pid()
    garbage = 0  # bytes under root that must go
    lock = {"host": socket.gethostname(), "pid": dead, "run_id": "20260101-030000-dead"}
    put(root / "lock.json", json.dumps({**lock, "lease_expires": time.time() + 600}))
    record(root, "ExampleGen", 1, "completed", dead)
    put(root / "ExampleGen" / "1" / "stats.json", "{}")
    record(root, "Trainer", 2, "running", dead)  # resumable: kept
    put(root / "Trainer" / "2" / "checkpoints" / "ckpt", b"\0" * 1000)
    garbage += put(
        root / "Trainer" / "2" / ".saved_model.tmp-0123abcd" / "saved_model.pb", b"x" * 500
    )
    record(root, "InfraValidator", 3, "running", dead)
    garbage += put(root / "InfraValidator" / ".3.tmp-89abcdef" / "infra-x" / "server.log", "log")
    os.symlink(root / "Trainer" / "2", root / "InfraValidator" / ".3.tmp-89abcdef" / "link")
    record(root, "Pusher", 4, "running", dead)  # a non-resumable output written in place
    garbage += put(root / "Pusher" / "4" / "partial.json", "{")
    garbage += put(root / "Evaluator" / "5.json", "{}\n")  # claimed, never written
    garbage += put(root / "Evaluator" / ".5.json.tmp-feedf00d", "{")
    garbage += put(root / "Evaluator" / "6.json.0123456789ab.tmp", "{}")
    run = root / "runs" / "20260101-030000-dead"
    put(run / "run.json", json.dumps({"run_id": run.name, "status": "running"}))
    put(run / "steps" / "Trainer.json", json.dumps({"status": "running"}))
    garbage += put(run / ".run.json.tmp-00112233", "{")
    put(serving / "m" / "1" / "saved_model.pb", b"model")
    in_serving = put(serving / "m" / ".2.tmp-44556677" / "variables" / "v", b"y" * 300)
    in_serving += put(serving / "m" / ".claim-2", "")
    return {
        "root": root,
        "serving": serving,
        "garbage": garbage,
        "in_serving": in_serving,
        "run": run,
    }


def test_gc_removes_what_a_dead_run_left_and_keeps_the_trainer_resumable(tmp_path, capsys):
    made = dead_root(tmp_path)
    root = made["root"]
    path = write_config(tmp_path, tmp_path / "data")
    assert cli.main(["gc", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"cleanup: removed 7 path(s), {made['garbage']} bytes" in out, out
    leftovers = [p for p in (root.rglob(".*")) if "tmp" in p.name] + list(root.rglob("*.tmp"))
    leftovers += [p for p in (made["serving"] / "m").iterdir() if p.name != "1"]
    assert not leftovers, leftovers
    assert (root / "Trainer" / "2" / "checkpoints" / "ckpt").exists(), "resumable: kept"
    assert not (root / "Pusher" / "4").exists() and not (root / "Evaluator" / "5.json").exists()
    assert (root / "ExampleGen" / "1" / "stats.json").exists()
    for component, eid in (("Trainer", 2), ("InfraValidator", 3), ("Pusher", 4)):
        rec = json.loads((root / component / f"{eid}.json").read_text())
        assert rec["status"] == "failed" and rec["abandoned"]["by_run"] == "transfer-pipeline gc"
    for rec_path in (made["run"] / "run.json", made["run"] / "steps" / "Trainer.json"):
        assert json.loads(rec_path.read_text())["status"] == "failed"
    # the interrupted Trainer is what the next run with the same inputs resumes
    found = executions.find_execution(str(root / "Trainer"), "key-Trainer", ("running", "failed"))
    assert found["execution_id"] == 2
    assert (made["serving"] / "m" / "1" / "saved_model.pb").read_bytes() == b"model"
    assert "marked" in out and "kept for the next run to resume" in out
    assert (
        f"serving: removed 2 leftover(s) of interrupted pushes ({made['in_serving']} bytes)" in out
    )
    assert cli.main(["gc", "--config", str(path)]) == 0  # nothing left the second time
    assert "cleanup: removed 0 path(s), 0 bytes" in capsys.readouterr().out


def test_gc_refuses_while_a_live_run_holds_the_root(tmp_path, capsys):
    made = dead_root(tmp_path)
    path = write_config(tmp_path, tmp_path / "data")
    with locking.hold(str(made["root"]), "20260102-030000-live", "transfer-pipeline run"):
        assert cli.main(["gc", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is locked by run 20260102-030000-live" in err
    assert (made["root"] / "InfraValidator" / ".3.tmp-89abcdef").exists(), "nothing collected"
    assert json.loads((made["run"] / "run.json").read_text())["status"] == "running"


def test_the_next_run_collects_first_and_says_so_in_run_json(tmp_path):
    made = dead_root(tmp_path)
    cfg = registry.load_config(str(write_config(tmp_path, tmp_path / "no-such-data")))
    with pytest.raises(runner.RunFailed) as failed:  # fails on its data, after collecting
        runner.run_pipeline(cfg)
    cleanup = failed.value.record["cleanup"]
    assert cleanup["bytes_freed"] == made["garbage"]
    assert cleanup["serving"][0]["bytes"] == made["in_serving"]
    assert {a["component"] for a in cleanup["abandoned"] if "component" in a} == {
        "Trainer",
        "InfraValidator",
        "Pusher",
    }
    assert [s["action"] for s in cleanup["serving"]] == ["removed_leftovers"]
    assert not (made["root"] / "InfraValidator" / ".3.tmp-89abcdef").exists()


# ------------------------------------------------------------ kill -9 of a real run (slow)


def marked(marker: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose environment carries the marker, with their cmdline."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"KILL_TEST_MARKER={marker}".encode() not in environ:
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found.append((int(entry.name), cmd))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_infra_validation_leaves_no_process_and_the_rerun_cleans(
    make_dataset, tmp_path
):
    data = make_dataset(per_split=(6, 2, 2))
    path = write_config(
        tmp_path,
        data,
        evaluator={"min_accuracy": 0.0, "max_regression": 1.0},
        infra_validator={"num_examples": 2},
    )
    marker = uuid.uuid4().hex
    env = {**os.environ, "KILL_TEST_MARKER": marker, "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [sys.executable, "-m", "pipeline_components.cli", "run", "--config", str(path)]
    run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not [p for p, cmd in marked(marker) if " serve " in cmd]:
            assert run.poll() is None, run.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the InfraValidator's server never started"
            time.sleep(0.2)
        os.kill(run.pid, signal.SIGKILL)  # the run alone: its server must follow by itself
        run.wait()
        time.sleep(5)
        assert marked(marker) == [], "processes of the killed run are still alive"
    finally:
        for pid, _ in marked(marker):
            os.kill(pid, signal.SIGKILL)
        run.kill()
    root = tmp_path / "root"
    left = list(root.glob("InfraValidator/.*.tmp-*"))
    assert left, "the kill left the InfraValidator's temporary output (the test's premise)"
    # what it holds this early: the staged candidate (a symlink) and the server's log, often
    # still empty, so its size may be 0 bytes; gc reports what it measured
    size = fsutil.tree_bytes(str(left[0]))
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "cleanup: removed" in rerun.stderr
    newest = max((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    record = json.loads((newest / "run.json").read_text())
    assert record["status"] == "completed" and record["push"]["pushed"]
    cleanup = record["cleanup"]
    assert {"path": str(left[0]), "bytes": size} in cleanup["removed"]
    assert cleanup["bytes_freed"] == sum(r["bytes"] for r in cleanup["removed"])
    assert {a.get("component") for a in cleanup["abandoned"]} >= {"InfraValidator", None}
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], "a temporary is left"
    assert not list((tmp_path / "serving" / "m").glob(".*")), "a claim or temporary is left"
    for rec in [*root.glob("*/*.json"), *root.glob("runs/*/run.json")]:
        assert json.loads(rec.read_text()).get("status") != "running", rec
