"""What a valid object of each kind is: the fields controllers, the scheduler and the node agent
act on, checked with the path of the one that is wrong (`spec.template.spec.containers[0].image:
required`), as the API server's validation (kubernetes `pkg/apis/core/validation/validation.go`)
reports them. Fields skiff does not act on pass through untouched."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from skiff.errors import InvalidArgument
from skiff.orchestrator.api import quantity
from skiff.orchestrator.api.meta import check_dns_label
from skiff.orchestrator.labels import check_labels, from_label_selector

RESTART_POLICIES = ("Always", "OnFailure", "Never")
PROTOCOLS = ("TCP", "UDP", "SCTP")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NODE_PORTS = range(30000, 32768)
_PERCENT = re.compile(r"\d+%")


def check(obj: dict[str, Any], field: str = "") -> None:
    """`field`: where the object is (a document of a manifest), prefixed to every path."""
    checker = _CHECKS.get(str(obj.get("kind")))
    if checker is not None:
        checker(obj, field)


# -- small checks ------------------------------------------------------------------------------

def _object(value: Any, field: str, *, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: {'required, ' if value is None else ''}must be an object")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: must be a list")
    return value


def _string(value: Any, field: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument(f"{field}: required" if value in (None, "") else f"{field}: must be a string")
    return value


def _integer(value: Any, field: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}: {value!r}: must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"greater than or equal to {minimum}"
        raise InvalidArgument(f"{field}: {value}: must be {bound}")
    return value


def _one_of(value: Any, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise InvalidArgument(f"{field}: {value!r}: supported values: {', '.join(repr(c) for c in choices)}")
    return str(value)


def _int_or_percent(value: Any, field: str) -> None:
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{field}: {value!r}: must be an integer of 0 or more, or a percentage such as '25%'")


def _strings(value: Any, field: str) -> None:
    for n, item in enumerate(_list(value, field)):
        if not isinstance(item, str):
            raise InvalidArgument(f"{field}[{n}]: must be a string")


def _base64(value: Any, field: str) -> None:
    for key, item in _object(value, field).items():
        try:
            base64.b64decode(_string(item, f"{field}.{key}"), validate=True)
        except binascii.Error:
            raise InvalidArgument(f"{field}.{key}: not valid base64") from None


# -- pods ------------------------------------------------------------------------------------

def check_pod_spec(spec: Any, field: str, *, restart_policies: tuple[str, ...] = RESTART_POLICIES) -> None:
    spec = _object(spec, field, required=True)
    volumes = set()
    for n, volume in enumerate(_list(spec.get("volumes"), f"{field}.volumes")):
        where = f"{field}.volumes[{n}]"
        name = check_dns_label(_object(volume, where).get("name"), f"{where}.name")
        if name in volumes:
            raise InvalidArgument(f"{where}.name: {name!r}: duplicate volume name")
        volumes.add(name)
        sources = [s for s in ("emptyDir", "hostPath", "secret", "configMap") if s in volume]
        if len(sources) != 1:
            raise InvalidArgument(f"{where}: must have exactly one of emptyDir, hostPath, secret, configMap")
        if "hostPath" in volume:
            path = _string(_object(volume["hostPath"], f"{where}.hostPath").get("path"), f"{where}.hostPath.path",
                           required=True)
            if not path.startswith("/"):
                raise InvalidArgument(f"{where}.hostPath.path: {path!r}: must be an absolute path")
        for source, key in (("secret", "secretName"), ("configMap", "name")):
            if source in volume:
                _string(_object(volume[source], f"{where}.{source}").get(key), f"{where}.{source}.{key}", required=True)
    containers = _list(spec.get("containers"), f"{field}.containers")
    if not containers:
        raise InvalidArgument(f"{field}.containers: required, at least one container")
    names: set[str] = set()
    for n, container in enumerate(containers):
        _check_container(_object(container, f"{field}.containers[{n}]"), f"{field}.containers[{n}]", names, volumes)
    _one_of(spec.get("restartPolicy", "Always"), restart_policies, f"{field}.restartPolicy")
    check_labels(spec.get("nodeSelector"), f"{field}.nodeSelector")
    _string(spec.get("nodeName"), f"{field}.nodeName")
    for n, toleration in enumerate(_list(spec.get("tolerations"), f"{field}.tolerations")):
        where = f"{field}.tolerations[{n}]"
        toleration = _object(toleration, where)
        _one_of(toleration.get("operator", "Equal"), ("Equal", "Exists"), f"{where}.operator")
        if "effect" in toleration and toleration["effect"] != "":
            _one_of(toleration["effect"], TAINT_EFFECTS, f"{where}.effect")
    if "terminationGracePeriodSeconds" in spec:
        _integer(spec["terminationGracePeriodSeconds"], f"{field}.terminationGracePeriodSeconds")


def _check_container(c: dict[str, Any], field: str, names: set[str], volumes: set[str]) -> None:
    name = check_dns_label(c.get("name"), f"{field}.name")
    if name in names:
        raise InvalidArgument(f"{field}.name: {name!r}: duplicate container name")
    names.add(name)
    _string(c.get("image"), f"{field}.image", required=True)
    _strings(c.get("command"), f"{field}.command")
    _strings(c.get("args"), f"{field}.args")
    for n, env in enumerate(_list(c.get("env"), f"{field}.env")):
        env = _object(env, f"{field}.env[{n}]")
        _string(env.get("name"), f"{field}.env[{n}].name", required=True)
        _string(env.get("value"), f"{field}.env[{n}].value")
    for n, port in enumerate(_list(c.get("ports"), f"{field}.ports")):
        where = f"{field}.ports[{n}]"
        port = _object(port, where)
        _integer(port.get("containerPort"), f"{where}.containerPort", minimum=1, maximum=65535)
        if "hostPort" in port:
            _integer(port["hostPort"], f"{where}.hostPort", minimum=1, maximum=65535)
        _one_of(port.get("protocol", "TCP"), PROTOCOLS, f"{where}.protocol")
    resources = _object(c.get("resources"), f"{field}.resources")
    for part in ("requests", "limits"):
        for resource, value in _object(resources.get(part), f"{field}.resources.{part}").items():
            quantity.parse(value, f"{field}.resources.{part}.{resource}")
    for n, mount in enumerate(_list(c.get("volumeMounts"), f"{field}.volumeMounts")):
        where = f"{field}.volumeMounts[{n}]"
        mount = _object(mount, where)
        volume = _string(mount.get("name"), f"{where}.name", required=True)
        if volume not in volumes:
            raise InvalidArgument(f"{where}.name: {volume!r}: not found among the pod's volumes")
        if not _string(mount.get("mountPath"), f"{where}.mountPath", required=True).startswith("/"):
            raise InvalidArgument(f"{where}.mountPath: must be an absolute path")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in c:
            _check_probe(_object(c[probe], f"{field}.{probe}"), f"{field}.{probe}")


def _check_probe(probe: dict[str, Any], field: str) -> None:
    handlers = [h for h in ("exec", "httpGet", "tcpSocket") if h in probe]
    if len(handlers) != 1:
        raise InvalidArgument(f"{field}: must have exactly one of exec, httpGet, tcpSocket")
    if "exec" in probe:
        _strings(_object(probe["exec"], f"{field}.exec").get("command"), f"{field}.exec.command")
    for handler in ("httpGet", "tcpSocket"):
        if handler in probe:
            port = _object(probe[handler], f"{field}.{handler}").get("port")
            if not isinstance(port, str):
                _integer(port, f"{field}.{handler}.port", minimum=1, maximum=65535)
    for timing in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold"):
        if timing in probe:
            _integer(probe[timing], f"{field}.{timing}", minimum=0 if timing == "initialDelaySeconds" else 1)


def _check_pod(obj: dict[str, Any], field: str) -> None:
    check_pod_spec(obj.get("spec"), f"{field}spec")


# -- workloads -------------------------------------------------------------------------------

def _check_template(spec: dict[str, Any], field: str, *, restart_policies: tuple[str, ...],
                    selector_required: bool = True) -> None:
    template = _object(spec.get("template"), f"{field}.template", required=True)
    labels = check_labels(_object(template.get("metadata"), f"{field}.template.metadata").get("labels"),
                          f"{field}.template.metadata.labels")
    if "selector" in spec or selector_required:
        if spec.get("selector") is None:
            raise InvalidArgument(f"{field}.selector: required")
        selector = from_label_selector(spec["selector"], f"{field}.selector")
        if selector.empty:
            raise InvalidArgument(f"{field}.selector: empty selector is invalid for a controller")
        if not selector.matches(labels):
            raise InvalidArgument(f"{field}.template.metadata.labels: {labels}: does not match the selector "
                                  f"({selector})")
    check_pod_spec(template.get("spec"), f"{field}.template.spec", restart_policies=restart_policies)


def _check_replica_set(obj: dict[str, Any], field: str) -> None:
    spec = _object(obj.get("spec"), f"{field}spec", required=True)
    if "replicas" in spec:
        _integer(spec["replicas"], f"{field}spec.replicas")
    _check_template(spec, f"{field}spec", restart_policies=("Always",))


def _check_deployment(obj: dict[str, Any], field: str) -> None:
    _check_replica_set(obj, field)
    spec = obj["spec"]
    strategy = _object(spec.get("strategy"), f"{field}spec.strategy")
    kind = _one_of(strategy.get("type", "RollingUpdate"), ("RollingUpdate", "Recreate"), f"{field}spec.strategy.type")
    rolling = _object(strategy.get("rollingUpdate"), f"{field}spec.strategy.rollingUpdate")
    if rolling and kind != "RollingUpdate":
        raise InvalidArgument(f"{field}spec.strategy.rollingUpdate: may not be given when strategy type is {kind!r}")
    for knob in ("maxSurge", "maxUnavailable"):
        if knob in rolling:
            _int_or_percent(rolling[knob], f"{field}spec.strategy.rollingUpdate.{knob}")
    if rolling.get("maxSurge") in (0, "0%") and rolling.get("maxUnavailable") in (0, "0%"):
        raise InvalidArgument(f"{field}spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0")
    for knob in ("revisionHistoryLimit", "minReadySeconds", "progressDeadlineSeconds"):
        if knob in spec:
            _integer(spec[knob], f"{field}spec.{knob}")


def _check_daemon_set(obj: dict[str, Any], field: str) -> None:
    spec = _object(obj.get("spec"), f"{field}spec", required=True)
    _check_template(spec, f"{field}spec", restart_policies=("Always",))


def _check_job(obj: dict[str, Any], field: str) -> None:
    spec = _object(obj.get("spec"), f"{field}spec", required=True)
    for knob in ("completions", "parallelism", "backoffLimit", "activeDeadlineSeconds"):
        if knob in spec:
            _integer(spec[knob], f"{field}spec.{knob}", minimum=1 if knob == "activeDeadlineSeconds" else 0)
    template_spec = _object(_object(spec.get("template"), f"{field}spec.template", required=True).get("spec"),
                            f"{field}spec.template.spec", required=True)
    if "restartPolicy" not in template_spec:
        raise InvalidArgument(f"{field}spec.template.spec.restartPolicy: required: 'OnFailure' or 'Never'")
    _check_template(spec, f"{field}spec", restart_policies=("OnFailure", "Never"), selector_required=False)


# -- services, config, nodes -----------------------------------------------------------------------

def _check_service(obj: dict[str, Any], field: str) -> None:
    spec = _object(obj.get("spec"), f"{field}spec", required=True)
    kind = _one_of(spec.get("type", "ClusterIP"), ("ClusterIP", "NodePort"), f"{field}spec.type")
    ports = _list(spec.get("ports"), f"{field}spec.ports")
    if not ports:
        raise InvalidArgument(f"{field}spec.ports: required, at least one port")
    names: set[str] = set()
    for n, port in enumerate(ports):
        where = f"{field}spec.ports[{n}]"
        port = _object(port, where)
        name = port.get("name")
        if len(ports) > 1 and not name:
            raise InvalidArgument(f"{where}.name: required when a service has more than one port")
        if name is not None:
            if check_dns_label(name, f"{where}.name") in names:
                raise InvalidArgument(f"{where}.name: {name!r}: duplicate port name")
            names.add(name)
        _integer(port.get("port"), f"{where}.port", minimum=1, maximum=65535)
        target = port.get("targetPort")
        if target is not None and not isinstance(target, str):
            _integer(target, f"{where}.targetPort", minimum=1, maximum=65535)
        _one_of(port.get("protocol", "TCP"), PROTOCOLS, f"{where}.protocol")
        if "nodePort" in port:
            if kind != "NodePort":
                raise InvalidArgument(f"{where}.nodePort: may only be given for type NodePort")
            _integer(port["nodePort"], f"{where}.nodePort", minimum=NODE_PORTS.start, maximum=NODE_PORTS.stop - 1)
    check_labels(spec.get("selector"), f"{field}spec.selector")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip is not None and cluster_ip not in ("", "None"):
        _string(cluster_ip, f"{field}spec.clusterIP")


def _check_secret(obj: dict[str, Any], field: str) -> None:
    _base64(obj.get("data"), f"{field}data")
    for key, value in _object(obj.get("stringData"), f"{field}stringData").items():
        _string(value, f"{field}stringData.{key}")


def _check_config_map(obj: dict[str, Any], field: str) -> None:
    for key, value in _object(obj.get("data"), f"{field}data").items():
        _string(value, f"{field}data.{key}")
    _base64(obj.get("binaryData"), f"{field}binaryData")


def _check_node(obj: dict[str, Any], field: str) -> None:
    spec = _object(obj.get("spec"), f"{field}spec")
    for n, taint in enumerate(_list(spec.get("taints"), f"{field}spec.taints")):
        taint = _object(taint, f"{field}spec.taints[{n}]")
        _string(taint.get("key"), f"{field}spec.taints[{n}].key", required=True)
        _one_of(taint.get("effect"), TAINT_EFFECTS, f"{field}spec.taints[{n}].effect")
    if "unschedulable" in spec and not isinstance(spec["unschedulable"], bool):
        raise InvalidArgument(f"{field}spec.unschedulable: must be true or false")


_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "Pod": _check_pod, "ReplicaSet": _check_replica_set, "Deployment": _check_deployment,
    "DaemonSet": _check_daemon_set, "Job": _check_job, "Service": _check_service, "Secret": _check_secret,
    "ConfigMap": _check_config_map, "Node": _check_node,
}
