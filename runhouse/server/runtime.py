"""The daemon's runtime: the registry of envs and named objects, and every operation on them.

:class:`Runtime` is everything the daemon does, independent of HTTP (:mod:`runhouse.server.app` is a thin
layer over it). It never runs user code: it sends requests (:class:`runhouse.protocol.WorkerOp`) to the
workers of each env through the worker-backend seam (:mod:`runhouse.server.backend`), and asks the env which
workers a ``map`` spreads over. Workers are local processes unless another backend is passed
(``Runtime(..., backend=RayBackend(...))`` on a multi-node cluster: workers on every node). A map item whose
worker was lost with its node is run again on another worker (at most ``MAP_NODE_RETRIES`` times).

The registry records, for every name, how to re-create the object: a function or class by import path (or
cloudpickled code), a stateful instance by its class and serialized init args. Every change to it is
journaled as it is made (:mod:`runhouse.server.registry`), so a restarted daemon brings everything back.
Workers load what a call needs on demand, keyed by version: a restarted worker, a pool worker and a daemon
that restarted all catch up the same way, lazily.
Plain values (``put``, results of ``.remote()``) live only in their env's main worker and are lost with it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from runhouse import protocol, serialization
from runhouse.errors import (
    BadRequestError,
    CallCancelledError,
    CallTimeoutError,
    NodeLostError,
    ObjectNotFoundError,
    WorkerCrashedError,
)
from runhouse.protocol import DEFAULT_ENV, LogSink, WorkerOp
from runhouse.serialization import sweep_shm, unpack_exception
from runhouse.server.autostop import IdleTimer
from runhouse.server.backend import Reply, WorkerBackend, WorkerHandle
from runhouse.server.channel import LocalBackend
from runhouse.server.envs import EnvRuntime, EnvSpec, PackageInstall, ensure_python, install_packages
from runhouse.server.metrics import DaemonMetrics
from runhouse.server.registry import CLASS, FUNCTION, INSTANCE, VALUE, Entry, Registry
from runhouse.server.runs import CALL, CANCELLED, COMMAND, CRASHED, DONE, FAILED, MAP, Run, RunStore
from runhouse.version import __version__

SHM_SWEEP_INTERVAL_S = 60.0
# After a command exits, how long to wait for the rest of its output.
_PIPE_DRAIN_S = 1.0
# How many times one map item is run again after its worker was lost with its node.
MAP_NODE_RETRIES = 3
# The most of a command a run records as its method (the whole command is in its output's context).
_COMMAND_SHOWN = 200


def raise_for_reply(reply: Reply) -> Reply:
    """Turn an ERROR reply into its exception (rebuilt in the daemon, for daemon-side bookkeeping)."""
    if reply.kind == protocol.ERROR:
        raise unpack_exception(protocol.decode_meta(reply.payload))
    return reply


class Runtime:
    """Everything the daemon does, independent of HTTP.

    ``backend`` places and makes every env's workers (default: local processes, one pool worker per CPU);
    ``runs`` records every call, map batch and command (default: kept in a ``runs`` folder beside the registry).
    """

    def __init__(
        self, registry_path: Path, backend: WorkerBackend | None = None, autostop_settings: Path | None = None,
        runs: RunStore | None = None,
    ) -> None:
        self.registry = Registry(registry_path)
        self.runs = runs or RunStore(registry_path.with_name("runs"))
        self.metrics = DaemonMetrics(lambda: len(self.runs.running))
        self.runs.on_finish = self.metrics.run_finished
        self.backend: WorkerBackend = backend or LocalBackend()
        self.idle = IdleTimer(autostop_settings or registry_path.with_name("autostop.json"),
                              busy_elsewhere=lambda: bool(self._running_refs))
        self.envs: dict[str, EnvRuntime] = {}
        self.started_at = time.time()
        self._queues: dict[str, asyncio.Lock] = {}
        # Calls started by .remote(): running ones by their ref's key, and the errors of those that failed
        # (kept until the key is deleted, like a value; get() raises them).
        self._running_refs: dict[str, asyncio.Task[Reply]] = {}
        self._failed_refs: dict[str, Reply] = {}
        self._env_locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task | None = None
        self._command_groups: set[int] = set()  # process groups of run() commands, stopped with the daemon

    # --- envs ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the backend, then the default env's main worker so the first call does not wait for it."""
        await self.backend.start()
        await (await self.env_runtime(DEFAULT_ENV)).main_worker()
        self.idle.start()
        self.runs.start_writer()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_shared_memory())

    async def _sweep_shared_memory(self) -> None:
        while True:
            await asyncio.get_running_loop().run_in_executor(None, sweep_shm)
            await asyncio.sleep(SHM_SWEEP_INTERVAL_S)

    async def stop(self) -> None:
        self.idle.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for group in self._command_groups:  # including what commands left running in the background
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        await asyncio.gather(*(env.stop() for env in self.envs.values()))
        await self.backend.stop()
        self.runs.close()
        self.registry.close()

    async def env_runtime(self, name: str, progress: Callable[[str], None] | None = None) -> EnvRuntime:
        runtime = self.envs.get(name)
        if runtime is not None:
            return runtime
        spec = self.registry.envs.get(name)
        if spec is None:
            raise ObjectNotFoundError(f"no env named {name!r} on this cluster; create it with rh.env(...).to(cluster)")
        async with self._env_locks.setdefault(name, asyncio.Lock()):
            if name not in self.envs:
                python = await ensure_python(spec, progress or _quiet)
                runtime = EnvRuntime(spec, python, self.backend)
                runtime.on_main_exit = self._forget_values
                runtime.on_worker_exit = self.metrics.worker_exited
                self.envs[name] = runtime
        return self.envs[name]

    async def create_env(self, spec: EnvSpec, progress: Callable[[str], None]) -> dict[str, Any]:
        """Create or update an env; registered only once its requirements are installed.

        Raises:
            BadRequestError: its ``node`` or ``compute`` cannot be met (checked first, within seconds).
        """
        _check_name(spec.name)
        old = self.registry.envs.get(spec.name)
        if old == spec and spec.name in self.envs:
            return spec.to_dict()
        await self.backend.layout(spec)
        python = await ensure_python(spec, progress)
        async with self._env_locks.setdefault(spec.name, asyncio.Lock()):
            previous = self.envs.pop(spec.name, None)
            if previous is not None and old != spec:
                await previous.stop()
                previous = None
            runtime = previous or EnvRuntime(spec, python, self.backend)
            runtime.on_main_exit = self._forget_values
            runtime.on_worker_exit = self.metrics.worker_exited
            self.envs[spec.name] = runtime
            self.registry.set_env(spec)
        return spec.to_dict()

    async def install(
        self, env: str, packages: Sequence[PackageInstall], progress: Callable[[str], None]
    ) -> dict[str, list[str]]:
        """Install packages into an env's interpreter; returns the targets ``installed`` and ``skipped`` (already
        there, unchanged).

        When anything was installed, the workers of every env on that interpreter stop (their stored values go
        with them) and restart on next use, so they import the new code; deployed functions and classes and
        named instances come back.
        """
        runtime = await self.env_runtime(env, progress)
        installed = await install_packages(runtime.python, packages, env, progress)
        if installed:
            for name in [n for n, r in self.envs.items() if r.python == runtime.python]:
                async with self._env_locks.setdefault(name, asyncio.Lock()):
                    stale = self.envs.pop(name, None)
                    if stale is not None:
                        self._forget_values(stale)
                        await stale.stop()
        return {"installed": [p.target for p in installed],
                "skipped": [p.target for p in dict.fromkeys(packages) if p not in installed]}

    def _forget_values(self, env: EnvRuntime) -> None:
        for name in [n for n, e in self.registry.entries.items() if e.env == env.spec.name and e.kind == VALUE]:
            self.registry.remove(name)

    # --- loading objects into workers ----------------------------------------------------------------
    async def _load(self, worker: WorkerHandle, entry: Entry) -> None:
        if worker.loaded.get(entry.name) == entry.version:
            return
        if entry.kind == INSTANCE:
            await self._load(worker, self.registry.entry(entry.spec["class_name"]))
        async with worker.load_lock:
            if worker.loaded.get(entry.name) == entry.version:
                return
            if entry.kind == INSTANCE:
                meta = {"op": WorkerOp.INSTANTIATE, "name": entry.name, "class_name": entry.spec["class_name"]}
                if entry.spec.get("refs"):
                    meta["refs"] = await self._fetch_refs(entry.spec["refs"], worker)
            else:
                meta = {"op": WorkerOp.DEPLOY, "name": entry.name, "spec": entry.spec}
            raise_for_reply(await worker.request(meta, [entry.payload] if entry.payload else []))
            worker.loaded[entry.name] = entry.version

    # --- deploy --------------------------------------------------------------------------------------
    async def deploy(self, name: str, env: str, kind: str, spec: dict, payload: bytes, version: str) -> Reply:
        """Register a function or class; unchanged code already deployed costs nothing more."""
        _check_name(name)
        if kind not in (FUNCTION, CLASS):
            raise BadRequestError(f"cannot deploy kind {kind!r}; expected 'function' or 'class'")
        current = self.registry.entries.get(name)
        if current is not None and current.env == env and current.version == version and current.kind == kind:
            return Reply(protocol.RESULT, {"info": current.info}, memoryview(b""))
        runtime = await self.env_runtime(env)
        entry = Entry(name, env, kind, spec, payload, version)
        worker = await runtime.main_worker()
        reply = await worker.request({"op": WorkerOp.DEPLOY, "name": name, "spec": spec}, [payload] if payload else [])
        if reply.kind == protocol.ERROR:
            return reply
        entry.info = reply.meta["info"]
        worker.loaded[name] = version
        if current is not None and current.env != env:
            await self._drop_from_workers(current)
        self.registry.set(entry)
        return reply

    async def instantiate(
        self, name: str, class_name: str, payload: bytes | memoryview, refs: Sequence[str] = ()
    ) -> Reply:
        """Create a named instance of a deployed class in its env's main worker.

        Init arguments that are refs are resolved now; a re-created instance (after a restart) gets the
        values they had then.
        """
        _check_name(name)
        cls = self.registry.entry(class_name)
        if cls.kind != CLASS:
            raise BadRequestError(f"{class_name!r} is a {cls.kind}, not a class")
        failed = await self._settle_refs(refs)
        if failed is not None:
            return failed
        worker = await (await self.env_runtime(cls.env)).main_worker()
        await self._load(worker, cls)
        meta: dict[str, Any] = {"op": WorkerOp.INSTANTIATE, "name": name, "class_name": class_name}
        if refs:
            meta["refs"] = await self._fetch_refs(refs, worker)
        reply = await worker.request(meta, [payload] if payload else [])
        if reply.kind == protocol.ERROR:
            return reply
        spec = {"class_name": class_name, "refs": list(refs)}
        entry = Entry(name, cls.env, INSTANCE, spec, bytes(payload), uuid.uuid4().hex)
        entry.info = reply.meta["info"]
        worker.loaded[name] = entry.version
        self.registry.set(entry)
        return reply

    # --- calls ---------------------------------------------------------------------------------------
    def _check_method(self, entry: Entry, method: str) -> None:
        if entry.kind == FUNCTION and method not in (protocol.CALL_METHOD, "__call__"):
            raise ObjectNotFoundError(f"{entry.name!r} is a function; call it with method 'call', not {method!r}")
        if entry.kind in (CLASS, INSTANCE) and method not in entry.info.get("methods", {}):
            raise ObjectNotFoundError(f"{entry.name!r} has no method {method!r}")
        if entry.kind == VALUE:
            raise ObjectNotFoundError(f"{entry.name!r} is a stored value, not something to call")

    async def _fetch_refs(self, keys: Sequence[str], worker: WorkerHandle) -> dict[str, bytes]:
        """Values of refs held by other workers, fetched on the cluster for a call on ``worker``."""
        fetched: dict[str, bytes] = {}
        for key in keys:
            entry = self.registry.entry(key)
            holder = await (await self.env_runtime(entry.env)).main_worker()
            if holder is worker:
                continue
            if entry.kind != VALUE:
                await self._load(holder, entry)
            reply = raise_for_reply(await holder.request({"op": WorkerOp.GET, "key": key}))
            fetched[key] = bytes(reply.payload)
        return fetched

    async def call(
        self,
        name: str,
        method: str,
        payload: memoryview,
        *,
        stream_logs: bool = False,
        remote: bool = False,
        refs: Sequence[str] = (),
        timeout: float | None = None,
        enqueue: bool = False,
        json_result: bool = False,
        shm: bool = False,
        on_log: LogSink | None = None,
        caller: str = "local",
        run_name: str | None = None,
    ) -> Reply:
        """Run ``name.method(*args, **kwargs)`` in the object's env, as a run of ``caller`` (named ``run_name``
        when given); ERROR replies carry the remote exception. A ``remote`` call answers at once with the ref's
        key (``stored``) and its run's id (``run``).

        Raises:
            ObjectNotFoundError: no such object or method.
            WorkerCrashedError: the worker died during the call.
            CallTimeoutError: the call ran past ``timeout`` seconds (it is cancelled on the worker).
        """
        entry = self.registry.entry(name)
        self._check_method(entry, method)
        if refs and (failed := await self._settle_refs(refs)) is not None:
            return failed
        worker = await (await self.env_runtime(entry.env)).main_worker()
        await self._load(worker, entry)
        meta: dict[str, Any] = {"op": WorkerOp.CALL, "name": name, "method": method}
        if refs:
            meta["refs"] = await self._fetch_refs(refs, worker)
        if json_result:
            meta["json"] = True
        if shm:
            meta["shm"] = True
        if remote:  # answered at once with the ref's key; the call runs on, its output goes to its run
            meta["store_as"] = key = f"{name}.{method}-{uuid.uuid4().hex[:12]}"
            on_log = None
        elif not stream_logs:
            on_log = None
        run = self.runs.start(name, method, CALL, entry.env, getattr(worker, "pid", None), caller, run_name)
        on_log = self.runs.sink(run, on_log)
        meta["stream_logs"] = on_log is not None  # the worker sends the call's output back
        request = worker.request(meta, [payload] if payload.nbytes else [], on_log)
        if enqueue:
            request = self._queued(name, request)
        recorded = self._recorded(run, self._with_timeout(request, timeout, name))
        if not remote:
            return await recorded
        self.registry.set(Entry(key, entry.env, VALUE))
        task = asyncio.get_running_loop().create_task(self._run_for_ref(key, recorded))
        self._running_refs[key] = task
        return Reply(protocol.RESULT, {"stored": key, "run": run.id}, memoryview(b""))

    async def _recorded(self, run: Run, request: Awaitable[Reply]) -> Reply:
        """Await ``request`` and finish ``run`` with how it ended (the reply or the exception passes through)."""
        try:
            reply = await request
        except asyncio.CancelledError:
            self.runs.finish(run, CANCELLED, "cancelled: its caller went away, or its ref was deleted")
            raise
        except Exception as exc:
            self.runs.finish(run, *_ended_by(exc))
            raise
        if reply.kind == protocol.ERROR:
            self.runs.finish(run, *_ended_by(reply))
        else:
            self.runs.finish(run, DONE)
        return reply

    async def _run_for_ref(self, key: str, request: Awaitable[Reply]) -> Reply:
        """Run a call started by ``.remote()``; its result stays in the worker, its failure here, by ``key``."""
        try:
            reply = await request
        except Exception as exc:  # a crashed worker or a timeout: get() raises it, typed
            error = protocol.encode_meta(serialization.pack_exception(exc))
            reply = Reply(protocol.ERROR, {}, memoryview(error))
        finally:
            self._running_refs.pop(key, None)
        if reply.kind == protocol.ERROR:  # kept even when its worker's crash took the entry with it
            self._failed_refs[key] = reply
        return reply

    async def _settle_refs(self, keys: Sequence[str]) -> Reply | None:
        """Wait for the calls behind refs passed as arguments; the error of the first that failed, if any."""
        for key in keys:
            running = self._running_refs.get(key)
            if running is not None:
                await _finished(running, None)
            failed = self._failed_refs.get(key)
            if failed is not None:
                return failed
        return None

    def ready(self, keys: Sequence[str]) -> dict[str, bool]:
        """Whether the calls behind refs have finished (successfully or not), by key.

        Raises:
            ObjectNotFoundError: a key that names no stored value on this cluster.
        """
        answer = {}
        for key in keys:
            if key not in self._failed_refs and self.registry.entry(key).kind != VALUE:
                raise ObjectNotFoundError(f"{key!r} is not a ref or stored value on this cluster")
            answer[key] = key not in self._running_refs
        return answer

    async def _queued(self, name: str, request: Any) -> Reply:
        async with self._queues.setdefault(name, asyncio.Lock()):  # asyncio.Lock wakes waiters in FIFO order
            return await request

    async def _with_timeout(self, request: Any, timeout: float | None, name: str) -> Reply:
        if timeout is None:
            return await request
        try:
            return await asyncio.wait_for(request, timeout)  # cancelling the request cancels the call
        except asyncio.TimeoutError:
            raise CallTimeoutError(f"call to {name!r} did not finish within {timeout} s; it was cancelled") from None

    async def map(
        self,
        name: str,
        method: str,
        items: Sequence[memoryview],
        on_results: Callable[[list[int], list[Reply | BaseException]], None],
        *,
        stream_logs: bool = False,
        refs: Sequence[str] = (),
        shm: bool = False,
        on_log: LogSink | None = None,
        caller: str = "local",
        run_name: str | None = None,
    ) -> None:
        """Run one call per item in parallel over the workers the env fans out to (see ``fanout_workers``),
        handing each batch's answers to ``on_results(indices, replies or exceptions)`` as it finishes.

        Each slot of a worker takes the items in batches (:func:`map_batch_size`), one request per batch, and
        is one run (its output's lines start with ``[item index]``, as the worker writes them).
        """
        entry = self.registry.entry(name)
        self._check_method(entry, method)
        failed = await self._settle_refs(refs)
        if failed is not None:
            on_results(list(range(len(items))), [failed] * len(items))
            return
        runtime = await self.env_runtime(entry.env)
        stateful = entry.kind != FUNCTION
        workers, slots = await runtime.fanout_workers(stateful)
        count = min(len(items), len(workers) * slots)
        order = iter(range(len(items)))
        left = len(items)  # not yet taken by a slot
        fetched: dict[int, dict[str, bytes]] = {}
        log = on_log if stream_logs else None

        async def slot(index: int) -> None:
            nonlocal workers, left
            pid = getattr(workers[index % len(workers)], "pid", None)
            run = self.runs.start(name, method, MAP, entry.env, pid, caller, run_name)
            sink = self.runs.sink(run, log)
            done, ended = 0, []
            try:
                while batch := list(itertools.islice(order, map_batch_size(left, count))):
                    left -= len(batch)
                    results = await batch_results(batch, index, sink)
                    ended += [_ended_by(result) for result in results if _is_failure(result)]
                    on_results(batch, results)
                    done += len(batch)
            except asyncio.CancelledError:
                self.runs.finish(run, CANCELLED, "cancelled: its caller went away")
                raise
            run.items = done
            if not ended:
                self.runs.finish(run, DONE)
            else:
                status = CRASHED if any(s == CRASHED for s, _ in ended) else FAILED
                self.runs.finish(run, status, f"{len(ended)} of {done} items failed; the first: {ended[0][1]}")

        async def batch_results(batch: list[int], index: int, sink: LogSink | None) -> list[Reply | BaseException]:
            nonlocal workers
            failure: BaseException | None = None
            for _ in range(MAP_NODE_RETRIES + 1):
                try:
                    worker = workers[index % len(workers)]
                    if not worker.alive:
                        workers, _ = await runtime.fanout_workers(stateful)
                        worker = workers[index % len(workers)]
                    return await self._map_batch(worker, entry, method, [items[i] for i in batch], batch, shm,
                                                 refs, fetched, sink)
                except NodeLostError as exc:  # run it again on the workers of the nodes still alive
                    failure = exc
                except Exception as exc:  # a crashed worker, or code that fails to load there, fails the items
                    failure = exc
                    break
            assert failure is not None
            return [failure] * len(batch)

        await asyncio.gather(*(slot(k) for k in range(count)))

    async def _map_batch(
        self,
        worker: WorkerHandle,
        entry: Entry,
        method: str,
        batch: list[memoryview],
        indices: list[int],
        shm: bool,
        refs: Sequence[str],
        fetched: dict[int, dict[str, bytes]],
        log: LogSink | None,
    ) -> list[Reply | BaseException]:
        meta: dict[str, Any] = {
            "op": WorkerOp.MAP, "name": entry.name, "method": method, "stream_logs": log is not None, "shm": shm,
            "indices": indices, "sizes": [item.nbytes for item in batch],
        }
        await self._load(worker, entry)
        if refs:
            if id(worker) not in fetched:
                fetched[id(worker)] = await self._fetch_refs(refs, worker)
            meta["refs"] = fetched[id(worker)]
        reply = await worker.request(meta, batch, log)
        if reply.kind == protocol.ERROR:  # the batch as a whole failed (cancelled, say): every item with it
            return [reply] * len(batch)
        results: list[Reply | BaseException] = []
        offset = 0
        for kind, size in zip(reply.meta["kinds"], reply.meta["sizes"], strict=True):
            results.append(Reply(kind, {}, reply.payload[offset : offset + size]))
            offset += size
        return results

    # --- key-value store -----------------------------------------------------------------------------
    async def put(self, key: str, env: str, payload: memoryview) -> None:
        _check_name(key)
        current = self.registry.entries.get(key)
        worker = await (await self.env_runtime(env)).main_worker()
        raise_for_reply(await worker.request({"op": WorkerOp.PUT, "key": key}, [payload]))
        if current is not None and current.env != env:
            await self._drop_from_workers(current)
        self.registry.set(Entry(key, env, VALUE))

    async def get(self, key: str, shm: bool = False, timeout: float | None = None) -> tuple[Entry, Reply | None]:
        """A stored value (its serialized bytes), or only the entry for functions, classes and instances.

        The value of a ref whose call still runs is waited for, at most ``timeout`` seconds when given; a ref
        whose call failed answers with the call's error.

        Raises:
            CallTimeoutError: the call behind the ref did not finish within ``timeout`` (it keeps running).
        """
        failed = self._failed_refs.get(key)
        if failed is not None:
            return Entry(key, DEFAULT_ENV, VALUE), failed
        entry = self.registry.entry(key)
        if entry.kind != VALUE:
            return entry, None
        running = self._running_refs.get(key)
        if running is not None:
            try:
                await _finished(running, timeout)
            except asyncio.TimeoutError:
                raise CallTimeoutError(
                    f"the call behind ref {key!r} has not finished within {timeout} s; it keeps running, get it "
                    "again later"
                ) from None
        failed = self._failed_refs.get(key)
        if failed is not None:
            return entry, failed
        entry = self.registry.entry(key)  # gone if the worker holding it died (a value dies with its worker)
        worker = await (await self.env_runtime(entry.env)).main_worker()
        return entry, await worker.request({"op": WorkerOp.GET, "key": key, "shm": shm})

    async def getattr(self, name: str, attr: str, shm: bool = False) -> Reply:
        entry = self.registry.entry(name)
        worker = await (await self.env_runtime(entry.env)).main_worker()
        await self._load(worker, entry)
        return await worker.request({"op": WorkerOp.GETATTR, "name": name, "attr": attr, "shm": shm})

    async def setattr(self, name: str, attr: str, payload: memoryview) -> Reply:
        entry = self.registry.entry(name)
        worker = await (await self.env_runtime(entry.env)).main_worker()
        await self._load(worker, entry)
        return await worker.request({"op": WorkerOp.SETATTR, "name": name, "attr": attr}, [payload])

    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Delete named objects, and envs by name (their workers stop; the objects in them go too); returns the
        names that existed.

        Raises:
            BadRequestError: a key names the default env, which cannot be deleted.
        """
        deleted = []
        for key in keys:
            if key not in self.registry.entries and key in self.registry.envs:
                await self._delete_env(key)
                deleted.append(key)
                continue
            entry, failed = self._forget(key)
            if entry is not None or failed:
                deleted.append(key)
            if entry is not None:
                await self._drop_from_workers(entry)
        return deleted

    def _forget(self, key: str) -> tuple[Entry | None, bool]:
        """Forget ``key``: its registry entry, its running ``.remote()`` call (cancelled: nobody can get its result
        any more) and its kept failure; returns the entry and whether a failure was kept."""
        entry = self.registry.remove(key)
        running = self._running_refs.pop(key, None)
        if running is not None:
            running.cancel()
        return entry, self._failed_refs.pop(key, None) is not None

    async def _delete_env(self, name: str) -> None:
        if name == DEFAULT_ENV:
            raise BadRequestError("the default env cannot be deleted; delete the objects in it by name instead")
        async with self._env_locks.setdefault(name, asyncio.Lock()):
            runtime = self.envs.pop(name, None)
            if runtime is not None:
                await runtime.stop()
            for key in [k for k, e in self.registry.entries.items() if e.env == name]:
                self._forget(key)
            self.registry.remove_env(name)

    async def _drop_from_workers(self, entry: Entry) -> None:
        runtime = self.envs.get(entry.env)
        for worker in runtime.workers() if runtime else []:
            worker.loaded.pop(entry.name, None)
            if worker.alive:
                await worker.request({"op": WorkerOp.DELETE, "keys": [entry.name]})

    def keys(self, env: str | None = None) -> list[str]:
        return [n for n, e in self.registry.entries.items() if env is None or e.env == env]

    # --- commands ------------------------------------------------------------------------------------
    async def run(
        self, cmds: Sequence[str], env: str | None, on_log: LogSink | None, python: bool = False,
        caller: str = "local", run_name: str | None = None,
    ) -> list[tuple[int, str, str]]:
        """Run shell commands (or Python sources with ``python=True``) in an env, one after another, as one run
        of ``caller`` (named ``run_name`` when given); it failed when a command exited with another code than 0."""
        spec = self.registry.envs.get(env or DEFAULT_ENV)
        if spec is None:
            raise ObjectNotFoundError(f"no env named {env!r} on this cluster")
        runtime = await self.env_runtime(spec.name)
        shown = cmds[0] if cmds else ""
        name = "run_python" if python else "run"
        run = self.runs.start(name, shown[:_COMMAND_SHOWN], COMMAND, spec.name, None, caller, run_name)
        try:
            results = await self._run_commands(cmds, spec, runtime.python, self.runs.sink(run, on_log), python, run)
        except asyncio.CancelledError:
            self.runs.finish(run, CANCELLED, "cancelled: its caller went away")
            raise
        except Exception as exc:
            self.runs.finish(run, FAILED, f"{type(exc).__name__}: {exc}")
            raise
        failures = [f"command {i + 1} of {len(cmds)} exited with code {code}"
                    for i, (code, _, _) in enumerate(results) if code != 0]
        self.runs.finish(run, FAILED if failures else DONE, "; ".join(failures) or None)
        return results

    async def _run_commands(
        self, cmds: Sequence[str], spec: EnvSpec, python_path: str, on_log: LogSink | None, python: bool, run: Run
    ) -> list[tuple[int, str, str]]:
        bin_dir = os.path.dirname(python_path)
        environ = {**os.environ, **dict(spec.env_vars), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        results = []
        for cmd in cmds:
            if python:
                proc = await asyncio.create_subprocess_exec(
                    python_path, "-c", cmd, env=environ, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                )
            else:
                proc = await asyncio.create_subprocess_shell(
                    cmd, env=environ, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                )
            self._command_groups.add(proc.pid)
            run.pid = proc.pid
            out: list[bytes] = []
            err: list[bytes] = []
            readers = asyncio.gather(_collect(proc.stdout, out, on_log), _collect(proc.stderr, err, on_log))
            code = await proc.wait()
            try:  # a background process the command started may hold the pipes open: do not wait for it
                await asyncio.wait_for(readers, _PIPE_DRAIN_S)
            except asyncio.TimeoutError:
                pass
            results.append((code, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")))
            try:
                os.killpg(proc.pid, 0)  # anything left in the command's group? keep it to stop it later
            except ProcessLookupError:
                self._command_groups.discard(proc.pid)
        return results

    # --- status --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The daemon (version, uptime, autostop, runs), its envs (workers with pid, RSS, CPU% and restarts,
        objects, runs in flight, calls and errors in the last minute, the nodes their workers run on), objects,
        workers and the cluster's nodes (with the live workers on each)."""
        nodes = self.backend.nodes()
        here = nodes[0].ip if nodes else None  # the daemon's own node comes first
        workers = []
        for env_runtime in self.envs.values():
            for worker in env_runtime.workers():
                info = {"node": here, **worker.status()}
                info["restarts"] = env_runtime.restarts[info.get("role", "main")]
                workers.append(info)
        envs = []
        for name, spec in self.registry.envs.items():
            mine = [w for w in workers if w["env"] == name]
            calls, errors = self.runs.window.counts(name)
            runtime = self.envs.get(name)
            envs.append({
                **spec.to_dict(), "env_vars": sorted(dict(spec.env_vars)), "running": runtime is not None,
                "nodes": sorted({w["node"] for w in mine if w["alive"]}),
                "workers": [{k: w.get(k) for k in ("role", "pid", "node", "alive", "memory_bytes", "cpu_percent",
                                                   "restarts")} for w in mine],
                "restarts": dict(runtime.restarts) if runtime else {"main": 0, "pool": 0},
                "objects": sum(1 for e in self.registry.entries.values() if e.env == name),
                "runs_in_flight": self.runs.in_flight(name),
                "calls_last_minute": calls,
                "errors_last_minute": errors,
            })
        node_infos = []
        for node in nodes:
            on_node = [w for w in workers if w["node"] == node.ip and w["alive"]]
            node_infos.append({**node.to_dict(), "workers": len(on_node),
                               "worker_memory_bytes": sum(w.get("memory_bytes", 0) for w in on_node)})
        return {
            "version": __version__,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "started_at": self.started_at,
            "uptime_s": time.time() - self.started_at,
            "envs": envs,
            "objects": [{"name": e.name, "kind": e.kind, "env": e.env} for e in self.registry.entries.values()],
            "workers": workers,
            "nodes": node_infos,
            "autostop": self.idle.describe(),
            "runs": {"recording": self.runs.enabled, "in_flight": len(self.runs.running),
                     "kept": len(self.runs.finished), "max_count": self.runs.max_count,
                     "max_bytes": self.runs.max_bytes},
        }


