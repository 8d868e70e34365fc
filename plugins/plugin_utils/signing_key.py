# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The signing key and the secrets: their form, and when replacing the key is refused.

The signing key is the server's identity in federation: other servers know
it by the key's public part and verify its events and requests with it. A new
key, generated because the old file went missing or replaced by one the
operator supplies, breaks that. ``key_refusal`` decides, from what the role
read on the main host (the key file, the record of the key in use, the
database), whether a run would do that, and says why and how to fix it.

No function here ever puts a secret (a signing key's seed, a secret's value)
into a message or a return value; the public part of a key and its ID are not
secret. It is plain Python over plain data: the unit tests call it directly,
and the collection's filters expose it to the roles.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

ALGORITHM = "ed25519"
# Synapse writes "ed25519 <version> <unpadded base64 of the 32-byte seed>"
# (signedjson.key.write_signing_keys); the Matrix spec allows a key version
# of letters, digits and _.
VERSION_RE = re.compile(r"\A[A-Za-z0-9_]+\Z")
BASE64_RE = re.compile(r"\A[A-Za-z0-9+/]+={0,2}\Z")
SEED_BYTES = 32
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

SIGNING_KEY_VARIABLE = "synapse_main_signing_key"
ALLOW_VARIABLE = "synapse_main_allow_new_signing_key"
# The secrets the role generates once unless the operator supplies them:
# the variable that supplies each, and the file under the secrets directory.
SECRET_VARIABLES = {
    "synapse_main_macaroon_secret_key": "macaroon_secret_key",
    "synapse_main_form_secret": "form_secret",
    "synapse_main_registration_shared_secret": "registration_shared_secret",
    "synapse_main_worker_replication_secret": "worker_replication_secret",
}
# Every variable secret_problems reads.
SECRET_INPUTS = (SIGNING_KEY_VARIABLE, *SECRET_VARIABLES, ALLOW_VARIABLE)
KEY_FORM = "'ed25519 <key version> <base64 key>' (one line, as Synapse's generate_signing_key writes it)"


def _kind(value):
    """A value's type in the operator's (YAML's) words."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple, set)):
        return "list"
    return type(value).__name__


class SigningKeyError(ValueError):
    """A signing key that is not in Synapse's form; the message never holds the key."""


def parse_signing_key(text):
    """(algorithm, version, seed bytes) of a key in Synapse's one-line form.

    Raises SigningKeyError saying what is wrong, without quoting any of it.
    """
    if not isinstance(text, str):
        raise SigningKeyError("is not a string")
    fields = text.split()
    if not fields:
        raise SigningKeyError("is empty")
    if len(text.strip().splitlines()) > 1:
        raise SigningKeyError(f"has {len(text.strip().splitlines())} lines, not one key")
    if len(fields) != 3:
        raise SigningKeyError(f"has {len(fields)} field(s) separated by blanks, not 3")
    algorithm, version, encoded = fields
    if algorithm != ALGORITHM:
        raise SigningKeyError("does not start with the algorithm ed25519")
    if not VERSION_RE.match(version):
        raise SigningKeyError("has a key version other than letters, digits and _")
    if not BASE64_RE.match(encoded):
        raise SigningKeyError("has a key that is not base64")
    try:
        seed = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError("has a key that is not base64") from None
    if len(seed) != SEED_BYTES:
        raise SigningKeyError(f"has a key of {len(seed)} bytes, not {SEED_BYTES}")
    return algorithm, version, seed


def key_id(text):
    """The key's ID, e.g. ed25519:a_AbCd (public), or None if it is not a key."""
    try:
        algorithm, version, _seed = parse_signing_key(text)
    except SigningKeyError:
        return None
    return f"{algorithm}:{version}"


def verify_key(text):
    """The public part as Synapse's export_signing_key prints it: 'ed25519:<version> <base64>'."""
    # cryptography comes with ansible-core (Ansible Vault needs it).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    algorithm, version, seed = parse_signing_key(text)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return f"{algorithm}:{version} {base64.b64encode(public).decode().rstrip('=')}"


