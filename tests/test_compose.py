"""The production-shaped stack, checked without a Docker engine.

``docker-compose.yml`` is interpolated as Compose does and validated against
the Compose Specification's JSON schema; its services must run commands the
``feedbackloop`` command line accepts with settings it knows; Grafana's
provisioning must point at the same ClickHouse and carry the dashboard built
from the analyst queries; the ``Dockerfile`` must build the image from the
package with ``feedbackloop`` as its entry point. Every secret must be given
(``${VAR:?message}``, no default), only the labeling UI is published, only
workers hold the private model key, and the commented TLS proxy is a valid
service in front of the labeling UI.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from consumers.labeling import service
from dashboards import grafana_dashboard
from feedbackloop import cli, dashboard, keys
from feedbackloop.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
OURS = ("init", "worker", "labeling", "dashboard")
#: Variables read by a service directly rather than through Settings.
OTHER_VARIABLES = {"FEEDBACKLOOP_LABELING_TOKENS", "FEEDBACKLOOP_LABELING_ALLOWED_HOSTS", "FORWARDED_ALLOW_IPS"}

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")
#: Secrets the stack needs, with the values the tests give them.
SIGNING, VERIFY = keys.generate()
SECRETS = {"CLICKHOUSE_PASSWORD": "clickhouse-test-password", "GRAFANA_ADMIN_PASSWORD": "grafana-test-password",
           "FEEDBACKLOOP_MODEL_SIGNING_KEY": SIGNING, "FEEDBACKLOOP_MODEL_VERIFY_KEY": VERIFY,
           "FEEDBACKLOOP_LABELING_TOKENS": "test-token-0123456789abcdef0123456789abcdef:ann:annotator"}
_SECRET_NAME = re.compile(r"PASSWORD|KEY|TOKEN|SECRET")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is not set."""


def interpolate(value, env: dict):
    """Substitute ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}`` and ``$VAR`` as Compose does (``$$`` is a ``$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return "$".join(_VARIABLE.sub(lambda m: _substitute(m, env), p) for p in value.split("$$"))
    return value


def _substitute(match: re.Match, env: dict) -> str:
    name, operator, word = match.group(1) or match.group(4), match.group(2) or "", match.group(3) or ""
    value = env.get(name)
    missing = value is None or (operator.startswith(":") and value == "")
    if missing and operator.endswith("?"):
        raise MissingVariable(f"required variable {name} is missing a value: {word}")
    if missing and operator.endswith("-"):
        return word
    return value or ""


def validate(compose: dict) -> list[str]:
    jsonschema.Draft201909Validator.check_schema(SCHEMA)  # the schema names draft 2019-09
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]


@pytest.fixture(scope="module")
def raw() -> dict:
    """The compose file before interpolation."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, env=SECRETS)


def command_line() -> argparse.ArgumentParser:
    """The ``feedbackloop`` parser, with the commands of the services added if it lacks them."""
    parser = cli.parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, module in (("dashboard", dashboard), ("serve-labeling", service)):
        if name not in sub.choices:
            module.add_parser(sub)
    return parser


def test_the_file_follows_the_compose_specification(compose):
    assert validate(compose) == []


def test_the_schema_check_catches_mistakes(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["comand"] = broken["services"]["worker"].pop("command")
    broken["services"]["kafka"]["ports"] = {"9092": 9092}
    broken["services"]["grafana"]["depends_on"]["clickhouse"]["condition"] = "service_ready"
    errors = validate(broken)
    assert len(errors) >= 3
    assert any("comand" in e for e in errors)


def test_the_stack_has_every_part(compose):
    services = compose["services"]
    assert set(services) >= {"kafka", "clickhouse", "grafana", *OURS}
    assert not any("zookeeper" in name or "zookeeper" in str(s.get("image")) for name, s in services.items())
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    for name in OURS:
        assert services[name]["build"] == "." and services[name]["image"] == "feedbackloop:latest"
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_the_services_run_commands_the_command_line_accepts(compose):
    parser = command_line()
    for name in ("worker", "labeling", "dashboard"):
        args = parser.parse_args(compose["services"][name]["command"])
        assert args.command in ("worker", "serve-labeling", "dashboard"), name
    assert parser.parse_args(compose["services"]["dashboard"]["command"]).func is dashboard.run
    init = compose["services"]["init"]
    assert init["entrypoint"] == ["python", "-c"]
    code = init["command"][0]
    compile(code, "init", "exec")
    for module, name in re.findall(r"from ([\w.]+) import (\w+)", code):
        assert hasattr(__import__(module, fromlist=[name]), name), f"{module}.{name}"


def test_the_services_are_configured_with_settings_that_exist(compose):
    known = {env_name(f.name) for f in fields(Settings) if f.name != "extra"} | OTHER_VARIABLES
    for name in OURS:
        env = compose["services"][name]["environment"]
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert settings.kafka_bootstrap_servers == "kafka:19092"
        assert settings.clickhouse_dsn.startswith("http://clickhouse:8123/")
    listeners = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "INTERNAL://kafka:19092" in listeners.split(",")


def test_grafana_reads_the_same_clickhouse_and_the_same_queries(compose):
    env = compose["services"]["worker"]["environment"]
    dsn = urlparse(env["CLICKHOUSE_DSN"])
    provisioning = ROOT / "dashboards" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "clickhouse.yaml").read_text())["datasources"][0]
    assert source["type"] == "grafana-clickhouse-datasource"
    assert (source["jsonData"]["host"], source["jsonData"]["port"], source["jsonData"]["protocol"]) \
        == (dsn.hostname, dsn.port, dsn.scheme)
    assert source["jsonData"]["defaultDatabase"] == dsn.path.strip("/")
    assert source["jsonData"]["username"] == env["FEEDBACKLOOP_CLICKHOUSE_USERNAME"]
    assert source["secureJsonData"]["password"] == "$CLICKHOUSE_PASSWORD"
    assert compose["services"]["grafana"]["environment"]["CLICKHOUSE_PASSWORD"] \
        == env["FEEDBACKLOOP_CLICKHOUSE_PASSWORD"]

    provider = yaml.safe_load((provisioning / "dashboards" / "feedbackloop.yaml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./dashboards/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./dashboards/grafana/dashboards"] == provider["options"]["path"]

    built = grafana_dashboard.DASHBOARD_FILE
    assert built.read_text() == grafana_dashboard.render(), "run python -m dashboards.grafana_dashboard"
    panels = json.loads(built.read_text())["panels"]
    from dashboards import queries
    assert [p["targets"][0]["rawSql"] for p in panels] == [q.sql for q in queries.load()]
    assert {p["datasource"]["uid"] for p in panels} == {source["uid"]}


def test_volumes_and_mounts_exist(compose):
    named = set(compose["volumes"])
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: {source}"
        for dependency, condition in spec.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in compose["services"][dependency], dependency


def test_the_dockerfile_builds_the_worker_image_from_the_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert re.match(r"FROM python:3\.\d+-slim$", instructions[0])
    assert "RUN pip install ." in dockerfile
    assert 'ENTRYPOINT ["feedbackloop"]' in instructions
    packages = re.search(r'include = \[([^]]*)\]', (ROOT / "pyproject.toml").read_text()).group(1)
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, flags=re.MULTILINE))
    assert copied == set(re.findall(r'"(\w+)\*"', packages))
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not ignored & copied and "pyproject.toml" not in ignored and "README.md" not in ignored
    assert {".env", "*.env"} <= ignored, "secrets stay out of the build context"


