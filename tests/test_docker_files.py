"""docker/: what can be checked without a Docker engine.

The compose file parses and names only files that exist; every variable it interpolates is in
docker/.env.example; every FEDALIGN_* variable there is a real setting and the settings it gives parse;
every file the Dockerfiles COPY exists and is not kept out by .dockerignore; the images are small and
unprivileged by construction; every command the images and compose run is a `fedalign` command whose
subcommands and options exist. Then the services run from those same commands, outside Docker, on the
real PostgreSQL and Redis: migrations, the API, the aggregator and a node's worker, through a federation.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml

sys.path.insert(0, str(Path(__file__).parent / "backend"))  # the process helpers of the API tests

from api_support import drive, tiny_settings, write_vectors
from process_support import (
    REDIS_URL,
    RUN_TIMEOUT_S,
    START_TIMEOUT_S,
    Processes,
    child_env,
    flush_redis,
    free_port,
    redis_or_skip,
    scratch_postgres,
    wait_until,
)

from backend.settings import Settings
from cli.main import app
from messaging.celery_worker import READY_MESSAGE
from workers.celery_app import WorkerSettings
from workers.client import NodeClient, NodeRunner

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SERVER_SERVICES = ("migrate", "api", "aggregator")
NODE_WORKERS = ("worker-gpu", "worker-cpu")
# What each kind of service cannot run without.
REQUIRED = {
    "server": {"FEDALIGN_DATABASE_URL", "FEDALIGN_BROKER_URL", "FEDALIGN_DATA_DIR", "FEDALIGN_ADMIN_TOKEN"},
    "node": {"FEDALIGN_NODE_TOKEN", "FEDALIGN_API_URL", "FEDALIGN_BROKER_URL", "FEDALIGN_DATA_DIR"},
}


# ------------------------------------------------------------------------------------------------ parsing


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE in .env.example: {line!r}"
            values[key.strip()] = value.strip()
    return values


VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` against ``env`` (``$$`` is a dollar)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        used.add(name)
        present = env.get(name)
        if op in (":?", "?"):
            assert present, f"${{{name}}} is required ({arg}) and .env.example leaves it empty"
            return present
        if op == ":-":
            return present or arg
        if op == "-":
            return arg if present is None else present
        assert present is not None, f"${{{name}}} is not defined in .env.example"
        return present

    return VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    used: set[str] = set()
    document = interpolate(yaml.safe_load(COMPOSE.read_text()), env_example(), used)
    document["x-used-variables"] = used
    return document


@dataclass
class Dockerfile:
    path: Path
    # (instruction, arguments), continuation lines joined, comments dropped
    instructions: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        lines, joined = [], ""
        for raw in path.read_text().splitlines():
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
            joined += raw.rstrip().removesuffix("\\") + " "
            if not raw.rstrip().endswith("\\"):
                lines.append(joined.strip())
                joined = ""
        dockerfile = cls(path)
        for line in lines:
            instruction, _, arguments = line.partition(" ")
            dockerfile.instructions.append((instruction.upper(), arguments.strip()))
        return dockerfile

    def stages(self) -> list[list[tuple[str, str]]]:
        stages: list[list[tuple[str, str]]] = []
        for instruction, arguments in self.instructions:
            if instruction == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((instruction, arguments))
        return stages

    def commands(self) -> list[list[str]]:
        found = []
        for instruction, arguments in self.instructions:
            if instruction in ("CMD", "ENTRYPOINT"):
                found.append(json.loads(arguments))
            elif instruction == "HEALTHCHECK" and arguments != "NONE":
                found.append(json.loads(arguments.split(" CMD ", 1)[1]))
        return found


DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore's patterns as Docker reads them: relative to the context's root, ``**`` any depth,
    ``!`` an exception, the last matching line deciding."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip().lstrip("/").rstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            else:
                regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def ignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]  # a path or any folder above it
    result = False
    for negate, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            result = not negate
    return result


def cli_tree() -> Any:
    """The command line as Typer builds it (its own copy of click: commands, groups, parameters)."""
    return typer.main.get_command(app)


def check_command(argv: list[str]) -> None:
    """``argv`` is `fedalign` with subcommands and options that exist and values of the right types."""
    assert argv and argv[0] == "fedalign", f"{argv} does not run the package's console command"
    command = cli_tree()
    rest = list(argv[1:])
    path = ["fedalign"]
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert rest, f"{argv}: {' '.join(path)} needs a subcommand"
        name = rest.pop(0)
        assert name in command.commands, f"{argv}: no command {' '.join([*path, name])!r}"
        command = command.commands[name]
        path.append(name)
    try:
        command.make_context(" ".join(path), rest)  # parses and converts every option, as a run would
    except typer.Exit as exc:
        raise AssertionError(f"{argv}: exits at once ({exc})") from exc
    except Exception as exc:  # click's UsageError, NoSuchOption, BadParameter
        raise AssertionError(f"{argv}: {exc}") from exc


def healthcheck_argv(test: list[str] | str) -> list[str]:
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    return list(test[1:]) if test[0] == "CMD" else list(test)


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def known_variables() -> set[str]:
    names = {f"FEDALIGN_{n.upper()}" for n in Settings.model_fields}
    names |= {f"FEDALIGN_{n.upper()}" for n in WorkerSettings.model_fields}

    def envvars(command: Any) -> Iterator[str]:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            yield from [envvar] if isinstance(envvar, str) else envvar or []
        for sub in getattr(command, "commands", {}).values():
            yield from envvars(sub)

    return names | set(envvars(cli_tree()))


# ---------------------------------------------------------------------------------------- static checks


def test_the_compose_file_names_only_files_that_exist(compose: dict[str, Any]) -> None:
    built = our_services(compose)
    assert {"api", "aggregator", "migrate", *NODE_WORKERS} <= built.keys()
    assert {"redis", "postgres", "flower"} <= compose["services"].keys()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir(), f"{name}: no build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            assert (DOCKER / path).is_file(), f"{name}: no env_file {path}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_services_start_in_order_and_report_their_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}"
    assert services["migrate"]["command"] == ["fedalign", "db", "upgrade"]
    for name in ("api", "aggregator"):
        assert "migrate" in services[name]["depends_on"], f"{name} must wait for the migrations"
    # A GPU for the CUDA worker, through the device reservation.
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert "--aggregator" in services["aggregator"]["command"]


def test_every_variable_is_a_real_setting_and_the_settings_parse(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = known_variables()
    example = env_example()
    assert compose["x-used-variables"] <= example.keys(), "compose uses variables .env.example lacks"
    unused = example.keys() - compose["x-used-variables"]
    assert not unused, f".env.example defines variables compose never reads: {sorted(unused)}"
    named = {k for k in example if k.startswith("FEDALIGN_")}
    for name, service in our_services(compose).items():
        environment = service.get("environment", {})
        named |= {k for k in environment if k.startswith("FEDALIGN_")}
        kind = "node" if name in NODE_WORKERS else "server"
        missing = REQUIRED[kind] - environment.keys()
        assert not missing, f"{name} does not set {sorted(missing)}"
        # The values compose gives (with .env.example's) are valid settings for the code that reads them.
        with monkeypatch.context() as patch:
            for key, value in environment.items():
                patch.setenv(key, str(value))
            WorkerSettings()
            if kind == "server":
                Settings()
    unknown = sorted(named - known)
    assert not unknown, f"not settings of the package: {unknown}"
    # Server and aggregator must agree on everything the server-side code reads.
    api, aggregator = (
        compose["services"]["api"]["environment"],
        compose["services"]["aggregator"]["environment"],
    )
    for key in {k for k in api if k.startswith("FEDALIGN_")} - {"FEDALIGN_METRICS_ADDR"}:
        assert aggregator.get(key) == api[key], key


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_reaches_the_build(path: Path) -> None:
    patterns = dockerignore()
    dockerfile = Dockerfile.read(path)
    stages: set[str] = set()
    for instruction, arguments in dockerfile.instructions:
        if instruction == "FROM" and " AS " in arguments.upper():
            stages.add(arguments.split()[-1])
        if instruction not in ("COPY", "ADD"):
            continue
        words = arguments.split()
        flags = [w for w in words if w.startswith("--")]
        sources = [w for w in words if not w.startswith("--")][:-1]
        origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if origin is not None:
            assert origin in stages, f"{path.name}: COPY --from={origin}: no such earlier stage"
            continue
        for source in sources:
            matches = sorted(ROOT.glob(source))
            assert matches, f"{path.name}: COPY {source}: no such file in the build context"
            for match in matches:
                relative = match.relative_to(ROOT).as_posix()
                assert not ignored(relative, patterns), f"{path.name}: .dockerignore drops {relative}"
                if match.is_dir():
                    kept = [
                        f
                        for f in match.rglob("*")
                        if f.is_file() and not ignored(f.relative_to(ROOT).as_posix(), patterns)
                    ]
                    assert kept, f"{path.name}: .dockerignore drops everything in {relative}"


def test_the_dashboard_stage_copies_all_that_its_build_reads() -> None:
    """`npm run build` runs `tsc -b`, which reads everything tsconfig.json includes, then Vite."""
    copied = {
        source
        for instruction, arguments in Dockerfile.read(DOCKER / "Dockerfile.api").stages()[0]
        if instruction == "COPY"
        for source in arguments.split()[:-1]
    }
    tsconfig = json.loads((ROOT / "frontend" / "tsconfig.json").read_text())
    for entry in [*tsconfig["include"], "index.html", "package.json", "package-lock.json"]:
        for found in (ROOT / "frontend").glob(entry):
            relative = found.relative_to(ROOT).as_posix()
            covered = any(relative == c or relative.startswith(c.rstrip("/") + "/") for c in copied)
            assert covered, f"the dashboard stage does not copy {relative}, which its build reads"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_images_are_small_unprivileged_and_checked(path: Path) -> None:
    final = Dockerfile.read(path).stages()[-1]
    text = "\n".join(f"{i} {a}" for i, a in final)
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path.name} runs as root"
    assert any(i == "HEALTHCHECK" for i, _ in final), f"{path.name} has no HEALTHCHECK"
    assert any(i == "CMD" for i, _ in final), f"{path.name} has no CMD"
    for heavy in ("node_modules", "build-essential", "gcc", "npm ", "pip install"):
        assert heavy not in text, f"{path.name}: {heavy!r} in the final stage"
    # The package arrives as a virtualenv built in an earlier stage.
    assert any(i == "COPY" and a.startswith("--from=package") for i, a in final)


def test_every_command_is_a_real_fedalign_command(compose: dict[str, Any]) -> None:
    commands = [argv for path in DOCKERFILES for argv in Dockerfile.read(path).commands()]
    for service in our_services(compose).values():
        for key in ("entrypoint", "command"):
            if key in service:
                value = service[key]
                commands.append(shlex.split(value) if isinstance(value, str) else value)
        test = service.get("healthcheck", {}).get("test")
        if test:
            commands.append(healthcheck_argv(test))
    assert len(commands) >= 12
    for argv in commands:
        check_command(argv)
    # And the checker does refuse what does not exist.
    for wrong in (["fedalign", "serv"], ["fedalign", "serve", "--workers", "4"], ["fedalign", "db"]):
        with pytest.raises(AssertionError):
            check_command(wrong)


def test_the_health_probe_fails_when_its_target_does_not_answer(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {"FEDALIGN_DATA_DIR": str(tmp_path)}
    down = runner.invoke(
        app,
        ["health", "--broker", "--timeout", "1"],
        env={**env, "FEDALIGN_BROKER_URL": f"redis://{closed}/0"},
    )
    assert down.exit_code == 1 and "unreachable" in down.output
    unset = runner.invoke(app, ["health", "--broker"], env={**env, "FEDALIGN_BROKER_URL": ""})
    assert unset.exit_code == 1 and "FEDALIGN_BROKER_URL" in unset.output
    assert (
        runner.invoke(app, ["health", "--url", f"http://{closed}/healthz", "--timeout", "1"]).exit_code == 1
    )
    assert runner.invoke(app, ["health"]).exit_code == 2
    folders = runner.invoke(app, ["health", "--broker"], env={**env, "FEDALIGN_BROKER_URL": "filesystem://"})
    assert folders.exit_code == 0, folders.output


# ---------------------------------------------------------------------------- the services, outside Docker


def argv_of(command: list[str]) -> list[str]:
    """Run a compose command with this environment's own `fedalign` console script."""
    script = Path(sys.executable).with_name("fedalign")
    assert script.is_file(), "the package's console command `fedalign` is not installed"
    return [str(script), *command[1:]]