def same_key(first, second):
    """Whether two texts hold the same key (blanks and the final newline aside)."""
    try:
        return parse_signing_key(first) == parse_signing_key(second)
    except SigningKeyError:
        return False


def check_signing_key(value, name=SIGNING_KEY_VARIABLE):
    """The operator's signing key: unset, or one key in Synapse's form. Never quotes it."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} is a {_kind(value)}, not a string (its value is not shown); give the key in the form {KEY_FORM}."
    try:
        parse_signing_key(value)
    except SigningKeyError as error:
        fix = (
            "remove the variable to have the role generate a key once" if str(error) == "is empty"
            else f"give the key in the form {KEY_FORM}"
        )
        return f"{name} {error} (its value is not shown); {fix}."
    return None


def check_supplied_secret(name, value):
    """An operator's secret: unset, or a non-empty string of printable characters. Never quotes it."""
    if value is None:
        return None
    fix = (
        "set it to a string of printable characters (e.g. the content of the file the role "
        "generated on the main host, to keep it), or remove the variable to have the role "
        "generate one once"
    )
    if not isinstance(value, str):
        return f"{name} is a {_kind(value)}, not a string (its value is not shown); quote it in YAML, or {fix}."
    stripped = value.strip()
    if not stripped:
        return f"{name} is {'empty' if value == '' else 'blank'}; {fix}."
    match = CONTROL_RE.search(stripped)
    if match:
        return (
            f"{name} contains a control character (code {ord(match.group())}) at position "
            f"{value.index(stripped) + match.start() + 1} (its value is not shown); {fix}."
        )
    return None


