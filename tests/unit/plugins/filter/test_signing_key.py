"""Unit tests of the signing key and secret checks (plugin_utils/signing_key.py).

Keys are made by Synapse's own library (signedjson), the public parts are
compared with what it derives, and every message is checked for the secret
it must never hold.
"""

from __future__ import annotations

import io
import re

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key, write_signing_keys

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    FilterModule,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils import shared_inputs as si
from ansible_collections.polylith.synapse.plugins.plugin_utils import signing_key as sk


def synapse_key(version="a_AbCd"):
    """A key file's content as Synapse's generate_signing_key writes it, and its public part."""
    key = generate_signing_key(version)
    out = io.StringIO()
    write_signing_keys(out, [key])
    verify = get_verify_key(key)
    return out.getvalue(), f"ed25519:{version} {encode_verify_key_base64(verify)}"


KEY, KEY_PUBLIC = synapse_key()
OTHER, OTHER_PUBLIC = synapse_key("a_Zyxw")
SEED = KEY.split()[2]
OTHER_SEED = OTHER.split()[2]


# --- the key's form -------------------------------------------------------


def test_synapse_keys_parse():
    algorithm, version, seed = sk.parse_signing_key(KEY)
    assert (algorithm, version, len(seed)) == ("ed25519", "a_AbCd", 32)
    assert sk.key_id(KEY) == "ed25519:a_AbCd"


@pytest.mark.parametrize("text", [KEY.strip(), "  " + KEY + "\n\n", KEY.replace(" ", "\t"), KEY.strip() + "=" * (-len(SEED) % 4)])
def test_blanks_and_padding_do_not_matter(text):
    assert sk.same_key(text, KEY)
    assert sk.verify_key(text) == KEY_PUBLIC


def test_the_public_part_is_synapses():
    """What export_signing_key prints: the record of the key in use holds exactly this."""
    for _ in range(5):
        key, public = synapse_key("a_" + "x" * 4)
        assert sk.verify_key(key) == public


def test_different_keys_differ():
    assert not sk.same_key(KEY, OTHER)
    same_version_other_seed = KEY.replace(SEED, OTHER_SEED)
    assert not sk.same_key(KEY, same_version_other_seed)
    assert not sk.same_key(KEY, "not a key")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        (SEED, "has 1 field(s)"),
        (f"ed25519 a_x {SEED} extra", "has 4 field(s)"),
        (KEY + OTHER, "has 2 lines, not one key"),
        (f"ed448 a_x {SEED}", "does not start with the algorithm ed25519"),
        (f"ed25519 a-x {SEED}", "key version other than letters, digits and _"),
        (f"ed25519 a_x {SEED[:-3]}!!!", "not base64"),
        (f"ed25519 a_x {SEED[:20]}", "of 15 bytes, not 32"),
        (f"ed25519 a_x {SEED}{SEED}", "of 64 bytes, not 32"),
        (f"ed25519 a_x {SEED[:10]}={SEED[11:]}", "not base64"),
        (f"ed25519 a_x {SEED[:-1]}=", "of 31 bytes, not 32"),
    ],
)
def test_malformed_keys_are_refused_without_quoting_them(text, match):
    with pytest.raises(sk.SigningKeyError, match=re.escape(match)):
        sk.parse_signing_key(text)
    message = sk.check_signing_key(text)
    assert message.startswith("synapse_main_signing_key ")
    assert match in message and "(its value is not shown)" in message
    for field in text.split():
        if len(field) > 10:
            assert field not in message


def test_an_unset_or_good_key_passes():
    assert sk.check_signing_key(None) is None
    assert sk.check_signing_key(KEY) is None


@pytest.mark.parametrize(("value", "kind"), [(42, "number"), (True, "boolean"), ([KEY], "list"), ({"k": KEY}, "mapping")])
def test_a_key_that_is_no_string_is_refused(value, kind):
    message = sk.check_signing_key(value)
    assert f"is a {kind}, not a string" in message
    assert SEED not in message


def test_an_empty_key_is_told_to_go():
    assert "remove the variable to have the role generate a key once" in sk.check_signing_key("")


# --- the secrets -----------------------------------------------------------


@pytest.mark.parametrize("value", [None, "x" * 64, "with inner blanks", "trailing newline from a block scalar\n"])
def test_good_secrets_pass(value):
    assert sk.check_supplied_secret("synapse_main_form_secret", value) is None


