"""Make the repository importable as the collection `ansible_collections.polylith.synapse`."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.plugins.loader import init_plugin_loader

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".collections"
LINK = COLLECTIONS / "ansible_collections" / "polylith" / "synapse"

if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(ROOT, target_is_directory=True)
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

# Ansible's collection loader goes in before any test imports the collection:
# a collection imported without it has no metadata, and templates rendered in
# the tests would not find its filters (polylith.synapse.*).
init_plugin_loader([str(COLLECTIONS)])
