# shellcheck shell=bash
# Sourced by the project's entry points: makes .venv from requirements.txt
# (again whenever requirements.txt changes) and links the repository in as the
# collection polylith.synapse under .collections/.
set -euo pipefail

POLYLITH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export POLYLITH_ROOT

polylith_venv() {
  local venv="$POLYLITH_ROOT/.venv" stamp want
  want=$(sha256sum "$POLYLITH_ROOT/requirements.txt" | cut -d' ' -f1)
  stamp="$venv/.requirements.sha256"
  if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "==> Installing the tools from requirements.txt into .venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$POLYLITH_ROOT/requirements.txt" 2> >(grep -v '^WARNING: Location' >&2)
    echo "$want" >"$stamp"
  fi
  local link="$POLYLITH_ROOT/.collections/ansible_collections/polylith/synapse"
  if [[ ! -e "$link" ]]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn "$POLYLITH_ROOT" "$link"
  fi
  export PATH="$venv/bin:$PATH"
  export ANSIBLE_COLLECTIONS_PATH="$POLYLITH_ROOT/.collections"
  export ANSIBLE_CONFIG="$POLYLITH_ROOT/ansible.cfg"
}
