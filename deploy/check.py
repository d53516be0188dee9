#!/usr/bin/env python3
"""Validates the deployment files in deploy/ and the Dockerfile (`make deploy-check`).

What it checks (deploy/README.md, "What deploy-check checks"):

 1. Kubernetes manifests (deploy/k8s): every built-in kind against the Kubernetes JSON schemas
    bundled in kubernetes-validate, strictly (unknown fields are errors), for each version in
    K8S_VERSIONS; ServiceMonitor and PrometheusRule, which it has no schema for, against the
    prometheus-operator CRD models (cloudcoil-models-prometheus-operator) with unknown fields
    forbidden, and their metadata against the Kubernetes ObjectMeta schema; the kustomizations'
    resources exist and cover every manifest except *.example.yaml, whose values are placeholders.
 2. Settings: every environment variable the manifests, the compose file, the Dockerfile and the
    systemd files name is a setting listed in host/src/settings.rs (FULFILLD_CONFIG_<KEY>
    included) or a standard one (OTEL_*, RUST_LOG, NO_COLOR, ...).
 3. Stop timeouts: terminationGracePeriodSeconds, compose stop_grace_period and systemd
    TimeoutStopSec each exceed FULFILLD_SHUTDOWN_GRACE_MS as set next to them (else its default
    in host/src/settings.rs).
 4. Probes and pod security: liveness /livez, readiness /readyz (startup /livez) on the port
    FULFILLD_HTTP_ADDR listens on; runAsNonRoot, readOnlyRootFilesystem, no privilege
    escalation, capabilities drop ALL, seccomp RuntimeDefault; compose healthchecks likewise.
 5. Alerts: every fulfilld_* metric a PrometheusRule expression uses is one host/src exposes;
    `promtool check rules` and `promtool test rules deploy/k8s/tests/alerts.test.yaml` (promtool
    from Debian's prometheus package, unpacked under target/ when not on PATH).
 6. systemd: `systemd-analyze verify` of deploy/systemd/fulfilld.service in a scratch root (any
    warning fails), Type, TimeoutStopSec, and MemoryDenyWriteExecute not set (wasmtime's JIT).
 7. The Dockerfile and the compose file: the settings and stop signal the image and the stack
    promise (see check_dockerfile, check_compose).

It makes its own virtualenv under target/deploy-check (idempotent: reinstalled only when
deploy/check-requirements.txt changes) and needs only python3 with venv and pip. A validator
that cannot be installed is an error; systemd-analyze and promtool are skipped, saying so, where
they cannot be had (no systemd, no apt). Exit status 0 when nothing failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
WORK = ROOT / "target" / "deploy-check"
VENV = WORK / "venv"
REQUIREMENTS = DEPLOY / "check-requirements.txt"
SETTINGS_RS = ROOT / "host" / "src" / "settings.rs"
HOST_SRC = ROOT / "host" / "src"

# The Kubernetes versions the manifests must be valid for (schemas bundled in kubernetes-validate).
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# Environment variables that are not fulfilld settings but may be set next to them.
STANDARD_ENV = {"RUST_LOG", "RUST_BACKTRACE", "NO_COLOR", "TZ", "HOME", "PATH"}
STANDARD_ENV_PREFIXES = ("OTEL_",)


# ------------------------------------------------------------------------------------------------
# The virtualenv: made and filled here, then this script runs again inside it.


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if venv_python().exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    print(f"deploy-check: installing the validators into {VENV.relative_to(ROOT)} (PyPI)", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
    if made.returncode != 0 or not venv_python().exists():
        sys.exit(
            "deploy-check: error: `python3 -m venv` failed; install the venv module "
            "(Debian: apt-get install python3-venv) and run again"
        )
    pip = subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS)]
    )
    if pip.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        sys.exit(
            "deploy-check: error: could not install deploy/check-requirements.txt from PyPI "
            "(see pip's message above); the manifests cannot be validated without them"
        )
    stamp.write_text(want + "\n")


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# ------------------------------------------------------------------------------------------------
# Reporting.


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"PASS  {what}")

    def fail(self, what: str, why: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}: {why}")

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"SKIP  {what}: {why}")

    def expect(self, what: str, problems: list[str]) -> None:
        if problems:
            self.fail(what, "; ".join(problems))
        else:
            self.ok(what)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------------------
# What the host defines.


def settings() -> dict[str, str]:
    """Setting name -> default, as host/src/settings.rs lists them."""
    text = SETTINGS_RS.read_text()
    found = dict(re.findall(r'\bs\(\s*"([A-Z][A-Z0-9_<>]*)",\s*"([^"]*)"', text))
    if "FULFILLD_SHUTDOWN_GRACE_MS" not in found:
        sys.exit(f"deploy-check: error: cannot read the settings from {rel(SETTINGS_RS)}")
    return found


def is_setting(name: str, known: dict[str, str]) -> bool:
    if name in known or name in STANDARD_ENV or name.startswith(STANDARD_ENV_PREFIXES):
        return True
    return name.startswith("FULFILLD_CONFIG_") and "FULFILLD_CONFIG_<KEY>" in known and (
        re.fullmatch(r"FULFILLD_CONFIG_[A-Z][A-Z0-9_]*", name) is not None
    )


def exposed_metrics() -> set[str]:
    """The metric names /metrics can expose: the fulfilld_* names registered in host/src, with the
    suffixes OpenMetrics adds (counters _total, histograms _bucket/_sum/_count)."""
    names: set[str] = set()
    for path in HOST_SRC.rglob("*.rs"):
        code = path.read_text().split("#[cfg(test)]")[0]
        names.update(re.findall(r'"(fulfilld_[a-z_]+)"', code))
    out = set(names)
    for name in names:
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            out.add(name + suffix)
    return out


def grace_ms(value: str | None, known: dict[str, str]) -> int:
    return int(value if value not in (None, "") else known["FULFILLD_SHUTDOWN_GRACE_MS"])


def parse_duration_s(text: str) -> float:
    """A compose or systemd duration ("45s", "1m30s", "1min 30s", "45") in seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        if unit not in units:
            raise ValueError(f"unknown unit in {text!r}")
        total += float(number) * units[unit]
    return total


