"""A minimal Kubernetes API server emulator for tests: real HTTP on 127.0.0.1, objects in memory.

Why home-made: no registry reachable here ships a usable one. kube-apiserver/envtest and kwok need Go binaries that
no reachable registry carries; `kmock` (PyPI) emulates the API but treats PATCH as a plain update of an existing
object, so server-side apply (create-or-merge with `application/apply-patch+yaml`) cannot work against it.

What it implements, as the real API server does for these calls:
- discovery: /version, /api, /api/v1, /apis, /apis/<group>/<version> for the kinds sdlab renders, plus Event;
- PATCH `application/apply-patch+yaml` (server-side apply): requires `fieldManager`; creates or merges (maps merge,
  lists replace); refuses a change to a field another manager applied unless `force=true` (409); bumps
  `metadata.generation` when `spec` changes and records `managedFields` managers;
- PATCH `application/merge-patch+json` on an object or its `/status` (a controller's writes, done by the tests);
- GET object and list (with `fieldSelector=involvedObject.name=…` for events), POST (create), DELETE (404 if absent).
Not implemented: watch, admission, defaulting, validation beyond names (sdlab.k8s.validate does that offline).

Run: `python -m tests.k8s.kube_emulator --port N`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

# (group, version, plural, kind, namespaced)
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "persistentvolumes", "PersistentVolume", False),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("", "v1", "events", "Event", True),
    ("", "v1", "pods", "Pod", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True),
    ("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", True),
    ("keda.sh", "v1alpha1", "triggerauthentications", "TriggerAuthentication", True),
    ("karpenter.sh", "v1", "nodepools", "NodePool", False),
    ("karpenter.k8s.aws", "v1", "ec2nodeclasses", "EC2NodeClass", False),
]
_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _conflicts(stored: dict, applied: dict, path: str = "") -> list[str]:
    """Leaf paths where `applied` would change a value `stored` holds."""
    out = []
    for key, value in applied.items():
        if key not in stored:
            continue
        if isinstance(value, dict) and isinstance(stored[key], dict):
            out += _conflicts(stored[key], value, f"{path}.{key}")
        elif stored[key] != value:
            out.append(f"{path}.{key}")
    return out


class Store:
    def __init__(self, resources: list[tuple] = RESOURCES) -> None:
        self.lock = threading.Lock()
        self.objects: dict[tuple, dict] = {}  # (group, plural, namespace, name) -> object
        self.version = 0
        self.resources = resources

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)


class Handler(BaseHTTPRequestHandler):
    store: Store
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; without this each reply waits ~40 ms

    def log_message(self, *args: object) -> None:  # quiet: tests read state, not logs
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                          "message": message, "code": code})

    def _body(self) -> dict:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return yaml.safe_load(raw) or {} if raw else {}

    def _route(self) -> tuple[dict | None, dict]:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        m = _PATH.match(url.path)
        if not m:
            return None, query
        group, version = ("", "v1") if m["core"] else (m["group"], m["version"])
        for g, v, plural, kind, namespaced in self.store.resources:
            if (g, v, plural) == (group, version, m["plural"]):
                api_version = f"{g}/{v}" if g else v
                return {"group": g, "api_version": api_version, "plural": plural, "kind": kind, "namespaced": namespaced,
                        "ns": m["ns"], "name": m["name"], "sub": m["sub"]}, query
        return None, query

    def _discovery(self, path: str) -> dict | None:
        res = self.store.resources
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-sdlab-emulator", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = sorted({(g, v) for g, v, *_ in res if g})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]}
        m = re.match(r"^/(?:api/(v1)|apis/([^/]+)/([^/]+))$", path)
        if not m:
            return None
        group, version = ("", "v1") if m[1] else (m[2], m[3])
        items = []
        for g, v, plural, kind, namespaced in res:
            if (g, v) == (group, version):
                verbs = ["create", "delete", "get", "list", "patch", "update"]
                items.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                              "verbs": verbs})
                items.append({"name": f"{plural}/status", "singularName": "", "namespaced": namespaced, "kind": kind,
                              "verbs": ["get", "patch", "update"]})
        if not items:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                "resources": items}

    def do_GET(self) -> None:  # noqa: N802
        found = self._discovery(urlsplit(self.path).path)
        if found is not None:
            return self._send(200, found)
        r, query = self._route()
        if r is None:
            return self._status(404, "NotFound", f"no route for {self.path}")
        with self.store.lock:
            if r["name"]:
                obj = self.store.objects.get((r["group"], r["plural"], r["ns"], r["name"]))
                if obj is None:
                    return self._status(404, "NotFound", f'{r["plural"]} "{r["name"]}" not found')
                return self._send(200, obj)
            items = [o for (g, p, ns, _), o in sorted(self.store.objects.items(), key=lambda kv: str(kv[0]))
                     if (g, p) == (r["group"], r["plural"]) and (r["ns"] is None or ns == r["ns"])]
        selector = query.get("fieldSelector", "")
        if selector.startswith("involvedObject.name="):
            items = [o for o in items if o.get("involvedObject", {}).get("name") == selector.split("=", 1)[1]]
        self._send(200, {"kind": f'{r["kind"]}List', "apiVersion": r["api_version"], "metadata": {}, "items": items})

    def do_POST(self) -> None:  # noqa: N802
        r, _ = self._route()
        body = self._body()
        if r is None:
            return self._status(404, "NotFound", f"no route for {self.path}")
        name = (body.get("metadata") or {}).get("name")
        key = (r["group"], r["plural"], r["ns"], name)
        with self.store.lock:
            if key in self.store.objects:
                return self._status(409, "AlreadyExists", f'{r["plural"]} "{name}" already exists')
            self.store.objects[key] = self._new(body, r, manager="test", operation="Update")
            return self._send(201, self.store.objects[key])

    def _new(self, body: dict, r: dict, manager: str, operation: str) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if r["namespaced"]:
            meta["namespace"] = r["ns"]
        meta.update({"uid": str(uuid.uuid4()), "resourceVersion": self.store.next_version(), "generation": 1,
                     "creationTimestamp": _now(), "managedFields": [{"manager": manager, "operation": operation}]})
        return obj

    def do_PATCH(self) -> None:  # noqa: N802
        r, query = self._route()
        if r is None or not r["name"]:
            return self._status(404, "NotFound", f"no route for PATCH {self.path}")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0]
        body = self._body()
        key = (r["group"], r["plural"], r["ns"], r["name"])
        with self.store.lock:
            stored = self.store.objects.get(key)
            if content_type == "application/apply-patch+yaml":
                return self._apply(r, query, body, key, stored)
            if content_type != "application/merge-patch+json":
                return self._status(415, "UnsupportedMediaType", f"content type {content_type} is not supported here")
            if stored is None:
                return self._status(404, "NotFound", f'{r["plural"]} "{r["name"]}" not found')
            updated = _merge(stored, {"status": body.get("status", {})} if r["sub"] else body)
            if updated.get("spec") != stored.get("spec"):
                updated["metadata"]["generation"] = stored["metadata"].get("generation", 1) + 1
            updated["metadata"]["resourceVersion"] = self.store.next_version()
            self.store.objects[key] = updated
            return self._send(200, updated)

    def _apply(self, r: dict, query: dict, body: dict, key: tuple, stored: dict | None) -> None:
        manager = query.get("fieldManager")
        if not manager:
            return self._status(400, "BadRequest", "PATCH with apply-patch+yaml requires a fieldManager")
        if body.get("kind") != r["kind"] or body.get("apiVersion") != r["api_version"]:
            return self._status(400, "BadRequest", f'body is {body.get("apiVersion")} {body.get("kind")}, URL is {r["kind"]}')
        if (body.get("metadata") or {}).get("name") != r["name"]:
            return self._status(400, "BadRequest", "the name in the body does not match the URL")
        if stored is None:
            self.store.objects[key] = self._new(body, r, manager, "Apply")
            return self._send(201, self.store.objects[key])
        others = [m["manager"] for m in stored["metadata"].get("managedFields", []) if m["manager"] != manager]
        applied = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        conflicts = _conflicts({k: v for k, v in stored.items() if k not in ("metadata", "status")}, applied)
        if others and conflicts and query.get("force") != "true":
            return self._status(409, "Conflict", f"Apply failed with {len(conflicts)} conflicts: {conflicts} "
                                                 f"managed by {others}")
        updated = _merge(stored, {**applied, "metadata": {"labels": body["metadata"].get("labels"),
                                                          "annotations": body["metadata"].get("annotations")}})
        if updated.get("spec") != stored.get("spec"):
            updated["metadata"]["generation"] = stored["metadata"].get("generation", 1) + 1
        managers = [m for m in stored["metadata"].get("managedFields", []) if m["manager"] != manager]
        updated["metadata"]["managedFields"] = [*managers, {"manager": manager, "operation": "Apply"}]
        updated["metadata"]["resourceVersion"] = self.store.next_version()
        self.store.objects[key] = updated
        self._send(200, updated)

    def do_DELETE(self) -> None:  # noqa: N802
        r, _ = self._route()
        if r is None or not r["name"]:
            return self._status(404, "NotFound", f"no route for DELETE {self.path}")
        self._body()
        with self.store.lock:
            obj = self.store.objects.pop((r["group"], r["plural"], r["ns"], r["name"]), None)
        if obj is None:
            return self._status(404, "NotFound", f'{r["plural"]} "{r["name"]}" not found')
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": r["name"]}})


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"store": Store()})
    return ThreadingHTTPServer((host, port), handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.port).serve_forever()


if __name__ == "__main__":
    main()
