"""No secret in Ansible's output or --diff, and no Synapse file open to others.

Every task of every role (and of the playbooks) that handles a secret's value
must carry its role's no_log switch, and one that writes such a value to a
file must also turn --diff off (diff: false), which no_log alone does not
promise for every callback. A task handles a secret when any of its arguments
(not its name or its conditions, which never print values) uses a variable
holding one in a Jinja expression, or when it reads a file of the secrets directory, or renders a
template that names one. An assert's conditions are conditions too: it prints
their text, not the values in them.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import ROOT

# Variables whose values are secrets: the operator's passwords, keys and
# secrets, and the roles' internals that carry them.
SECRET_VARIABLES = re.compile(
    r"(?<![\w])(?:"
    r"synapse_main_(?:database_password|redis_password|signing_key|macaroon_secret_key|form_secret"
    r"|registration_shared_secret|worker_replication_secret)"
    r"|synapse_(?:database|redis)_password|postgres_synapse_password|redis_password"
    r"|__synapse_main_(?:supplied_secrets|signing_key_content|main_secrets|signing_key_on_host)"
    r"|___deployment_own_values"
    r")(?![\w])"
    r"|ansible\.builtin\.password"
)
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
# Files whose content is secret, when a task reads them.
SECRET_FILES = re.compile(r"__synapse_main_secrets_dir|__synapse_main_signing_key_file")
# Keys of a task that never print a value.
QUIET_KEYS = {"name", "when", "changed_when", "failed_when", "tags", "notify", "listen", "register", "delegate_to"}
FILE_WRITERS = {"ansible.builtin.copy", "ansible.builtin.template", "polylith.synapse.synapse_files"}
NO_LOG_SWITCH = re.compile(r"\A\{\{ (?:synapse_main|postgres|redis)_no_log(?: \| default\(true\))? \}\}\Z")

TASK_FILES = sorted(
    [*(ROOT / "roles").glob("*/tasks/*.yml"), *(ROOT / "roles").glob("*/handlers/*.yml"), ROOT / "playbooks" / "site.yml"]
)


def _tasks(items):
    """Every task in a list of tasks or plays, blocks opened."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if key in item:
                yield from _tasks(item[key])
        if "block" not in item and "hosts" not in item:
            yield item


def _module(task):
    return next((key for key in task if "." in key and key.split(".")[0] in ("ansible", "polylith", "community")), None)


LOOKED_UP = re.compile(r"lookup\('ansible\.builtin\.template', '([^']+)'")


def _template_text(path, task):
    """The sources of the templates a task renders (ansible.builtin.template's src, or
    each template lookup, e.g. for synapse_files), and of those they look up, if files
    of its role."""
    module = task.get("ansible.builtin.template")
    names = [module["src"]] if isinstance(module, dict) and "{{" not in str(module.get("src")) else []
    names += LOOKED_UP.findall(json.dumps(_printed(task), default=str))
    texts, seen = [], set()
    while names:
        name = names.pop()
        source = path.parent.parent / "templates" / name
        if name in seen or not source.exists():
            continue
        seen.add(name)
        texts.append(source.read_text())
        names += LOOKED_UP.findall(texts[-1])
    return "\n".join(texts)


def _printed(task):
    """The parts of a task that may reach the output: all but its name and conditions."""
    printed = {k: v for k, v in task.items() if k not in QUIET_KEYS}
    check = printed.get("ansible.builtin.assert")
    if isinstance(check, dict):
        # An assert prints its messages and the failed expression's text, never a value in it.
        printed["ansible.builtin.assert"] = {k: v for k, v in check.items() if k != "that"}
    return printed


def _expressions(text):
    """The Jinja expressions and statements in a text: where a variable's value is used."""
    return "\n".join(JINJA.findall(text))


def handles_secret(path, task):
    text = _expressions(yaml.safe_dump(_printed(task), width=10**6))
    if SECRET_VARIABLES.search(text) or SECRET_VARIABLES.search(_expressions(_template_text(path, task))):
        return True
    slurp = task.get("ansible.builtin.slurp")
    return isinstance(slurp, dict) and bool(SECRET_FILES.search(str(slurp.get("src"))))


SECRET_TASKS = [
    (path, task) for path in TASK_FILES for task in _tasks(yaml.safe_load(path.read_text())) if handles_secret(path, task)
]


def _id(case):
    path, task = case
    return f"{path.relative_to(ROOT)}: {task.get('name')}"


def test_the_detector_finds_the_tasks_that_handle_secrets():
    # Guards the rule below against matching nothing.
    names = {task.get("name") for _path, task in SECRET_TASKS}
    assert {
        "Write the supplied secrets",
        "Generate the missing secrets once",
        "Write the supplied signing key",
        "Read the secrets and the signing key from the main host",
        "Copy the main host's secrets and signing key",
        "Write the database password file",
        "Write the Redis password file",
        "Read the signing key on the host (a key is supplied)",
        "Judge whether this run would give the server a new signing key",
        "Check this host's shared variables",
        "Write the password Redis requires with TCP",
        "Create Synapse's database role with its password",
    } <= names, sorted(names)


@pytest.mark.parametrize("case", SECRET_TASKS, ids=[_id(c) for c in SECRET_TASKS])
def test_a_task_with_a_secret_hides_it(case):
    path, task = case
    assert NO_LOG_SWITCH.match(str(task.get("no_log"))), f"no_log is {task.get('no_log')!r}, not the role's switch"
    if _module(task) in FILE_WRITERS:
        assert task.get("diff") is False, "a secret written to a file needs diff: false"


