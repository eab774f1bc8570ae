"""Run every benchmark, then write one results.json and one Markdown table of the headline ratios.

    python -m benchmarks [--quick | --smoke] [--only NAME ...] [--out DIR] [--in-process]

Benchmarks: every module of this package that declares `BENCHMARK` (benchmarks/headline.py), in its
`order`; today example_gen, statistics_gen, input_pipeline, training, feature_stream, serving,
batch_inference, evaluator_gate, multi_worker. Each is its script's `run(quick)` followed by its
`report()`, exactly as `python -m benchmarks.<name>` does, and each runs in a fresh `python`
subprocess: TensorFlow fixes its thread pools at first use (the serving benchmark sets the server's
thread settings, which a process that already ran TensorFlow refuses), Keras and tf.data keep models
and caches for the life of a process, and a crash, a hang or an out-of-memory kill then costs one
benchmark, not the run. The price is ~5 s of imports each.

Writes <out>/results.json (every result, each benchmark's headline claims and its own Markdown
table), <out>/results.md (the headline table, then each benchmark's table) and, as each script
alone does, <out>/results/<name>.{json,md}; <out> defaults to this folder. A benchmark that fails
is reported as failed with its error, the others are still run and written, and the exit status
is 1. A missed goal is a result, not a failure: the exit status stays 0. `--only NAME` runs some
and keeps the other rows of the last results.json of the same mode.

The photo-like JPEGs come from one pool (benchmarks/common.photo_dataset) in the
benchmark cache (benchmarks/common.cache_dir), generated once, image by image, and hard-linked into
each script's dataset folder: example_gen, statistics_gen and input_pipeline use the same 500x375
images.

--quick: every benchmark's quick mode (under 3 minutes on 2 cores, data cached).
--smoke: smaller still, for the tests: proves that everything runs; the ratios mean nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable

from benchmarks import common, headline

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODES = ("full", "quick", "smoke")
DEFAULT_TIMEOUT_S = {"full": 3600, "quick": 900, "smoke": 900}

# TensorFlow's start-up lines (printed before its log level applies): kept out of the console.
NOISE = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|oneDNN custom operations"
    r"|absl::InitializeLog|computation placer|Unable to register cu(DNN|FFT|BLAS)"
)


BENCHMARKS = headline.discover()  # every script that declares BENCHMARK, in table order
SMOKE = {name: dict(b.smoke) for name, b in BENCHMARKS.items()}


# ---------------------------------------------------------------------------------------------
# Running one benchmark.


def run_kwargs(run: Callable, name: str, mode: str) -> dict:
    kwargs = {"quick": mode != "full"}
    if mode == "smoke":
        params = inspect.signature(run).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs.update({k: v for k, v in SMOKE.get(name, {}).items() if takes_any or k in params})
    return kwargs


def run_one(name: str, mode: str, out_dir: str) -> dict:
    """Run benchmark `name` in this process; writes out_dir/results/<name>.{json,md} and
    returns {"ok": True, "results", "markdown"} (its own Markdown table)."""
    module = importlib.import_module(BENCHMARKS[name].module)
    results = module.run(**run_kwargs(module.run, name, mode))
    text, markdown = module.report(results)
    print(text, flush=True)
    common.write_results(name, results, markdown, os.path.join(out_dir, "results"))
    return {"ok": True, "results": results, "markdown": markdown}


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def child_main(name: str, mode: str, out_dir: str, outcome_path: str) -> int:
    """The subprocess: run one benchmark, leave {"ok", "results" | "error"} in outcome_path."""
    try:
        outcome = run_one(name, mode, out_dir)
    except Exception as e:
        traceback.print_exc()
        outcome = {"ok": False, "error": describe(e)}
    except SystemExit as e:  # a script may exit with a message (input_pipeline without scipy)
        outcome = {"ok": False, "error": f"SystemExit: {e.code}"}
    with open(outcome_path, "w") as f:
        json.dump(outcome, f, default=str)
    return 0 if outcome["ok"] else 1


def _kill_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the child's process group (it, its pool workers, its servers), up to `grace`
    seconds to finish, then SIGKILL to whatever is left. The child is reaped only at the end:
    until then its pid, and so the group's id, cannot belong to anyone else."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:  # has it exited? (WNOWAIT: look, do not reap)
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_subprocess(name: str, mode: str, out_dir: str, timeout: float | None) -> dict:
    """Run one benchmark in a fresh interpreter, its output shown line by line as [name] ...;
    returns {"ok", "results"} or {"ok": False, "error", "log_tail"}."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        outcome_path = os.path.join(tmp, "outcome.json")
        command = [
            sys.executable, "-m", "benchmarks", "--child", name, "--mode", mode,
            "--out", out_dir, "--outcome", outcome_path,
        ]  # fmt: skip
        path = [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )

        def pump():
            for line in proc.stdout:
                if not NOISE.search(line):
                    tail.append(line.rstrip("\n"))
                    print(f"[{name}] {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        error = None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
            _kill_group(proc)
        except BaseException:  # Ctrl-C: the child is in its own session and did not get it
            _kill_group(proc)
            raise
        reader.join(10)
        outcome = None
        if os.path.exists(outcome_path):
            with open(outcome_path) as f:
                outcome = json.load(f)
    if outcome and outcome["ok"] and error is None:
        return outcome
    if error is None:
        error = outcome["error"] if outcome else f"exited with status {proc.returncode}"
    return {"ok": False, "error": error, "log_tail": list(tail)}


def run_in_process(name: str, mode: str, out_dir: str) -> dict:
    try:
        return run_one(name, mode, out_dir)
    except Exception as e:
        traceback.print_exc()
        return {"ok": False, "error": describe(e)}
    except SystemExit as e:
        return {"ok": False, "error": f"SystemExit: {e.code}"}


# ---------------------------------------------------------------------------------------------
# The run, results.json and results.md.


def machine() -> dict:
    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu_model = next(
            (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
        )
    versions = {}
    for package in ("tensorflow", "keras", "apache-beam"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": cpu_model,
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "versions": versions,
    }


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m benchmarks", *argv])


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


HEADER = [
    "benchmark", "compared: baseline -> ours", "workload", "measured ratio", "goal", "met",
    "physical floor", "time", "load 1m start -> end",
]  # fmt: skip
EXPLAINED = [
    "",
    "Each ratio is a median over several rounds in which the variants ran in turn on the same"
    " data, so that load from other processes hits them alike; in brackets, the lowest and"
    " highest of the same ratio in single rounds (every round is in results/<name>.json)."
    " A ratio `(x)/(y) time` above 1 means (y) is that many times faster. The floor is the"
    " least the job can cost on this machine: the ratio against it says how much is left to"
    " gain. The load average is the 1-minute one when the benchmark started and ended: above"
    " the number of cores, other processes shared the machine and the spread widens.",
    "Time is each benchmark's wall time, its process start and any data generation included.",
]


def markdown(summary: dict, out_dir: str) -> str:
    """results.md: the run's header, the headline table, then each benchmark's own table."""
    rows = [row for name, b in summary["benchmarks"].items() for row in table_rows(name, b)]
    lines = [
        *header_lines(summary),
        common.markdown_table(HEADER, [[cell(v) for v in row] for row in rows]),
        *EXPLAINED,
    ]
    details = []
    for name, b in summary["benchmarks"].items():
        if b["status"] == "ok" and b.get("markdown"):
            body = [("#### " + ln.lstrip("# ")) if ln.startswith("#") else ln for ln in
                    b["markdown"].strip().splitlines()]  # fmt: skip
            details += ["", f"### {name}", "", "\n".join(body)]
    if details:
        lines += ["", "## Details", *details]
    return "\n".join(lines) + "\n"


def header_lines(summary: dict) -> list[str]:
    m = summary["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmarks",
        "",
        f"`{summary['command']}`: {summary['mode']} mode, {summary['started']},"
        f" {duration(summary['duration_s'])} in all.",
        "",
        f"Machine: {m['usable_cpus']} of {m['cpus']} CPU cores usable"
        f" ({m['cpu_model'] or m['machine']}), {m['system']}, Python {m['python']}, {versions}."
        " Load average (1 min):"
        f" {summary['load_avg_1m_start']} at the start, {summary['load_avg_1m_end']} at the end"
        " (each benchmark's in its row).",
        "",
    ]
    if summary["mode"] == "smoke":
        lines += ["**Smoke run: sizes too small for the ratios to mean anything.**", ""]
    earlier = {n: b.get("run_started") for n, b in summary["benchmarks"].items() if b.get("kept")}
    if earlier:
        listed = ", ".join(f"{n} ({started})" for n, started in earlier.items())
        lines += [f"Rows from earlier runs: {listed}.", ""]
    return lines


def table_rows(name: str, b: dict) -> list[list[str]]:
    """A benchmark's rows of the headline table: one per claim, or one saying it failed."""
    if b["status"] != "ok":
        bench = BENCHMARKS.get(name)
        compared = "; ".join(bench.compared) if bench else name
        goal = "; ".join(bench.goals) if bench else ""
        error = b["error"]
        return [[name, compared, "", "**failed**", goal, "-", f"error: {error}", "", load_cell(b)]]
    rows = []
    for i, c in enumerate(b["headline"]["claims"]):
        met = {True: "yes", False: "**no**", None: "-"}[c["met"]]
        rows.append([
            name if i == 0 else "",
            c["compared"],
            b["headline"]["workload"] if i == 0 else "",
            ratio_cell(c),
            c["goal"],
            met,
            c["floor"],
            duration(b["duration_s"]) if i == 0 else "",
            load_cell(b) if i == 0 else "",
        ])  # fmt: skip
    return rows


def ratio_cell(c: dict) -> str:
    """`2.16x (1.98-2.40 over 3 rounds) (c)/(d) time`: the median, its spread, what it is."""
    rounds = len(c.get("per_round") or []) or None
    return f"{common.format_ratio(c['ratio'], c.get('spread'), rounds)} {c['ratio_label']}"


def load_cell(b: dict) -> str:
    start, end = b.get("load_avg_1m_at_start"), b.get("load_avg_1m_at_end")
    if start is None and end is None:
        return "n/a"
    return f"{'n/a' if start is None else start} -> {'n/a' if end is None else end}"


def keep_earlier_rows(summary: dict, path: str) -> None:
    """Add the benchmarks this run left out from results.json at `path`, if it is of the same
    mode: `--only NAME` refreshes one row of the table instead of replacing the table."""
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return
    if earlier.get("mode") != summary["mode"]:
        return
    ran, kept = summary["benchmarks"], earlier.get("benchmarks", {})
    merged = {}
    for name in [*BENCHMARKS, *ran]:
        if name in ran:
            merged[name] = ran[name]
        elif name in kept:
            merged[name] = {"run_started": earlier.get("started"), **kept[name], "kept": True}
    summary["benchmarks"] = merged


def run_entry(name: str, mode: str, out_dir: str, isolation: str, timeout: float | None) -> dict:
    """Run one benchmark; its entry of results.json (status, time, load, headline, results)."""
    began = time.perf_counter()
    load_at_start = common.load_avg()
    if name not in BENCHMARKS:
        outcome = {"ok": False, "error": f"unknown benchmark; known: {', '.join(BENCHMARKS)}"}
    elif isolation == "subprocess":
        outcome = run_subprocess(name, mode, out_dir, timeout)
    else:
        outcome = run_in_process(name, mode, out_dir)
    entry: dict = {
        "status": "ok",
        "duration_s": round(time.perf_counter() - began, 1),
        "load_avg_1m_at_start": load_at_start,
        "load_avg_1m_at_end": common.load_avg(),
    }
    if outcome["ok"]:
        results = outcome["results"]
        try:
            entry["headline"] = headline.headline(BENCHMARKS[name], results)
        except Exception as e:
            entry.update(status="failed", error=f"unreadable results: {describe(e)}")
        entry["results"] = results
        entry["markdown"] = outcome.get("markdown", "")  # the script's own table
    else:
        entry.update(status="failed", error=outcome["error"])
        if outcome.get("log_tail"):
            entry["log_tail"] = outcome["log_tail"]
    return entry


def run_all(
    names: list[str],
    mode: str,
    out_dir: str,
    isolation: str = "subprocess",
    timeout: float | None = None,
    argv: list[str] | None = None,
) -> dict:
    """Run `names` in BENCHMARKS order, write out_dir/results.{json,md}; returns the summary."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    summary = {
        "command": command_line(argv if argv is not None else []),
        "mode": mode,
        "isolation": isolation,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "load_avg_1m_start": common.load_avg(),
        "results_dir": "results",  # each script's own results, relative to out_dir
        "benchmarks": {},
    }
    start = time.perf_counter()
    ordered = [n for n in BENCHMARKS if n in names] + [n for n in names if n not in BENCHMARKS]
    for i, name in enumerate(ordered, 1):
        print(f"=== [{i}/{len(ordered)}] {name} ({mode}) ===", flush=True)
        entry = run_entry(name, mode, out_dir, isolation, timeout)
        entry["run_started"] = summary["started"]
        summary["benchmarks"][name] = entry
        state = entry["status"] if entry["status"] == "ok" else f"FAILED: {entry['error']}"
        print(f"=== {name}: {state} in {duration(entry['duration_s'])} ===", flush=True)
    summary["duration_s"] = round(time.perf_counter() - start, 1)
    summary["load_avg_1m_end"] = common.load_avg()
    summary["ok"] = all(b["status"] == "ok" for b in summary["benchmarks"].values())
    if set(ordered) < set(BENCHMARKS):  # --only: keep the other rows of the last run
        keep_earlier_rows(summary, os.path.join(out_dir, "results.json"))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(summary, out_dir))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="each benchmark's quick mode (< 3 min)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes for the tests: runs, but numbers mean nothing",
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"some of: {' '.join(BENCHMARKS)}")
    p.add_argument("--out", default=HERE, help="folder for results.json/.md (default: benchmarks/)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the benchmarks in this process, not one subprocess each (for debugging)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per benchmark (default 3600; quick 900)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--outcome", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.mode, args.out, args.outcome)
    unknown = sorted(set(args.only or []) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    summary = run_all(
        list(args.only or BENCHMARKS),
        mode,
        args.out,
        "in-process" if args.in_process else "subprocess",
        args.timeout or DEFAULT_TIMEOUT_S[mode],
        argv,
    )
    print()
    with open(os.path.join(os.path.abspath(args.out), "results.md")) as f:
        print(f.read().split("\n## Details")[0])
    failed = [
        n
        for n, b in summary["benchmarks"].items()
        if b["status"] != "ok" and not b.get("kept")  # an earlier run's failure is not ours
    ]
    print(f"results: {os.path.join(os.path.abspath(args.out), 'results.json')}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