# The most items of a map one request to a worker carries: enough to make a trivial item cost little more
# than its own work, few enough that a slow batch does not hold back the rest of the map for long.
MAP_BATCH_MAX = 256


def map_batch_size(left: int, slots: int) -> int:
    """How many of the ``left`` items of a map a slot takes next: about a quarter of its fair share, so that
    slots finish together (from 1 for a short map of slow items to :data:`MAP_BATCH_MAX`)."""
    return max(1, min(MAP_BATCH_MAX, left // (4 * max(slots, 1))))


def _is_failure(result: Reply | BaseException) -> bool:
    return isinstance(result, BaseException) or result.kind == protocol.ERROR


def _ended_by(failure: Reply | BaseException) -> tuple[str, str]:
    """The status and error text of a run that ended with ``failure``: an ERROR reply (what user code raised,
    with its traceback) or an exception the daemon saw (a crashed worker, a timeout)."""
    if isinstance(failure, Reply):
        info = protocol.decode_meta(failure.payload)
        status = CANCELLED if info.get("type") == CallCancelledError.__name__ else FAILED
        return status, info.get("traceback") or f"{info.get('type')}: {info.get('message')}"
    if isinstance(failure, WorkerCrashedError):
        return CRASHED, str(failure)
    if isinstance(failure, (CallTimeoutError, CallCancelledError)):
        return CANCELLED, str(failure)
    return FAILED, f"{type(failure).__name__}: {failure}"


async def _finished(task: asyncio.Task[Reply], timeout: float | None) -> None:
    """Wait until ``task`` is done (at most ``timeout`` seconds), never cancelling it; a task cancelled by
    others (its ref was deleted) counts as done."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        if not task.cancelled():  # this waiter itself was cancelled
            raise


async def _collect(stream: asyncio.StreamReader | None, chunks: list[bytes], on_log: LogSink | None) -> None:
    assert stream is not None
    async for line in stream:
        chunks.append(line)
        if on_log is not None:
            on_log(line)


def _quiet(_: str) -> None:
    pass


def _check_name(name: str) -> None:
    problem = protocol.object_name_problem(name)
    if problem is not None:
        raise BadRequestError(f"invalid object name {name!r}: {problem}")
