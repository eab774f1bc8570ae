"""One process of a tuning group (launch.py): the chief or a worker, by KERASTUNER_TUNER_ID.

    python -m pipeline_components.tuner.worker REQUEST.json [--workers N] [--k8s [--port P]]

REQUEST.json is a `search.Request` (the same file for every process). With --k8s the KerasTuner
variables come from the pod of an Indexed Job (launch.k8s_env). Exit status: 0 done, 1 a
configuration error (one line on stderr), 75 lost the chief (restart this process).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import grpc

from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import cluster
from pipeline_components.tuner import launch, search


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline_components.tuner.worker")
    parser.add_argument("request", help="the search request (JSON)")
    parser.add_argument("--workers", type=int, default=1, help="workers of the group")
    parser.add_argument("--k8s", action="store_true", help="the place from an Indexed Job pod")
    parser.add_argument("--port", type=int, default=launch.DEFAULT_PORT, help="with --k8s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.k8s:
            os.environ.update(launch.k8s_env(port=args.port))
        with open(args.request, encoding="utf-8") as f:
            request = search.Request.from_json(json.load(f))
        tuner_id = os.environ.get(search.TUNER_ID, "")
        if tuner_id == search.CHIEF_ID:
            host = os.environ.get(search.ORACLE_IP, "")
            bind = host if host in ("127.0.0.1", "localhost") else "0.0.0.0"
            port = int(os.environ.get(search.ORACLE_PORT, "0"))
            summary = search.run_chief(request, port, args.workers, host=bind)
            best = summary["best"]
            print(
                f"tuned: {summary['trials']} trials ({summary['completed']} completed) on"
                f" {args.workers} workers; best {best['objective']} {best['score']:.4f}:"
                f" {json.dumps(best['trainer'])}"
            )
        else:
            search.run_worker(request)
    except PipelineError as e:
        print(f"tuner: error: {e}", file=sys.stderr, flush=True)
        return 1
    except grpc.RpcError as e:  # the chief is gone: the group restarts this process
        print(f"tuner: lost the chief: {e.code()}", file=sys.stderr, flush=True)
        return cluster.WORKER_LOST_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
