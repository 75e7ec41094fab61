"""A small in-memory stand-in for the Hugging Face Hub's HTTP API, served on 127.0.0.1 by the tests themselves.

It answers what ``push_to_hub`` and downloads by repo id ask (huggingface_hub 1.x/2.x clients):

* writes: ``POST /api/repos/create`` (409 when the repo exists), ``POST /api/validate-yaml``,
  ``POST /api/models/{repo}/preupload/{rev}`` (every file ``uploadMode: "regular"``, so contents come inline),
  ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 files; ``create_pr=1`` opens ``refs/pr/N``),
  ``POST /api/models/{repo}/branch/{branch}``;
* reads: ``GET /api/models/{repo}[/revision/{rev}]``, ``GET /api/models/{repo}/tree/{rev}[/{path}]``,
  ``POST /api/models/{repo}/paths-info/{rev}``, ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with
  ``X-Repo-Commit`` and ``ETag``, ``GET /api/whoami-v2``.

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) from which the
client builds its typed exceptions. Writes need an ``Authorization`` header. Every repository keeps each commit as
a full snapshot, so any past commit can be downloaded by its id. Requests the server does not know are answered 404
and listed in :attr:`FakeHub.unknown_requests`, so that a test can assert the client asked nothing unexpected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_NAMESPACE = "user"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_PIPELINE_TAGS = {"text-generation", "text2text-generation", "feature-extraction", "fill-mask"}
_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
_WRITES = {"create_repo", "preupload", "commit", "create_branch"}


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    """One model repository: every commit as a full ``{path: bytes}`` snapshot, and the refs pointing to them."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        matches = [sha for sha in self.commits if sha.startswith(revision)] if len(revision) >= 7 else []
        return matches[0] if len(matches) == 1 else None