def with_option(command: list[str], option: str, value: str) -> list[str]:
    index = command.index(option)
    return [*command[: index + 1], value, *command[index + 2 :]]


def test_the_services_run_from_the_compose_commands(compose: dict[str, Any], tmp_path: Path) -> None:
    redis_or_skip()
    flush_redis()
    services = compose["services"]
    prefix = f"compose{uuid.uuid4().hex[:8]}."
    data_dir = tmp_path / "server-data"
    admin_token = env_example()["FEDALIGN_ADMIN_TOKEN"]
    processes = Processes(tmp_path)
    with scratch_postgres() as database_url:

        def server_env(name: str, **extra: str) -> dict[str, str]:
            environment = {k: str(v) for k, v in services[name]["environment"].items()}
            # The compose hostnames (postgres, redis) become this machine's servers.
            environment.update(
                FEDALIGN_DATABASE_URL=database_url,
                FEDALIGN_BROKER_URL=REDIS_URL,
                FEDALIGN_DATA_DIR=str(data_dir),
                FEDALIGN_QUEUE_PREFIX=prefix,
                **extra,
            )
            return child_env(**environment)

        migrated = subprocess.run(
            argv_of(services["migrate"]["command"]),
            env=server_env("migrate"),
            capture_output=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stderr.decode()[-2000:]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api_command = with_option(
            with_option(services["api"]["command"], "--host", "127.0.0.1"), "--port", str(port)
        )
        metrics_port = free_port()
        try:
            # Every average on the aggregator queue: this tiny model's would otherwise be folded in the API
            # process (FEDALIGN_INLINE_AGGREGATION_MAX_BYTES), and the aggregator service would idle.
            api_env = server_env("api", FEDALIGN_INLINE_AGGREGATION_MAX_BYTES="0")
            processes.start("api", argv_of(api_command), api_env)
            aggregator_env = server_env("aggregator", FEDALIGN_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
            processes.start("aggregator", argv_of(services["aggregator"]["command"]), aggregator_env)

            # Each service's own health check, as compose runs it (the API's on this test's port).
            api_check = healthcheck_argv(services["api"]["healthcheck"]["test"])
            api_check = with_option(api_check, "--url", f"{url}/healthz")

            def healthy(argv: list[str], env: dict[str, str]) -> bool:
                processes.assert_alive()
                return subprocess.run(argv_of(argv), env=env, capture_output=True, timeout=60).returncode == 0

            wait_until(
                lambda: healthy(api_check, server_env("api")), START_TIMEOUT_S, "the API's health check"
            )
            broker_check = healthcheck_argv(services["aggregator"]["healthcheck"]["test"])
            assert healthy(broker_check, aggregator_env)
            aggregator_ready = lambda: READY_MESSAGE in processes.log("aggregator")  # noqa: E731
            wait_until(aggregator_ready, START_TIMEOUT_S, "the aggregator")

            # A federation: alpha's steps on a node worker started from compose's command, beta and omega
            # polling over REST, the server's averages on the aggregator.
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
            settings = tiny_settings(aggregator="server", rounds=1)
            federation = admin.post("/api/v1/federations", json=settings).json()
            fid = federation["id"]
            tokens = {}
            for seed, (name, role, mode) in enumerate(
                (("alpha", "source", "celery"), ("beta", "source", "rest"), ("omega", "target", "rest")), 1
            ):
                spec = write_vectors(tmp_path / f"{name}.npz", seed, 0.5 * seed)
                body = {"name": name, "role": role, "dataset": spec, "mode": mode}
                registered = admin.post(f"/api/v1/federations/{fid}/nodes", json=body)
                assert registered.status_code == 201, registered.text
                tokens[name] = registered.json()["token"]
            node_env = {k: str(v) for k, v in services["worker-cpu"]["environment"].items()}
            node_env.update(
                FEDALIGN_NODE_TOKEN=tokens["alpha"],
                FEDALIGN_API_URL=url,
                FEDALIGN_BROKER_URL=REDIS_URL,
                FEDALIGN_QUEUE_PREFIX=prefix,
                FEDALIGN_DATA_DIR=str(tmp_path / "node-data"),
            )
            processes.start("worker", argv_of(services["worker-cpu"]["command"]), child_env(**node_env))
            assert healthy(
                healthcheck_argv(services["worker-cpu"]["healthcheck"]["test"]), child_env(**node_env)
            )
            wait_until(lambda: READY_MESSAGE in processes.log("worker"), START_TIMEOUT_S, "alpha's worker")

            assert admin.post(f"/api/v1/federations/{fid}/start").status_code == 200
            runners = {n: NodeRunner(NodeClient(url, tokens[n])) for n in ("beta", "omega")}
            drive(runners)
            for runner in runners.values():
                runner.client.close()

            def finished() -> bool:
                processes.assert_alive()
                return admin.get(f"/api/v1/federations/{fid}").json()["status"] in ("finished", "failed")

            wait_until(finished, RUN_TIMEOUT_S, "the federation to finish", poll_s=0.5)
            assert admin.get(f"/api/v1/federations/{fid}").json()["status"] == "finished"
            alpha = next(
                n
                for n in admin.get(f"/api/v1/federations/{fid}/nodes").json()["items"]
                if n["name"] == "alpha"
            )
            assert alpha["samples"], "alpha's setup never ran on its worker"
            admin.close()

            # The API's metrics (with the token .env.example sets: compose requires one) and the aggregator's.
            metrics_auth = {"Authorization": f"Bearer {env_example()['FEDALIGN_METRICS_TOKEN']}"}
            assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
            api_metrics = httpx.get(f"{url}/metrics", headers=metrics_auth, timeout=10).text
            assert re.search(r"^fedalign_broker_up 1\.0$", api_metrics, re.MULTILINE)
            assert re.search(
                r'^fedalign_step_duration_seconds_count\{kind="setup",node="alpha"\} 1\.0$',
                api_metrics,
                re.MULTILINE,
            )
            aggregator_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            closed = re.findall(
                r"^fedalign_phase_duration_seconds_count\{.*\} (\S+)$", aggregator_metrics, re.MULTILINE
            )
            assert sum(float(n) for n in closed) > 0, "the aggregator timed no phase it closed"
        finally:
            processes.stop()
            flush_redis()


def test_metrics_are_protected_by_default_in_the_compose_file() -> None:
    """Without FEDALIGN_METRICS_TOKEN in docker/.env, compose refuses to start (it names every node)."""
    env = {k: v for k, v in env_example().items() if k != "FEDALIGN_METRICS_TOKEN"}
    with pytest.raises(AssertionError, match=r"FEDALIGN_METRICS_TOKEN\} is required"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), env, set())
    api = interpolate(yaml.safe_load(COMPOSE.read_text()), env_example(), set())["services"]["api"]
    assert api["environment"]["FEDALIGN_METRICS_TOKEN"] == env_example()["FEDALIGN_METRICS_TOKEN"]
