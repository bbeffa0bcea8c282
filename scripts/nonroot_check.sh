#!/usr/bin/env bash
# A non-root user runs the README's commands against a root-owned install (issue 19: every
# command died with "cannot cache function 'gather_rows': no locator available").
#
#   sudo scripts/nonroot_check.sh [--keep]        (run as root)
#
# Steps, stopping at the first failure with its name:
#   1. as root: a venv under /opt (root-owned, not writable by others) and
#      `pip install "REPO[test]"` into it (not editable: the package's directory is root's)
#   2. a user (NONROOT_USER, default natgrad-nonroot) with a home directory
#   3. as that user, with a writable home: `natgrad-stream demo`, then every README block as
#      a file, twice (tests/test_readme.py, from a copy of README.md and tests/ without the
#      package, so the root-owned install is what runs)
#   4. as that user with a home it cannot write (HOME=/): `natgrad-stream demo` again, the
#      kernels cached in a private directory under $TMPDIR (or compiled, with one warning)
# Each command's stderr is searched for "Traceback"; any makes the check fail.
set -euo pipefail

keep=0
[[ "${1:-}" == "--keep" ]] && keep=1
if [[ $(id -u) -ne 0 ]]; then
    echo "nonroot_check: run as root (it installs under /opt and adds a user)" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
user=${NONROOT_USER:-natgrad-nonroot}
# an interpreter every user can run (a pyenv one under /root is not)
python=${PYTHON:-/usr/bin/python3}
step="start"
prefix=""
work=""
finish() {
    local rc=$?
    ((rc != 0)) && echo "nonroot_check: FAILED at step: $step (exit status $rc)" >&2
    if ((keep)); then
        echo "nonroot_check: kept $prefix and $work" >&2
    else
        [[ -n "$prefix" ]] && rm -rf "$prefix"
        [[ -n "$work" ]] && rm -rf "$work"
    fi
    return $rc
}
trap finish EXIT

cd /  # (the repository must not be on sys.path: the install is what runs)
step="root-owned install"
prefix=$(mktemp -d /opt/natgrad-nonroot.XXXXXX)
chmod 755 "$prefix"
"$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q "$repo[test]" 2>&1 | grep -v "is ignored: it is neither" || true
chmod -R go-w "$prefix"
site=$("$prefix/venv/bin/python" -c "import natgrad_stream, os; print(os.path.dirname(natgrad_stream.__file__))")
case "$site" in
    "$prefix"/*) ;;
    *) echo "nonroot_check: natgrad_stream imports from $site, not the venv" >&2; exit 1 ;;
esac
echo "nonroot_check: installed in $site (owner $(stat -c %U "$site"))"

step="user"
id -u "$user" > /dev/null 2>&1 || useradd -m "$user"
home=$(getent passwd "$user" | cut -d: -f6)
if runuser -u "$user" -- test -w "$site"; then
    echo "nonroot_check: $user can write $site: not a root-owned install" >&2
    exit 1
fi

as_user() {  # as_user HOME CMD...: the user's clean environment, the venv first on PATH
    local h=$1
    shift
    runuser -u "$user" -- env -i HOME="$h" PATH="$prefix/venv/bin:/usr/bin:/bin" \
        LANG=C.UTF-8 MPLBACKEND=Agg "$@"
}

checked() {  # checked WHAT HOME CMD...: run, show the tail, fail on a traceback
    local what=$1 h=$2 log
    shift 2
    log=$(mktemp)
    chmod 644 "$log"
    echo "nonroot_check: $what"
    if ! as_user "$h" "$@" > "$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        return 1
    fi
    tail -n 3 "$log"
    if grep -q "Traceback" "$log"; then
        echo "nonroot_check: a traceback in: $what" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

step="README commands as $user (writable home)"
work=$(runuser -u "$user" -- mktemp -d)
cp -r "$repo/README.md" "$repo/tests" "$work/"
chown -R "$user" "$work"
checked "natgrad-stream demo" "$home" bash -c "cd '$work' && natgrad-stream demo"
checked "README blocks, twice each" "$home" bash -c \
    "cd '$work' && python -m pytest -q -p no:cacheprovider tests/test_readme.py"

step="natgrad-stream demo as $user (home not writable)"
checked "natgrad-stream demo, HOME=/" / bash -c "cd '$work' && natgrad-stream demo"
echo "nonroot_check: OK"
