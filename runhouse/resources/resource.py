"""The base of every resource type: a name, a JSON-able config, and saving and loading by name."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, TypeVar

from runhouse.errors import ConfigError, ObjectNotFoundError, RunhouseError
from runhouse.rns import store as rns_store
from runhouse.rns.names import Address

R = TypeVar("R", bound="Resource")

# resource_type -> the class that rebuilds configs of that type (subtypes look up by class name).
_TYPES: dict[str, type[Resource]] = {}
_SUBTYPES: dict[str, type[Resource]] = {}
# Where the resource classes live, so a config can be rebuilt before its module was ever imported.
_MODULES = {
    "Cluster": "runhouse.resources.clusters.base",
    "DirectCluster": "runhouse.resources.clusters.direct",
    "SSHCluster": "runhouse.resources.clusters.ssh",
    "RayCluster": "runhouse.resources.clusters.ray",
    "OnDemandCluster": "runhouse.resources.clusters.ondemand",
    "OnDemandRayCluster": "runhouse.resources.clusters.ondemand",
    "Env": "runhouse.resources.env",
    "Function": "runhouse.resources.function",
    "RemoteClass": "runhouse.resources.module",
    "Folder": "runhouse.resources.folder",
    "Package": "runhouse.resources.package",
    "Blob": "runhouse.resources.blob",
    "Table": "runhouse.resources.table",
    "Secret": "runhouse.resources.secret",
}


class Resource:
    """Something that can be named, saved and loaded: a cluster, env, function, module, ...

    Subclasses set ``RESOURCE_TYPE``, extend :meth:`config` with their fields and rebuild themselves in
    :meth:`_from_config`. A resource without a name is anonymous and never written anywhere.
    """

    RESOURCE_TYPE: ClassVar[str] = "resource"

    def __init__(self, name: str | None = None) -> None:
        self.rns_address: str | None = None
        self.name: str | None = None
        self._set_name(name)

    def _set_name(self, name: str | None) -> None:
        """Take a bare name as it is; a full address (``~/a``, ``/owner/a``, ``^a``) also sets rns_address."""
        self.rns_address, self.name = None, name
        if name and ("/" in name or name[0] in "~@^"):
            address = rns_store.resolve(name)
            self.rns_address, self.name = str(address), address.name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TYPES.setdefault(cls.RESOURCE_TYPE, cls)
        _SUBTYPES[cls.__name__] = cls

    # --- config --------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """A JSON-able description of this resource, enough to rebuild it with :meth:`from_config`."""
        return {
            "name": self.rns_address or self.name,
            "resource_type": self.RESOURCE_TYPE,
            "resource_subtype": type(self).__name__,
        }

    @classmethod
    def from_config(cls: type[R], config: dict[str, Any], dryrun: bool = False) -> R:
        """Rebuild a resource from :meth:`config` output, as the class its ``resource_subtype`` names.

        Raises:
            ConfigError: the config is not for this kind of resource, or is missing fields.
        """
        if not isinstance(config, dict):
            raise ConfigError(f"a resource config must be a dict, not {type(config).__name__}")
        subtype = config.get("resource_subtype", "")
        if subtype in _MODULES and subtype not in _SUBTYPES:
            importlib.import_module(_MODULES[subtype])
        target = _SUBTYPES.get(subtype) or _TYPES.get(config.get("resource_type", ""))
        if target is None or not issubclass(target, cls):
            raise ConfigError(
                f"config of type {config.get('resource_type')!r}/{config.get('resource_subtype')!r} "
                f"is not a {cls.__name__}"
            )
        try:
            resource = target._from_config(config, dryrun)
        except ObjectNotFoundError:  # a resource it refers to (its cluster, say) is not saved
            raise
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid {target.RESOURCE_TYPE} config: {type(exc).__name__}: {exc}") from exc
        resource._set_name(config.get("name"))
        return resource  # type: ignore[return-value]

    @classmethod
    def _from_config(cls, config: dict[str, Any], dryrun: bool) -> Resource:
        return cls(config.get("name"))

    # --- saving and loading by name ------------------------------------------------------------------
    def save(self: R, name: str | None = None) -> R:
        """Save the config under ``name`` (or the resource's own name); returns self.

        Saving an unchanged config writes nothing new; a changed one keeps the previous in its history.
        """
        target = name or self.rns_address or self.name
        if not target:
            raise RunhouseError(f"this {self.RESOURCE_TYPE} has no name; save it with .save(name=...)")
        address = rns_store.resolve(target)
        self._set_name(str(address))
        rns_store.save(address, self.config())
        return self

    def _address(self) -> Address:
        if not (self.rns_address or self.name):
            raise RunhouseError(f"this {self.RESOURCE_TYPE} has no name, so nothing of it is saved")
        return rns_store.resolve(self.rns_address or self.name)  # type: ignore[arg-type]

    def history(self) -> list[dict[str, Any]]:
        """Every saved version of this resource's config, oldest first (``version`` ids for rh.load)."""
        return rns_store.history(self._address())

    def share(
        self,
        users: str | list[str],
        access_level: str | None = None,
        notify: bool = False,
        access_type: str | None = None,
        notify_users: bool | None = None,
    ) -> ShareResult:
        """Share this resource (saved in Den) with users (names or emails), ``access_level`` "read" (default)
        or "write".

        ``access_type`` and ``notify_users`` are Runhouse's documented names for ``access_level`` and ``notify``.
        Returns Runhouse's documented pair ``(added_users, new_users)`` (users given by name, users given by
        email, each to the access granted), which also carries Den's answer: ``result["shares"]``.
        """
        if access_level is not None and access_type is not None and access_level != access_type:
            raise ValueError(f"access_level={access_level!r} and access_type={access_type!r} disagree; give one")
        level = access_level or access_type or "read"
        who = [users] if isinstance(users, str) else list(users)
        answer = rns_store.share(self._address(), who, level)
        return ShareResult(answer, {u: level for u in who if "@" not in u}, {u: level for u in who if "@" in u})

    def unshare(self, users: str | list[str]) -> dict[str, Any]:
        """Take back the shares this resource's address gave to users."""
        return rns_store.unshare(self._address(), [users] if isinstance(users, str) else list(users))

    def delete_configs(self) -> bool:
        """Delete this resource's saved config and its history; returns whether anything was saved."""
        return rns_store.delete(self._address())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.rns_address or self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()  # type: ignore[attr-defined]

    __hash__ = object.__hash__


class ShareResult(tuple):  # type: ignore[type-arg]
    """What :meth:`Resource.share` returns: the pair ``(added_users, new_users)`` Runhouse documents, that
    also answers ``result["address"]`` and ``result["shares"]`` from Den's answer."""

    answer: dict[str, Any]

    def __new__(cls, answer: dict[str, Any], by_name: dict[str, str], by_email: dict[str, str]) -> ShareResult:
        result = super().__new__(cls, (by_name, by_email))
        result.answer = answer
        return result

    def __getitem__(self, key: Any) -> Any:
        return self.answer[key] if isinstance(key, str) else super().__getitem__(key)


def load(name: str, version: str | None = None, dryrun: bool = False) -> Resource:
    """Load a saved resource of any type by name (an older ``version`` from its history when given).

    Example::

        fn = rh.load("my_fn")       # a callable stub of the deployed function
    """
    config = rns_store.load(rns_store.resolve(name), version)
    resource = Resource.from_config(config, dryrun=dryrun)
    resource._set_name(str(rns_store.resolve(name)))
    return resource


def load_typed(cls: type[R], name: str, dryrun: bool = False) -> R:
    """Load ``name`` and check it is a ``cls``."""
    resource = load(name, dryrun=dryrun)
    if not isinstance(resource, cls):
        raise ConfigError(f"{name!r} is a {resource.RESOURCE_TYPE}, not a {cls.RESOURCE_TYPE}")
    return resource


def exists(name: str) -> bool:
    """Whether a resource is saved under ``name``."""
    return rns_store.exists(rns_store.resolve(name))
