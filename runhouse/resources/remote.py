"""How local stubs talk to objects on a cluster: shipping code, calling, refs, map.

Shared by functions and modules, so every call type works the same on both.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import importlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import cloudpickle

from runhouse import protocol, serialization
from runhouse.errors import MapError, RunhouseError, SerializationError, WorkerCrashedError
from runhouse.protocol import DEFAULT_ENV, LogSink, Op
from runhouse.resources.clusters.base import print_log
from runhouse.resources.env import Env, env_name_of
from runhouse.resources.resource import Resource
from runhouse.rns.local_store import repo_relative, repo_root
from runhouse.transport.client import CALL_READ_TIMEOUT_S, ItemsSink, Response, answer_wait
from runhouse.transport.direct import Route, Unroutable, WorkerGone

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster

# Keyword arguments of a call that are options for runhouse, never passed to the remote code.
CALL_OPTIONS = ("stream_logs", "timeout", "run_name")


class Ref:
    """The result of a call started with ``.remote()``, kept on the cluster under ``key``.

    ``.remote()`` returns it as soon as the cluster accepted the call; the call runs on there. ``rh.get(ref)``
    waits for the result and fetches it (the call's error is raised there); passed as an argument to another
    call on the same cluster, it is resolved there without crossing the network. A ref pickles as its key and
    its cluster's config, so another process can fetch it (``cluster.get(key)`` works too) for as long as the
    cluster keeps it (until it is deleted, or its env's main worker exits). ``run_id`` names the call's run
    (``ref.logs()``, ``cluster.logs(ref.run_id)``).
    """

    __slots__ = ("key", "system", "run_id")

    def __init__(self, key: str, system: Cluster, run_id: str | None = None) -> None:
        self.key, self.system, self.run_id = key, system, run_id

    def get(self, timeout: float | None = None) -> Any:
        """The result, once the call finished: at most ``timeout`` seconds of waiting when given.

        Raises:
            CallTimeoutError: the call has not finished within ``timeout`` (it keeps running).
            Exception: what the call raised (its own type, or RemoteError), or WorkerCrashedError.
        """
        return self.system.get(self.key, timeout=timeout)

    def done(self) -> bool:
        """Whether the call has finished (successfully or not); never waits for it."""
        return bool(self.system._control(Op.READY, {"keys": [self.key]})[self.key])

    def logs(self) -> str:
        """The output of the call so far (all of it once it finished)."""
        if self.run_id is None:
            raise RunhouseError(f"{self!r} has no run id (made by an older runhouse); use cluster.runs()")
        return self.system.logs(self.run_id)

    def __reduce__(self) -> tuple[Any, tuple[str, Any, str | None]]:
        system = self.system
        return _ref_on, (self.key, system.rns_address or system.config(), self.run_id)

    def __repr__(self) -> str:
        return f"<Ref {self.key!r} on {self.system!r}>"


def _ref_on(key: str, system: str | dict[str, Any], run_id: str | None = None) -> Ref:
    """A ref rebuilt in another process from its key, its cluster's name or config and its run id."""
    from runhouse.resources.clusters.base import Cluster
    from runhouse.resources.resource import load_typed

    cluster = load_typed(Cluster, system) if isinstance(system, str) else Cluster.from_config(system)
    return Ref(key, cluster, run_id)


def get(ref: Ref | Any, timeout: float | None = None) -> Any:
    """The value of a :class:`Ref`, waiting at most ``timeout`` seconds for its call (anything else is
    returned unchanged).

    Example::

        ref = remote_fn.remote(1, 2)
        rh.get(ref, timeout=60)
    """
    return ref.get(timeout) if isinstance(ref, Ref) else ref


def describe_code(obj: Any) -> tuple[dict[str, Any], bytes, str]:
    """How a worker re-creates ``obj``: by import path, or by value (cloudpickle) for code written in a
    notebook or ``__main__`` (with the globals it uses, as they are now), recording the Python and cloudpickle
    versions it needs.

    Returns:
        ``(spec, payload, version)``; ``payload`` is empty for code imported by path, and ``version``
        changes whenever the code does.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    source = getattr(module, "__file__", None)
    if module_name == "__main__" or "<locals>" in qualname or module is None or source is None:
        try:
            payload = cloudpickle.dumps(obj)
        except Exception as exc:
            raise SerializationError(
                f"cannot send {qualname or obj!r} by value (as code written in a notebook or __main__ is): "
                f"{type(exc).__name__}: {exc}. A global it uses cannot be pickled (a lock, an open file, a "
                "connection): create it inside the function or class instead") from exc
        spec = {"module": module_name, "qualname": qualname, "pickled": True, **serialization.code_versions()}
        return spec, payload, hashlib.sha256(payload).hexdigest()[:20]
    path = Path(source).resolve()
    if path.name == "__init__.py":
        path = path.parent
    root = str(path.parents[len(module_name.split(".")) - 1])  # type: ignore[union-attr]
    code_hash = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:20]
    spec = {"module": module_name, "qualname": qualname, "root": root, "code_hash": code_hash}
    return spec, b"", hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


class Deployable(Resource):
    """Code (a function or a class) that :meth:`to` deploys to a cluster under ``remote_name``.

    Its config records how to re-create it (import path, or the code itself when it was defined in
    ``__main__``), the env it runs in and the cluster it lives on, so a loaded copy calls the deployed
    object without deploying again.
    """

    KIND: ClassVar[str] = ""  # what the daemon registers it as: "function" or "class"

    def __init__(self, code: Any = None, name: str | None = None, remote_name: str | None = None) -> None:
        super().__init__(name or getattr(code, "__name__", None))
        if not self.name or self.name == "<lambda>":  # every lambda would deploy under the same name
            raise RunhouseError(f"rh.{self.RESOURCE_TYPE} needs a named {self.KIND}, or name=")
        self.remote_name: str = remote_name or self.name
        self.code = code
        self.code_spec: dict[str, Any] | None = None  # how to re-create the code, once deployed or loaded
        self.system: Cluster | None = None
        self.env: str | None = None
        self.info: dict[str, Any] = {}  # what the worker reported: methods, whether it is async

    def _bound(self: D, system: Cluster, env: str, info: dict[str, Any]) -> D:
        stub = copy.copy(self)
        stub.system, stub.env, stub.info = system, env, info
        return stub

    def _rebuilt_code(self) -> Any:
        """The code here: the one given, else rebuilt from a loaded config (None for a bare handle)."""
        return self._local_code() if self.code is None and self.code_spec is not None else self.code

    def _local_code(self) -> Any:
        if self.code is None and self.code_spec is not None:
            self.code = code_from_spec(self.code_spec)
        if self.code is None:
            raise RunhouseError(f"{self.RESOURCE_TYPE} {self.name!r} has no local code to deploy")
        return self.code

    def to(
        self: D,
        system: Cluster,
        env: Env | str | Sequence[str] | None = None,
        dryrun: bool = False,
        name: str | None = None,
    ) -> D:
        """Deploy to ``system`` in ``env`` (an Env, an env name, or a list of requirements); returns the
        deployed copy, named ``name`` when given (on the cluster too). Deploying unchanged code again costs one
        round trip; ``dryrun`` only builds the copy."""
        if name is not None:
            renamed = copy.copy(self)
            renamed._set_name(name)
            renamed.remote_name = renamed.name or name
            return renamed.to(system, env, dryrun)
        code = self._local_code()
        spec, payload, version = describe_code(code)
        if dryrun:
            env_name, info = env_name_of(env), {}
        else:
            system._ensure_up()
            env_name = system._env_name(env) or DEFAULT_ENV
            there = system.prepare_code(spec, env_name)  # the same code, as the cluster imports it
            if there != spec:
                version = hashlib.sha256(json.dumps([there, version], sort_keys=True).encode()).hexdigest()[:20]
            meta = {"name": self.remote_name, "env": env_name, "kind": self.KIND, "spec": there, "version": version}
            info = system._control(Op.DEPLOY, meta, [payload] if payload else [])
        bound = self._bound(system, env_name, info)
        bound.code_spec = {**spec, "payload": base64.b64encode(payload).decode()} if payload else spec
        return bound

    def _system(self) -> Cluster:
        if self.system is None:
            raise RunhouseError(f"{self.RESOURCE_TYPE} {self.name!r} is not deployed; call .to(cluster) first")
        return self.system

    def config(self) -> dict[str, Any]:
        system = self.system
        return {
            **super().config(),
            "remote_name": self.remote_name,
            "env": self.env,
            "system": (system.rns_address or system.config()) if system else None,
            "code": _portable(self.code_spec),
            "info": self.info,
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Deployable:
        from runhouse.resources.clusters.base import Cluster
        from runhouse.resources.resource import load_typed

        stub = cls(None, config["remote_name"], remote_name=config["remote_name"])
        system = config.get("system")
        if isinstance(system, str):
            stub.system = load_typed(Cluster, system, dryrun=dryrun)
        elif system is not None:
            stub.system = Cluster.from_config(system, dryrun=dryrun)
        stub.env, stub.info, stub.code_spec = config.get("env"), config.get("info") or {}, config.get("code")
        return stub


def _portable(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` as a config keeps it: an import root inside a git repo relative to the repo's root, so the
    config names no folder of the author's machine (it is read against the reader's checkout)."""
    root = (spec or {}).get("root")
    if not spec or not root or spec.get("root_in_repo") or not Path(root).is_absolute():
        return spec
    relative = repo_relative(Path(root))
    return spec if relative is None else {**spec, "root": relative, "root_in_repo": True}


def code_from_spec(spec: dict[str, Any]) -> Any:
    """The code a config recorded: unpickled when it was sent by value, else imported by path (a root relative
    to a repo is read against the current checkout's root).

    Raises:
        SerializationError: code sent by value was written by another Python or cloudpickle version, refers to
            a module missing here, or its saved bytes are damaged.
    """
    if spec.get("pickled"):
        what = repr(spec.get("qualname"))
        try:
            payload = base64.b64decode(spec.get("payload", ""), validate=True)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"the saved code of {what} is damaged (its payload is not base64): "
                                     "deploy it and save it again") from exc
        return serialization.load_code(payload, spec, what)
    try:
        obj: Any = importlib.import_module(spec["module"])
    except ImportError:
        root = spec.get("root")
        if root and spec.get("root_in_repo"):
            root = str(repo_root() / root)
        if root and root not in sys.path:
            sys.path.append(root)
        obj = importlib.import_module(spec["module"])
    for part in spec["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


D = TypeVar("D", bound=Deployable)


def _pack(system: Cluster, value: Any, refs: list[str], kept: bool = False) -> list:
    """Serialize call arguments; refs to values on ``system`` travel as keys.

    Arguments the daemon ``kept`` (an instance's init arguments, to re-create it after a restart) never go
    through shared memory: its files are gone once read.
    """

    def persistent_id(obj: Any) -> Any:
        if type(obj) is Ref:
            if obj.system is system or obj.system.client is system.client or _same_daemon(obj.system, system):
                refs.append(obj.key)
                return ("ref", obj.key)
            raise SerializationError(f"{obj!r} lives on another cluster; pass rh.get(ref) instead")
        return None

    # (a call of plain scalars takes pickle's all-C path in serialize: nothing in it can be a ref)
    return serialization.serialize(value, persistent_id, shm=system.shares_memory and not kept)


def _same_daemon(a: Cluster, b: Cluster) -> bool:
    return a._endpoint() == b._endpoint()


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's own keyword arguments, and runhouse's options among them (:data:`CALL_OPTIONS`) as the
    daemon reads them (``stream_logs`` on unless turned off; the others only when given)."""
    options = {"stream_logs": bool(kwargs.pop("stream_logs", True))}
    for name in ("timeout", "run_name"):
        value = kwargs.pop(name, None)
        if value is not None:
            options[name] = value
    return kwargs, options


def call(
    system: Cluster,
    name: str,
    method: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    remote: bool = False,
    enqueue: bool = False,
) -> Any:
    """Call ``name.method(*args, **kwargs)`` on the cluster; ``stream_logs``, ``timeout`` and ``run_name`` in
    kwargs are options (``run_name`` names the call's run: ``cluster.runs(name=...)`` finds it)."""
    kwargs, meta = _split_options(dict(kwargs))
    stream_logs, timeout = meta["stream_logs"], meta.get("timeout")
    refs: list[str] = []
    parts = _pack(system, (tuple(args), kwargs), refs)
    if system.shares_memory:
        meta["shm"] = True
    if refs:
        meta["refs"] = refs
    if remote:
        meta["remote"] = True
    if enqueue:
        meta["enqueue"] = True
    on_log = _log_sink(name, method) if stream_logs else None
    response = None
    if not (refs or remote or enqueue or timeout is not None or meta.get("run_name")):
        response = _call_direct(system, name, method, stream_logs, parts, on_log)
    if response is None:
        response = _send(system, protocol.call_path(name, method), meta, parts, [parts], on_log, answer_wait(timeout))
    if remote and response.kind == protocol.RESULT:
        answer = response.value()
        return Ref(answer["ref"], system, answer.get("run_id"))
    return response.value()


def _call_direct(
    system: Cluster, name: str, method: str, stream_logs: bool, parts: list, on_log: LogSink | None
) -> Response | None:
    """Send a plain call straight to the worker that runs it, when the daemon is on this machine (None: send
    it through the daemon; nothing ran). A worker that dies mid-call raises the daemon's crash error."""
    calls = system.direct_calls
    if calls is None:
        return None
    if name not in calls.routes:
        try:
            found = system._control(Op.ROUTE, {"name": name})
        except BaseException:  # no such object, say: the arguments' shared-memory files will never be read
            serialization.discard(parts)
            raise
        calls.routes[name] = Route(name, found["address"], found["pid"], found["methods"]) if found else None
    route = calls.routes[name]
    if route is None or method not in route.methods:
        return None
    try:
        return calls.call(route, method, stream_logs, system.shares_memory, parts, on_log)
    except Unroutable:
        calls.forget(name)
        return None
    except WorkerGone as gone:
        calls.forget(name)
        serialization.discard(parts)
        system._control(Op.ROUTE, {"name": name, "crashed_pid": gone.pid, "method": method})  # raises the crash
        raise WorkerCrashedError(f"the worker running {name}.{method} (pid {gone.pid}) went away mid-call") from gone


def _send(
    system: Cluster,
    path: str,
    meta: dict[str, Any],
    body: list,
    values: list[list],
    on_log: LogSink | None,
    timeout: float,
    on_items: ItemsSink | None = None,
) -> Response:
    """Send ``body`` (the serialized ``values``, as parts); when the request fails, the values' shared-memory
    files are removed (a refused or failed request may leave them unread)."""
    try:
        return system.request(path, meta, body, on_log, timeout, on_items)
    except BaseException:
        for parts in values:
            serialization.discard(parts)
        raise


def _log_sink(name: str, method: str) -> LogSink:
    """Where a call's streamed output goes: stdout, behind the function's or ``instance.method``'s name."""
    return print_log(name if method in (protocol.CALL_METHOD, "__call__") else f"{name}.{method}")


def _map_items(iterables: Sequence[Iterable], kwargs: Mapping[str, Any], star: bool) -> list[tuple]:
    if star:
        (items,) = iterables
        arg_lists = [tuple(item) for item in items]
    else:
        arg_lists = list(zip(*iterables, strict=False)) if iterables else []
    count = len(arg_lists) if iterables else None
    per_item = {}
    for key, value in kwargs.items():
        if isinstance(value, list) and (count is None or len(value) == count):
            count = len(value) if count is None else count
            per_item[key] = value
    if count is None:
        raise ValueError("map needs at least one iterable (or a keyword whose value is a list)")
    if not arg_lists:
        arg_lists = [()] * count
    return [
        (args, {k: (v[i] if k in per_item else v) for k, v in {**kwargs, **per_item}.items()})
        for i, args in enumerate(arg_lists)
    ]


def map_call(
    system: Cluster, name: str, method: str, iterables: Sequence[Iterable], kwargs: dict[str, Any], star: bool
) -> list[Any]:
    """Run one call per item in parallel on the cluster; results in input order.

    The items go in one request body (small ones packed together); the answers come back in order as the
    daemon streams them, each rebuilt as it arrives, so neither side holds every answer twice.

    Raises:
        MapError: some items failed; it carries every item's result or exception.
    """
    kwargs, options = _split_options(dict(kwargs))
    stream_logs = options["stream_logs"]
    items = _map_items(iterables, kwargs, star)
    if not items:
        return []
    refs: list[str] = []
    body: list = []  # small parts joined into chunks, large ones as they are
    chunk = bytearray()
    sizes: list[int] = []
    with_buffers: list[list] = []  # items whose out-of-band buffers may be shared-memory files
    for item in items:
        parts = _pack(system, item, refs)
        sizes.append(serialization.serialized_size(parts))
        if len(parts) > 2:
            with_buffers.append(parts)
        for part in parts:
            if memoryview(part).nbytes < protocol.SMALL_FRAME_BYTES:
                chunk += part
            else:
                body += [chunk, part]
                chunk = bytearray()
    body.append(chunk)
    del items
    meta = {
        "name": name,
        "method": method,
        "sizes": sizes,
        "stream_logs": stream_logs,
        "refs": sorted(set(refs)),
        "shm": system.shares_memory,
        "run_name": options.get("run_name"),
    }
    results: list[Any] = []

    def on_items(payload: bytearray) -> None:
        view, offset = memoryview(payload), 0
        while offset < view.nbytes:
            kind, size = protocol.HTTP_FRAME.unpack_from(view, offset)
            offset += protocol.HTTP_FRAME.size
            answer = view[offset : offset + size]
            offset += size
            if kind == protocol.ERROR:
                results.append(protocol.error_from_info(protocol.decode_meta(answer)))
            else:
                results.append(serialization.deserialize(answer))

    on_log = _log_sink(name, method) if stream_logs else None
    response = _send(system, protocol.control_path(Op.MAP), meta, body, with_buffers, on_log, CALL_READ_TIMEOUT_S,
                     on_items)
    if response.kind == protocol.ERROR:
        response.value()
    if any(isinstance(r, BaseException) for r in results):
        raise MapError(results)
    return results


def latest_logs(system: Cluster, name: str) -> str:
    """The output of the latest run of the object ``name`` on ``system``.

    Raises:
        RunhouseError: ``system`` keeps no run of it.
    """
    latest = system.runs(name=name, limit=1)
    if not latest:
        raise RunhouseError(f"no run of {name!r} is kept on {system.name or 'the cluster'}; call it first")
    return system.logs(latest[0]["id"])


def maybe_async(is_async: bool, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking remote call, or return an awaitable of it when the remote code is ``async def``."""
    if is_async:
        return asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def handle_for(system: Cluster, name: str, described: dict[str, Any]) -> Any:
    """A local stub for a named object on the cluster (what ``cluster.get(name)`` returns for code)."""
    from runhouse.resources.function import Function
    from runhouse.resources.module import RemoteClass, RemoteInstance

    kind, info = described["kind"], described.get("info", {})
    if kind == "function":
        return Function(None, name)._bound(system, described["env"], info)
    if kind == "class":
        return RemoteClass(None, name)._bound(system, described["env"], info)
    return RemoteInstance(system, name, info)

