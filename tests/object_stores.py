"""Local object-store emulators for tests: GCS (gcp-storage-emulator) and S3 (moto's server).

Each runs in a child process (`python tests/object_stores.py gcs|s3 DIR`) on 127.0.0.1 with
ephemeral ports: a `transfer-pipeline` subprocess reaches it as well as the test process, and a
TensorFlow call blocked in C++ can never starve an emulator thread of the GIL.

How each client finds the GCS emulator (`GcsEmulator.env`):
- Beam and google-cloud-storage: `STORAGE_EMULATOR_HOST=http://127.0.0.1:P`. Their credentials:
  `GOOGLE_APPLICATION_CREDENTIALS`, a throwaway service-account key whose token endpoint is the
  child's (without any, Beam retries Google's default credentials for ~25 s per process).
- TensorFlow's own GCS file system (`tf.io.gfile` on gs://) has no endpoint variable: its URLs
  are fixed to https://www.googleapis.com and https://storage.googleapis.com. It uses libcurl,
  which honours `https_proxy`, and reads `CURL_CA_BUNDLE` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`.
  So the child also runs an HTTPS CONNECT proxy that accepts tunnels to those two hosts only,
  terminates TLS with a certificate from a CA generated for this run (`CURL_CA_BUNDLE` points at
  it) and relays the plain HTTP to the emulator (see _fix_request_head for what it corrects).
  TensorFlow reads GCS_* variables once, at import; `https_proxy`, `CURL_CA_BUNDLE` and the token
  are read per request, so a test process may set them after importing TensorFlow.

`_patch_emulator` lists what the emulator gets wrong or lacks for these clients, and the journal
of every create and delete that lets a test replay each state a bucket went through.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.server
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from http import HTTPStatus
from pathlib import Path

GCS_HOSTS = ("storage.googleapis.com", "www.googleapis.com")
S3_REGION = "us-east-1"
IDLE_TIMEOUT_S = 15  # the GCS emulator drops a connection that sends nothing this long
PROJECT = "test-project"
S3_KEY_ID, S3_SECRET = "testing-key-id", "testing-secret"  # moto accepts any


# ------------------------------------------------------------------ child process side


def make_tls_files(folder: Path, hosts: tuple[str, ...] = GCS_HOSTS) -> dict[str, str]:
    """A throwaway CA and a server certificate for `hosts` signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    validity = (now - dt.timedelta(hours=1), now + dt.timedelta(days=1))

    def build(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transfer-pipeline test CA")])
    ca_cert = build(
        ca_name,
        ca_name,
        ca_key.public_key(),
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        ca_name,
        key.public_key(),
        ca_key,
        [
            (x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                False,
            ),
        ],
    )
    pem = serialization.Encoding.PEM
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(pem))
    files["cert"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {k: str(v) for k, v in files.items()}


def _fix_request_head(head: bytes, emulator: str) -> tuple[bytes, bool]:
    """(head as forwarded to the emulator, whether to send the client 100 Continue now).

    - Host becomes the emulator's own address: the emulator builds the links it stores with an
      object (mediaLink, which Beam's client downloads from) and a resumable upload's Location
      from Host, and those must lead back to it.
    - The emulator speaks HTTP/1.0, so the proxy answers libcurl's `Expect: 100-continue` itself
      (RFC 9110 10.1.1); otherwise every upload would wait a second for it.
    """
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
    drop = {b"expect", b"host"}
    kept = [lines[0], b"Host: " + emulator.encode()]
    kept += [ln for ln, n in zip(lines[1:], names, strict=True) if n not in drop]
    expects = any(
        n == b"expect" and b"100-continue" in ln.lower()
        for ln, n in zip(lines[1:], names, strict=True)
    )
    return b"\r\n".join(kept), expects


def _relay(client: socket.socket, upstream: socket.socket, emulator: str, host: str) -> None:
    """Relay one request and its response; the emulator closes the connection after each
    response (HTTP/1.0). The request head is fixed by _fix_request_head. In the response head,
    a resumable upload's Location (built from Host: http://<emulator>/...) becomes
    https://<host>/... as real GCS sends it, so the upload's PUTs come through this proxy too."""
    sockets = [client, upstream]
    heads = {client: b"", upstream: b""}
    while True:
        # An SSL socket may hold decrypted bytes that select() cannot see.
        ready = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(sockets, [], [], 60)
            if not ready:
                return
        for src in ready:
            dst = upstream if src is client else client
            data = src.recv(65536)
            if not data:
                return
            if heads[src] is None:
                dst.sendall(data)
                continue
            heads[src] += data
            if b"\r\n\r\n" not in heads[src]:
                continue
            head, rest = heads[src].split(b"\r\n\r\n", 1)
            heads[src] = None
            if src is client:
                head, expects = _fix_request_head(head, emulator)
                if expects:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                head = head.replace(
                    f"Location: http://{emulator}/".encode(), f"Location: https://{host}/".encode()
                )
            dst.sendall(head + b"\r\n\r\n" + rest)


class _ConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext):
        self.upstream, self.tls = upstream, tls
        super().__init__(("127.0.0.1", 0), _ConnectHandler)


