"""A stand-in Hugging Face Hub on 127.0.0.1: the HTTP endpoints that huggingface_hub's create_repo,
create_branch, upload_folder and snapshot_download call, over an in-memory store of commits.

Every file is committed as a regular git blob (the preupload answer is "regular" for all), so no
LFS or Xet storage is involved; the ETag of a file is its git blob id, as on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


def blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit id
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> path -> bytes

    def commit(self, branch: str, files: dict[str, bytes], parent: str | None) -> str:
        tree = {**self.commits.get(parent, {}), **files} if parent else dict(files)
        commit_id = hashlib.sha1(json.dumps([branch, len(self.commits), sorted(tree)]).encode()).hexdigest()
        self.commits[commit_id] = tree
        self.branches[branch] = commit_id
        return commit_id

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.branches.get(revision)


class StandInHub:
    """Start with `with StandInHub() as hub:`; `hub.url` is the HF_ENDPOINT. `token`: when set, every
    request must carry it (others get 401, as the Hub answers a refused token)."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD path", in order
        self.front_matter: dict | None = None  # of the last model card validated
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def _route(self, method: str) -> None:
            path = urlparse(self.path).path
            hub.requests.append(f"{method} {path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            routes = [
                ("POST", r"/api/repos/create", self._create_repo),
                ("POST", r"/api/validate-yaml", self._validate_yaml),
                ("POST", rf"/api/models/{REPO}/branch/{REV}", self._create_branch),
                ("POST", rf"/api/models/{REPO}/preupload/{REV}", self._preupload),
                ("POST", rf"/api/models/{REPO}/commit/{REV}", self._commit),
                ("GET", rf"/api/models/{REPO}/revision/{REV}", self._revision_info),
                ("GET", rf"/api/models/{REPO}/tree/{REV}", self._tree),
                ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<file>.+)", self._resolve),
                ("GET", rf"/{REPO}/resolve/{REV}/(?P<file>.+)", self._resolve),
            ]
            for verb, pattern, action in routes:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    return action(body, **{key: unquote(value) for key, value in match.groupdict().items()})
            if method == "HEAD" and path in ("", "/"):
                return self._send(200, b"")
            self._error(404, None, f"no route for {method} {path}")

        # --- repositories and commits ---
        def _create_repo(self, body: bytes) -> None:
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:
                return self._error(409, None, "You already created this model repo")
            repo = hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            repo.commit("main", {}, None)
            self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, body: bytes) -> None:
            """The model card's front matter: a YAML mapping (the Hub also checks its fields)."""
            _, _, rest = json.loads(body)["content"].partition("---\n")
            try:
                front_matter = yaml.safe_load(rest.partition("\n---\n")[0])
            except yaml.YAMLError as err:
                front_matter = str(err)
            if not isinstance(front_matter, dict):
                return self._send(400, json.dumps({"errors": [{"message": f"no YAML mapping: {front_matter}"}]})
                                  .encode(), {"Content-Type": "application/json"})
            hub.front_matter = front_matter
            self._json({"errors": [], "warnings": []})

        def _create_branch(self, body: bytes, repo: str, rev: str) -> None:
            found = self._repo(repo)
            if found is not None:
                found.branches.setdefault(rev, found.branches["main"])
                self._json({})

        def _preupload(self, body: bytes, repo: str, rev: str) -> None:
            if self._repo(repo) is not None:
                files = json.loads(body)["files"]
                self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                      for f in files]})

        def _commit(self, body: bytes, repo: str, rev: str) -> None:
            found = self._repo(repo)
            if found is None:
                return
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {}
            for line in lines:
                if line["key"] == "file":
                    assert line["value"]["encoding"] == "base64"
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] != "header":
                    return self._error(400, None, f"the stand-in hub takes regular files only, got {line['key']}")
            if rev not in found.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            commit_id = found.commit(rev, files, found.branches[rev])
            self._json({"commitUrl": f"{hub.url}/{repo}/commit/{commit_id}", "commitOid": commit_id,
                        "pullRequestUrl": None})

        def _revision_info(self, body: bytes, repo: str, rev: str) -> None:
            commit_id = self._commit_id(repo, rev)
            if commit_id is not None:
                tree = hub.repos[repo].commits[commit_id]
                self._json({"id": repo, "sha": commit_id, "private": hub.repos[repo].private,
                            "siblings": [{"rfilename": name} for name in sorted(tree)]})

        def _tree(self, body: bytes, repo: str, rev: str) -> None:
            commit_id = self._commit_id(repo, rev)
            if commit_id is not None:
                tree = hub.repos[repo].commits[commit_id]
                self._json([{"type": "file", "path": name, "size": len(content), "oid": blob_id(content)}
                            for name, content in sorted(tree.items())])

        def _resolve(self, body: bytes, repo: str, rev: str, file: str) -> None:
            commit_id = self._commit_id(repo, rev)
            if commit_id is None:
                return
            content = hub.repos[repo].commits[commit_id].get(file)
            if content is None:
                return self._error(404, "EntryNotFound", f"{file} does not exist at {rev}")
            headers = {"X-Repo-Commit": commit_id, "ETag": f'"{blob_id(content)}"'}
            self._send(200, b"" if self.command == "HEAD" else content, headers, length=len(content))

        # --- helpers ---
        def _repo(self, repo_id: str) -> Repo | None:
            if repo_id not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            return hub.repos[repo_id]

        def _commit_id(self, repo_id: str, revision: str) -> str | None:
            repo = self._repo(repo_id)
            if repo is None:
                return None
            commit_id = repo.resolve(revision)
            if commit_id is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit_id

        def _json(self, value: object) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _send(self, status: int, content: bytes, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content) if length is None else length))
            self.end_headers()
            if content:
                self.wfile.write(content)

    return Handler
