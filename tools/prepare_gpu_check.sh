#!/usr/bin/env bash
# Fill gpu_wheels/ (git-ignored) with the wheels tools/gpu_check.sh installs on the GPU machine, which reaches no
# package registry. Run on a machine that reaches PyPI, from anywhere in the checkout:
#
#   bash tools/prepare_gpu_check.sh          # then: device tool run, carry ["gpu_wheels"]
#
# The GPU machine (Python 3.12, x86-64) already has torch, transformers, lightning, peft, torchmetrics,
# tensorboard, einops, accelerate, pyarrow, timm, torchvision, numpy, PyYAML, typing-extensions, cloudpickle,
# pillow (see .library/device/KINDS.md). Missing there: jsonargparse with its signatures + omegaconf extras
# (docstring-parser, typeshed-client, omegaconf), gymnasium (farama-notifications). Those are downloaded here,
# pinned to the versions this project is tested with, each with `--no-deps`, as Python 3.12 manylinux x86-64 or
# pure-Python wheels; a package with no wheel is built into a pure-Python wheel from its sdist (refused if the
# result is platform-specific). Then every downloaded wheel's Requires-Dist (with the extras asked for) is checked:
# each must be in gpu_wheels/ or on the GPU machine's list below. omegaconf 2.4 vendors antlr4, so no
# antlr4-python3-runtime (whose 4.9.x is sdist-only) is needed; pinning omegaconf<2.4 would need it.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=gpu_wheels
PY=${PYTHON:-python3}

# name==version: what the GPU machine lacks (first block) and small fallbacks for what it should already have
# (pip leaves installed ones alone; they only help if the machine's image ever drops them).
PACKAGES=(
  jsonargparse==4.53.0
  docstring-parser==0.18.0
  typeshed-client==2.15.0
  omegaconf==2.4.0
  gymnasium==1.4.0
  farama-notifications==0.0.6
  # fallbacks, already on the GPU machine
  cloudpickle==3.1.3
  typing-extensions==4.16.0
  PyYAML==6.0.3
)
# Requirements the GPU machine satisfies itself (normalised names).
ON_GPU_MACHINE="numpy pyyaml typing-extensions cloudpickle torch transformers lightning pytorch-lightning peft
torchmetrics tensorboard einops accelerate pyarrow timm torchvision pillow packaging setuptools"

PLATFORM_ARGS=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_28_x86_64 --platform any)

mkdir -p "$DEST"
SDIST_TMP=$(mktemp -d)
trap 'rm -rf "$SDIST_TMP"' EXIT

for spec in "${PACKAGES[@]}"; do
  if "$PY" -m pip download --quiet --no-deps --only-binary=:all: "${PLATFORM_ARGS[@]}" -d "$DEST" "$spec" 2>"$SDIST_TMP/err"; then
    echo "wheel  $spec"
    continue
  fi
  # No matching wheel: build one from the sdist; only a pure-Python result (py3-none-any) runs there.
  echo "sdist  $spec (no wheel for cp312 manylinux x86-64: building)"
  mkdir -p "$SDIST_TMP/src" "$SDIST_TMP/built"
  "$PY" -m pip download --quiet --no-deps --no-binary=:all: -d "$SDIST_TMP/src" "$spec"
  "$PY" -m pip wheel --quiet --no-deps -w "$SDIST_TMP/built" "$SDIST_TMP"/src/*
  for whl in "$SDIST_TMP"/built/*.whl; do
    case "$whl" in
      *-none-any.whl) mv "$whl" "$DEST/" ;;
      *) echo "ERROR: $spec builds only a platform wheel ($(basename "$whl")): build it on the GPU machine's platform" >&2; exit 1 ;;
    esac
  done
  rm -rf "$SDIST_TMP/src" "$SDIST_TMP/built"
done

# One version per package, every requirement covered.
"$PY" - "$DEST" "$ON_GPU_MACHINE" "${PACKAGES[@]}" <<'PYEOF'
import re, sys, zipfile
from email.parser import Parser
from pathlib import Path

from pip._vendor.packaging.markers import Marker  # pip's own copy: always there
from pip._vendor.packaging.requirements import Requirement

dest, on_gpu, specs = Path(sys.argv[1]), set(sys.argv[2].split()), sys.argv[3:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
wanted = {norm(s.split("==")[0]) for s in specs}
extras = {"jsonargparse": {"signatures", "omegaconf"}}  # what gpu_check.sh installs
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
       "platform_python_implementation": "CPython"}
have, meta = {}, {}
for whl in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        m = Parser().parsestr(z.read(name).decode())
    key = norm(m["Name"])
    if key in have:
        sys.exit(f"ERROR: two versions of {key} in {dest}: {have[key]} and {whl.name}; keep one")
    if key not in wanted:
        sys.exit(f"ERROR: {whl.name} is not in PACKAGES (stale?): remove it")
    have[key], meta[key] = whl.name, m
missing = sorted(wanted - set(have))
if missing:
    sys.exit(f"ERROR: no wheel for {missing}")
problems = []
for key, m in meta.items():
    for line in m.get_all("Requires-Dist") or []:
        req = Requirement(line)
        active = [None] + sorted(extras.get(key, ()))
        if req.marker and not any(req.marker.evaluate(dict(env, extra=e or "")) for e in active):
            continue
        dep = norm(req.name)
        if dep not in have and dep not in on_gpu:
            problems.append(f"{key} needs {req} : neither in {dest}/ nor on the GPU machine")
        print(f"  {key:<22} -> {str(req):<40} {'(wheel)' if dep in have else '(on the GPU machine)'}")
if problems:
    sys.exit("ERROR:\n" + "\n".join(problems))
total = sum(p.stat().st_size for p in dest.glob("*.whl"))
print(f"{len(have)} wheels, {total / 2**20:.1f} MiB in {dest}/: dependencies complete")
PYEOF
ls -la "$DEST"