class _ConnectHandler(socketserver.BaseRequestHandler):
    """CONNECT host:443 for a GCS host -> TLS terminated here -> plain HTTP to the emulator."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split()[:2]
        host = target.rsplit(":", 1)[0]
        if method != "CONNECT" or host not in GCS_HOSTS:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(self.server.tls.wrap_socket(self.request, True))
            upstream = stack.enter_context(socket.create_connection(self.server.upstream))
            emulator = "{}:{}".format(*self.server.upstream)
            _relay(client, upstream, emulator, host)


JOURNAL: list[dict] = []  # every object created or deleted in the GCS emulator, in order
_JOURNAL_LOCK = threading.Lock()


def _patch_emulator() -> None:
    """What gcp-storage-emulator lacks for TensorFlow's GCS client, and the mutation journal.

    - A request body with both Content-Length and chunked Transfer-Encoding (libcurl sends both
      on uploads) is read by Content-Length, i.e. as chunk framing (RFC 9112 6.3: chunked wins),
      and chunks are joined in quadratic time (minutes for a SavedModel).
    - An empty request body is read as None and a media upload fails on len(None): TensorFlow's
      directory markers (empty `dir/` objects) could not be created.
    - No `storageLayout` route (TensorFlow asks before renaming a folder, to use a hierarchical
      namespace's folder rename): answered as real GCS does for a flat bucket.
    - Every create and delete is appended to JOURNAL, so a test can replay every state a bucket
      went through (a poller can miss a state that lasts one request; the journal cannot).
    """
    from gcp_storage_emulator import server
    from gcp_storage_emulator.storage import Storage

    # One server thread served every connection in turn: a connection opened but not yet sent on
    # (seen from the test process's own clients) held it, while the clients it waited for could
    # not get through (a hang, never an error). A thread per connection, the storage behind one
    # lock, and an idle connection dropped after IDLE_TIMEOUT_S.
    storage_lock = threading.Lock()

    def serialised(method):
        def handle(self):
            with storage_lock:
                return method(self)

        return handle

    for verb in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        name = f"do_{verb}"
        setattr(server.RequestHandler, name, serialised(getattr(server.RequestHandler, name)))
    server.RequestHandler.timeout = IDLE_TIMEOUT_S

    def run(thread):
        handler = functools.partial(server.RequestHandler, thread._storage)
        thread._httpd = http.server.ThreadingHTTPServer((thread._host, thread._port), handler)
        thread._httpd.daemon_threads = True
        thread.is_running.set()
        thread._httpd.serve_forever()

    server.APIThread.run = run

    def read_raw_data(handler):
        if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            parts = []
            while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(handler.rfile.read(size))
                handler.rfile.readline()
            while handler.rfile.readline().strip():  # trailer fields, up to the blank line
                pass
            return b"".join(parts)
        length = handler.headers.get("Content-Length")
        return handler.rfile.read(int(length)) if length else None

    server._read_raw_data = read_raw_data
    original_read = server._read_data

    def read_data(*args, **kwargs):
        data = original_read(*args, **kwargs)
        return b"" if data is None else data

    server._read_data = read_data

    def storage_layout(request, response, storage, *args, **kwargs):
        name = request.params["bucket_name"]
        if not storage.buckets.get(name):
            response.status = HTTPStatus.NOT_FOUND
            return
        response.json(
            {
                "kind": "storage#storageLayout",
                "bucket": name,
                "location": "US",
                "locationType": "multi-region",
                "hierarchicalNamespace": {"enabled": False},
            }
        )

    route = r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$"
    server.HANDLERS = ((route, {"GET": storage_layout}), *server.HANDLERS)

    def journaled(method, op):
        def wrapper(self, bucket_name, file_name, *args, **kwargs):
            result = method(self, bucket_name, file_name, *args, **kwargs)
            with _JOURNAL_LOCK:
                JOURNAL.append({"op": op, "bucket": bucket_name, "name": file_name})
            return result

        return wrapper

    Storage.create_file = journaled(Storage.create_file, "put")
    Storage.delete_file = journaled(Storage.delete_file, "delete")


class _ControlHandler(http.server.BaseHTTPRequestHandler):
    """POST /token: the OAuth endpoint of the throwaway service account (any request gets a
    token, so google-auth works without a network). GET /journal?bucket=B: JOURNAL's entries
    for bucket B."""

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json({"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"})

    def do_GET(self) -> None:  # noqa: N802
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        bucket = query.get("bucket", [""])[0]
        with _JOURNAL_LOCK:
            self._json([e for e in JOURNAL if e["bucket"] == bucket])

    def log_message(self, *args) -> None:
        pass


def _service_account(token_uri: str) -> dict:
    """A throwaway service-account key whose token endpoint is ours (google-auth honours a
    service account's token_uri; an authorized_user's is always Google's)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": f"pipeline@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


def _serve_gcs(folder: Path) -> dict:
    from gcp_storage_emulator.server import create_server

    _patch_emulator()
    emulator = create_server("127.0.0.1", 0, in_memory=True)
    emulator.start()
    port = emulator._api._httpd.server_address[1]  # bound to port 0: the real one is here
    files = make_tls_files(folder)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(files["cert"], files["key"])
    proxy = _ConnectProxy(("127.0.0.1", port), tls)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    control = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ControlHandler)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    adc = folder / "application_default_credentials.json"
    adc.write_text(
        json.dumps(_service_account(f"http://127.0.0.1:{control.server_address[1]}/token"))
    )
    return {
        "port": port,
        "proxy_port": proxy.server_address[1],
        "ca": files["ca"],
        "credentials": str(adc),
        "control_port": control.server_address[1],
    }


def _serve_s3(folder: Path) -> dict:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return {"port": server.get_host_and_port()[1]}


def _child_main(kind: str, folder: str) -> None:
    info = {"gcs": _serve_gcs, "s3": _serve_s3}[kind](Path(folder))
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
    os._exit(0)  # the emulators' server threads are not daemons


# ------------------------------------------------------------------ test process side


class _Emulator:
    kind = ""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.log = open(folder / f"{self.kind}-emulator.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.kind, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(
                f"{self.kind} emulator did not start: {(folder / self.log.name).read_text()}"
            )
        self.info = json.loads(line)
        self.port: int = self.info["port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    scheme = ""

    def create_bucket(self, name: str) -> None:
        raise NotImplementedError

    def put(self, bucket: str, name: str, data: bytes) -> None:
        raise NotImplementedError

    def new_bucket(self) -> Bucket:
        """A bucket with a fresh name, so tests sharing one emulator never see each other."""
        bucket = Bucket(self, f"test-{uuid.uuid4().hex[:12]}")
        self.create_bucket(bucket.name)
        return bucket


class Bucket:
    """One bucket of an emulator: `url` is `gs://name` or `s3://name`."""

    def __init__(self, emulator: _Emulator, name: str):
        self.emulator, self.name = emulator, name
        self.url = f"{emulator.scheme}://{name}"

    def put(self, name: str, data: bytes) -> None:
        self.emulator.put(self.name, name, data)

    def upload(self, local_root: Path, prefix: str) -> str:
        """Copy every file below local_root to `<prefix>/<relative path>`; returns that URL."""
        for path in sorted(Path(local_root).rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(local_root).as_posix()}", path.read_bytes())
        return f"{self.url}/{prefix}"


class GcsEmulator(_Emulator):
    """gcp-storage-emulator plus the TLS-terminating proxy that lets TensorFlow reach it."""

    kind = "gcs"
    scheme = "gs"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Beam, google-cloud-storage and TensorFlow at the emulator."""
        proxy = f"http://127.0.0.1:{self.info['proxy_port']}"
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.info["ca"],
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "NO_GCE_CHECK": "true",
            "GOOGLE_APPLICATION_CREDENTIALS": self.info["credentials"],
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }

    def _call(self, url: str, data: bytes | None = None, content_type: str = "") -> bytes:
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(url, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        self._call(f"{self.endpoint}/storage/v1/b?project={PROJECT}", body, "application/json")

    def put(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        url = f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{query}"
        self._call(url, data, "application/octet-stream")

    def journal(self, bucket: str) -> list[dict]:
        """Every object created ({"op": "put", "name": ...}) or deleted ("delete") in bucket, in
        the order the emulator applied them."""
        port = self.info["control_port"]
        return json.loads(self._call(f"http://127.0.0.1:{port}/journal?bucket={bucket}"))

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under prefix, straight from the emulator (no client caches)."""
        names, token = [], None
        while True:
            query = f"prefix={urllib.parse.quote(prefix)}"
            if token:
                query += f"&pageToken={urllib.parse.quote(token)}"
            page = json.loads(self._call(f"{self.endpoint}/storage/v1/b/{bucket}/o?{query}"))
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)


class S3Emulator(_Emulator):
    """moto's S3 server. Beam finds it with `--s3_endpoint_url`; credentials from the env."""

    kind = "s3"
    scheme = "s3"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    @property
    def beam_args(self) -> list[str]:
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_region_name={S3_REGION}"]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, bucket: str, name: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=name, Body=data)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
