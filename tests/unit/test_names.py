"""Resource addresses: every accepted form, how bare names resolve, and every rejected input."""

from __future__ import annotations

import random

import pytest

from runhouse.errors import InvalidNameError
from runhouse.rns import names
from runhouse.rns.names import BUILTIN, DEN, LOCAL, Address, is_address, parse, parse_folder, validate_part

LONG_PART = "a" * 255
OWNER_64 = "o" * 64


def assert_rejected(call, text: object, rule: str) -> InvalidNameError:
    """``call()`` raises InvalidNameError naming the rule and, when short enough to quote, the input."""
    with pytest.raises(InvalidNameError) as info:
        call()
    message = str(info.value)
    assert rule in message, message
    if isinstance(text, str) and len(text) <= 100:
        assert repr(text) in message, message
    return info.value


# --- accepted resource names ---------------------------------------------------------------------

ACCEPTED = [
    # name, username, store, parts, canonical
    ("~/a", None, LOCAL, ("a",), "~/a"),
    ("~/a/b", None, LOCAL, ("a", "b"), "~/a/b"),
    ("~/proj/sub/fn", None, LOCAL, ("proj", "sub", "fn"), "~/proj/sub/fn"),
    ("~/my_fn.v2", None, LOCAL, ("my_fn.v2",), "~/my_fn.v2"),
    ("~/a-b", None, LOCAL, ("a-b",), "~/a-b"),
    ("~/x@1", None, LOCAL, ("x@1",), "~/x@1"),
    ("~/a+b", None, LOCAL, ("a+b",), "~/a+b"),
    ("~/_private", None, LOCAL, ("_private",), "~/_private"),
    ("~/0start", None, LOCAL, ("0start",), "~/0start"),
    ("~/config.json", None, LOCAL, ("config.json",), "~/config.json"),
    ("~/UPPER/Mixed", None, LOCAL, ("UPPER", "Mixed"), "~/UPPER/Mixed"),
    ("~/" + LONG_PART, None, LOCAL, (LONG_PART,), "~/" + LONG_PART),
    ("@/a", "alice", DEN, ("alice", "a"), "/alice/a"),
    ("@/a/b", "alice", DEN, ("alice", "a", "b"), "/alice/a/b"),
    ("@/fn", "acme.bot-1", DEN, ("acme.bot-1", "fn"), "/acme.bot-1/fn"),
    ("/bob/a", None, DEN, ("bob", "a"), "/bob/a"),
    ("/acme-org/proj/fn", None, DEN, ("acme-org", "proj", "fn"), "/acme-org/proj/fn"),
    ("/o.k_1/a", None, DEN, ("o.k_1", "a"), "/o.k_1/a"),
    ("/" + OWNER_64 + "/a", None, DEN, (OWNER_64, "a"), "/" + OWNER_64 + "/a"),
    ("^rh-cpu", None, BUILTIN, ("rh-cpu",), "^rh-cpu"),
    ("^rh.gpu_1", None, BUILTIN, ("rh.gpu_1",), "^rh.gpu_1"),
]


@pytest.mark.parametrize("name, username, store, parts, canonical", ACCEPTED, ids=[c[0][:40] for c in ACCEPTED])
def test_accepted_name_parses_to_store_parts_and_canonical_form(name, username, store, parts, canonical):
    address = parse(name, username=username)
    assert address == Address(store, parts)
    assert str(address) == canonical


@pytest.mark.parametrize("name, username, store, parts, canonical", ACCEPTED, ids=[c[0][:40] for c in ACCEPTED])
def test_canonical_form_parses_back_to_the_same_address(name, username, store, parts, canonical):
    address = parse(name, username=username)
    assert parse(str(address)) == address


@pytest.mark.parametrize("name, username, store, parts, canonical", ACCEPTED, ids=[c[0][:40] for c in ACCEPTED])
def test_accepted_name_is_an_address(name, username, store, parts, canonical):
    assert is_address(name)


def test_address_of_exactly_1024_characters_is_accepted():
    name = "~/" + "/".join([LONG_PART] * 3 + ["a" * 254])
    assert len(name) == 1024
    assert str(parse(name)) == name


def test_absolute_name_ignores_the_folder():
    assert str(parse("~/x", folder="/alice/proj")) == "~/x"
    assert str(parse("/bob/x", folder="~/proj")) == "/bob/x"
    assert str(parse("^rh-cpu", folder="/alice/proj")) == "^rh-cpu"


