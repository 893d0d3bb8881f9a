#!/usr/bin/env python3
"""A Patchwork stand-in for patchbay's contract tests.

    server.py SPEC TOKEN PORT_FILE

Every request to /api/ is validated against SPEC (Patchwork's OpenAPI document) with
openapi-core and refused with 400, naming why, when the schema refuses it; creating a check
also needs `Authorization: Token TOKEN` (403 otherwise). Patchwork serves its API with a
trailing slash while its published schema names the paths without one: one trailing slash is
dropped before matching.

Test-only endpoints (not Patchwork's, not validated):
  POST /_test/patches {"msgid": "...", "project": "..."}
                                         registers a patch in a project (its id back); the
                                         same Message-ID may be in several projects
  POST /_test/down {"down": true|false}  answers 503 to /api/ while down
  GET  /_test/checks                     every check created, in order
  GET  /_test/requests                   every /api/ request: method, path, status, why
The chosen port is written to PORT_FILE once listening.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest

spec_path, token, port_file = sys.argv[1:4]
# The published document repeats a tag name, which strict document validation refuses;
# requests are still validated in full.
api = OpenAPI.from_file_path(spec_path, config=Config(spec_validator_cls=None))

lock = threading.Lock()
patches = []  # (msgid, project, id)
checks = []
requests = []
state = {"down": False}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def test_endpoint(self, method, path, raw):
        with lock:
            if method == "POST" and path == "/_test/patches":
                asked = json.loads(raw)
                msgid, project = asked["msgid"], asked.get("project", "default")
                pid = len(patches) + 1
                patches.append((msgid, project, pid))
                return self.answer(201, {"id": pid})
            if method == "POST" and path == "/_test/down":
                state["down"] = bool(json.loads(raw)["down"])
                return self.answer(200, state)
            if method == "GET" and path == "/_test/checks":
                return self.answer(200, checks)
            if method == "GET" and path == "/_test/requests":
                return self.answer(200, requests)
        return self.answer(404, {"detail": "no such test endpoint"})

    def handle_any(self, method):
        url = urlsplit(self.path)
        raw = self.body()
        if url.path.startswith("/_test/"):
            return self.test_endpoint(method, url.path, raw)
        status, why = self.api(method, url, raw)
        with lock:
            requests.append({"method": method, "path": self.path, "status": status, "why": why})

    def api(self, method, url, raw):
        if state["down"]:
            self.answer(503, {"detail": "down for maintenance"})
            return 503, "down"
        path = url.path[:-1] if url.path.endswith("/") and url.path != "/" else url.path
        args = {k: v[0] for k, v in parse_qs(url.query).items()}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        req = MockRequest(
            "http://%s" % self.headers.get("Host", "127.0.0.1"),
            method.lower(),
            path,
            args=args,
            data=raw or None,
            headers=dict(self.headers.items()),
            content_type=ctype,
        )
        try:
            api.validate_request(req)
        except Exception as e:  # the schema refuses it
            why = "%s: %s" % (type(e).__name__, e)
            cause = getattr(e, "__cause__", None)
            if cause is not None:
                why += " (%s)" % cause
            self.answer(400, {"detail": why})
            return 400, why
        parts = path.strip("/").split("/")
        if method == "GET" and parts == ["api", "1.4", "patches"]:
            msgid, project = args.get("msgid"), args.get("project")
            with lock:
                found = [
                    {"id": i, "msgid": m, "state": "new", "delegate": None, "name": m, "project": {"link_name": p}}
                    for m, p, i in patches
                    if (msgid is None or m == msgid) and (project is None or p == project)
                ]
            self.answer(200, found)
            return 200, None
        if method == "POST" and len(parts) == 5 and parts[:3] == ["api", "1.4", "patches"] and parts[4] == "checks":
            if self.headers.get("Authorization") != "Token " + token:
                self.answer(403, {"detail": "You do not have permission to perform this action."})
                return 403, "bad token"
            pid = int(parts[3])
            with lock:
                if pid not in [i for _, _, i in patches]:
                    self.answer(404, {"detail": "Not found."})
                    return 404, "no such patch"
                check = json.loads(raw)
                check["patch"] = pid
                check["id"] = len(checks) + 1
                checks.append(check)
            self.answer(201, check)
            return 201, None
        self.answer(404, {"detail": "Not found."})
        return 404, "not served by this stand-in"

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os

os.rename(port_file + ".tmp", port_file)
server.serve_forever()
