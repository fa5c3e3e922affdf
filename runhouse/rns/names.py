"""Resource addresses: the one place they are parsed and validated.

====================  ===============================================  ===============================
Form                  Meaning                                          Example (canonical form)
====================  ===============================================  ===============================
``~/a/b``             local store: ``rh/a/b`` at the git repo's root   ``~/proj/fn``
``@/a/b``             the logged-in user's Den folder                  ``@/fn`` as alice: ``/alice/fn``
``/owner/a/b``        Den; the owner is a user or an org               ``/acme/proj/fn``
``^name``             built-in config shipped in the package (one      ``^rh-cpu``
                      part, read-only)
``a`` or ``a/b``      bare name, resolved in the current folder        ``fn`` in ``~/proj``: ``~/proj/fn``
====================  ===============================================  ===============================

Folders (for listing, or as the current folder) are ``~``, ``~/a``, ``@``, ``@/a``, ``/owner`` and
``/owner/a``; the roots ``~``, ``@`` and ``/owner`` are folders only, never resource names.

Rules, so that no name can leave its folder or mean different things on different systems:

- a part is 1-255 characters: ASCII letters, digits and ``_ . - @ +``, starting with a letter, digit or ``_``
  and without ``..`` anywhere (so no ``.``, ``..``, ``~root``, ``-flag`` or ``C:`` parts);
- a Den owner is 1-64 characters: ASCII letters, digits and ``_ . -``, starting with a letter or digit,
  without ``..``;
- no empty parts (``a//b``, a trailing ``/``), no backslashes, no control characters;
- a whole address is at most 1024 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runhouse.errors import InvalidNameError

LOCAL, DEN, BUILTIN = "local", "den", "builtin"

MAX_PART_LENGTH = 255
MAX_OWNER_LENGTH = 64
MAX_ADDRESS_LENGTH = 1024

_PART_RULE = "letters, digits and _ . - @ +, starting with a letter, digit or _"
_OWNER_RULE = "letters, digits and _ . -, starting with a letter or digit, without .."
_PART_CHARS = re.compile(r"[A-Za-z0-9_.\-@+]")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-@+]*")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_FORMS = "~/a/b, @/a/b, /owner/a/b, ^name or a bare name a/b"
_FOLDER_FORMS = "~, ~/a, @, @/a, /owner or /owner/a"
# Whatever username stands in for "@" when only the syntax is checked (is_address).
_ANY_USER = "user"


def _show(text: str) -> str:
    """``text`` quoted for an error message, shortened when long."""
    if len(text) > 100:
        return f"{text[:100]!r}... ({len(text)} characters)"
    return repr(text)


def _invalid(text: str, problem: str, kind: str = "resource name") -> InvalidNameError:
    return InvalidNameError(f"Invalid {kind} {_show(text)}: {problem}")


def _check_text(text: object, kind: str) -> str:
    """Checks that apply to a whole input string, before it is split into parts."""
    if not isinstance(text, str):
        raise InvalidNameError(f"Invalid {kind} {text!r}: expected a string, got {type(text).__name__}")
    if len(text) > MAX_ADDRESS_LENGTH:
        raise _invalid(text, f"longer than {MAX_ADDRESS_LENGTH} characters", kind)
    for char in text:
        if ord(char) < 32 or ord(char) == 127:
            raise _invalid(text, f"control character {char!r} is not allowed", kind)
    if "\\" in text:
        raise _invalid(text, "backslashes are not allowed; separate parts with /", kind)
    return text


def _part_problem(part: str) -> str | None:
    """Why ``part`` is not a valid path part, or None if it is."""
    if part == "":
        return "empty parts are not allowed (no //, and no / at the start of a bare name or at the end)"
    if part in (".", ".."):
        return f"part {part!r} is not allowed (names cannot refer to . or ..)"
    if ".." in part:
        return f"part {_show(part)} contains '..', which is not allowed anywhere in a name"
    if len(part) > MAX_PART_LENGTH:
        return f"part {_show(part)} is longer than {MAX_PART_LENGTH} characters"
    if _PART.fullmatch(part):
        return None
    if part[0] == "~":
        return f"part {part!r} starts with ~; ~ is allowed only as the whole first part (~/a)"
    bad = next((char for char in part if not _PART_CHARS.fullmatch(char)), None)
    if bad is not None:
        return f"part {part!r} contains {bad!r}; a part may contain only {_PART_RULE}"
    return f"part {part!r} starts with {part[0]!r}; a part may contain only {_PART_RULE}"


def _validate_part(part: str, text: str, kind: str = "resource name") -> str:
    problem = _part_problem(part)
    if problem is not None:
        raise _invalid(text, problem, kind)
    return part


def _owner_problem(owner: str) -> str | None:
    """Why ``owner`` cannot own a Den folder, or None if it can (the one home of the owner rule)."""
    if len(owner) > MAX_OWNER_LENGTH or not _OWNER.fullmatch(owner) or ".." in owner:
        return f"must be 1-{MAX_OWNER_LENGTH} {_OWNER_RULE}"
    return None


def _validate_owner(owner: str, text: str, kind: str = "resource name") -> str:
    if owner == "":
        raise _invalid(text, "the Den owner is missing (expected /owner/...)", kind)
    problem = _owner_problem(owner)
    if problem is not None:
        raise _invalid(text, f"owner {_show(owner)} {problem}", kind)
    return owner


def _split(relative: str, text: str, kind: str = "resource name") -> tuple[str, ...]:
    """The validated parts of ``a/b/c``."""
    return tuple(_validate_part(part, text, kind) for part in relative.split("/"))


def _format(store: str, parts: tuple[str, ...]) -> str:
    """The canonical text of an address."""
    if store == LOCAL:
        return "/".join(("~", *parts))
    if store == DEN:
        return "/" + "/".join(parts)
    return "^" + "/".join(parts)


def validate_part(part: str) -> str:
    """Return ``part`` if it is a valid single path part, else raise :class:`InvalidNameError`.

    A part is 1-255 ASCII letters, digits and ``_ . - @ +``, starting with a letter, digit or ``_``,
    without ``..``.
    """
    _check_text(part, "name part")
    if "/" in part:
        raise _invalid(part, "a single part cannot contain /", "name part")
    return _validate_part(part, part, "name part")


def validate_owner(owner: object, kind: str = "owner") -> str:
    """Return ``owner`` if it may own a Den folder (``/owner``), else raise :class:`InvalidNameError`.

    Users and orgs share one namespace of owners: 1-64 ASCII letters, digits and ``_ . -``, starting with a
    letter or digit, without ``..``. ``kind`` names the owner in the message (``Invalid user name ...``).

    Example::

        >>> validate_owner("acme", "org")
        'acme'
    """
    if not isinstance(owner, str):
        raise InvalidNameError(f"Invalid {kind} name {owner!r}: expected a string, got {type(owner).__name__}")
    problem = _owner_problem(owner)
    if problem is not None:
        raise _invalid(owner, problem, f"{kind} name")
    return owner


@dataclass(frozen=True)
class Address:
    """A parsed, validated resource or folder address.

    ``parts`` is the path under ``~`` for :data:`LOCAL`, starts with the owner for :data:`DEN`, and is
    the single built-in name for :data:`BUILTIN`. Build one with :func:`parse` or :func:`parse_folder`;
    the constructor validates too, so every ``Address`` is safe to turn into a path or a URL.

    Example::

        >>> parse("fn", folder="~/proj")
        Address(store='local', parts=('proj', 'fn'))
    """

    store: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.store not in (LOCAL, DEN, BUILTIN):
            raise InvalidNameError(f"Invalid store {self.store!r}: expected {LOCAL!r}, {DEN!r} or {BUILTIN!r}")
        if not isinstance(self.parts, tuple) or not all(isinstance(part, str) for part in self.parts):
            raise InvalidNameError(f"Invalid address parts {self.parts!r}: expected a tuple of strings")
        text = _format(self.store, self.parts)
        _check_text(text, "address")
        if self.store == DEN:
            if not self.parts:
                raise _invalid(text, "a Den address needs an owner (/owner/...)", "address")
            _validate_owner(self.parts[0], text, "address")
            rest = self.parts[1:]
        elif self.store == BUILTIN:
            if len(self.parts) != 1:
                raise _invalid(text, "a built-in name is exactly one part (^name)", "address")
            rest = self.parts
        else:
            rest = self.parts
        for part in rest:
            _validate_part(part, text, "address")

    def __str__(self) -> str:
        """Canonical form: ``~/a/b``, ``/owner/a/b``, ``^name``; the roots are ``~`` and ``/owner``."""
        return _format(self.store, self.parts)

    @property
    def name(self) -> str:
        """The last part (``""`` for the local root ``~``)."""
        return self.parts[-1] if self.parts else ""

    @property
    def is_folder_root(self) -> bool:
        """True for ``~`` and ``/owner``, which are folders but never resources."""
        return (self.store == LOCAL and not self.parts) or (self.store == DEN and len(self.parts) == 1)

    @property
    def parent(self) -> Address:
        """The folder holding this address: ``~/a`` is in ``~``, ``/o/a`` in ``/o``."""
        if self.store == BUILTIN:
            raise _invalid(str(self), "built-in configs are not in a folder", "address")
        if self.is_folder_root:
            raise _invalid(str(self), "a root folder has no parent", "address")
        return Address(self.store, self.parts[:-1])

    def child(self, name: str) -> Address:
        """This folder joined with a bare, possibly multi-part name: ``~/proj`` and ``a/b`` give ``~/proj/a/b``."""
        if self.store == BUILTIN:
            raise _invalid(str(self), "built-in configs are read-only and hold no other names", "address")
        _check_text(name, "resource name")
        if name[:1] in ("~", "@", "/", "^"):
            raise _invalid(name, f"expected a bare name relative to {str(self)!r}, such as a or a/b")
        return _build(self.store, self.parts + _split(name, name), name)


def _build(store: str, parts: tuple[str, ...], text: str, kind: str = "resource name") -> Address:
    """An Address, with length errors reported against the user's input ``text``."""
    if len(_format(store, parts)) > MAX_ADDRESS_LENGTH:
        raise _invalid(text, f"the full address would be longer than {MAX_ADDRESS_LENGTH} characters", kind)
    return Address(store, parts)