def test_absolute_name_does_not_need_a_username_for_an_at_folder():
    assert str(parse("~/x", folder="@")) == "~/x"


# --- bare names resolved in each kind of folder --------------------------------------------------

BARE = [
    # name, folder, username, canonical
    ("fn", "~", None, "~/fn"),
    ("fn", "~/proj", None, "~/proj/fn"),
    ("a/b", "~", None, "~/a/b"),
    ("a/b", "~/proj", None, "~/proj/a/b"),
    ("fn", "@", "alice", "/alice/fn"),
    ("fn", "@/proj", "alice", "/alice/proj/fn"),
    ("a/b", "@/proj", "alice", "/alice/proj/a/b"),
    ("fn", "/bob", None, "/bob/fn"),
    ("fn", "/alice/proj", None, "/alice/proj/fn"),
    ("a/b", "/alice/proj/sub", None, "/alice/proj/sub/a/b"),
]


@pytest.mark.parametrize("name, folder, username, canonical", BARE)
def test_bare_name_resolves_in_the_folder(name, folder, username, canonical):
    address = parse(name, folder=folder, username=username)
    assert str(address) == canonical
    assert parse(canonical) == address


def test_bare_name_defaults_to_the_local_root():
    assert parse("fn") == Address(LOCAL, ("fn",))


def test_bare_name_in_at_folder_without_username_says_to_log_in():
    assert_rejected(lambda: parse("fn", folder="@/proj"), "@/proj", "rh.login")


def test_bare_name_that_would_make_the_address_too_long_is_rejected():
    folder = "~/" + "/".join([LONG_PART] * 3)
    name = "b" * 255
    assert_rejected(lambda: parse(name, folder=folder), name, "longer than 1024")


# --- @ and the username --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["@/a", "@/a/b", "@"])
def test_at_without_username_says_to_log_in_or_use_a_full_address(name):
    error = assert_rejected(lambda: parse(name), name, "rh.login")
    assert "/owner/" in str(error)


@pytest.mark.parametrize("username", ["bad name", "-alice", "a/b", "", "al..ice", "x" * 65])
def test_at_with_an_invalid_username_is_rejected(username):
    assert_rejected(lambda: parse("@/a", username=username), "@/a", "owner")


def test_at_with_a_non_string_username_is_rejected():
    assert_rejected(lambda: parse("@/a", username=42), "@/a", "not a string")  # type: ignore[arg-type]


# --- folders -------------------------------------------------------------------------------------

FOLDERS = [
    # folder, username, store, parts, canonical
    ("~", None, LOCAL, (), "~"),
    ("~/a", None, LOCAL, ("a",), "~/a"),
    ("~/a/b", None, LOCAL, ("a", "b"), "~/a/b"),
    ("@", "alice", DEN, ("alice",), "/alice"),
    ("@/a", "alice", DEN, ("alice", "a"), "/alice/a"),
    ("/owner", None, DEN, ("owner",), "/owner"),
    ("/owner/a", None, DEN, ("owner", "a"), "/owner/a"),
]


@pytest.mark.parametrize("folder, username, store, parts, canonical", FOLDERS)
def test_folder_parses_to_store_parts_and_canonical_form(folder, username, store, parts, canonical):
    address = parse_folder(folder, username=username)
    assert address == Address(store, parts)
    assert str(address) == canonical
    assert parse_folder(canonical) == address


REJECTED_FOLDERS = [
    # folder, fragment of the message
    ("", "expected ~, ~/a, @"),
    ("proj", "expected ~, ~/a, @"),
    ("proj/sub", "expected ~, ~/a, @"),
    ("^rh-cpu", "expected ~, ~/a, @"),
    ("~/", "empty parts"),
    ("~//a", "empty parts"),
    ("/owner/", "empty parts"),
    ("/", "owner is missing"),
    ("//a", "owner is missing"),
    ("~x", "~ must be followed by /"),
    ("@x", "@ must be followed by /"),
    ("~/..", "'..' is not allowed"),
    ("/owner/..", "'..' is not allowed"),
    ("~\\a", "backslashes"),
    ("~/a\nb", "control character"),
]


@pytest.mark.parametrize("folder, rule", REJECTED_FOLDERS)
def test_invalid_folder_is_rejected(folder, rule):
    assert_rejected(lambda: parse_folder(folder, username="alice"), folder, rule)


def test_at_folder_without_username_says_to_log_in():
    assert_rejected(lambda: parse_folder("@"), "@", "rh.login")


# --- rejected resource names ---------------------------------------------------------------------

