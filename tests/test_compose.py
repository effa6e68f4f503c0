"""The production-shaped stack, checked without a Docker engine.

``docker-compose.yml`` is interpolated as Compose does and validated against
the Compose Specification's JSON schema; its services must run commands the
``feedbackloop`` command line accepts with settings it knows; Grafana's
provisioning must point at the same ClickHouse and carry the dashboard built
from the analyst queries; the ``Dockerfile`` must build the image from the
package with ``feedbackloop`` as its entry point.
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
from feedbackloop import cli, dashboard
from feedbackloop.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
OURS = ("init", "worker", "labeling", "dashboard")
#: Variables read by a service directly rather than through Settings.
OTHER_VARIABLES = {"FEEDBACKLOOP_LABELING_TOKENS"}

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value, env: dict):
    """Substitute ``${VAR}``, ``${VAR:-default}`` and ``$VAR`` as Compose does (``$$`` is a ``$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        parts = value.split("$$")
        return "$".join(_VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(3)) or m.group(2) or "", p)
                        for p in parts)
    return value


def validate(compose: dict) -> list[str]:
    jsonschema.Draft201909Validator.check_schema(SCHEMA)  # the schema names draft 2019-09
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env={})


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