@pytest.mark.parametrize(
    ("value", "match", "hidden"),
    [
        ("", "is empty", None),
        ("  \n", "is blank", None),
        (12345, "is a number, not a string", "12345"),
        (False, "is a boolean, not a string", None),
        (["hunter2"], "is a list, not a string", "hunter2"),
        ("hunter2\x00rest", "control character (code 0) at position 8", "hunter2"),
        ("  hunter2\tx", "control character (code 9) at position 10", "hunter2"),
    ],
)
def test_bad_secrets_are_refused_without_showing_them(value, match, hidden):
    message = sk.check_supplied_secret("synapse_main_macaroon_secret_key", value)
    assert message.startswith("synapse_main_macaroon_secret_key ")
    assert match in message, message
    assert "remove the variable to have the role generate one once" in message
    if hidden:
        assert hidden not in message


@pytest.mark.parametrize("value", [None, True, False, "true", "False", "yes", "no"])
def test_the_switch_takes_booleans(value):
    assert sk.check_allow_flag(value) is None


@pytest.mark.parametrize(("value", "shown"), [("maybe", "'maybe'"), (1, "a number"), ("1", "'1'"), (["true"], "a list")])
def test_the_switch_refuses_anything_else(value, shown):
    assert sk.check_allow_flag(value).startswith(f"synapse_main_allow_new_signing_key is {shown}; set it to true")


def test_every_input_is_checked_once():
    values = {
        "synapse_main_signing_key": "ed448 a b",
        "synapse_main_macaroon_secret_key": "",
        "synapse_main_form_secret": 1,
        "synapse_main_registration_shared_secret": "a\nb",
        "synapse_main_worker_replication_secret": " ",
        "synapse_main_allow_new_signing_key": "maybe",
    }
    found = sk.secret_problems(values)
    assert [p.split()[0] for p in found] == list(sk.SECRET_INPUTS)
    assert sk.secret_problems({}) == []


# --- with the other shared variables ---------------------------------------

GOOD = {"synapse_server_name": "example.org", "synapse_database_password": "s3cret-pass", "synapse_redis_password": "r"}
TWO_HOSTS = {"synapse_main": ["app1"], "synapse_workers": ["app1", "app2"], "nginx": ["app1"]}


def test_the_first_play_checks_them_on_the_main_host():
    hostvars = {h: {**GOOD, "synapse_main_form_secret": ""} for h in ("app1", "app2")}
    found = si.input_problems(TWO_HOSTS, hostvars)
    assert found == ["on app1: synapse_main_form_secret is empty; " + found[0].split("is empty; ", 1)[1]]
    # The host-by-host form the _deployment role uses: only the main host reads them.
    assert si.input_problems(TWO_HOSTS, hostvars, host="app2", values=hostvars["app2"]) == []
    own = si.input_problems(TWO_HOSTS, hostvars, host="app1", values=hostvars["app1"])
    assert len(own) == 1 and own[0].startswith("synapse_main_form_secret is empty")


def test_good_supplied_secrets_pass_the_first_play():
    values = {**GOOD, "synapse_main_signing_key": KEY, "synapse_main_allow_new_signing_key": False,
              **{name: "s" * 50 for name in sk.SECRET_VARIABLES}}  # fmt: skip
    assert si.input_problems(TWO_HOSTS, {"app1": values, "app2": values}) == []


# --- the database query's answer --------------------------------------------


@pytest.mark.parametrize(
    ("output", "state"),
    [
        ("no-server\n", {"state": "no-server"}),
        ("no-database", {"state": "no-database"}),
        ("no-schema", {"state": "no-schema"}),
        ("data 3 1\n", {"state": "data", "users": 3, "events": 1}),
        ("data 0 0", {"state": "data", "users": 0, "events": 0}),
        ("unreachable psql: error: connection refused", {"state": "unreachable", "detail": "psql: error: connection refused"}),
        ("unreachable", {"state": "unreachable", "detail": "no answer"}),
        ("data three 1", {"state": "unknown", "detail": "data three 1"}),
        ("", {"state": "unknown", "detail": "no output"}),
        (None, {"state": "unknown", "detail": "no output"}),
        ("no-server extra", {"state": "unknown", "detail": "no-server extra"}),
    ],
)
def test_database_states(output, state):
    assert sk.database_state(output) == state


# --- the verdict -------------------------------------------------------------

PATHS = {
    "key_path": "/etc/matrix-synapse/secrets/signing.key",
    "record_path": "/var/lib/matrix-synapse/signing_key.pub",
    "database_name": "synapse",
    "postgres_host": "db1",
}


def refusal(**state):
    return sk.key_refusal("app1", **PATHS, **state)


def assert_no_secret(message):
    for secret in (SEED, OTHER_SEED):
        assert secret not in message


def test_a_kept_key_passes():
    assert refusal(key_exists=True) == ""
    assert refusal(key_exists=True, supplied=KEY, key_content=KEY) == ""
    assert refusal(key_exists=True, supplied=KEY.strip(), key_content="  " + KEY) == ""


