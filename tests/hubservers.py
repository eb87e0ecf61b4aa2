"""Servers on 127.0.0.1 that speak the Hugging Face Hub's download protocol, for the weights tests.

- ``Olah``: the real Hub mirror server olah, serving git repositories offline.
- ``FakeHub``: a small stdlib double of the Hub's resolve endpoint with injectable faults
  (missing file/repo/revision, server error, truncated body, corrupted bytes, CDN redirect).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=tests@zoo", "-c", "user.name=tests", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def publish(mirrors: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Commit ``files`` to the git repo olah serves as ``repo_id``; returns the commit hash."""
    repo = mirrors / "models" / repo_id
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "publish")
    return git(repo, "rev-parse", "HEAD")


class Olah:
    """olah (pip ``olah``) in offline mirror mode: serves ``mirrors/models/<org>/<name>`` git repos."""

    def __init__(self, workdir: Path, ready_repo: str) -> None:
        self.workdir, self.ready_repo = workdir, ready_repo
        self.mirrors = workdir / "mirrors"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Olah:
        config = self.workdir / "olah.toml"
        # The upstream points at a dead loopback port: nothing can leave this machine.
        config.write_text(
            textwrap.dedent(f"""\
            [basic]
            host = "127.0.0.1"
            port = {self.port}
            repos-path = "{self.workdir / "olah-repos"}"
            mirror-scheme = "http"
            mirror-netloc = "127.0.0.1:{self.port}"
            mirror-lfs-netloc = "127.0.0.1:{self.port}"
            mirrors-path = ["{self.mirrors}"]
            hf-scheme = "http"
            hf-netloc = "127.0.0.1:9"
            hf-lfs-netloc = "127.0.0.1:9"

            [accessibility]
            offline = true
            """)
        )
        log = open(self.workdir / "olah.out", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.workdir / "logs")],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        probe = f"{self.url}/api/models/{self.ready_repo}/revision/main"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"olah exited with {self.proc.returncode}: {(self.workdir / 'olah.out').read_text()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("olah did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


# --- the stdlib double ----------------------------------------------------------------------------

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.connections: set[socket.socket] = set()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        self.connections.discard(request)
        super().shutdown_request(request)


class FakeHub:
    """The Hub's ``/{repo}/resolve/{revision}/{file}`` for HEAD and GET, with faults to inject.

    ``faults[filename]`` is one of: ``"server_error"`` (500), ``"truncate"`` (announce the
    full length, send half, drop the connection), ``"corrupt"`` (flip a byte in the body),
    ``"cdn"`` (a cross-origin 302 to a content-addressed URL, as the Hub's CDN does), ``"unauthorized"`` (401,
    as for a bad token), ``"forbidden"`` (403, as for a token without access to the repo).
    """

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.history: dict[str, dict[str, dict[str, bytes]]] = {}  # every commit's files, servable by its hash
        self.commit = self._record()
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

            def do_GET(self) -> None:
                hub._answer(self, head=False)

            def do_POST(self) -> None:
                hub._post(self)

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for conn in list(self._server.connections):  # the client pools keep-alive connections
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._server = None

    def publish(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A new commit on ``main`` changing ``files`` of ``repo_id``; the earlier commits stay servable."""
        self.repos.setdefault(repo_id, {}).update(files)
        self.commit = self._record()
        return self.commit

    def _record(self) -> str:
        content = sorted((repo, sorted((n, hashlib.sha256(d).hexdigest()) for n, d in files.items()))
                         for repo, files in self.repos.items())  # fmt: skip
        commit = hashlib.sha1(repr(content).encode()).hexdigest()
        self.history[commit] = {repo: dict(files) for repo, files in self.repos.items()}
        return commit

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        """The upload side, as HfApi uses it: create a repo, preupload (all "regular"), commit."""
        path = urlsplit(h.path).path
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        self.requests.append(("POST", path))
        reply: object = {}
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            self.repos.setdefault(repo_id, {})
            reply = {"url": f"{self.url}/{repo_id}"}
        elif path == "/api/validate-yaml":
            reply = {"warnings": []}
        elif m := re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/[^/]+$", path):
            files = json.loads(body)["files"]
            reply = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        elif m := re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/[^/]+$", path):
            repo = self.repos.setdefault(m["repo"], {})
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            self.commit = self._record()
            reply = {"commitUrl": f"{self.url}/{m['repo']}/commit/{self.commit}", "commitOid": self.commit}
        data = json.dumps(reply).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _find(self, sha: str) -> bytes | None:
        return next(
            (d for files in self.repos.values() for d in files.values() if hashlib.sha256(d).hexdigest() == sha), None
        )

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = urlsplit(h.path).path
        self.requests.append((h.command, path))

        def send(status: int, headers: dict[str, str], body: bytes = b"") -> None:
            h.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                h.send_header(k, v)
            h.end_headers()
            if not head:
                h.wfile.write(body)

        def error(status: int, code: str, message: str, **extra: str) -> None:
            send(status, {"X-Error-Code": code, "X-Error-Message": message, **extra}, message.encode())

        cdn = _CDN.match(path)
        if cdn:
            data = self._find(cdn["sha"])
            return send(200, {"ETag": f'"{cdn["sha"]}"'}, data) if data is not None else send(404, {})
        m = _RESOLVE.match(path)
        if not m or m["repo"] not in self.repos:
            return error(401, "RepoNotFound", "Repository not found")
        rev = unquote(m["rev"])
        commit = self.commit if rev == "main" else rev
        if commit not in self.history:
            return error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files, name = self.history[commit].get(m["repo"], {}), unquote(m["file"])
        if name not in files:
            return error(404, "EntryNotFound", f"{name} does not exist", **{"X-Repo-Commit": commit})
        data, fault = files[name], self.faults.get(name)
        sha = hashlib.sha256(data).hexdigest()  # the Hub's ETag of an LFS file is its sha256
        meta = {"X-Repo-Commit": commit, "ETag": f'"{sha}"'}
        if fault == "server_error":
            return send(500, {}, b"internal error")
        if fault == "unauthorized":  # a token the Hub does not accept, on a repo that exists
            return send(401, {}, b"Invalid credentials in Authorization header")
        if fault == "forbidden":  # a token the Hub accepts, without access to this repo
            return send(403, {"X-Error-Message": "Forbidden"}, b"Forbidden")
        if fault == "cdn":
            port = self._server.server_address[1]  # type: ignore[union-attr]
            location = f"http://localhost:{port}/cdn/{sha}"  # another origin: not followed for HEAD
            return send(
                302, {**meta, "Location": location, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            )
        if head:
            return send(200, meta, data)
        if fault == "corrupt":
            data = data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]
        if fault == "truncate":
            h.send_response(200)
            for k, v in {**meta, "Content-Length": str(len(data))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        return send(200, meta, data)
