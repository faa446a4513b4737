#!/usr/bin/env bash
# The install check: build roofline's wheel, install it with its dependencies into a fresh virtual
# environment, and run what a new user runs first from a directory outside the repository, so that
# nothing resolves through the checkout. It catches files that work in an editable install but are
# missing from the wheel (the hardware profiles were). Everything lives in one temporary directory,
# removed on exit. Takes about a minute or two where pip serves torch from local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/roofline-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Build from a copy of the files git knows (tracked, and untracked but not ignored), so a stale build/
# or egg-info in the checkout cannot leak into the wheel and the checkout stays as it was.
mkdir "$work/src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
        | (cd "$repo" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) \
        | tar -C "$repo" --null -T - -cf - | tar -C "$work/src" -xf -
else
    tar -C "$repo" --exclude=./.venv --exclude=./build -cf - . | tar -C "$work/src" -xf -
fi

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
# pip's own chatter (index warnings, build-backend notes) goes to a log, shown only when pip fails.
pip() { "$py" -m pip --disable-pip-version-check "$@" >>"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }; }
pip wheel --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/roofline-*.whl)
echo "wheel-check: built $(basename "$wheel")"
if ! "$py" -c 'import sys, zipfile; sys.exit("roofline/hwprofiles/h100-sxm.yaml" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$wheel"; then
    echo "wheel-check: FAIL: the wheel does not contain roofline/hwprofiles/h100-sxm.yaml" >&2
    exit 1
fi
pip install "$wheel"
echo "wheel-check: installed with $(env -u PYTHONPATH "$py" -c 'import torch; print("torch", torch.__version__)') in a fresh venv"

# From outside the repository, with nothing that could point back into it; saved profiles in an empty
# directory of its own, so the user's cache does not change what `hw list` shows.
cd "$work"
mkdir "$work/saved"
run() { env -u PYTHONPATH -u ROOFLINE_HWPROFILES ROOFLINE_PROFILE_DIR="$work/saved" ROOFLINE_TRACE_DIR="$work/traces" \
    "$work/venv/bin/roofline" "$@"; }
fail() { echo "wheel-check: FAIL: $*" >&2; exit 1; }

where=$(env -u PYTHONPATH "$py" -c "import roofline; print(roofline.__file__)")
case "$where" in "$work/venv/"*) ;; *) fail "roofline imported from $where, not from the fresh environment";; esac

expected="roofline $(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml")"
version=$(run --version)
[ "$version" = "$expected" ] || fail "--version printed '$version', expected '$expected'"
echo "wheel-check: $version"

listing=$(run hw list) || fail "roofline hw list exited $?"
count=$(printf '%s\n' "$listing" | grep -c -E '^(h100-sxm|a100-80gb-sxm|t4|xeon-8480plus) ' || true)
[ "$count" -eq 4 ] || fail "roofline hw list does not list the shipped profiles:"$'\n'"$listing"
echo "wheel-check: hw list shows $(printf '%s\n' "$listing" | grep -c ' datasheet ') datasheet profiles"

prediction=$(run predict zoo:convnet --hw h100-sxm) || fail "roofline predict zoo:convnet --hw h100-sxm exited $?"
printf '%s\n' "$prediction" | grep -q "zoo:convnet on NVIDIA H100 SXM 80GB" \
    || fail "the prediction does not name the model and device:"$'\n'"$prediction"
echo "wheel-check: predict zoo:convnet --hw h100-sxm: $(printf '%s\n' "$prediction" | grep 'zoo:convnet on')"

# The trace cache from an installed wheel: the first predict kept its trace (keyed by the installed files' digest),
# and a second one reads it back to the same output.
run cache info | grep -q ": 1 trace," || fail "the first predict kept no trace: $(run cache info)"
[ "$(run predict zoo:convnet --hw h100-sxm)" = "$prediction" ] || fail "a cached predict printed something else"
echo "wheel-check: $(run cache info | cut -d'(' -f1)read back to the same prediction"
echo "wheel-check: passed"