# ------------------------------------------------------------------------------------------------
# 1. Kubernetes manifests.


def load_yaml_docs(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def forbid_unknown_fields(module) -> None:
    import inspect

    import pydantic

    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, pydantic.BaseModel)
        and obj.__module__ == module.__name__
    ]
    for cls in classes:
        cls.model_config["extra"] = "forbid"
    for cls in classes:
        cls.model_rebuild(force=True)


def check_k8s(report: Report, known: dict[str, str], metrics: set[str]) -> list[dict]:
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

    forbid_unknown_fields(monitoring_v1)
    manifests = sorted(p for p in K8S.rglob("*.yaml") if p.parent.name != "tests")
    objects: list[tuple[Path, dict]] = []
    kustomizations: list[tuple[Path, dict]] = []
    for path in manifests:
        for doc in load_yaml_docs(path):
            if doc.get("kind") == "Kustomization":
                kustomizations.append((path, doc))
            else:
                objects.append((path, doc))

    for path, doc in objects:
        kind, api = doc.get("kind"), doc.get("apiVersion", "")
        what = f"{rel(path)} {kind}/{doc.get('metadata', {}).get('name')}"
        problems = []
        if api.startswith("monitoring.coreos.com/"):
            model = getattr(monitoring_v1, kind, None) if api == "monitoring.coreos.com/v1" else None
            if model is None:
                report.fail(what, f"no prometheus-operator model for {api} {kind}")
                continue
            try:
                model.model_validate(doc)
            except Exception as err:  # pydantic.ValidationError
                problems.append(f"{api} {kind} (prometheus-operator v0.80.1 CRD): {err}")
            meta_doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(meta_doc, version, strict=True)
                except Exception as err:
                    problems.append(f"metadata (k8s {version}): {err}")
            report.expect(f"{what} against the prometheus-operator CRD schema, strict", problems)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except Exception as err:
                problems.append(f"k8s {version}: {getattr(err, 'message', err)}")
        report.expect(f"{what} against Kubernetes {', '.join(K8S_VERSIONS)} schemas, strict", problems)

    # Kustomizations: resources exist; every manifest but the examples is reachable.
    reachable: set[Path] = set()

    def collect(directory: Path, seen: set[Path]) -> None:
        if directory in seen:
            return
        seen.add(directory)
        for kpath, kdoc in kustomizations:
            if kpath.parent != directory:
                continue
            for entry in kdoc.get("resources", []):
                target = (directory / entry).resolve()
                if target.is_dir():
                    collect(target, seen)
                else:
                    reachable.add(target)

    problems = []
    for kpath, kdoc in kustomizations:
        if kdoc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
            problems.append(f"{rel(kpath)}: apiVersion {kdoc.get('apiVersion')}")
        for entry in kdoc.get("resources", []):
            target = (kpath.parent / entry).resolve()
            if not target.exists():
                problems.append(f"{rel(kpath)}: resource {entry} does not exist")
            elif target.is_dir() and not (target / "kustomization.yaml").exists():
                problems.append(f"{rel(kpath)}: {entry} has no kustomization.yaml")
            elif target.is_file() and target.parent != kpath.parent:
                # kustomize refuses files outside the kustomization's directory.
                problems.append(f"{rel(kpath)}: {entry} is a file outside its directory")
        for kind_dir in ("redis", "embedded"):
            pass
    for top in (K8S / "redis", K8S / "embedded"):
        collect(top.resolve(), set())
    for path, _ in objects:
        resolved = path.resolve()
        if path.name.endswith(".example.yaml"):
            if resolved in reachable:
                problems.append(f"{rel(path)} is an example but a kustomization applies it")
        elif resolved not in reachable:
            problems.append(f"{rel(path)} is in no kustomization of deploy/k8s/redis or embedded")
    report.expect("deploy/k8s kustomizations: resources exist and cover every manifest", problems)

    # No real secret: every value of an example Secret is a placeholder.
    problems = []
    for path, doc in objects:
        if doc.get("kind") == "Secret":
            if not path.name.endswith(".example.yaml"):
                problems.append(f"{rel(path)}: a Secret outside an *.example.yaml file")
            for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items():
                if "REPLACE" not in str(value):
                    problems.append(f"{rel(path)}: {key} is not a REPLACE placeholder")
    report.expect("deploy/k8s Secrets: examples only, placeholder values", problems)

    check_k8s_settings(report, known, objects)
    check_k8s_workloads(report, known, objects)
    check_alert_metrics(report, metrics, objects)
    return [doc for _, doc in objects]


