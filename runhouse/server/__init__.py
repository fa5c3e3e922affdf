"""The cluster daemon: its HTTP API, its named objects, and the env workers that run user code.

- :mod:`~runhouse.server.app`: the HTTP layer (ASGI), thin over the runtime.
- :mod:`~runhouse.server.runtime`: the registry of envs and named objects, and every operation on them.
- :mod:`~runhouse.server.envs`: envs (their interpreters) and their workers: a main worker, a pool for ``map``.
- :mod:`~runhouse.server.backend`: the worker-backend seam, what the runtime needs from a worker
  (``WorkerHandle``) and how an env makes one (``WorkerFactory``). A Ray backend (workers on other nodes)
  plugs in here, by passing its factory to ``Runtime``.
- :mod:`~runhouse.server.channel`: the local backend, a worker process on the daemon's host (the default).
- :mod:`~runhouse.server.worker`: the worker process itself, serving the operations of ``protocol.WorkerOp``.
- :mod:`~runhouse.server.daemon`: the daemon process (uvicorn serving the app).

The daemon imports neither ``runhouse.resources`` nor ``runhouse.transport``: what it shares with clients
is :mod:`runhouse.protocol`.
"""