REJECTED = [
    # name, fragment of the message
    # parts that leave their folder
    ("~/..", "'..' is not allowed"),
    ("~/a/../b", "'..' is not allowed"),
    ("~/../../etc/passwd", "'..' is not allowed"),
    ("/bob/..", "'..' is not allowed"),
    ("@/..", "'..' is not allowed"),
    ("..", "'..' is not allowed"),
    ("../a", "'..' is not allowed"),
    ("a/..", "'..' is not allowed"),
    ("~/.", "'.' is not allowed"),
    ("~/a/./b", "'.' is not allowed"),
    (".", "'.' is not allowed"),
    ("~/a..b", "contains '..'"),
    ("~/...", "contains '..'"),
    # empty parts
    ("", "empty"),
    ("~/", "empty parts"),
    ("~//a", "empty parts"),
    ("~/a/", "empty parts"),
    ("a//b", "empty parts"),
    ("a/", "empty parts"),
    ("/bob//a", "empty parts"),
    ("/bob/a/", "empty parts"),
    ("@/", "empty parts"),
    ("//a", "owner is missing"),
    # backslashes
    ("~/a\\b", "backslashes"),
    ("a\\b", "backslashes"),
    ("~\\a", "backslashes"),
    ("..\\..\\etc", "backslashes"),
    ("/bob\\a", "backslashes"),
    # control characters
    ("~/a\x00b", "control character"),
    ("a\nb", "control character"),
    ("~/a\tb", "control character"),
    ("~/a\rb", "control character"),
    ("~/a\x7f", "control character"),
    ("\x1b[31mred", "control character"),
    ("/bob\x00/a", "control character"),
    # lengths
    ("~/" + "a" * 256, "longer than 255"),
    ("/bob/" + "a" * 256, "longer than 255"),
    ("^" + "a" * 256, "longer than 255"),
    ("~/" + "/".join([LONG_PART] * 3 + ["a" * 255]), "longer than 1024"),
    ("a/" * 600 + "a", "longer than 1024"),
    # parts starting with ~
    ("~/~root", "starts with ~"),
    ("~/a/~b", "starts with ~"),
    ("/bob/~x", "starts with ~"),
    ("a/~b", "starts with ~"),
    ("~~", "~ must be followed by /"),
    ("~a", "~ must be followed by /"),
    # Windows drives and other disallowed characters
    ("C:", "contains ':'"),
    ("C:/x", "contains ':'"),
    ("~/C:", "contains ':'"),
    ("/bob/C:", "contains ':'"),
    ("~/a b", "contains ' '"),
    ("~/a*b", "contains '*'"),
    ("~/a?b", "contains '?'"),
    ("~/a%2e", "contains '%'"),
    ("~/a#b", "contains '#'"),
    ("~/a|b", "contains '|'"),
    ('~/a"b', "contains '\"'"),
    ("~/a^b", "contains '^'"),
    ("~/caf\u00e9", "contains '\u00e9'"),
    ("~/\uff0e\uff0e", "contains"),
    # parts starting with something other than a letter, digit or _
    ("~/.hidden", "starts with '.'"),
    ("~/-rf", "starts with '-'"),
    ("~/@x", "starts with '@'"),
    ("~/+x", "starts with '+'"),
    ("-rf", "starts with '-'"),
    ("@x", "@ must be followed by /"),
    # roots are folders, not resources
    ("~", "root folder"),
    ("/bob", "root folder"),
    ("@", "root folder"),
    # Den owners
    ("/", "owner is missing"),
    ("/-bob/a", "owner '-bob'"),
    ("/.bob/a", "owner '.bob'"),
    ("/bob@x/a", "owner 'bob@x'"),
    ("/b ob/a", "owner 'b ob'"),
    ("/bo..b/a", "owner 'bo..b'"),
    ("/" + "o" * 65 + "/a", "must be 1-64"),
    # built-ins
    ("^", "^ must be followed by the name"),
    ("^a/b", "single part"),
    ("^/a", "single part"),
    ("^..", "'..' is not allowed"),
    ("^.", "'.' is not allowed"),
    ("^~x", "starts with ~"),
    ("^ a", "contains ' '"),
    ("^^a", "contains '^'"),
]


def _case_id(case: tuple[str, str]) -> str:
    return ascii(case[0])[:40]


@pytest.mark.parametrize("name, rule", REJECTED, ids=[_case_id(c) for c in REJECTED])
def test_invalid_name_is_rejected_with_the_input_and_the_rule(name, rule):
    assert_rejected(lambda: parse(name, username="alice"), name, rule)


