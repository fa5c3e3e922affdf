"""Functions: a Python function deployed to a cluster and called like a local one."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from runhouse.errors import RunhouseError
from runhouse.protocol import CALL_METHOD
from runhouse.resources import remote

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster
    from runhouse.resources.env import Env


class Function(remote.Deployable):
    """A function, local until :meth:`to` deploys it to a cluster; then every call runs there.

    Call options (keyword arguments taken by runhouse, not passed on): ``stream_logs`` (default True:
    the call's prints and logging appear here live, prefixed with the function's name) and ``timeout``
    (seconds; raises :class:`~runhouse.errors.CallTimeoutError` and cancels the call on the cluster).
    """

    RESOURCE_TYPE = "function"
    KIND = "function"

    @property
    def fn(self) -> Callable | None:
        """The function itself, runnable here: the one given, or rebuilt from the saved config of a loaded one
        (None for a handle from ``cluster.get``).

        Raises:
            SerializationError: it was sent by value (written in a notebook) by another Python or cloudpickle
                version, or needs a module missing here.
        """
        return self._rebuilt_code()

    @property
    def is_async(self) -> bool:
        """Whether calls return awaitables (the function is ``async def``)."""
        known = self.info.get("is_async")
        return bool(known) if known is not None else inspect.iscoroutinefunction(self.code)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call on the cluster and return the result (awaitable when the function is ``async def``)."""
        system = self._system()
        return remote.maybe_async(self.is_async, remote.call, system, self.remote_name, CALL_METHOD, args, kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> remote.Ref:
        """Call on the cluster and keep the result there; returns a :class:`~runhouse.resources.remote.Ref`."""
        return remote.call(self._system(), self.remote_name, CALL_METHOD, args, kwargs, remote=True)

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        """Call after every earlier enqueued call of this function has finished (one at a time, in order)."""
        return remote.call(self._system(), self.remote_name, CALL_METHOD, args, kwargs, enqueue=True)

    def map(self, *iterables: Iterable, **kwargs: Any) -> list[Any]:
        """Call once per item, in parallel over the env's worker processes; results in order.

        Positional iterables are zipped like builtin ``map``; a keyword whose value is a list of the same
        length is zipped per item; any other keyword value is passed unchanged to every call.
        """
        return remote.map_call(self._system(), self.remote_name, CALL_METHOD, iterables, kwargs, star=False)

    def starmap(self, items: Iterable[Sequence[Any]], **kwargs: Any) -> list[Any]:
        """Like :meth:`map`, with each item a tuple of positional arguments."""
        return remote.map_call(self._system(), self.remote_name, CALL_METHOD, [items], kwargs, star=True)

    def logs(self) -> str:
        """The output of this function's latest run on its cluster (so far, when it is still running).

        Raises:
            RunhouseError: the cluster keeps no run of it.
        """
        return remote.latest_logs(self._system(), self.remote_name)



def function(
    fn: Callable | None = None,
    name: str | None = None,
    dryrun: bool = False,
    system: Cluster | None = None,
    env: Env | str | Sequence[str] | None = None,
    reqs: Sequence[str] | None = None,
    serialize_notebook_fn: bool = False,
) -> Function:
    """Wrap a function so it can be deployed to a cluster; with ``system``, deploy it there at once (in ``env``,
    or an env of ``reqs``). Called with only a name, loads the function saved under it.

    Functions defined in a notebook or ``__main__`` are always sent by value (``serialize_notebook_fn`` is
    accepted for Runhouse's documented calls and changes nothing). ``rh.send`` is the same factory.

    Example::

        remote_add = rh.function(add).to(rh.here)
        remote_add(1, 2)                       # 3, computed on the cluster
        remote_add.map([1, 2], [3, 4])         # [4, 6], in parallel
        rh.function(add, name="add", system=gpu, reqs=["numpy"])   # deployed at once, in an env with numpy
    """
    if fn is None:
        if name is None:
            raise RunhouseError("rh.function needs a function, or the name of a saved one")
        from runhouse.resources.resource import load_typed

        loaded = load_typed(Function, name, dryrun=dryrun)
        return loaded.to(system, env if env is not None else reqs) if system is not None else loaded
    if env is not None and reqs is not None:
        raise ValueError("give env= or reqs= (the requirements of a new env), not both")
    made = Function(fn, name)
    return made.to(system, env if env is not None else reqs, dryrun=dryrun) if system is not None else made


send = function  # Runhouse's documented name for the same factory
