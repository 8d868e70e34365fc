#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes many small files in one task, each checked before it goes live."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: synapse_files
short_description: Write many small configuration files in one task
version_added: 0.1.0
description:
  - Writes each file of O(files) whose content, owner, group or mode differ
    from what is asked, and leaves the others untouched.
  - A new content goes to a temporary file beside the target first; when
    O(validate) is given it must accept that file, or the task fails naming
    the file and the target keeps its old content. Then it replaces the target
    atomically.
  - One task for all of a host's Synapse workers, where a loop of
    M(ansible.builtin.template) costs a round trip to the host per worker;
    likewise for directories, where a loop of M(ansible.builtin.file) costs
    one per directory.
options:
  files:
    description: The files to write, each target path mapped to its content.
    type: dict
    default: {}
  directories:
    description:
      - Directories to create (with their missing parents) before the files
        are written, in the order given. The owner, group and mode apply to
        these directories, not to the parents created on the way.
    type: list
    elements: path
    default: []
    version_added: 0.2.0
  force:
    description:
      - When false, a file that already exists keeps its content, and only
        its owner, group and mode are put right. For a content written once,
        such as a generated secret.
    type: bool
    default: true
    version_added: 0.2.0
  validate:
    description:
      - A command checking a new content before it goes live; C(%s) is the
        path of the temporary file. Run without a shell.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
author:
  - polylith.synapse contributors (@polylith)
"""

EXAMPLES = r"""
- name: Write the workers' configurations
  polylith.synapse.synapse_files:
    files:
      /etc/matrix-synapse/workers/sync1.yaml: "{{ lookup('ansible.builtin.template', 'worker.yaml.j2') }}"
    owner: root
    group: matrix-synapse
    mode: "0640"
    validate: /opt/matrix-synapse/venv/bin/python -m synapse.config -c /etc/matrix-synapse/homeserver.yaml -c %s
"""

RETURN = r"""
changed_files:
  description:
    - The paths whose content, owner, group or mode changed (or would, in check mode),
      directories included.
  returned: always
  type: list
  elements: str
"""

import os
import shlex
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def validate(module, command, path, target):
    if "%s" not in command:
        module.fail_json(msg=f"validate must name the file to check as %s, got {command!r}")
    argv = [path if word == "%s" else word.replace("%s", path) for word in shlex.split(command)]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(
            msg=f"the new content of {target} was refused by {argv[0]} (exit {rc}); {target} is unchanged",
            stdout=out, stderr=err, rc=rc,
        )


def write(module, target, content):
    directory = os.path.dirname(target) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        attributes = module.load_file_common_arguments(module.params, path=temporary)
        module.set_fs_attributes_if_different(attributes, False)
        if module.params["validate"]:
            validate(module, module.params["validate"], temporary, target)
        module.atomic_move(temporary, target, unsafe_writes=False)
        # atomic_move keeps an old file's attributes or gives a new one the
        # umask's: set the asked ones on the file that is now live.
        module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params, path=target), False)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "dict", "default": {}},
            "directories": {"type": "list", "elements": "path", "default": []},
            "force": {"type": "bool", "default": True},
            "validate": {"type": "str"},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    changed_files, diffs = [], []
    for directory in module.params["directories"]:
        if not os.path.isabs(directory):
            module.fail_json(msg=f"directories: {directory!r} is not an absolute path")
        if not os.path.isdir(directory):
            changed_files.append(directory)
            if not module.check_mode:
                os.makedirs(directory)
                module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params, path=directory), False)
            continue
        if module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params, path=directory), False):
            changed_files.append(directory)
    for target in sorted(module.params["files"]):
        if not os.path.isabs(target):
            module.fail_json(msg=f"files: {target!r} is not an absolute path")
        content = to_bytes(module.params["files"][target])
        current = read(target)
        if current is not None and not module.params["force"]:
            current = content  # kept as it is; only the attributes below
        if current != content:
            changed_files.append(target)
            if module._diff:
                diffs.append({
                    "before_header": target, "after_header": target,
                    "before": to_native(current or b""), "after": to_native(content),
                })
            if not module.check_mode:
                write(module, target, content)
            continue
        # Owner, group and mode; in check mode this only tells whether they differ.
        attributes = module.load_file_common_arguments(module.params, path=target)
        if module.set_fs_attributes_if_different(attributes, False):
            changed_files.append(target)
    result = {"changed": bool(changed_files), "changed_files": changed_files}
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