class FakeHub:
    """The server and its state. ``start()`` returns the endpoint to put in ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.unknown_requests: list[str] = []
        # (repo_id, path) -> HTTP status that every download of that file gets (a Hub in trouble).
        self.failing_files: dict[tuple[str, str], int] = {}
        # (route name, repo_id) -> HTTP status every such request gets, or "drop": the connection is closed without
        # an answer. Route names are those of _Handler.ROUTES ("create_repo", "commit", "preupload", ...).
        self.failing_routes: dict[tuple[str, str], int | str] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._counter = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- what tests inspect --------------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def history(self, repo_id: str) -> list[str]:
        """Commit ids of a repo, oldest first (the repo's creation commit included)."""
        return list(self.repos[repo_id].commits)

    # -- state changes -------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = self.repos[repo_id] = Repo()
            sha = self._new_sha(repo_id, "initial commit")
            repo.commits[sha] = {".gitattributes": _GITATTRIBUTES}
            repo.refs["main"] = sha
            repo.messages[sha] = "initial commit"
            return True

    def commit(
        self, repo_id: str, ref: str, summary: str, changes: list[tuple[str, str, bytes | None]]
    ) -> str:
        """Apply ``(kind, path, content)`` changes on top of ``ref`` and move ``ref``; returns the commit id."""
        with self.lock:
            repo = self.repos[repo_id]
            snapshot = dict(repo.commits[repo.refs[ref]])
            for kind, path, content in changes:
                if kind == "file":
                    snapshot[path] = content
                elif kind == "deletedFile":
                    snapshot.pop(path, None)
                elif kind == "deletedFolder":
                    for name in [name for name in snapshot if name.startswith(path.rstrip("/") + "/")]:
                        del snapshot[name]
            sha = self._new_sha(repo_id, summary)
            repo.commits[sha] = snapshot
            repo.refs[ref] = sha
            repo.messages[sha] = summary
            return sha

    def _new_sha(self, repo_id: str, summary: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{repo_id}\0{summary}\0{self._counter}".encode()).hexdigest()


class HttpError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeHub

    # Routes: (method, path regex, handler name).
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>.+)", "create_branch"),
        ("POST", rf"/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.state.requests.append(f"{method} {url.path}")
        for route_method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, url.path)
            if route_method == method and match:
                params = {
                    key: unquote(value) for key, value in match.groupdict().items() if value is not None
                }
                failure = self.state.failing_routes.get((name, self._target_repo(params)))
                if failure == "drop":
                    self.close_connection = True  # no status line, no body: the client sees a dropped connection
                    return
                try:
                    if failure is not None:
                        raise HttpError(failure, f"The test hub fails {name} with {failure}")
                    if name in _WRITES and not self.headers.get("Authorization"):
                        raise HttpError(401, "Invalid credentials in Authorization header")
                    getattr(self, name)(method=method, **params)
                except HttpError as error:
                    self._send_json({"error": error.message}, error.status, error_code=error.error_code)
                return
        self.state.unknown_requests.append(f"{method} {self.path}")
        self._send_json({"error": f"Not implemented by the test hub: {method} {url.path}"}, 404)

    def _target_repo(self, params: dict[str, str]) -> str | None:
        if "repo" in params:
            return params["repo"]
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError:
            return None
        if isinstance(payload, dict) and "name" in payload:  # create_repo
            return f"{payload.get('organization') or DEFAULT_NAMESPACE}/{payload['name']}"
        return None

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        # A HEAD answer announces the length of the body it does not send.
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, error_code: str | None = None) -> None:
        headers = {"Content-Type": "application/json"}
        if error_code:
            headers["X-Error-Code"] = error_code
            headers["X-Error-Message"] = str(payload.get("error", ""))
        self._send(status, json.dumps(payload).encode(), headers)

    def _json_body(self):
        return json.loads(self.body or b"{}")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_id(self, repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- endpoints -----------------------------------------------------------------------------------------------

    def whoami(self, method: str) -> None:
        self._send_json(
            {"type": "user", "name": DEFAULT_NAMESPACE, "orgs": [], "auth": {"type": "access_token"}}
        )

    def create_repo(self, method: str) -> None:
        payload = self._json_body()
        if payload.get("type", "model") not in (None, "model"):
            raise HttpError(400, "The test hub only holds model repos")
        repo_id = f"{payload.get('organization') or DEFAULT_NAMESPACE}/{payload['name']}"
        url = f"{self.state.endpoint}/{repo_id}"
        if not self.state.create_repo(repo_id):
            self._send_json({"error": "You already created this model repo", "url": url}, 409)
            return
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, method: str) -> None:
        errors = _metadata_errors(self._json_body().get("content", ""))
        self._send_json(
            {"errors": [{"message": error} for error in errors], "warnings": []}, 400 if errors else 200
        )

    def preupload(self, method: str, repo: str, rev: str) -> None:
        current = self.state.repos[repo].commits[self._commit_id(self._repo(repo), rev)]
        files = [
            {
                "path": entry["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(current[entry["path"]]) if entry["path"] in current else None,
            }
            for entry in self._json_body()["files"]
        ]
        self._send_json({"files": files, "commitOid": self.state.repos[repo].refs.get(rev)})

    def commit(self, method: str, repo: str, rev: str) -> None:
        record = self._repo(repo)
        self._commit_id(record, rev)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        parent = header.get("parentCommit")
        if parent and not record.refs[rev].startswith(parent):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        changes: list[tuple[str, str, bytes | None]] = []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, f"Unsupported encoding {value.get('encoding')!r}")
                changes.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                changes.append((key, value["path"], None))
            elif key != "header":
                raise HttpError(400, f"The test hub takes regular files only, not {key!r}")
        ref, pr_url = rev, None
        if self.query.get("create_pr", ["0"])[0] == "1":
            number = 1 + sum(name.startswith("refs/pr/") for name in record.refs)
            ref = f"refs/pr/{number}"
            record.refs[ref] = record.refs[rev]
            pr_url = f"{self.state.endpoint}/{repo}/discussions/{number}"
        sha = self.state.commit(repo, ref, header.get("summary", ""), changes)
        payload = {
            "commitUrl": f"{self.state.endpoint}/{repo}/commit/{sha}",
            "commitOid": sha,
            "success": True,
        }
        if pr_url:
            payload.update(pullRequestUrl=pr_url, pullRequestNum=int(ref.rsplit("/", 1)[1]))
        self._send_json(payload)

    def create_branch(self, method: str, repo: str, branch: str) -> None:
        record = self._repo(repo)
        if branch in record.refs:
            raise HttpError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint") or "main"
        record.refs[branch] = self._commit_id(record, start)
        self._send_json({})

    def model_info(self, method: str, repo: str, rev: str = "main") -> None:
        record = self._repo(repo)
        sha = self._commit_id(record, rev)
        snapshot = record.commits[sha]
        card_data = _front_matter(snapshot.get("README.md", b"").decode("utf-8", "replace")) or None
        info = {
            "id": repo,
            "modelId": repo,
            "sha": sha,
            "private": False,
            "lastModified": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "tags": list((card_data or {}).get("tags") or []),
            "library_name": (card_data or {}).get("library_name"),
            "cardData": card_data,
            "siblings": [{"rfilename": path} for path in sorted(snapshot)],
        }
        self._send_json(info)

    def tree(self, method: str, repo: str, rev: str, path: str = "") -> None:
        record = self._repo(repo)
        snapshot = record.commits[self._commit_id(record, rev)]
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for name in sorted(snapshot):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())}
                    )
            if recursive or len(parts) == 1:
                entries.append(_file_entry(name, snapshot[name]))
        self._send_json(entries)

    def paths_info(self, method: str, repo: str, rev: str) -> None:
        record = self._repo(repo)
        snapshot = record.commits[self._commit_id(record, rev)]
        form = parse_qs(self.body.decode())
        wanted = form.get("paths", [])
        self._send_json([_file_entry(path, snapshot[path]) for path in wanted if path in snapshot])

    def resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        failure = self.state.failing_files.get((repo, path))
        if failure is not None:
            raise HttpError(failure, f"The test hub fails {path} with {failure}")
        record = self._repo(repo)
        sha = self._commit_id(record, rev)
        content = record.commits[sha].get(path)
        if content is None:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha1(content)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, content, headers)


def _file_entry(path: str, content: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if not match:
        return {}
    loaded = yaml.safe_load(match.group(1))
    return loaded if isinstance(loaded, dict) else {"__invalid__": loaded}


def _metadata_errors(text: str) -> list[str]:
    """The checks of the Hub's metadata validation that a model card can fail (a subset, enough to catch typos)."""
    try:
        data = _front_matter(text)
    except yaml.YAMLError as error:
        return [f"YAML could not be parsed: {error}"]
    errors = []
    if "__invalid__" in data:
        errors.append("metadata must be a YAML mapping")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        errors.append('"tags" must be a list of strings')
    for key in ("license", "library_name", "pipeline_tag", "license_name", "license_link"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    if "pipeline_tag" in data and data["pipeline_tag"] not in _PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {data["pipeline_tag"]!r} is not a known task')
    base = data.get("base_model")
    for model_id in [base] if isinstance(base, str) else (base or []):
        if not isinstance(model_id, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id):
            errors.append(f'"base_model" must be Hub model ids; got {model_id!r}')
    if "base_model_relation" in data and data["base_model_relation"] not in _RELATIONS:
        errors.append(f'"base_model_relation" must be one of {sorted(_RELATIONS)}')
    if "base_model_relation" in data and not base:
        errors.append('"base_model_relation" needs "base_model"')
    return errors
