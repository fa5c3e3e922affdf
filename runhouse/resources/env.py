"""Envs: the requirements and environment variables that code runs with on a cluster."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runhouse.errors import InvalidNameError, PackageError
from runhouse.protocol import DEFAULT_ENV, object_name_problem
from runhouse.resources.package import Package, git_requirement
from runhouse.resources.resource import Resource

if TYPE_CHECKING:
    from runhouse.resources.clusters.base import Cluster

Requirement = str | os.PathLike[str] | Package


class Env(Resource):
    """Requirements (installed with pip into a cached venv) and environment variables for workers.

    A requirement that is a local package folder (or an ``rh.package(...)`` of one) is shipped to the cluster
    and installed editable into the env's interpreter once the env exists (see
    :meth:`~runhouse.resources.clusters.base.Cluster.install_packages`); it is kept in :attr:`packages`, the
    rest (pip requirements, git URLs as ``git+<url>``) in :attr:`reqs`.
    Each env on a cluster has its own worker processes; code deployed into it runs there. On a multi-node
    cluster ``node`` (an index into the cluster's ips, 0 the head, or an ip) pins them to a node and
    ``compute`` (``{"GPU": 1}``, Ray resource names) places them where those resources are and holds them.
    """

    RESOURCE_TYPE = "env"

    def __init__(
        self,
        reqs: Requirement | Sequence[Requirement] | None = None,
        env_vars: Mapping[str, str] | None = None,
        name: str | None = None,
        memory_limit_mb: int | None = None,
        node: int | str | None = None,
        compute: Mapping[str, float] | None = None,
    ) -> None:
        self.reqs, self.packages = _requirements(reqs)
        self.node = _node(node)
        self.compute = _compute(compute)
        self.env_vars = {str(k): str(v) for k, v in (env_vars or {}).items()}
        limit = memory_limit_mb
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
            raise ValueError(f"memory_limit_mb must be a positive integer, not {memory_limit_mb!r}")
        self.memory_limit_mb = memory_limit_mb
        if name is None:
            if self.reqs or self.packages or self.env_vars or memory_limit_mb or self.node is not None or self.compute:
                ident: list[Any] = [sorted(self.reqs), self.env_vars, memory_limit_mb]
                if self.node is not None or self.compute:
                    ident += [self.node, self.compute]
                if self.packages:
                    ident.append(sorted(p.install_target for p in self.packages))
                digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
                name = f"env-{digest.hexdigest()[:10]}"
            else:
                name = DEFAULT_ENV
        super().__init__(name)
        problem = object_name_problem(self.name)
        if problem is not None:
            raise InvalidNameError(f"invalid env name {name!r}: {problem}")

    def spec(self) -> dict[str, Any]:
        """What the daemon needs to create this env."""
        return {
            "name": self.name,
            "reqs": self.reqs,
            "env_vars": self.env_vars,
            "memory_limit_mb": self.memory_limit_mb,
            "node": self.node,
            "compute": self.compute,
        }

    def to(self, system: Cluster) -> Env:
        """Create this env on a cluster (installing its requirements there); returns self."""
        system.ensure_env(self)
        return self

    def config(self) -> dict[str, Any]:
        spec = self.spec()
        del spec["name"]
        config = {**super().config(), **spec}
        if self.packages:
            config["packages"] = [p.config() for p in self.packages]
        return config

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Env:
        packages = [Package.from_config(p) for p in config.get("packages", [])]
        return cls(
            reqs=[*config.get("reqs", []), *packages],
            env_vars=config.get("env_vars"),
            name=config.get("name"),
            memory_limit_mb=config.get("memory_limit_mb"),
            node=config.get("node"),
            compute=config.get("compute"),
        )


def _node(node: Any) -> int | str | None:
    if node is None or (isinstance(node, str) and node.strip()):
        return node
    if isinstance(node, int) and not isinstance(node, bool) and node >= 0:
        return node
    raise ValueError(f"node must be an index into the cluster's ips (0 is the head) or an ip, not {node!r}")


def _compute(compute: Mapping[str, float] | None) -> dict[str, float]:
    if compute is None:
        return {}
    if not isinstance(compute, Mapping):
        raise TypeError(f"compute maps resource names to amounts, like {{'GPU': 1}}, not {compute!r}")
    for name, amount in compute.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"compute resource names are strings like 'GPU', not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < float("inf"):
            raise ValueError(f"compute[{name!r}] must be a positive number, not {amount!r}")
    return dict(compute)


def _requirements(reqs: Requirement | Sequence[Requirement] | None) -> tuple[list[str], list[Package]]:
    """``reqs`` split into requirement strings and local packages; one string (or path) is one requirement, never
    its letters. A string naming an existing folder is a local package; ``rh.package`` objects of git URLs and
    pip requirements become their requirement strings.

    Raises:
        TypeError: an item that is not a non-empty string, path or package.
        PackageError: a requirement that is a command-line option (``--index-url ...``), or a folder that is no
            package.
    """
    if reqs is None:
        return [], []
    if isinstance(reqs, (str, os.PathLike, Package)):
        reqs = [reqs]
    if not isinstance(reqs, Sequence):
        raise TypeError(f"reqs must be a list of requirements like ['numpy>=1.26'], not {type(reqs).__name__}")
    strings: list[str] = []
    packages: list[Package] = []
    for req in reqs:
        if not isinstance(req, (str, os.PathLike, Package)) or not str(req).strip():
            raise TypeError(f"each requirement is a non-empty string like 'numpy>=1.26' or a path, not {req!r}")
        if isinstance(req, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(req)):
            req = Package(req)
        if isinstance(req, Package) and req.kind == "local":
            packages.append(req)
        elif isinstance(req, Package):
            strings.append(req.install_target)
        elif str(req).lstrip().startswith("-"):
            raise PackageError(
                f"requirement {str(req)!r} is a command-line option; give requirements like 'numpy>=1.26'"
            )
        else:
            strings.append(git_requirement(str(req)) or str(req))
    return strings, packages


def env(
    reqs: Requirement | Sequence[Requirement] | None = None,
    env_vars: Mapping[str, str] | None = None,
    name: str | None = None,
    memory_limit_mb: int | None = None,
    dryrun: bool = False,
    node: int | str | None = None,
    compute: Mapping[str, float] | None = None,
) -> Env:
    """An env: requirements and environment variables for code on a cluster.

    ``reqs`` are pip requirements (one string is one requirement), git URLs, local package folders and
    ``rh.package(...)`` objects; local folders are installed editable into the env once it exists.

    ``memory_limit_mb`` caps each worker process of the env: one that grows past it is killed (its calls
    fail with :class:`~runhouse.errors.WorkerCrashedError`) and restarted. On a multi-node cluster, ``node``
    pins the env to a node (an index into the cluster's ips or an ip) and ``compute`` places it where those
    resources are, holding them while it runs (``{"GPU": 1}``); a placement no node can meet is a
    :class:`~runhouse.errors.BadRequestError` when the env is created.

    Called with only a name, loads the env saved under it.

    Example::

        sd_env = rh.env(reqs=["numpy", "./my_pkg"], env_vars={"MODE": "prod"}, name="sd_env")
        fn = rh.function(my_fn).to(rh.here, env=sd_env)
        trainer = rh.env(reqs=["torch"], name="trainer", compute={"GPU": 1})
    """
    only_name = reqs is None and env_vars is None and memory_limit_mb is None and node is None and compute is None
    if name is not None and name != DEFAULT_ENV and only_name:
        from runhouse.resources.resource import load_typed

        return load_typed(Env, name, dryrun=dryrun)
    return Env(reqs=reqs, env_vars=env_vars, name=name, memory_limit_mb=memory_limit_mb, node=node, compute=compute)



def env_name_of(value: Env | str | Sequence[Requirement] | None) -> str:
    """The name of an env given as an Env, a name, or a list of requirements (None: the default env)."""
    if value is None:
        return DEFAULT_ENV
    if isinstance(value, str):
        return value
    if isinstance(value, Env):
        return value.name  # type: ignore[return-value]
    return Env(reqs=list(value)).name  # type: ignore[return-value]
