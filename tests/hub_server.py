"""A stand-in for the Hugging Face Hub on 127.0.0.1, speaking what `hf_hub_download` asks for.

Why not a mock: the download path (HEAD for metadata, redirect to a CDN, GET,
cache layout, retries) is huggingface_hub's own code, and it is what breaks in
the field. So the real client talks HTTP to this server, which answers as
huggingface.co does for an LFS file (read huggingface_hub/file_download.py):

- `HEAD /{repo_id}/resolve/{revision}/{filename}` -> 302 to a "CDN" URL on another
  host name (`localhost` instead of `127.0.0.1`, so the client treats it as off-hub),
  with `X-Repo-Commit`, `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
- `GET` on that CDN URL -> the bytes, with `Content-Length`, honouring `Range`.

Each repo gets a behaviour, so one client process can meet all of them:
`ok` serves; `missing` answers 404 `EntryNotFound` as the hub does; `drop` closes
the socket without answering; `cut` answers the HEAD, then sends half the file
and hangs up, and drops every later request for it (a server that died mid-download);
`stall` accepts and reads the request but never answers.

Run as a script (`python hub_server.py client OUT_DIR TAG...`) it is the client
side: it loads each tag through `resnet_lab.models.weights.load_pretrained` in a process
whose huggingface_hub read `HF_ENDPOINT` at import (as a deployment sets it), and
prints one JSON line per tag.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a 40-hex commit hash, as the hub sends


class FakeHub:
    """`with FakeHub() as hub: hub.add(repo, filename, data, behaviour)`; `hub.endpoint` is the HF_ENDPOINT."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.behaviour: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}/cdn"  # another host name: huggingface_hub treats it as a CDN

    def add(self, repo_id: str, filename: str, data: bytes, behaviour: str = "ok") -> None:
        assert behaviour in ("ok", "missing", "drop", "cut", "stall")
        self.files[(repo_id, filename)] = data
        self.behaviour[repo_id] = behaviour

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                path = unquote(urlparse(self.path).path)
                if path.startswith("/cdn/"):  # /cdn/{repo_id}/{filename}
                    repo_id, _, filename = path[len("/cdn/"):].rpartition("/")
                    return self._cdn(repo_id, filename, body)
                repo_id, sep, rest = path.lstrip("/").partition("/resolve/")
                filename = rest.partition("/")[2]
                behaviour = hub.behaviour.get(repo_id, "missing")
                if not sep or behaviour == "drop":
                    return self._drop()
                if behaviour == "stall":  # accepts, reads the request, never answers
                    hub._closing.wait()
                    return self._drop()
                data = hub.files.get((repo_id, filename))
                if data is None or behaviour == "missing":
                    self.send_response(404)
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn}/{repo_id}/{filename}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"pointer-etag"')  # the LFS pointer's; the client prefers X-Linked-Etag
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None

            def _cdn(self, repo_id: str, filename: str, body: bool) -> None:
                data = hub.files.get((repo_id, filename))
                behaviour = hub.behaviour.get(repo_id)
                if data is None:
                    return self._drop()
                earlier = [p for m, p in hub.requests[:-1] if m == "GET" and unquote(p) == f"/cdn/{repo_id}/{filename}"]
                if behaviour == "cut" and earlier:
                    return self._drop()  # it died after the first answer
                start = 0
                if rng := self.headers.get("Range"):  # "bytes=N-"
                    start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if not body:
                    return None
                if behaviour == "cut":
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    return self._drop()
                self.wfile.write(data[start:])
                return None

        return Handler


def _load_one(tag: str, out_dir: str) -> dict[str, object]:
    from PIL import Image
    from safetensors.torch import save_file

    from resnet_lab.data.images import eval_transform
    from resnet_lab.models.weights import WeightsUnavailable, load_pretrained

    t = time.perf_counter()
    row: dict[str, object] = {"tag": tag}
    try:
        loaded = load_pretrained(tag)
    except WeightsUnavailable as e:
        row["error"] = str(e)
    else:
        cfg = loaded.pretrained_cfg
        row["source"] = loaded.source
        row["pretrained_cfg"] = {k: cfg.get(k) for k in ("input_size", "test_input_size", "crop_pct", "test_crop_pct",
                                                          "interpolation", "mean", "std")}
        row["model_carries_cfg"] = loaded.model.pretrained_cfg is cfg
        row["input_shape"] = list(eval_transform(cfg)(Image.new("RGB", (320, 240))).shape)
        save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()},
                  str(Path(out_dir) / f"{tag}.safetensors"))
    row["seconds"] = round(time.perf_counter() - t, 3)
    return row


def client(tags: list[str], out_dir: str) -> None:
    """Load the tags concurrently through our loader, then the first again (from the cache); print JSON lines.

    Each line: {tag, seconds, source, pretrained_cfg, input_shape | error}. Loaded state dicts go to
    `out_dir/<tag>.safetensors`, so the test compares them with what was served.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(tags)) as pool:
        rows = list(pool.map(lambda tag: _load_one(tag, out_dir), tags))
    rows.append({**_load_one(tags[0], out_dir), "again": True})
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "client":
        sys.exit("usage: hub_server.py client OUT_DIR TAG [TAG...]")
    client(sys.argv[3:], sys.argv[2])
