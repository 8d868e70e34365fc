# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named worker lists, used when `synapse_workers` is not set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    workers: tuple


_PRESETS = (
    Preset("monolith", "No workers: the main process does everything.", ()),
)

PRESETS = {p.name: p for p in _PRESETS}