def _user_root(username: str | None, text: str, kind: str) -> tuple[str, ...]:
    if username is None:
        raise _invalid(
            text,
            "@ means your own Den folder, but no one is logged in; "
            "log in first (rh.login) or use a full /owner/... address",
            kind,
        )
    if not isinstance(username, str):
        raise _invalid(text, f"username {username!r} is not a string", kind)
    return (_validate_owner(username, text, kind),)


def _parse_absolute(text: str, username: str | None, kind: str) -> Address:
    """Parse an address starting with ``~``, ``@`` or ``/``; roots are allowed (the caller decides)."""
    head, sep, rest = text.partition("/")
    if head == "~" or head == "@":
        root: tuple[str, ...] = () if head == "~" else _user_root(username, text, kind)
        store = LOCAL if head == "~" else DEN
        return _build(store, root + (_split(rest, text, kind) if sep else ()), text, kind)
    if head == "":  # "/owner/..."
        owner, sep, rest = rest.partition("/")
        _validate_owner(owner, text, kind)
        return _build(DEN, (owner,) + (_split(rest, text, kind) if sep else ()), text, kind)
    raise _invalid(text, f"{head[0]} must be followed by / (expected {_FOLDER_FORMS})", kind)


def parse_folder(folder: str, username: str | None = None) -> Address:
    """A folder address: ``~``, ``~/a``, ``@``, ``@/a``, ``/owner``, ``/owner/a`` (never ``^``).

    ``username`` resolves ``@`` (it means ``/<username>``); without it ``@`` raises InvalidNameError.

    Example::

        >>> str(parse_folder("@/proj", username="alice"))
        '/alice/proj'
    """
    kind = "folder"
    _check_text(folder, kind)
    if folder[:1] not in ("~", "@", "/"):
        raise _invalid(folder, f"expected {_FOLDER_FORMS}", kind)
    return _parse_absolute(folder, username, kind)