def check_allow_flag(value, name=ALLOW_VARIABLE):
    """The switch that allows a new signing key: a boolean (or true/false as --extra-vars gives it)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return None
    shown = repr(str(value)) if isinstance(value, str) else f"a {_kind(value)}"
    return (
        f"{name} is {shown}; set it to true for the one run that may give the server a new "
        "signing key, and to false (the default) otherwise."
    )


def secret_problems(values):
    """Every problem with the signing key, the secrets and the switch in ``values`` (a mapping)."""
    problems = [check_signing_key(values.get(SIGNING_KEY_VARIABLE))]
    problems += [check_supplied_secret(name, values.get(name)) for name in SECRET_VARIABLES]
    problems.append(check_allow_flag(values.get(ALLOW_VARIABLE)))
    return [problem for problem in problems if problem]


def database_state(output):
    """What the role's read-only query of Synapse's database found.

    ``output`` is the one line the query prints: ``no-server``, ``no-database``,
    ``no-schema``, ``data <users> <events>`` or ``unreachable <why>``. Returns a
    dict with ``state`` (one of those words, or ``unknown``) and, for ``data``,
    ``users`` and ``events`` (0 or 1: whether any event exists), for
    ``unreachable``/``unknown`` a ``detail``.
    """
    text = (output or "").strip()
    word, _sep, rest = text.partition(" ")
    if word in ("no-server", "no-database", "no-schema") and not rest:
        return {"state": word}
    if word == "data":
        counts = rest.split()
        if len(counts) == 2 and all(c.isdigit() for c in counts):
            return {"state": "data", "users": int(counts[0]), "events": int(counts[1])}
    if word == "unreachable":
        return {"state": "unreachable", "detail": rest.strip() or "no answer"}
    return {"state": "unknown", "detail": text or "no output"}


def _record(record):
    """(key ID, public key) from the record of the key in use, or (None, None)."""
    fields = (record or "").split()
    if len(fields) == 2 and fields[0].startswith(f"{ALGORITHM}:"):
        return fields[0], fields[1]
    return None, None


def key_refusal(
    host,
    key_path,
    record_path,
    key_exists,
    key_content=None,
    supplied=None,
    record=None,
    database=None,
    database_name=None,
    postgres_host=None,
    allowed=False,
    export_tool="export_signing_key",
):
    """Why this run must not give the server a new signing key, or "" when it may go on.

    ``key_exists`` and ``key_content``: the key file on the main host (the
    content is read only when a key is supplied). ``supplied``: the operator's
    synapse_main_signing_key, or None. ``record``: the content of the record of
    the key in use (read when the key file is missing), or None. ``database``:
    the database query's output (run when the role would generate a key and
    has no record), or None. ``allowed``: synapse_main_allow_new_signing_key.
    ``export_tool``: the path of Synapse's export_signing_key on the host.
    """
    if allowed:
        return ""
    why = (
        "Other servers know this server by its signing key: they cache its public part and "
        "verify this server's events and requests with it, so a different key breaks "
        "federation with every server that knew the old one"
    )
    allow = (
        f"Only to give the server a new key deliberately, set {ALLOW_VARIABLE}: true for one "
        "run, and publish the old key's public part under Synapse's old_signing_keys "
        "(synapse_main_extra_config) so its old events still verify"
    )
    recorded_id, recorded_public = _record(record)

    if supplied is not None:
        supplied_id = key_id(supplied) or "a malformed key"
        if key_exists:
            if key_content is not None and same_key(supplied, key_content):
                return ""
            file_id = key_id(key_content) if key_content is not None else None
            held = f"the key {file_id}" if file_id else "no key the role can read"
            return (
                f"{SIGNING_KEY_VARIABLE} ({supplied_id}) differs from the signing key in {key_path} "
                f"on {host}, which holds {held}; writing it would replace the server's identity. "
                f"{why}. If {key_path} holds the right key, remove {SIGNING_KEY_VARIABLE} or set it "
                f"to that key (an equal key is left alone). {allow}: before that run, "
                f"'{export_tool} -x {key_path}' on {host} prints the "
                "old_signing_keys entry (the role keeps the replaced file beside it as a backup)."
            )
        if recorded_id is not None:
            try:
                same = verify_key(supplied).split()[1] == recorded_public
            except SigningKeyError:
                same = False
            if not same:
                return (
                    f"{SIGNING_KEY_VARIABLE} ({supplied_id}) is not the key this server has used: "
                    f"{record_path} on {host} records {recorded_id} (public key {recorded_public}), "
                    f"and {key_path} is missing. {why}. Supply that key (from your backup of "
                    f"{key_path}), or restore the file and remove {SIGNING_KEY_VARIABLE}. {allow}: "
                    f"old_signing_keys: {{'{recorded_id}': {{key: '{recorded_public}', "
                    "expired_ts: <now, in milliseconds since 1970>}}."
                )
        return ""

    if key_exists:
        return ""
    restore = (
        f"restore {key_path} from your backup (mode 0640, group of the Synapse user), or supply it "
        f"as {SIGNING_KEY_VARIABLE} (e.g. from Ansible Vault)"
    )
    restore_first = restore[0].upper() + restore[1:]
    if recorded_id is not None:
        return (
            f"The signing key {key_path} is missing on {host}, and the role will not generate a new "
            f"one: this server has used the key {recorded_id} (public key {recorded_public}, recorded "
            f"in {record_path}). {why}. {restore_first}. {allow}: old_signing_keys: {{'{recorded_id}': "
            f"{{key: '{recorded_public}', expired_ts: <now, in milliseconds since 1970>}}}}."
        )
    state = database_state(database)
    where = f"the database {database_name} on {postgres_host}"
    if state["state"] in ("no-server", "no-database", "no-schema"):
        return ""
    if state["state"] == "data":
        if state["users"] == 0 and not state["events"]:
            return ""
        held = f"{state['users']} user(s)" + (" and events" if state["events"] else "")
        return (
            f"The signing key {key_path} is missing on {host}, and the role will not generate a new "
            f"one: {where} already holds {held}, so this server has run with a key other servers "
            f"may know. {why}. {restore_first}. {allow} (export_signing_key -x on a backup of the old key "
            "prints the entry)."
        )
    return (
        f"The signing key {key_path} is missing on {host}, and the role could not tell whether "
        f"{where} holds data ({state['state']}: {state['detail']}), so it will not generate a new "
        f"key. Start PostgreSQL on {postgres_host} and run again, or {restore}. {allow}."
    )