def test_a_task_without_a_secret_is_not_flagged():
    plain = {"name": "Install the units", "ansible.builtin.template": {"src": "matrix-synapse.target.j2", "dest": "/x"}}
    assert not handles_secret(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml", plain)
    only_condition = {"name": "x", "ansible.builtin.command": "true", "when": "synapse_main_signing_key is none"}
    assert not handles_secret(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml", only_condition)
    check = {"name": "x", "ansible.builtin.assert": {"that": "redis_password | length > 0", "fail_msg": "set it"}}
    assert not handles_secret(ROOT / "roles" / "redis" / "tasks" / "preflight.yml", check)
    check["ansible.builtin.assert"]["fail_msg"] = "{{ redis_password }} is wrong"
    assert handles_secret(ROOT / "roles" / "redis" / "tasks" / "preflight.yml", check)
    pgpass = {"name": "x", "ansible.builtin.template": {"src": "pgpass.j2", "dest": "/x"}}
    assert handles_secret(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml", pgpass)
    looked_up = {"name": "x", "polylith.synapse.synapse_files": {
        "files": "{{ {'/x': lookup('ansible.builtin.template', 'pgpass.j2')} }}"}}
    assert handles_secret(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml", looked_up)
    units = {"name": "x", "polylith.synapse.synapse_files": {
        "files": "{{ lookup('ansible.builtin.template', 'system_files.json.j2') | from_json }}"}}
    assert not handles_secret(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml", units)


# --- file modes of the Synapse roles ------------------------------------------

# Files others may read: systemd's units and tmpfiles.d entries, and the
# Prometheus scrape config (addresses only, meant to be copied elsewhere).
# Units, the tmpfiles entry, the scrape config (addresses only) and the
# helper program the units run before Synapse (code, no secret).
# A path as a task's dest, or as the key of a synapse_files entry (an
# expression in the task or in the *_files.json.j2 template it looks up).
OPEN_DESTINATIONS = re.compile(
    r"\A(?:\{\{ )?\(?['\"]?(?:/etc/systemd/system/|/etc/tmpfiles\.d/|synapse_main_prometheus_scrape_file\b"
    r"|__synapse_main_wait_for_database\b)"
)
# The key of each entry of a synapse_files task's files: in an inline
# dictionary, or on its own line of the *_files.json.j2 template it looks up.
INLINE_KEYS = re.compile(r"[{,]\s*([^{},:]+?):\s*(?:lookup\(|\w)")
TEMPLATE_KEYS = re.compile(r"^\s*(\S.*?)(?: \| to_json \}\})?:(?: \{\{|$)", re.M)


def _destinations(path, args):
    """Where a file-writing task writes: its dest or path, or its synapse_files keys."""
    destination = args.get("dest") or args.get("path")
    if destination or "files" not in args:
        return [str(destination or "")]
    files = str(args["files"])
    listing = re.search(r"lookup\('ansible\.builtin\.template', '(\w+_files\.json\.j2)'\)", files)
    if listing:
        text = (path.parent.parent / "templates" / listing.group(1)).read_text()
        return [key for key in TEMPLATE_KEYS.findall(text) if not key.startswith(("{#", "{%"))]
    return INLINE_KEYS.findall(files.strip()[2:-2].strip())
SYNAPSE_TASK_FILES = sorted([*(ROOT / "roles" / "synapse_main").glob("tasks/*.yml"),
                             *(ROOT / "roles" / "synapse_worker").glob("tasks/*.yml")])  # fmt: skip
WRITERS = [
    (path, task)
    for path in SYNAPSE_TASK_FILES
    for task in _tasks(yaml.safe_load(path.read_text()))
    if _module(task) in FILE_WRITERS | {"ansible.builtin.file"}
    and isinstance(task[_module(task)], dict)
    and task[_module(task)].get("state") != "absent"
]


def test_the_synapse_roles_write_files():
    assert len(WRITERS) >= 10


@pytest.mark.parametrize("case", WRITERS, ids=[_id(c) for c in WRITERS])
def test_synapse_files_are_closed_to_others(case):
    path, task = case
    args = task[_module(task)]
    mode = args.get("mode")
    assert isinstance(mode, str) and re.fullmatch(r"0[0-7]{3}", mode), f"mode {mode!r} is not a quoted octal string"
    destinations = _destinations(path, args)
    destination = destinations[0] if len(destinations) == 1 else ""
    if mode[-1] != "0":
        assert destinations and all(destinations), "the files it writes are found"
        for each in destinations:
            assert OPEN_DESTINATIONS.match(each), f"{each} would be open to others ({mode})"
    if _module(task) != "ansible.builtin.file" or args.get("state") == "directory" or destination:
        assert args.get("owner") and args.get("group"), "owner and group are set"


def test_the_destinations_of_synapse_files_tasks_are_found():
    configure = ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml"
    units = {"files": "{{ lookup('ansible.builtin.template', 'system_files.json.j2') | from_json }}"}
    found = _destinations(configure, units)
    assert len(found) == 3 and all(OPEN_DESTINATIONS.match(each) for each in found), found
    inline = {"files": "{{ {synapse_main_prometheus_scrape_file: lookup('ansible.builtin.template', 'x.j2')} }}"}
    assert _destinations(configure, inline) == ["synapse_main_prometheus_scrape_file"]
    closed = {"files": "{{ {__synapse_main_secrets_dir ~ '/pgpass': lookup('ansible.builtin.template', 'pgpass.j2')} }}"}
    assert not any(OPEN_DESTINATIONS.match(each) for each in _destinations(configure, closed))
