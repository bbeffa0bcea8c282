#!/usr/bin/env bash
# What a new user does, on this machine: a fresh clone, a fresh venv, the README's two
# commands, then every README code block run as a saved file, twice in a row.
#
#   scripts/fresh_check.sh [--keep] [--skip-tests] [REPO]
#
#   REPO          the repository to clone (default: the one holding this script). `git clone`
#                 takes its committed HEAD: uncommitted changes are not checked.
#   --keep        keep the temporary directory (clone and venv) and print its path
#   --skip-tests  install the test extra but skip the full `python -m pytest` (a quick check);
#                 the README blocks still run
#
# Steps, stopping at the first failure with its name and exit status:
#   1. the machine: CPU model (lscpu), OS, Python
#   2. git clone REPO into a temporary directory (no test reads ../shared, so nothing is put
#      beside the clone)
#   3. python3 -m venv, activated (PYTHON=... chooses the interpreter; it needs >= 3.11)
#   4. the README's first command: python -m pip install . && natgrad-stream demo,
#      then the versions installed (numpy, scipy, numba, llvmlite, zarr, BLAS)
#   5. the README's second command: python -m pip install -e ".[test]" && python -m pytest
#   6. every README block as a file, twice (tests/test_readme.py: the python blocks each as a
#      script, the bash blocks but the first each as a script, run.toml through
#      `natgrad-stream fit --config`); in full mode step 5's suite already ran it
# The commands of steps 4 and 5 are checked to be the README's, word for word.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

keep=0
skip_tests=0
repo=""
while (($#)); do
    case "$1" in
        --keep) keep=1 ;;
        --skip-tests) skip_tests=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "fresh_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            if [[ -n "$repo" ]]; then
                echo "fresh_check: one repository only (got $repo and $1)" >&2; exit 2
            fi
            repo=$1 ;;
    esac
    shift
done
repo=${repo:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
python=${PYTHON:-python3}

# The README's two commands, exactly (checked against README.md in the clone).
cmd_demo='python -m pip install . && natgrad-stream demo'
cmd_test='python -m pip install -e ".[test]" && python -m pytest'

step="start"
tmp=""
finish() {
    local rc=$?
    if ((rc != 0)); then
        echo >&2
        echo "fresh_check: FAILED at step: $step (exit status $rc)" >&2
    fi
    if [[ -n "$tmp" && -d "$tmp" ]]; then
        if ((keep)); then
            echo "fresh_check: kept $tmp (clone in $tmp/natgrad_stream, venv in $tmp/venv)" >&2
        else
            rm -rf "$tmp"
        fi
    fi
    if ((rc == 0)); then
        echo "fresh_check: OK"
    elif ((!keep)); then
        echo "fresh_check: rerun with --keep to keep the clone and venv" >&2
    fi
}
trap finish EXIT

begin() {
    step=$1
    echo
    echo "=== fresh_check: $step"
}

versions() {
    python - <<'EOF'
import importlib.metadata as md

found = []
for name in ("natgrad-stream", "numpy", "scipy", "numba", "llvmlite", "zarr", "numcodecs"):
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
print("packages:", ", ".join(found))
try:
    import numpy  # noqa: F401  (threadpoolctl sees only loaded BLAS libraries)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        print(f"threads: {lib.get('internal_api')} {lib.get('version')} "
              f"({lib.get('architecture')}, {lib.get('num_threads')} threads)")
except Exception as exc:  # the check goes on without this line
    print(f"threads: unknown ({exc})")
EOF
}

# `a && b` does not stop a `set -e` script when `a` fails: each README command is run as
# written (eval) and its status checked.
readme() {
    eval "$1" || exit $?
}

begin "1/6 the machine"
if command -v lscpu >/dev/null; then
    cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
else
    cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
fi
echo "CPU: ${cpu:-unknown} ($(nproc 2>/dev/null || echo '?') cores), $(uname -srm)"
echo "Python: $("$python" --version 2>&1) ($(command -v "$python"))"

begin "2/6 git clone $repo"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/natgrad-fresh.XXXXXX")
git clone -q "$repo" "$tmp/natgrad_stream"
cd "$tmp/natgrad_stream"
echo "commit: $(git log -1 --format='%h %s' | cut -c1-100)"
for cmd in "$cmd_demo" "$cmd_test"; do
    if ! grep -qxF -- "$cmd" README.md; then
        echo "fresh_check: README.md no longer has the line: $cmd (update this script)" >&2
        exit 1
    fi
done

begin "3/6 $python -m venv"
"$python" -m venv "$tmp/venv"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP VIRTUAL_ENV
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
echo "venv: $tmp/venv, $(python --version), pip $(python -m pip --version | cut -d' ' -f2)"

begin "4/6 README: $cmd_demo"
readme "$cmd_demo"
versions

if ((skip_tests)); then
    begin "5/6 README (--skip-tests: install only): ${cmd_test%% && *}"
    readme "${cmd_test%% && *}"
    versions
    begin "6/6 every README block as a file, twice: python -m pytest tests/test_readme.py"
    python -m pytest -q -p no:cacheprovider tests/test_readme.py
else
    begin "5/6 README: $cmd_test"
    readme "$cmd_test"
    versions
    begin "6/6 every README block as a file, twice"
    echo "run by tests/test_readme.py in step 5's suite"
fi
