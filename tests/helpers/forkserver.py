"""A zygote for process trials: the real ``glacierfs`` CLI in real separate processes, cheaply.

Tests that race processes (2-3 concurrent ``glacierfs upload`` of one file, a mount killed 50
times) pay an interpreter start and the imports (boto3, the mount) for every process: about
0.5-1 s each on two busy cores, which dominates such a trial. :class:`ForkServer` starts one
``python -m tests.helpers.forkserver`` that imports glacierfs once and then forks a child per command;
each child is its own process (own pid, own file descriptors and flocks, SIGKILL-able) running
``glacierfs.cli.main(argv)``, exactly what the console script runs, with stdout and stderr in
files. :meth:`ForkServer.start` with several commands releases them at the same instant (they
wait on one pipe that is closed once all are forked), which makes races likelier, not rarer.

Protocol (one JSON object per line on the zygote's stdin, one answer per line on its stdout):
``{"op": "start", "cmds": [{"argv", "cwd", "out", "err"}...]}`` -> ``{"pids": [...]}``;
``{"op": "wait", "pid", "timeout"}`` -> ``{"rc": N}`` (``rc`` None on timeout; the exit code,
or -SIGNAL). The zygote has no threads, so forking it is safe; it exits when its stdin closes
and kills the children still running then.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Finished:
    rc: int
    stdout: str
    stderr: str


class ForkServer:
    """The test side: ``with ForkServer(env) as fs: pids = fs.start(cmd, ...); fs.wait(pid)``."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.files: dict[int, tuple[Path, Path]] = {}

    def __enter__(self) -> ForkServer:
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.forkserver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self._read() == {"ready": True}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the fork server ended (exit {self.proc.poll()})")
        return dict(json.loads(line))

    def start(self, *cmds: tuple[list[str], Path], logs: Path) -> list[int]:
        """Fork one child per ``(argv, cwd)`` (argv without the program name), released together."""
        logs.mkdir(parents=True, exist_ok=True)
        reqs = []
        for argv, cwd in cmds:
            n = len(list(logs.iterdir()))
            out, err = logs / f"{n}.out", logs / f"{n}.err"
            out.touch()
            err.touch()
            reqs.append({"argv": argv, "cwd": str(cwd), "out": str(out), "err": str(err)})
        pids = [int(p) for p in self._ask({"op": "start", "cmds": reqs})["pids"]]
        for pid, req in zip(pids, reqs, strict=True):
            self.files[pid] = (Path(req["out"]), Path(req["err"]))
        return pids

    def wait(self, pid: int, timeout: float = 120) -> Finished:
        """The child's exit code and output; on timeout it is killed and AssertionError raised."""
        rc = self._ask({"op": "wait", "pid": pid, "timeout": timeout})["rc"]
        out, err = self.files.pop(pid)
        if rc is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._ask({"op": "wait", "pid": pid, "timeout": 30})
            raise AssertionError(f"process {pid} did not end within {timeout:.0f} s: {err.read_text()[-2000:]}")
        return Finished(int(rc), out.read_text(), err.read_text())

    def run_together(self, *cmds: tuple[list[str], Path], logs: Path, timeout: float = 120) -> list[Finished]:
        """Start the commands at the same instant and wait for all of them."""
        pids = self.start(*cmds, logs=logs)
        try:
            return [self.wait(pid, timeout) for pid in pids]
        finally:
            for pid in pids:
                if pid in self.files:  # an earlier wait raised: end the others too
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self._ask({"op": "wait", "pid": pid, "timeout": 30})
                    self.files.pop(pid, None)


# --------------------------------------------------------------------------- the zygote


def _child(cmd: dict[str, Any], gate: int) -> None:
    """In the forked child: wait for the gate to open, then be ``glacierfs ARGV``."""
    code = 70
    try:
        os.chdir(cmd["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, cmd["out"]), (2, cmd["err"])):
            f = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child's whole life
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["glacierfs", *cmd["argv"]]
        os.read(gate, 1)  # returns b"" once every child of this batch is forked
        os.close(gate)
        from glacierfs.cli import main

        try:
            code = int(main(cmd["argv"]) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def serve() -> None:
    # Everything a CLI process imports, once (no threads start here).
    import boto3  # noqa: F401
    import botocore.session

    import glacierfs.cli
    import glacierfs.commands
    import glacierfs.mount
    import glacierfs.upload  # noqa: F401

    botocore.session.get_session().get_service_model("glacier")
    children: set[int] = set()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            r, w = os.pipe()
            pids = []
            for cmd in req["cmds"]:
                pid = os.fork()
                if pid == 0:
                    os.close(w)
                    _child(cmd, r)
                pids.append(pid)
            os.close(r)
            os.close(w)  # the gate opens: every child of the batch starts now
            children.update(pids)
            print(json.dumps({"pids": pids}), flush=True)
        elif req["op"] == "wait":
            rc = _wait(int(req["pid"]), float(req["timeout"]))
            if rc is not None:
                children.discard(int(req["pid"]))
            print(json.dumps({"rc": rc}), flush=True)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