@pytest.mark.parametrize("database", ["no-server", "no-database", "no-schema", "data 0 0"])
def test_a_first_key_is_generated_for_a_server_without_data(database):
    assert refusal(key_exists=False, database=database) == ""


def test_a_supplied_key_on_a_fresh_host_passes():
    assert refusal(key_exists=False, supplied=KEY) == ""
    # ... and the one the record names, after a loss.
    assert refusal(key_exists=False, supplied=KEY, record=KEY_PUBLIC + "\n") == ""


def test_a_lost_key_with_a_record_is_refused():
    message = refusal(key_exists=False, record=KEY_PUBLIC + "\n")
    assert message.startswith(
        "The signing key /etc/matrix-synapse/secrets/signing.key is missing on app1, and the role will not generate"
    )
    public = KEY_PUBLIC.split()[1]
    assert f"this server has used the key ed25519:a_AbCd (public key {public}, recorded in {PATHS['record_path']})" in message
    assert "breaks federation with every server that knew the old one" in message
    assert "Restore /etc/matrix-synapse/secrets/signing.key from your backup" in message
    assert "supply it as synapse_main_signing_key" in message
    assert "set synapse_main_allow_new_signing_key: true for one run" in message
    assert f"old_signing_keys: {{'ed25519:a_AbCd': {{key: '{public}', expired_ts: <now" in message
    assert message.endswith("}}.")
    assert_no_secret(message)


@pytest.mark.parametrize(("database", "held"), [("data 2 1", "2 user(s) and events"), ("data 0 1", "0 user(s) and events"),
                                                ("data 5 0", "5 user(s)")])  # fmt: skip
def test_a_lost_key_of_a_server_with_data_is_refused(database, held):
    message = refusal(key_exists=False, database=database)
    assert "The signing key /etc/matrix-synapse/secrets/signing.key is missing on app1" in message
    assert f"the database synapse on db1 already holds {held}, so this server has run" in message
    assert "old_signing_keys" in message and "synapse_main_allow_new_signing_key" in message


@pytest.mark.parametrize("database", ["unreachable psql: could not connect", "garbage", None])
def test_a_database_that_cannot_tell_refuses(database):
    message = refusal(key_exists=False, database=database)
    assert "could not tell whether the database synapse on db1 holds data" in message
    assert "Start PostgreSQL on db1 and run again" in message


def test_a_supplied_key_that_differs_from_the_file_is_refused():
    message = refusal(key_exists=True, supplied=OTHER, key_content=KEY, export_tool="/opt/venv/bin/export_signing_key")
    assert message.startswith(
        "synapse_main_signing_key (ed25519:a_Zyxw) differs from the signing key in "
        "/etc/matrix-synapse/secrets/signing.key on app1, which holds the key ed25519:a_AbCd"
    )
    assert "'/opt/venv/bin/export_signing_key -x /etc/matrix-synapse/secrets/signing.key' on app1" in message
    assert "remove synapse_main_signing_key or set it to that key" in message
    assert_no_secret(message)
    # Same version, other seed: still another key.
    assert "differs" in refusal(key_exists=True, supplied=KEY.replace(SEED, OTHER_SEED), key_content=KEY)


def test_a_supplied_key_against_an_unreadable_file_is_refused():
    message = refusal(key_exists=True, supplied=KEY, key_content="garbage")
    assert "which holds no key the role can read" in message


def test_a_supplied_key_other_than_the_recorded_one_is_refused():
    message = refusal(key_exists=False, supplied=OTHER, record=KEY_PUBLIC)
    assert message.startswith("synapse_main_signing_key (ed25519:a_Zyxw) is not the key this server has used")
    assert "records ed25519:a_AbCd" in message and "is missing" in message
    assert_no_secret(message)


def test_allowing_a_new_key_refuses_nothing():
    for state in (
        {"key_exists": False, "record": KEY_PUBLIC},
        {"key_exists": False, "database": "data 9 1"},
        {"key_exists": False, "database": "unreachable x"},
        {"key_exists": True, "supplied": OTHER, "key_content": KEY},
        {"key_exists": False, "supplied": OTHER, "record": KEY_PUBLIC},
    ):
        assert refusal(allowed=True, **state) == ""
        assert refusal(allowed=False, **state) != ""


def test_the_filter_is_registered():
    filters = FilterModule().filters()
    assert filters["synapse_signing_key_refusal"]("app1", key_exists=True, **PATHS) == ""
    assert "is missing on app1" in filters["synapse_signing_key_refusal"]("app1", key_exists=False, record=KEY_PUBLIC, **PATHS)
