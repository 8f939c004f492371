"""The OpenAPI document (`sdlab api openapi`) is valid, matches live answers of the local stack, status by status,
and docs/api.md describes exactly the routes it lists."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from sdlab.api.openapi import document, response_schema

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_openapi_document_is_valid_and_docs_describe_its_routes():
    doc = document()
    validate_spec(doc)
    out = subprocess.run([sys.executable, "-m", "sdlab", "api", "openapi"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("{") and '"openapi": "3.1.0"' in out.stdout
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    text = (ROOT / "docs" / "api.md").read_text()
    headings = re.findall(r"^## `(GET|POST|DELETE|PUT|PATCH) (/[^`\s]*)", text, re.M)
    in_docs = {(m, p.split("?")[0].rstrip("/")) for m, p in headings}
    assert in_docs == documented, f"docs/api.md lists {sorted(in_docs)}, the OpenAPI document {sorted(documented)}"


def test_live_answers_match_the_openapi_document(stack, client):
    doc = document()
    api = stack["api_url"]
    http = httpx.Client(headers={"x-api-key": stack["api_key"]}, timeout=30)
    checked: set[tuple[str, str, int]] = set()
    client._ensure_inbox()  # subscribed before the first submit: no notification can be missed

    def check(method: str, path: str, reply: httpx.Response, route: str | None = None) -> dict:
        route = route or path
        schema = response_schema(doc, route, method, reply.status_code)
        body = reply.json()
        OAS31Validator(schema).validate(body)
        checked.add((method, route, reply.status_code))
        return body

    run = uuid.uuid4().hex[:8]
    body = {"runtime": "rt-a", "id": f"oas-{run}", "payload": {"prompt": "a kite", "steps": 4, "width": 64, "height": 64}}
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json=body))
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json=body))  # idempotent repeat: 200
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json={**body, "priority": "high"}))  # 409
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json={"runtime": "rt-a", "payload": {"steps": 0}}))  # 400
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json={"runtime": "nope", "payload": {}}))  # 404
    check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", content=b"x", headers={"Content-Type": "text/plain"}))  # 415
    check("POST", "/v1/tasks", httpx.post(f"{api}/v1/tasks", json=body))  # 403, from the gateway
    queued = check("POST", "/v1/tasks", http.post(f"{api}/v1/tasks", json={**body, "id": f"oas-c-{run}", "ttl_seconds": 600}))
    check("DELETE", f"/v1/tasks/{queued['id']}", http.delete(f"{api}/v1/tasks/{queued['id']}"), "/v1/tasks/{id}")
    check("DELETE", f"/v1/tasks/{queued['id']}", http.delete(f"{api}/v1/tasks/{queued['id']}"), "/v1/tasks/{id}")  # 409
    client.wait(f"oas-{run}", timeout=120)
    done = check("GET", f"/v1/tasks/oas-{run}", http.get(f"{api}/v1/tasks/oas-{run}"), "/v1/tasks/{id}")
    assert done["status"] == "completed" and done["receipt"]["gpu_s"] > 0
    check("GET", "/v1/tasks/{id}", http.get(f"{api}/v1/tasks/never-{run}"), "/v1/tasks/{id}")  # 404
    check("GET", "/v1/tasks", http.get(f"{api}/v1/tasks", params={"runtime": "rt-a", "limit": 2}))
    check("GET", "/v1/tasks", http.get(f"{api}/v1/tasks"))  # 400
    usage = check("GET", "/v1/usage", http.get(f"{api}/v1/usage"))
    assert usage["total"]["tasks"] >= 2
    table = subprocess.run([sys.executable, "-m", "sdlab", "--home", stack["home"], "usage"], capture_output=True,
                           text=True, check=True).stdout
    assert "rt-a" in table and "API key" in table and "key-" in table
    check("GET", "/v1/usage", http.get(f"{api}/v1/usage", params={"since": "soon"}))  # 400
    v2 = {"task": {"metadata": {"id": f"oas-v2-{run}", "runtime": "rt-b", "tasktype": "text-to-image", "prefix": "output"},
                   "content": {"prompt": "x", "steps": 2, "width": 64, "height": 64}}}
    check("POST", "/v1alpha2", http.post(f"{api}/v1alpha2/", json=v2))
    v1 = {"alwayson_scripts": {"task": "text-to-image", "sd_model_checkpoint": "tiny-b", "id_task": f"oas-v1-{run}",
                               "save_dir": "outputs"}, "prompt": "x", "steps": 2, "width": 64, "height": 64}
    check("POST", "/v1alpha1", http.post(f"{api}/v1alpha1", json=v1))
    client.wait([f"oas-v2-{run}", f"oas-v1-{run}"], timeout=120)
    statuses = {(m, p): sorted(s for mm, pp, s in checked if (mm, pp) == (m, p)) for m, p, _ in checked}
    assert statuses[("POST", "/v1/tasks")] == [200, 202, 400, 403, 404, 409, 415]
    assert statuses[("DELETE", "/v1/tasks/{id}")] == [200, 409]