@pytest.mark.parametrize("name, rule", REJECTED, ids=[_case_id(c) for c in REJECTED])
def test_invalid_name_is_not_an_address(name, rule):
    assert not is_address(name)


def test_long_input_is_shortened_in_the_message():
    name = "~/" + "a" * 2000
    error = assert_rejected(lambda: parse(name), name, "longer than 1024")
    assert len(str(error)) < 300
    assert "2002 characters" in str(error)


@pytest.mark.parametrize("value", [None, 123, b"~/a", ["~", "a"], ("~/a",)])
def test_non_string_name_is_rejected(value):
    assert_rejected(lambda: parse(value), value, "expected a string")


@pytest.mark.parametrize("value", [None, 123, b"~"])
def test_non_string_folder_is_rejected(value):
    assert_rejected(lambda: parse_folder(value), value, "expected a string")
    assert_rejected(lambda: parse("fn", folder=value), value, "expected a string")


def test_invalid_name_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse("~/..")


# --- name, parent, child, is_folder_root ---------------------------------------------------------

NAMES = [
    ("~", ""),
    ("~/a", "a"),
    ("~/a/b", "b"),
    ("/bob", "bob"),
    ("/bob/a", "a"),
    ("^rh-cpu", "rh-cpu"),
]


@pytest.mark.parametrize("address, name", NAMES)
def test_name_is_the_last_part(address, name):
    parsed = parse_folder(address) if address in ("~", "/bob") else parse(address)
    assert parsed.name == name


PARENTS = [
    ("~/a", "~"),
    ("~/a/b", "~/a"),
    ("/bob/a", "/bob"),
    ("/bob/a/b", "/bob/a"),
]


@pytest.mark.parametrize("address, parent", PARENTS)
def test_parent_is_the_containing_folder(address, parent):
    assert parse(address).parent == parse_folder(parent)
    assert str(parse(address).parent) == parent


@pytest.mark.parametrize(
    "address, rule",
    [
        (Address(LOCAL, ()), "root folder has no parent"),
        (Address(DEN, ("bob",)), "root folder has no parent"),
        (Address(BUILTIN, ("rh-cpu",)), "not in a folder"),
    ],
    ids=["~", "/bob", "^rh-cpu"],
)
def test_roots_and_builtins_have_no_parent(address, rule):
    assert_rejected(lambda: address.parent, str(address), rule)


CHILDREN = [
    # folder, name, canonical
    ("~", "a", "~/a"),
    ("~/p", "a", "~/p/a"),
    ("~/p", "a/b", "~/p/a/b"),
    ("/bob", "a", "/bob/a"),
    ("/bob/p", "a/b", "/bob/p/a/b"),
]


@pytest.mark.parametrize("folder, name, canonical", CHILDREN)
def test_child_joins_a_bare_name(folder, name, canonical):
    child = parse_folder(folder).child(name)
    assert str(child) == canonical
    assert child.parent == parse(canonical).parent


BAD_CHILDREN = [
    # name, fragment of the message
    ("..", "'..' is not allowed"),
    ("a/../b", "'..' is not allowed"),
    (".", "'.' is not allowed"),
    ("", "empty parts"),
    ("a/", "empty parts"),
    ("a//b", "empty parts"),
    ("/x", "expected a bare name"),
    ("~/x", "expected a bare name"),
    ("~", "expected a bare name"),
    ("@/x", "expected a bare name"),
    ("^x", "expected a bare name"),
    ("a\\b", "backslashes"),
    ("a\x00", "control character"),
    ("C:", "contains ':'"),
]


@pytest.mark.parametrize("name, rule", BAD_CHILDREN, ids=[_case_id(c) for c in BAD_CHILDREN])
def test_child_rejects_names_that_are_not_bare_or_not_valid(name, rule):
    assert_rejected(lambda: parse_folder("~/p").child(name), name, rule)


def test_child_rejects_non_strings():
    assert_rejected(lambda: parse_folder("~").child(None), None, "expected a string")  # type: ignore[arg-type]


def test_builtins_hold_no_children():
    assert_rejected(lambda: parse("^rh-cpu").child("a"), "^rh-cpu", "read-only")


@pytest.mark.parametrize(
    "address, is_root",
    [("~", True), ("/bob", True), ("~/a", False), ("/bob/a", False), ("^rh-cpu", False)],
)
def test_is_folder_root_only_for_local_root_and_owners(address, is_root):
    parsed = parse_folder(address) if address in ("~", "/bob") else parse(address)
    assert parsed.is_folder_root is is_root


