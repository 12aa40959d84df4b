#!/usr/bin/env bash
# Install the system packages recon's local stack needs: the PostgreSQL server binaries
# (initdb, pg_ctl, postgres) for the throwaway cluster of `runner stack up`.
# No-op when they are already present; needs root (or sudo) otherwise. Debian/Ubuntu only.
set -euo pipefail

have_postgres() {
  local dir
  if [[ -n "${RECON_PG_BINDIR:-}" && -x "${RECON_PG_BINDIR}/initdb" && -x "${RECON_PG_BINDIR}/pg_ctl" ]]; then
    return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      return 0
    fi
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      return 0
    fi
  done
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

if have_postgres; then
  echo "PostgreSQL server binaries: present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: PostgreSQL server binaries (initdb, pg_ctl) are missing and apt-get is not available." >&2
  echo "Install PostgreSQL's server package with your system's package manager," >&2
  echo "or set RECON_PG_BINDIR to a directory that holds initdb and pg_ctl." >&2
  exit 2
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo)
  else
    echo "error: PostgreSQL server binaries (initdb, pg_ctl) are missing, and installing them needs root." >&2
    echo "Run as root:  apt-get update && apt-get install -y postgresql" >&2
    echo "(the Debian package 'postgresql', or a versioned one such as 'postgresql-15')" >&2
    exit 2
  fi
fi

echo "Installing the PostgreSQL server binaries (Debian package 'postgresql')..."
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# The package's own cluster is not needed (recon starts a throwaway one on a free port), but the
# Debian post-install creates one and starts it where a service manager runs; stop it if it did.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version name _; do
    "${SUDO[@]}" pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi

if ! have_postgres; then
  echo "error: installed the package 'postgresql' but still cannot find initdb and pg_ctl" >&2
  exit 2
fi
echo "PostgreSQL server binaries: installed"