def pod_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def check_k8s_settings(report: Report, known: dict[str, str], objects) -> None:
    configmaps = {doc["metadata"]["name"]: doc for _, doc in objects if doc.get("kind") == "ConfigMap"}
    problems = []
    for path, doc in objects:
        if doc.get("kind") == "ConfigMap":
            names = list(doc.get("data", {}))
        else:
            names = [e["name"] for c in pod_containers(doc) for e in c.get("env", [])]
        for name in names:
            if not is_setting(name, known):
                problems.append(f"{rel(path)}: {name} is not a fulfilld setting")
    for path, doc in objects:
        for container in pod_containers(doc):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    problems.append(f"{rel(path)}: envFrom ConfigMap {ref} is not in deploy/k8s")
    report.expect("deploy/k8s: every environment variable is a fulfilld setting", problems)


def container_env(container: dict, configmaps: dict[str, dict]) -> dict[str, str | None]:
    """What the container's environment holds: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref in configmaps:
            env.update(configmaps[ref].get("data", {}))
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def check_k8s_workloads(report: Report, known: dict[str, str], objects) -> None:
    configmaps = {doc["metadata"]["name"]: doc for _, doc in objects if doc.get("kind") == "ConfigMap"}
    for path, doc in objects:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        what = f"{rel(path)} {doc['kind']}/{doc['metadata']['name']}"
        pod = doc["spec"]["template"]["spec"]
        problems = []
        for container in pod["containers"]:
            env = container_env(container, configmaps)
            grace = grace_ms(env.get("FULFILLD_SHUTDOWN_GRACE_MS"), known)
            period = pod.get("terminationGracePeriodSeconds", 30)
            if period * 1000 <= grace:
                problems.append(
                    f"terminationGracePeriodSeconds {period} s is not longer than "
                    f"FULFILLD_SHUTDOWN_GRACE_MS {grace} ms"
                )
            addr = env.get("FULFILLD_HTTP_ADDR") or "0.0.0.0:8080"  # the image's default
            http_port = int(addr.rsplit(":", 1)[1])
            if addr.startswith("127.") or addr.startswith("[::1]"):
                problems.append(f"FULFILLD_HTTP_ADDR {addr} is loopback: probes cannot reach it")
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe, paths in (("livenessProbe", {"/livez"}), ("readinessProbe", {"/readyz"}),
                                 ("startupProbe", {"/livez"})):
                spec = container.get(probe)
                if spec is None:
                    if probe != "startupProbe":
                        problems.append(f"no {probe}")
                    continue
                get = spec.get("httpGet", {})
                if get.get("path") not in paths:
                    problems.append(f"{probe} path {get.get('path')} (want {' or '.join(sorted(paths))})")
                port = get.get("port")
                port = ports.get(port, port) if isinstance(port, str) else port
                if port != http_port:
                    problems.append(f"{probe} port {get.get('port')} is not FULFILLD_HTTP_ADDR's {http_port}")
            sc = container.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append("readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append("allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append("capabilities do not drop ALL")
            if sc.get("capabilities", {}).get("add"):
                problems.append("capabilities are added")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append("runAsNonRoot is not true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append("seccompProfile is not RuntimeDefault")
        if doc["kind"] == "StatefulSet":
            if doc["spec"].get("replicas") != 1:
                problems.append("the embedded store is single-node: replicas must be 1")
            if not doc["spec"].get("volumeClaimTemplates"):
                problems.append("no volumeClaimTemplates for the embedded store")
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            for container in pod["containers"]:
                env = container_env(container, configmaps)
                state = env.get("FULFILLD_STATE_DIR")
                if "REDIS_URL" in env:
                    problems.append("sets REDIS_URL (a StatefulSet here is the embedded store)")
                if state not in mounts:
                    problems.append(f"FULFILLD_STATE_DIR {state} is not a mounted volume")
        report.expect(
            f"{what}: grace > FULFILLD_SHUTDOWN_GRACE_MS, probes /livez /readyz, pod security",
            problems,
        )


def alert_exprs(objects) -> list[tuple[str, str]]:
    exprs = []
    for _, doc in objects:
        if doc.get("kind") != "PrometheusRule":
            continue
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                exprs.append((rule.get("alert") or rule.get("record"), str(rule["expr"])))
    return exprs


def check_alert_metrics(report: Report, metrics: set[str], objects) -> None:
    problems = []
    exprs = alert_exprs(objects)
    for name, expr in exprs:
        for metric in re.findall(r"\bfulfilld_[a-z_]+", expr):
            if metric not in metrics:
                problems.append(f"{name}: {metric} is not a metric host/src exposes")
    for _, doc in objects:
        if doc.get("kind") == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                            problems.append(f"{rule['alert']}: no severity label")
                        if not rule.get("annotations", {}).get("summary"):
                            problems.append(f"{rule['alert']}: no summary annotation")
    if not exprs:
        problems.append("no PrometheusRule found")
    report.expect(f"PrometheusRule: {len(exprs)} alerts use only metrics /metrics exposes", problems)


# ------------------------------------------------------------------------------------------------
# 5. promtool.


def find_promtool(report: Report) -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    local = WORK / "prometheus" / "usr" / "bin" / "promtool"
    if local.exists():
        return str(local)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        report.skip("promtool", "not on PATH and no apt-get/dpkg-deb to fetch Debian's prometheus package")
        return None
    download = WORK / "prometheus-deb"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    print("deploy-check: fetching promtool (Debian package prometheus, unpacked under target/)", flush=True)
    for attempt in (1, 2):
        got = subprocess.run(["apt-get", "download", "-q", "prometheus"], cwd=download,
                             capture_output=True, text=True)
        if got.returncode == 0:
            break
        if attempt == 1 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    debs = list(download.glob("prometheus_*.deb"))
    if not debs:
        report.skip("promtool", f"apt-get download prometheus failed: {got.stderr.strip()[-300:]}")
        return None
    unpack = WORK / "prometheus"
    unpack.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile '{debs[0]}' | tar -x -C '{unpack}' ./usr/bin/promtool",
                         shell=True, capture_output=True, text=True)
    shutil.rmtree(download, ignore_errors=True)
    if tar.returncode != 0 or not local.exists():
        report.skip("promtool", f"could not unpack promtool: {tar.stderr.strip()[-300:]}")
        return None
    return str(local)


def check_promtool(report: Report, objects: list[dict]) -> None:
    import yaml

    promtool = find_promtool(report)
    if promtool is None:
        return
    out = WORK / "rules"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    groups = [g for doc in objects if doc.get("kind") == "PrometheusRule" for g in doc["spec"]["groups"]]
    (out / "fulfilld-rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    checked = subprocess.run([promtool, "check", "rules", "fulfilld-rules.yaml"], cwd=out,
                             capture_output=True, text=True)
    text = (checked.stdout + checked.stderr).strip()
    if checked.returncode != 0:
        report.fail("promtool check rules (the PrometheusRule's groups)", text)
    else:
        report.ok(f"promtool check rules: {text.splitlines()[-1] if text else 'ok'}")
    tests = K8S / "tests" / "alerts.test.yaml"
    shutil.copy(tests, out / tests.name)
    tested = subprocess.run([promtool, "test", "rules", tests.name], cwd=out,
                            capture_output=True, text=True)
    text = (tested.stdout + tested.stderr).strip()
    if tested.returncode != 0:
        report.fail(f"promtool test rules {rel(tests)}", text)
    else:
        count = len(yaml.safe_load(tests.read_text()).get("tests", []))
        report.ok(f"promtool test rules {rel(tests)}: {count} test groups, every alert fires as expected")


# ------------------------------------------------------------------------------------------------
# 2, 3, 7. compose.


def compose_env(service: dict) -> dict[str, str | None]:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {p[0]: (p[1] if len(p) > 1 else None) for p in pairs}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def check_compose(report: Report, known: dict[str, str]) -> None:
    import yaml

    path = DEPLOY / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    problems = []
    hosts = {}
    for name, service in services.items():
        for key in compose_env(service):
            if not is_setting(key, known):
                problems.append(f"{name}: {key} is not a fulfilld setting")
        command = service.get("command") or []
        entry = " ".join(service.get("entrypoint") or [])
        if "serve" in entry or (command and command[0] == "serve"):
            hosts[name] = service
    report.expect(f"{rel(path)}: every environment variable is a fulfilld setting", problems)

    problems = []
    if len(hosts) != 2:
        problems.append(f"{len(hosts)} fulfilld serve services (want 2 replicas)")
    for name, service in hosts.items():
        env = compose_env(service)
        if not env.get("REDIS_URL", "").startswith("redis://"):
            problems.append(f"{name}: not in Redis mode (REDIS_URL)")
        grace = grace_ms(env.get("FULFILLD_SHUTDOWN_GRACE_MS"), known)
        stop = parse_duration_s(service.get("stop_grace_period", "10s"))
        if stop * 1000 <= grace:
            problems.append(f"{name}: stop_grace_period {stop} s is not longer than FULFILLD_SHUTDOWN_GRACE_MS {grace} ms")
        if service.get("stop_signal", "SIGTERM") != "SIGTERM":
            problems.append(f"{name}: stop_signal is not SIGTERM")
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        if "/readyz" not in test and "/livez" not in test:
            problems.append(f"{name}: healthcheck does not probe /readyz or /livez")
        addr = env.get("FULFILLD_HTTP_ADDR", "0.0.0.0:8080")
        if addr.startswith("127."):
            problems.append(f"{name}: FULFILLD_HTTP_ADDR {addr} is loopback: its published port cannot reach it")
        if not service.get("read_only") or "ALL" not in service.get("cap_drop", []):
            problems.append(f"{name}: not read_only with cap_drop ALL")
    redis = services.get("redis", {})
    command = " ".join(str(c) for c in redis.get("command", []))
    if not re.search(r"--appendonly\s+yes", command):
        problems.append("redis: not --appendonly yes")
    if not re.search(r"--maxmemory-policy\s+noeviction", command):
        problems.append("redis: not --maxmemory-policy noeviction")
    sandbox = services.get("sandbox", {})
    if (sandbox.get("command") or [None])[0] != "sandbox":
        problems.append("no sandbox service running `fulfilld sandbox`")
    report.expect(f"{rel(path)}: 2 Redis-mode replicas, Redis (appendonly, noeviction), the sandbox, "
                  "stop grace > FULFILLD_SHUTDOWN_GRACE_MS, healthchecks", problems)


# ------------------------------------------------------------------------------------------------
# 2, 7. The Dockerfile.


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def check_dockerfile(report: Report, known: dict[str, str]) -> None:
    path = ROOT / "Dockerfile"
    instructions = dockerfile_instructions(path.read_text())
    env: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions:
        if word == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            current = m.group(1) if m else rest
            stages[current] = []
        elif current is not None:
            stages[current].append((word, rest))
        if word == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest):
                env[key] = value
    problems = []
    for key in env:
        if not is_setting(key, known):
            problems.append(f"ENV {key} is not a fulfilld setting")
    report.expect("Dockerfile: every ENV is a fulfilld setting", problems)

    problems = []
    if env.get("FULFILLD_HTTP_ADDR") != "0.0.0.0:8080":
        problems.append("ENV FULFILLD_HTTP_ADDR is not 0.0.0.0:8080")
    all_text = "\n".join(f"{w} {r}" for w, r in instructions)
    if "STOPSIGNAL SIGTERM" not in all_text:
        problems.append("no STOPSIGNAL SIGTERM")
    state = env.get("FULFILLD_STATE_DIR")
    if not state or not re.search(rf'VOLUME \[?"?{re.escape(state)}"?\]?', all_text):
        problems.append(f"FULFILLD_STATE_DIR {state} is not a VOLUME")
    component = env.get("FULFILLD_COMPONENT")
    for target in ("runtime", "runtime-prebuilt"):
        steps = stages.get(target)
        if steps is None:
            problems.append(f"no stage {target}")
            continue
        users = [r for w, r in steps if w == "USER"]
        if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
            problems.append(f"{target}: USER is not a numeric non-root uid")
        if not any(w == "COPY" and r.split()[-1] == component for w, r in steps):
            problems.append(f"{target}: nothing is copied to FULFILLD_COMPONENT {component}")
    build = "\n".join(r for w, r in stages.get("build", []) if w == "RUN")
    if "make components" not in build or "cargo build --release -p fulfilld --locked" not in build:
        problems.append("the build stage does not run `make components` and `cargo build --release -p fulfilld --locked`")
    if "rust-toolchain.toml" not in "\n".join(r for w, r in stages.get("build", []) if w == "COPY"):
        problems.append("the build stage does not install the toolchain of rust-toolchain.toml")
    makefile = (ROOT / "Makefile").read_text()
    if not re.search(r"^components:", makefile, re.MULTILINE):
        problems.append("the Makefile has no components target")
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "target", "**/node_modules", "fuzz/target"):
        if entry not in ignore:
            problems.append(f".dockerignore does not exclude {entry}")
    report.expect("Dockerfile: non-root numeric USER, component and state dir, STOPSIGNAL, the Makefile's build; .dockerignore",
                  problems)


# ------------------------------------------------------------------------------------------------
# 2, 3, 6. systemd.


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def env_file_entries(text: str) -> dict[str, str]:
    """KEY=value lines; commented examples (#KEY=value) are checked as names too (value None)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(#?)\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(2)] = None if m.group(1) else m.group(3).strip()
    return out


def check_systemd(report: Report, known: dict[str, str]) -> None:
    unit_path = DEPLOY / "systemd" / "fulfilld.service"
    env_path = DEPLOY / "systemd" / "fulfilld.env"
    entries = unit_entries(unit_path.read_text())
    service = {}
    environment: dict[str, str] = {}
    for section, key, value in entries:
        if section == "Service":
            service.setdefault(key, []).append(value)
            if key == "Environment":
                for name, val in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", value):
                    environment[name] = val
    env_file = env_file_entries(env_path.read_text())
    problems = [f"{rel(unit_path)}: {n} is not a fulfilld setting" for n in environment if not is_setting(n, known)]
    problems += [f"{rel(env_path)}: {n} is not a fulfilld setting" for n in env_file if not is_setting(n, known)]
    report.expect("deploy/systemd: every environment variable is a fulfilld setting", problems)

    problems = []
    merged = {**environment, **{k: v for k, v in env_file.items() if v is not None}}
    grace = grace_ms(merged.get("FULFILLD_SHUTDOWN_GRACE_MS"), known)
    stop = parse_duration_s((service.get("TimeoutStopSec") or ["90s"])[-1])
    if stop * 1000 <= grace:
        problems.append(f"TimeoutStopSec {stop} s is not longer than FULFILLD_SHUTDOWN_GRACE_MS {grace} ms")
    if (service.get("Type") or ["simple"])[-1] != "simple":
        problems.append("Type is not simple (the binary does not implement sd_notify)")
    mdwe = (service.get("MemoryDenyWriteExecute") or ["no"])[-1].lower()
    if mdwe in ("yes", "true", "1", "on"):
        problems.append("MemoryDenyWriteExecute is set: wasmtime's JIT needs W^X-toggled executable memory")
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                      ("PrivateDevices", "yes"), ("LockPersonality", "yes"), ("Restart", "on-failure"),
                      ("SystemCallFilter", "@system-service"), ("CapabilityBoundingSet", ""),
                      ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")):
        if want not in service.get(key, []):
            problems.append(f"{key}={want} is not set")
    if "EnvironmentFile" not in service or "StateDirectory" not in service:
        problems.append("no EnvironmentFile or StateDirectory")
    report.expect(f"{rel(unit_path)}: TimeoutStopSec {stop:g} s > grace {grace} ms, Type=simple, hardening, "
                  "no MemoryDenyWriteExecute", problems)

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        report.skip("systemd-analyze verify", "systemd-analyze is not installed (Debian: apt-get install systemd)")
        return
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                  if (p / "sysinit.target").exists()), None)
    if units is None:
        report.skip("systemd-analyze verify", "no systemd unit directory with sysinit.target on this machine")
        return
    # A scratch root: the system's own units (for the dependencies), this unit, and a stand-in
    # for the binary at its ExecStart path (verify checks that it is executable).
    root = WORK / "systemd-root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit_path, root / "etc/systemd/system" / unit_path.name)
    exec_start = service["ExecStart"][-1].split()[0].lstrip("-@:+!")
    stub = root / exec_start.lstrip("/")
    stub.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/true", stub)
    verify = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", unit_path.name],
                            capture_output=True, text=True)
    text = (verify.stdout + verify.stderr).strip()
    if verify.returncode != 0 or text:
        report.fail("systemd-analyze verify deploy/systemd/fulfilld.service", text or f"exit {verify.returncode}")
    else:
        security = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", unit_path.name],
                                  capture_output=True, text=True)
        level = re.search(r"Overall exposure level for \S+: (.*)", security.stdout)
        extra = f" (systemd-analyze security: exposure {level.group(1)})" if level else ""
        report.ok(f"systemd-analyze verify deploy/systemd/fulfilld.service: no warnings{extra}")


# ------------------------------------------------------------------------------------------------


def main() -> int:
    if not in_venv():
        ensure_venv()
        os.execv(str(venv_python()), [str(venv_python()), str(Path(__file__).resolve()), *sys.argv[1:]])
    report = Report()
    known = settings()
    metrics = exposed_metrics()
    objects = check_k8s(report, known, metrics)
    check_promtool(report, objects)
    check_compose(report, known)
    check_dockerfile(report, known)
    check_systemd(report, known)
    print(f"deploy-check: {report.passed} passed, {report.failed} failed, {report.skipped} skipped")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
