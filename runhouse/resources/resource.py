"""The base of every resource type: a name and a JSON-able config."""

from __future__ import annotations

from typing import Any, ClassVar


class Resource:
    """Something that can be named: a cluster, env, function, module, ...

    Subclasses set ``RESOURCE_TYPE`` and extend :meth:`config` with their own fields.
    """

    RESOURCE_TYPE: ClassVar[str] = "resource"

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def config(self) -> dict[str, Any]:
        """A JSON-able description of this resource."""
        return {"name": self.name, "resource_type": self.RESOURCE_TYPE, "resource_subtype": type(self).__name__}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