def parse(name: str, folder: str = "~", username: str | None = None) -> Address:
    """A resource address: ``~/...``, ``@/...``, ``/owner/...``, ``^name``, or a bare name resolved in ``folder``.

    ``folder`` (a :func:`parse_folder` address) is only read for bare names; ``username`` resolves ``@``.
    Folder roots (``~``, ``@``, ``/owner``) are not resource names.

    Example::

        >>> str(parse("fn", folder="/alice/proj"))
        '/alice/proj/fn'
    """
    _check_text(name, "resource name")
    if name == "":
        raise _invalid(name, f"the name is empty (expected {_FORMS})")
    if name[0] == "^":
        builtin = name[1:]
        if builtin == "":
            raise _invalid(name, "^ must be followed by the name of a built-in config, such as ^rh-cpu")
        if "/" in builtin:
            raise _invalid(name, "a built-in name is a single part (^name), without /")
        return _build(BUILTIN, (_validate_part(builtin, name),), name)
    if name[0] in ("~", "@", "/"):
        address = _parse_absolute(name, username, "resource name")
        if address.is_folder_root:
            raise _invalid(name, f"this is a root folder, not a resource name (expected {_FORMS})")
        return address
    return parse_folder(folder, username).child(name)


def is_address(text: str) -> bool:
    """True if ``text`` parses as a resource address (bare names count); never raises.

    ``@/...`` counts whenever its path is valid: the username is only needed to resolve it.
    """
    try:
        parse(text, username=_ANY_USER)
    except InvalidNameError:
        return False
    return True
