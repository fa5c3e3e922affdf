"""The request and response bodies of Den's JSON API (:mod:`runhouse.den.api.routes`), as pydantic models.

Request bodies forbid unknown fields. Response models document the API (OpenAPI at ``/docs``); the routes
return plain JSON built by the service library, which these models describe but do not validate again.
A web UI router may reuse them to read forms or describe its own JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runhouse.den.service import MAX_CONFIG_BYTES, MAX_SHARE_USERS

# The largest integer a path or query parameter may be (the database's 32-bit integer columns).
MAX_INT = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(BaseModel):
    type: str = Field(description="The error's class name, e.g. PermissionDeniedError")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorInfo


class Health(BaseModel):
    status: str
    version: str
    schema_version: int


class OrgRole(BaseModel):
    name: str
    role: str


class Me(BaseModel):
    name: str
    email: str | None
    orgs: list[OrgRole]


class NewToken(BaseModel):
    token: str = Field(description="Shown once: Den stores only its hash")


class OrgCreate(_Body):
    name: str


class MemberRole(_Body):
    role: Literal["admin", "member"] = "member"


class OrgMember(BaseModel):
    user: str
    role: str


class OrgOut(BaseModel):
    name: str
    members: list[OrgMember]


class ResourcePut(_Body):
    config: dict[str, Any] = Field(description=f"The resource's config; at most {MAX_CONFIG_BYTES:,} bytes as JSON")


class ResourceSummary(BaseModel):
    address: str
    resource_type: str
    public: bool
    current_version: int
    created_at: datetime
    updated_at: datetime


class ResourceOut(ResourceSummary):
    version: int
    author: str
    saved_at: datetime
    config: dict[str, Any]


class Visibility(_Body):
    public: bool


class VersionInfo(BaseModel):
    version: int
    author: str
    saved_at: datetime


class History(ResourceSummary):
    versions: list[VersionInfo]


class Rollback(_Body):
    version: int = Field(ge=1, le=MAX_INT)


class FolderEntry(BaseModel):
    name: str
    address: str
    kind: Literal["resource", "folder"]
    resource_type: str
    updated_at: datetime


class FolderListing(BaseModel):
    folder: str
    entries: list[FolderEntry]


class ShareRequest(_Body):
    users: list[str] = Field(min_length=1, max_length=MAX_SHARE_USERS, description="User names or emails")
    access_level: Literal["read", "write"] = "read"
    notify: bool = Field(False, description="Accepted for compatibility; Den sends no mail")


class ShareInfo(BaseModel):
    address: str
    user: str
    access_level: str
    granted_by: str
    created_at: datetime


class Shares(BaseModel):
    address: str
    shares: list[ShareInfo]


class AuditItem(BaseModel):
    id: int
    time: datetime
    user: str
    action: str
    address: str
    detail: dict[str, Any]


class AuditLog(BaseModel):
    entries: list[AuditItem]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


class Defaults(_Body):
    defaults: dict[str, Any]


class SecretPut(_Body):
    provider: str = Field(description="aws, gcp, huggingface, ... or any custom name")
    values: dict[str, Any] = Field(description="The credentials; stored encrypted with Den's server key")


class SecretSummary(BaseModel):
    owner: str
    name: str
    provider: str
    updated_by: str
    updated_at: datetime


class SecretOut(SecretSummary):
    values: dict[str, Any]


class SecretList(BaseModel):
    owner: str
    secrets: list[SecretSummary]


# -------------------------------------------------------------------------------- the administrator

MAX_ORG_MEMBERS_AT_ONCE = 1000


class AdminUserCreate(_Body):
    name: str = Field(description="The user's name; also their folder, /name")
    email: str | None = Field(None, description="So that others can share with it")


class AdminNewUser(BaseModel):
    name: str
    email: str | None
    token: str = Field(description="The user's first token; shown once: Den stores only its hash")


class AdminTokenCreate(_Body):
    revoke_old: bool = Field(False, description="Revoke every older token of the user (lost or leaked); "
                             "else they keep working")


class AdminNewToken(BaseModel):
    name: str
    token: str = Field(description="Shown once: Den stores only its hash")
    revoked: int = Field(description="How many older tokens were revoked")


class AdminOrgUpdate(_Body):
    members: dict[str, Literal["admin", "member"]] = Field(
        default_factory=dict, max_length=MAX_ORG_MEMBERS_AT_ONCE,
        description="User name or email to role; users already in the org get this role")


class AdminOrgOut(OrgOut):
    created: bool = Field(description="Whether the org was created by this request")


# ------------------------------------------------------------------------------------------- clusters


class ClusterAccess(BaseModel):
    user: str
    access: Literal["read", "write"] | None = Field(description="What the token's user may do on the cluster")


class ClusterKeyOut(BaseModel):
    address: str
    key: str = Field(description="The cluster's heartbeat key, shown once; older keys stop working")


class LaunchIn(_Body):
    origin: str = Field(description="Where the cluster was brought up from, like user@host", max_length=255)


class LaunchOut(BaseModel):
    address: str
    user: str
    origin: str
    time: str


class HeartbeatIn(_Body):
    status: dict[str, Any] = Field(default_factory=dict, description="The daemon's status summary")
    calls: dict[str, int] = Field(default_factory=dict, description="Requests per Den user since the last heartbeat")
    daemon_calls: int = Field(0, ge=0, description="Requests made with the daemon's own token since then")


class HeartbeatOut(BaseModel):
    address: str
    time: str


class LaunchItem(BaseModel):
    user: str
    origin: str
    time: str


class HeartbeatItem(BaseModel):
    time: str
    status: dict[str, Any]


class UsageItem(BaseModel):
    user: str = Field(description="A Den user, or '(daemon token)' for requests made with the daemon's own token")
    hour: str
    calls: int


class ClusterInfo(BaseModel):
    address: str
    launches: list[LaunchItem]
    heartbeat: HeartbeatItem | None
    usage: list[UsageItem]