def _references(value) -> list[re.Match]:
    return list(_VARIABLE.finditer(value)) if isinstance(value, str) else []


def test_every_secret_must_be_set_and_has_no_default(raw):
    required = set()
    for name, spec in raw["services"].items():
        for variable, value in (spec.get("environment") or {}).items():
            refs = _references(value)
            if _SECRET_NAME.search(variable):
                assert refs, f"{name}: {variable} is a fixed value, not a variable"
            for ref in refs:
                referenced = ref.group(1) or ref.group(4)
                if _SECRET_NAME.search(variable) or _SECRET_NAME.search(referenced):
                    assert ref.group(2) == ":?" and ref.group(3).strip(), \
                        f"{name}: {variable} must be ${{{referenced}:?how to set it}}, not {ref.group(0)}"
                    required.add(referenced)
    assert required == set(SECRETS)
    for secret in SECRETS:
        for env in ({k: v for k, v in SECRETS.items() if k != secret}, {**SECRETS, secret: ""}):
            with pytest.raises(MissingVariable, match=secret):
                interpolate(raw, env)


def _published(port) -> tuple[str, str]:
    """(host address, container port) of a short-syntax port mapping."""
    parts = str(port).split(":")
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), parts[-1]


def test_only_the_labeling_ui_is_published(compose):
    public = {(name, _published(p)[1]) for name, spec in compose["services"].items() for p in spec.get("ports", [])
              if _published(p)[0] != "127.0.0.1"}
    assert public == {("labeling", "8000")}
    assert "ports" not in compose["services"]["clickhouse"]
    for name in ("kafka", "dashboard", "grafana"):
        assert compose["services"][name]["ports"], name


def test_only_workers_hold_the_private_model_key(compose):
    services = compose["services"]
    settings = {name: Settings.from_env({k: str(v) for k, v in services[name]["environment"].items()})
                for name in OURS}
    assert keys.signing_key(settings["worker"]).public_key() == keys.verify_key(settings["labeling"])
    assert settings["labeling"].model_signing_key == ""
    for name in ("init", "dashboard"):
        assert settings[name].model_signing_key == settings[name].model_verify_key == "", name


def test_the_commented_tls_proxy_is_a_valid_service_in_front_of_the_labeling_ui(compose):
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    start = lines.index("  # proxy:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append(line[len("  # "):])
    proxy = yaml.safe_load("\n".join(block))["proxy"]
    with pytest.raises(MissingVariable, match="FEEDBACKLOOP_PUBLIC_HOST"):
        interpolate(proxy, SECRETS)
    proxy = interpolate(proxy, {**SECRETS, "FEEDBACKLOOP_PUBLIC_HOST": "label.example.org"})
    with_proxy = copy.deepcopy(compose)
    with_proxy["services"]["proxy"] = proxy
    with_proxy["volumes"]["caddy-data"] = None
    assert validate(with_proxy) == []
    command = proxy["command"]
    labeling_port = _published(compose["services"]["labeling"]["ports"][0])[1]
    assert command[command.index("--from") + 1] == "label.example.org"
    assert command[command.index("--to") + 1] == f"labeling:{labeling_port}"
    assert "443:443" in proxy["ports"] and proxy["depends_on"] == ["labeling"]