# --- the Address constructor validates too -------------------------------------------------------

BAD_ADDRESSES = [
    # store, parts, fragment of the message
    ("s3", ("a",), "Invalid store"),
    (LOCAL, ["a"], "expected a tuple of strings"),
    (LOCAL, ("a", 1), "expected a tuple of strings"),
    (LOCAL, ("..",), "'..' is not allowed"),
    (LOCAL, ("a/b",), "contains '/'"),
    (LOCAL, ("",), "empty parts"),
    (DEN, (), "needs an owner"),
    (DEN, ("-bob",), "owner '-bob'"),
    (DEN, ("bob", "a\\b"), "backslashes"),
    (BUILTIN, (), "exactly one part"),
    (BUILTIN, ("a", "b"), "exactly one part"),
    (BUILTIN, ("..",), "'..' is not allowed"),
]


@pytest.mark.parametrize("store, parts, rule", BAD_ADDRESSES, ids=[f"{c[0]}-{c[1]!r}" for c in BAD_ADDRESSES])
def test_address_constructor_rejects_invalid_parts(store, parts, rule):
    with pytest.raises(InvalidNameError) as info:
        Address(store, parts)
    assert rule in str(info.value)


def test_address_is_hashable_and_immutable():
    address = parse("~/a")
    assert {address: 1}[Address(LOCAL, ("a",))] == 1
    with pytest.raises(AttributeError):
        address.parts = ("b",)  # type: ignore[misc]


# --- validate_part and is_address ----------------------------------------------------------------


@pytest.mark.parametrize("part", ["a", "fn", "my_fn.v2", "x@1", "a+b", "_x", "0", "rh-cpu", LONG_PART])
def test_validate_part_returns_a_valid_part(part):
    assert validate_part(part) == part


BAD_PARTS = [
    ("a/b", "cannot contain /"),
    ("", "empty parts"),
    (".", "'.' is not allowed"),
    ("..", "'..' is not allowed"),
    ("a..b", "contains '..'"),
    ("~x", "starts with ~"),
    ("C:", "contains ':'"),
    ("a b", "contains ' '"),
    ("-x", "starts with '-'"),
    ("a" * 256, "longer than 255"),
    ("a\x00", "control character"),
    ("a\\b", "backslashes"),
]


@pytest.mark.parametrize("part, rule", BAD_PARTS, ids=[_case_id(c) for c in BAD_PARTS])
def test_validate_part_rejects_invalid_parts(part, rule):
    assert_rejected(lambda: validate_part(part), part, rule)


def test_validate_part_rejects_non_strings():
    assert_rejected(lambda: validate_part(1), 1, "expected a string")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["~/a", "@/a", "/bob/a", "^rh-cpu", "fn", "a/b"])
def test_is_address_accepts_resource_names_even_at_without_login(text):
    assert is_address(text)


@pytest.mark.parametrize("text", ["~", "@", "/bob", "", "..", "~/..", "@/..", None, 5, b"fn"])
def test_is_address_rejects_folders_invalid_names_and_non_strings(text):
    assert not is_address(text)


# --- random strings (stdlib fuzzing; hypothesis is not a dependency) -----------------------------

# Mostly characters a part may hold, so that many random strings are valid; the rest are the dangerous ones.
FUZZ_ALPHABET = "abcXYZ019_-.+@/" * 4 + "~^\\: \x00\n\x7f\u00e9"


def _random_name(rng: random.Random) -> str:
    if rng.random() < 0.5:  # bias towards things that look like addresses
        prefix = rng.choice(["~/", "@/", "/bob/", "^", "", "~", "/"])
    else:
        prefix = ""
    return prefix + "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("seed", range(5))
def test_random_strings_are_rejected_or_round_trip_safely(seed):
    rng = random.Random(seed)
    accepted = 0
    for _ in range(4000):
        name = _random_name(rng)
        folder = rng.choice(["~", "~/p", "@", "/bob/p"])
        try:
            address = parse(name, folder=folder, username="alice")
        except InvalidNameError:
            continue
        accepted += 1
        assert parse(str(address)) == address, name
        for part in address.parts:
            assert ".." not in part and "/" not in part and "\\" not in part, name
            assert all(32 <= ord(char) != 127 for char in part), name
            assert names.validate_part(part) == part
    assert accepted > 100, "the fuzzer should produce some valid names"
