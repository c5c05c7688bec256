"""Running the runs of an ablation grid: one run (:func:`run_one`, also the entry point of
the ``python -m cml_cli.ablate`` worker processes), the local executor (in this process or a
pool of subprocesses) and the Ray executor."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from cml_cli import threads as thread_budget
from cml_cli.config import RunConfig
from cml_cli.errors import InputError
from cml_cli.lifeline import child_env, die_with_parent
from cml_cli.train.progress import LineProgress

EXECUTORS = ("local", "ray")


# --------------------------------------------------------------------------- running one


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Create, resume or extend one run as ``spec`` says; never raises for a failing run.
    Returns ``{"ok", "error", "seconds"}``; the run's progress and any traceback go to its log."""
    started = time.perf_counter()
    log_path = Path(spec["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stderr(log):
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {spec['state']} {spec['dir']} "
                  f"(pid {os.getpid()}, {spec['threads']} torch threads)\n")
        log.flush()
        threads = None
        try:
            import torch

            from cml_cli.tracking import Tracking
            from cml_cli.train.loop import Watch, resume, train

            threads = torch.get_num_threads()
            thread_budget.apply_torch(int(spec["threads"]))
            progress = LineProgress(log)
            run = Path(spec["grid_dir"]) / spec["dir"]
            data_dir = Path(spec["data_dir"])
            tracker = Tracking(**spec["track"]).tracker() if spec.get("track") else None
            if spec["state"] == "new":
                cfg = RunConfig.from_dict(spec["config"]).validate()
                result = train(spec["dataset"], cfg, data_dir=data_dir, runs_dir=Path(spec["grid_dir"]),
                               name=spec["dir"], force=True, watch=Watch(progress, tracker))
            else:
                epochs = spec["config"]["epochs"] if spec["state"] == "extend" else None
                result = resume(run, data_dir=data_dir, progress=progress, epochs=epochs, tracker=tracker)
            seconds = time.perf_counter() - started
            test = result.get("test", {})
            full = test.get("full") or {}
            log.write(f"finished in {seconds:.1f} s: test " +
                      " ".join(f"{k} {v:.4f}" for k, v in test.items() if not isinstance(v, dict)) +
                      "; full ranking " + " ".join(f"{k} {v:.4f}" for k, v in full.items() if k.endswith("@10")) + "\n")
            return {"ok": True, "error": None, "seconds": seconds}
        except Exception as e:
            traceback.print_exc(file=log)
            message = str(e).splitlines()[0] if str(e) else ""
            error = f"{type(e).__name__}: {message}"
            log.write(f"FAILED: {error}\n")
            return {"ok": False, "error": error, "seconds": time.perf_counter() - started}
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)


def worker_main(argv: list[str]) -> int:
    """``python -m cml_cli.ablate SPEC_JSON``: one run in its own process (exit 1 if it failed),
    which ends if its parent (``cml ablate``) does."""
    die_with_parent()
    spec = json.loads(argv[0])
    outcome = run_one(spec)
    return 0 if outcome["ok"] else 1


# --------------------------------------------------------------------------- executors


def usable_cores() -> int:
    """The threads the runs of this process share: ``$CML_THREADS`` or every core."""
    return thread_budget.budget()


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("FAILED: "):
            return ln[len("FAILED: "):]
    return lines[-1] if lines else "exited without output"


def run_local(specs: list[dict], jobs: int, notify: Callable[[dict, dict], None]) -> None:
    if jobs == 1:
        for spec in specs:
            notify(spec, {"event": "start"})
            notify(spec, run_one(spec))
        return
    procs: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def one(spec: dict) -> dict:
        started = time.perf_counter()
        env = child_env({**thread_budget.environment(int(spec["threads"])),
                         "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")})
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = Path(spec["log"])
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            if stopping.is_set():
                return {"ok": False, "error": "not started: the grid was stopped", "seconds": 0.0}
            # This thread waits for its worker, which matters: the worker's parent-death signal
            # (cml_cli.lifeline) fires when the thread that started it ends.
            proc = subprocess.Popen([sys.executable, "-m", "cml_cli.ablate", json.dumps(spec)], stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            procs[spec["dir"]] = proc
            if stopping.is_set():
                proc.terminate()
            rc = proc.wait()
        seconds = time.perf_counter() - started
        if rc == 0:
            return {"ok": True, "error": None, "seconds": seconds}
        return {"ok": False, "error": _last_line(log) if rc == 1 else f"worker exited with status {rc}",
                "seconds": seconds}

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {}
        for spec in specs:
            futures[pool.submit(one, spec)] = spec
        for spec in specs:
            notify(spec, {"event": "queued"})
        for fut in as_completed(futures):
            notify(futures[fut], fut.result())
    except BaseException:
        stopping.set()
        for fut in futures:
            fut.cancel()
        for proc in list(procs.values()):
            if proc.poll() is None:
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_task(spec: dict) -> dict:
    return run_one(spec)


def run_ray(specs: list[dict], jobs: int, address: str | None, notify: Callable[[dict, dict], None]) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'cml-cli[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                                   "configure_logging": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=jobs, **options)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending = {}
        for spec in specs:
            pending[remote.remote(spec)] = spec
            notify(spec, {"event": "queued"})
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as e:  # a worker that died, a task that could not run
                outcome = {"ok": False, "error": f"ray: {type(e).__name__}: {str(e).splitlines()[0]}",
                           "seconds": 0.0}
                with open(spec["log"], "a") as f:
                    f.write(f"FAILED: {outcome['error']}\n")
            notify(spec, outcome)
    finally:
        if started_here:
            ray.shutdown()


