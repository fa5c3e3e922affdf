"""The daemon's check of the env specs clients send (issue 13, items 12 and 13)."""

from __future__ import annotations

import pytest

from runhouse.errors import BadRequestError
from runhouse.server.envs import EnvSpec


def test_a_full_spec_is_kept_as_sent():
    spec = EnvSpec.from_dict(
        {"name": "sd_env", "reqs": ["numpy>=1.26", "pandas"], "env_vars": {"MODE": "prod"}, "memory_limit_mb": 512}
    )
    assert spec == EnvSpec("sd_env", ("numpy>=1.26", "pandas"), (("MODE", "prod"),), 512)
    assert EnvSpec.from_dict(spec.to_dict()) == spec


def test_only_the_name_is_required():
    assert EnvSpec.from_dict({"name": "plain"}) == EnvSpec("plain")
    assert EnvSpec.from_dict({"name": "plain", "reqs": None, "env_vars": None, "memory_limit_mb": None}) == EnvSpec(
        "plain"
    )


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"reqs": "numpy"}, "never split into letters"),
        ({"reqs": {"numpy": "1.26"}}, "reqs must be a list"),
        ({"reqs": 3}, "reqs must be a list"),
        ({"reqs": ["numpy", 1]}, "each requirement is a non-empty string"),
        ({"reqs": ["numpy", " "]}, "each requirement is a non-empty string"),
        ({"reqs": ["numpy\x00"]}, "control characters"),
        ({"reqs": ["numpy\nscipy"]}, "control characters"),
        ({"reqs": ["numpy\ud800"]}, "cannot be encoded"),
        ({"env_vars": ["MODE=prod"]}, "env_vars must be a mapping"),
        ({"env_vars": "MODE=prod"}, "env_vars must be a mapping"),
        ({"env_vars": {"MO\x00DE": "prod"}}, "NUL"),
        ({"env_vars": {"MODE=x": "prod"}}, "'='"),
        ({"env_vars": {"": "prod"}}, "non-empty"),
        ({"env_vars": {"MODE\ud800": "prod"}}, "cannot be encoded"),
        ({"env_vars": {"MODE": "pr\x00od"}}, "NUL"),
        ({"env_vars": {"MODE": 1}}, "values are strings"),
        ({"env_vars": {"MODE": None}}, "values are strings"),
        ({"memory_limit_mb": 0}, "memory_limit_mb must be a positive whole number"),
        ({"memory_limit_mb": -1}, "memory_limit_mb must be a positive whole number"),
        ({"memory_limit_mb": 1.5}, "memory_limit_mb must be a positive whole number"),
        ({"memory_limit_mb": True}, "memory_limit_mb must be a positive whole number"),
        ({"memory_limit_mb": "512"}, "memory_limit_mb must be a positive whole number"),
        ({"req": ["numpy"]}, "unknown env spec fields ['req']"),
    ],
)
def test_a_field_of_the_wrong_type_or_value_is_refused_saying_which(fields, says):
    with pytest.raises(BadRequestError, match=says.replace("[", r"\[").replace("]", r"\]")):
        EnvSpec.from_dict({"name": "bad_env", **fields})


@pytest.mark.parametrize("name", ["", "_private", "a/b", "tab\there", 5, None, "x" * 300, "bad\ud800"])
def test_a_name_that_cannot_name_an_env_is_refused(name):
    with pytest.raises(BadRequestError, match="env name"):
        EnvSpec.from_dict({"name": name})


def test_a_spec_without_a_name_is_refused():
    with pytest.raises(BadRequestError, match="needs a 'name'"):
        EnvSpec.from_dict({"reqs": ["numpy"]})


@pytest.mark.parametrize("data", [["sd_env"], "sd_env", None])
def test_a_spec_that_is_not_a_mapping_is_refused(data):
    with pytest.raises(BadRequestError, match="an env spec is a mapping"):
        EnvSpec.from_dict(data)
