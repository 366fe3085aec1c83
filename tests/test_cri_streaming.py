"""Exec and port-forward through the CRI streaming server, with a test client that speaks the
remotecommand WebSocket protocol as the documents describe it (channel byte first; v5's close
message; the exit Status on the error channel; port-forward's channel pair per port, each
opened by the port number): output and exit codes, stdin and its end, a port in the pod's
network namespace, a terminal and its size, and the refusals (a token used twice, no protocol
of ours, no stream asked for)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, RejectData,
                            Request)


class Client:
    """One WebSocket connection to a streaming URL."""

    def __init__(self, url: str, protocols: list[str]) -> None:
        parts = urllib.parse.urlparse(url)
        assert parts.hostname is not None and parts.port is not None
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{parts.hostname}:{parts.port}", target=parts.path,
                                               subprotocols=protocols)))
        self.accepted: AcceptConnection | None = None
        self.refused: tuple[int, bytes] | None = None
        self.frames: list[bytes] = []
        self.closed = False
        while self.accepted is None and self.refused is None and not self.closed:
            self._pump()
        if self.refused is not None:
            while not self.closed:   # the refusal's body, to its end
                self._pump()
            self.sock.close()

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return
        self.ws.receive_data(data)
        pending = b""
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            elif isinstance(event, RejectConnection):
                self.refused = (event.status_code, b"")
            elif isinstance(event, RejectData) and self.refused is not None:
                self.refused = (self.refused[0], self.refused[1] + event.data)
            elif isinstance(event, BytesMessage):
                pending += event.data
                if event.message_finished:
                    self.frames.append(pending)
                    pending = b""
            elif isinstance(event, CloseConnection):
                self.closed = True

    def received(self, channel: int) -> bytes:
        return b"".join(f[1:] for f in self.frames if f[0] == channel)

    def until(self, done: Any) -> None:
        while not done() and not self.closed:
            self._pump()

    def close(self) -> None:
        """The client's side of a session that lasts until the client ends it (port-forward)."""
        self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.until(lambda: False)
        self.sock.close()

    def send(self, channel: int, data: bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data=bytes([channel]) + data)))

    def finish(self) -> tuple[dict[int, bytes], dict[str, Any]]:
        """Everything until the server closes: the output by channel, and the exit Status."""
        while not self.closed:
            self._pump()
        self.sock.close()
        out: dict[int, bytes] = {}
        for frame in self.frames:
            out[frame[0]] = out.get(frame[0], b"") + frame[1:]
        return out, json.loads(out.pop(3, b"{}") or b"{}")


def exec_url(cri: Cri, cid: str, *cmd: str, stdin: bool = False, tty: bool = False) -> str:
    return str(cri.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=list(cmd), stdin=stdin, stdout=True,
                                               stderr=True, tty=tty)).url)


@pytest.fixture
def container(cri: Cri) -> Any:
    pod_id, pod = cri.run_pod("streamed")
    yield cri.start(pod_id, pod, "main", "sleep", "3600")
    cri.remove_all()


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_output_and_a_non_zero_exit_code(cri: Cri, container: str, protocol: str) -> None:
    url = exec_url(cri, container, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    client = Client(url, ["base64.channel.k8s.io", protocol])
    assert client.accepted is not None and client.accepted.subprotocol == protocol
    out, status = client.finish()
    assert out == {1: b"out\n", 2: b"err\n"}
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_stdin_and_its_end(cri: Cri, container: str) -> None:
    client = Client(exec_url(cri, container, "sh", "-c", "cat; echo done", stdin=True), ["v5.channel.k8s.io"])
    client.send(0, b"hello ")
    client.send(0, b"world\n")
    client.send(255, bytes([0]))            # v5: no more stdin
    out, status = client.finish()
    assert out == {1: b"hello world\ndone\n"} and status["status"] == "Success"


def test_refusals(cri: Cri, container: str) -> None:
    url = exec_url(cri, container, "true")
    assert Client(url, ["v4.channel.k8s.io"]).finish()[1]["status"] == "Success"
    again = Client(url, ["v4.channel.k8s.io"])           # a URL is good once
    assert again.refused is not None and again.refused[0] == 404 and b"used already" in again.refused[1]
    foreign = Client(exec_url(cri, container, "true"), ["channel.k8s.io"])
    assert foreign.refused is not None and foreign.refused[0] == 400 and b"v5.channel.k8s.io" in foreign.refused[1]
    with pytest.raises(grpc.RpcError) as refused:
        cri.runtime.Exec(pb.ExecRequest(container_id=container, cmd=["true"]))   # no stream at all
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_port_forward_reaches_a_port_in_the_pods_network(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("forwarded")
    cri.start(pod_id, pod, "web", "sh", "-c", "mkdir -p /www && echo forwarded > /www/index.html && "
              "exec httpd -f -p 8080 -h /www")
    try:
        url = str(cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080, 9])).url)
        assert "/portforward/" in url
        client = Client(url, ["v4.channel.k8s.io"])
        assert client.accepted is not None and client.accepted.subprotocol == "v4.channel.k8s.io"
        opened = (8080).to_bytes(2, "little"), (9).to_bytes(2, "little")
        try:
            client.until(lambda: b"dial tcp" in client.received(3) and all(client.received(c) for c in (0, 1, 2)))
            assert [client.received(c)[:2] for c in (0, 1, 2, 3)] == [opened[0], opened[0], opened[1], opened[1]]
            assert b"dial tcp 127.0.0.1:9" in client.received(3)        # nothing listens on port 9 there
        finally:
            client.close()
        for attempt in range(50):   # httpd may not listen yet: a fresh session each time
            url = str(cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])).url)
            client = Client(url, ["v4.channel.k8s.io"])
            try:
                client.send(0, b"GET / HTTP/1.0\r\n\r\n")
                client.until(lambda: b"forwarded" in client.received(0) or len(client.received(1)) > 2)
                if client.received(1)[2:]:    # refused: httpd is not listening yet
                    time.sleep(0.1)
                    continue
                break
            finally:
                client.close()
        assert client.received(0).startswith(opened[0] + b"HTTP/1.") and b"forwarded" in client.received(0)
    finally:
        cri.remove_all()


def test_a_terminal_with_resize_and_an_exit_code(cri: Cri, container: str) -> None:
    client = Client(exec_url(cri, container, "sh", "-c", "read x; stty size; echo got $x; exit 7", stdin=True,
                             tty=True), ["v5.channel.k8s.io"])
    client.send(4, json.dumps({"Width": 100, "Height": 30}).encode())
    client.send(0, b"hello\r")
    out, status = client.finish()
    assert set(out) == {1}                      # one stream: the terminal's
    lines = out[1].decode().replace("\r\n", "\n").splitlines()
    assert lines == ["hello", "30 100", "got hello"]   # what was typed echoes, as on a terminal
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


def test_skiff_cri_exec_interactive(cri: Cri, container: str) -> None:
    """crictl's `exec -i`: Exec's URL, then the stream, from the command line."""
    done = subprocess.run([sys.executable, "-m", "skiff.cli", "cri", "exec", "-i", "--socket", cri.config.socket,
                           container, "sh", "-c", "tr a-z A-Z; exit 5"], input=b"loud\n", capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (5, b"LOUD\n"), done.stderr


def spdy_upgrade(sock: socket.socket, url: urllib.parse.ParseResult, *protocols: str) -> Any:
    """The HTTP upgrade to SPDY/3.1 as kubectl sends it; the SPDY connection on the socket."""
    from skiff.cri.streaming import spdy

    offered = "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
    sock.sendall(f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                 f"{offered}Content-Length: 0\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and f"x-stream-protocol-version: {protocols[0]}".encode() in head.lower()
    return spdy.Connection.over(sock, rest)


def spdy_frames(conn: Any, until_fin: int | None = None) -> tuple[set[int], dict[int, bytes]]:
    """The streams replied to and the data by stream, until GOAWAY, the end, or `until_fin`'s FIN."""
    from skiff.cri.streaming import spdy

    replied: set[int] = set()
    out: dict[int, bytes] = {}
    while True:
        try:
            frame = conn.read()
        except EOFError:
            break
        if frame.kind == spdy.SYN_REPLY:
            replied.add(frame.stream_id)
        elif frame.kind == 0:
            out[frame.stream_id] = out.get(frame.stream_id, b"") + frame.data
            if frame.fin and frame.stream_id == until_fin:
                break
        elif frame.kind == spdy.GOAWAY:
            break
    return replied, out


def test_exec_over_spdy(cri: Cri, container: str) -> None:
    """kubectl's and crictl's older transport: an HTTP upgrade to SPDY/3.1, then a SPDY stream
    per standard stream, named by its streamtype header; stdin ends with its stream's FIN."""
    out = spdy_session(exec_url(cri, container, "sh", "-c", "cat; echo err >&2; exit 2", stdin=True),
                       b"spdy\n", "v4.channel.k8s.io", "channel.k8s.io")
    assert (out.get("stdout"), out.get("stderr")) == (b"spdy\n", b"err\n")
    status = json.loads(out["error"])
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"][0]["message"] == "2"


def spdy_session(url: str, stdin: bytes, *protocols: str) -> dict[str, bytes]:
    """A remotecommand session over SPDY as kubectl opens one (error, stdin, stdout, stderr),
    `stdin` sent with its FIN; what came back on each stream, once every stream was replied to."""
    parts = urllib.parse.urlparse(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        conn = spdy_upgrade(sock, parts, *protocols)
        streams = {"error": 1, "stdin": 3, "stdout": 5, "stderr": 7}
        for kind, stream in streams.items():
            conn.syn_stream(stream, {"streamtype": kind})
        conn.data(streams["stdin"], stdin, fin=True)
        replied, out = spdy_frames(conn)
    assert replied == set(streams.values())
    return {kind: out[stream] for kind, stream in streams.items() if stream in out}


def test_port_forward_over_spdy(cri: Cri) -> None:
    """portforward.k8s.io: an error and a data stream per forwarded connection, paired by
    their requestid; the pod's end of the connection is the data stream's FIN."""
    pod_id, pod = cri.run_pod("spdy-forwarded")
    cri.start(pod_id, pod, "web", "sh", "-c", "mkdir -p /www && echo over-spdy > /www/index.html && "
              "exec httpd -f -p 8080 -h /www")
    try:
        for _ in range(50):   # httpd may not listen yet
            url = urllib.parse.urlparse(str(cri.runtime.PortForward(
                pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])).url))
            assert url.hostname is not None and url.port is not None
            with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
                conn = spdy_upgrade(sock, url, "portforward.k8s.io")
                conn.syn_stream(1, {"streamtype": "error", "port": "8080", "requestid": "0"})
                conn.syn_stream(3, {"streamtype": "data", "port": "8080", "requestid": "0"})
                conn.data(3, b"GET / HTTP/1.0\r\n\r\n")
                replied, out = spdy_frames(conn, until_fin=3)
                conn.syn_stream(5, {"streamtype": "error", "port": "9", "requestid": "1"})   # nothing listens
                conn.syn_stream(7, {"streamtype": "data", "port": "9", "requestid": "1"})
                _, failed = spdy_frames(conn, until_fin=5)
            if b"over-spdy" in out.get(3, b""):
                break
            time.sleep(0.1)
        assert replied == {1, 3} and out[3].startswith(b"HTTP/1.") and b"over-spdy" in out[3]
        assert b"dial tcp 127.0.0.1:9" in failed.get(5, b"")
    finally:
        cri.remove_all()


def test_attach_to_a_container_started_with_stdin(cri: Cri) -> None:
    """Its stdin through its monitor, its output as it is logged; with stdin_once, its stdin
    ends with the first attach."""
    pod_id, pod = cri.run_pod("attached")

    def container(name: str, *, once: bool) -> str:
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=IMAGE),
                                    command=["sh", "-c", "while read x; do echo got $x; done; echo bye >&2"],
                                    log_path=f"{name}/0.log", stdin=True, stdin_once=once)
        cid = str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        return cid

    def attach(cid: str) -> Client:
        return Client(str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                                                stderr=True)).url), ["v5.channel.k8s.io"])
    try:
        kept = container("kept", once=False)
        for word in (b"one", b"two"):   # two sessions in a row: stdin stays open between them
            client = attach(kept)
            try:
                client.send(0, word + b"\n")
                client.until(lambda: b"got " + word in client.received(1))
            finally:
                client.close()
        assert cri.status(kept).state == pb.CONTAINER_RUNNING

        once = container("once", once=True)
        client = attach(once)
        try:
            client.send(0, b"last\n")
            client.until(lambda: b"got last" in client.received(1))
        finally:
            client.close()                                  # stdin ends: the loop reads EOF
        assert cri.wait_exited(once).state == pb.CONTAINER_EXITED
        with pytest.raises(grpc.RpcError) as refused:
            cri.runtime.Attach(pb.AttachRequest(container_id=once, stdout=True))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        cri.remove_all()


def run_interactive(cri: Cri, pod_id: str, pod: pb.PodSandboxConfig, name: str, command: list[str], *,
                    tty: bool = False, once: bool = False) -> str:
    """A container created with stdin (and a terminal if `tty`), as `kubectl run -i [-t]` makes one."""
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=IMAGE),
                                command=command, log_path=f"{name}/0.log", stdin=True, stdin_once=once, tty=tty)
    cid = str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    return cid


def test_attach_to_a_containers_terminal(cri: Cri) -> None:
    """A container with a tty runs on a pty whose master its monitor holds: attach types into
    it, resizes it, and sees the shell's prompt (output with no newline yet); the log has the
    terminal's output too, and the session ends with the container, with a Success status."""
    pod_id, pod = cri.run_pod("terminal")
    try:
        cid = run_interactive(cri, pod_id, pod, "shell", ["sh"], tty=True)
        client = Client(str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                                                tty=True)).url), ["v5.channel.k8s.io"])
        client.send(4, json.dumps({"Width": 90, "Height": 20}).encode())
        client.send(0, b"stty size; echo $((6 * 7))\r")
        # the next prompt, with no newline after it (busybox's line editing then asks where the cursor is)
        client.until(lambda: b"42\r\n/ # " in client.received(1))
        client.send(0, b"exit\r")
        out, status = client.finish()
        assert set(out) == {1} and b"20 90" in out[1] and status["status"] == "Success"
        assert cri.wait_exited(cid).state == pb.CONTAINER_EXITED
        logged = (Path(pod.log_directory) / "shell" / "0.log").read_text()
        assert " stdout " in logged and "42" in logged and " stderr " not in logged
    finally:
        cri.remove_all()


def test_a_terminal_stays_after_a_stdin_once_attach(cri: Cri) -> None:
    """stdin_once ends a pipe's stdin with the first attach, not a terminal (containerd closes
    stdin only without a tty): the shell goes on, and a second attach types into it."""
    pod_id, pod = cri.run_pod("terminal-once")
    try:
        cid = run_interactive(cri, pod_id, pod, "shell", ["sh"], tty=True, once=True)
        for word in (b"first", b"second"):
            client = Client(str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                                                    tty=True)).url), ["v5.channel.k8s.io"])
            try:
                client.send(0, b"echo " + word + b"-$((1 + 1))\r")
                client.until(lambda: word + b"-2\r\n" in client.received(1))
            finally:
                client.close()
            assert cri.status(cid).state == pb.CONTAINER_RUNNING
    finally:
        cri.remove_all()


def test_attach_follows_a_rotated_log(cri: Cri) -> None:
    """kubelet rotates a log by renaming it and asking for ReopenContainerLog: an attached
    client goes on seeing what the container writes, now in the new file."""
    pod_id, pod = cri.run_pod("rotated")
    try:
        cid = run_interactive(cri, pod_id, pod, "echo", ["sh", "-c", "while read x; do echo got $x; done"])
        client = Client(str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True,
                                                                stdout=True)).url), ["v5.channel.k8s.io"])
        try:
            client.send(0, b"before\n")
            client.until(lambda: b"got before" in client.received(1))
            log = Path(pod.log_directory) / "echo" / "0.log"
            log.rename(log.with_name("0.log.1"))
            cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
            client.send(0, b"after\n")
            client.until(lambda: b"got after" in client.received(1))
            assert "got after" in log.read_text()
        finally:
            client.close()
    finally:
        cri.remove_all()


def test_attach_over_spdy(cri: Cri) -> None:
    """kubectl's older transport for attach: a SPDY stream per standard stream; with
    stdin_once, stdin's FIN ends the container's stdin."""
    pod_id, pod = cri.run_pod("spdy-attached")
    try:
        cid = run_interactive(cri, pod_id, pod, "reader", ["sh", "-c", "while read x; do echo got $x; done; "
                                                           "echo bye >&2"], once=True)
        url = str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)).url)
        out = spdy_session(url, b"spdy\n", "v4.channel.k8s.io")
        assert (out.get("stdout"), out.get("stderr")) == (b"got spdy\n", b"bye\n")
        assert json.loads(out["error"])["status"] == "Success"
        assert cri.wait_exited(cid).state == pb.CONTAINER_EXITED
    finally:
        cri.remove_all()


def test_port_forward_tunnelled_in_a_websocket(cri: Cri) -> None:
    """kubectl 1.31 and later: SPDY's bytes in WebSocket binary messages
    (SPDY/3.1+portforward.k8s.io), the same streams as over an upgraded connection."""
    from skiff.cri.streaming import spdy

    pod_id, pod = cri.run_pod("tunnelled")
    cri.start(pod_id, pod, "web", "sh", "-c", "mkdir -p /www && echo tunnelled > /www/index.html && "
              "exec httpd -f -p 8080 -h /www")
    try:
        for _ in range(50):   # httpd may not listen yet
            client = Client(str(cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])).url),
                            ["SPDY/3.1+portforward.k8s.io"])
            assert client.accepted is not None and client.accepted.subprotocol == "SPDY/3.1+portforward.k8s.io"

            def chunks() -> Any:
                while not client.closed:
                    client._pump()
                    while client.frames:
                        yield client.frames.pop(0)
            conn = spdy.Connection.over_chunks(chunks(), lambda data: client.sock.sendall(
                client.ws.send(Message(data=data))))
            conn.syn_stream(1, {"streamtype": "error", "port": "8080", "requestid": "0"})
            conn.syn_stream(3, {"streamtype": "data", "port": "8080", "requestid": "0"})
            conn.data(3, b"GET / HTTP/1.0\r\n\r\n")
            replied, out = spdy_frames(conn, until_fin=3)
            client.close()
            if b"tunnelled" in out.get(3, b""):
                break
            time.sleep(0.1)
        assert replied == {1, 3} and out[3].startswith(b"HTTP/1.") and out[3].endswith(b"tunnelled\n")
    finally:
        cri.remove_all()


def refused(server: Any, head: bytes) -> tuple[bytes, bytes]:
    """The streaming server's answer to a request head: its status line and its body."""
    url = urllib.parse.urlparse(server.base_url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(head)
        received = b""
        while data := sock.recv(65536):
            received += data
    head_out, _, body = received.partition(b"\r\n\r\n")
    return head_out.split(b"\r\n")[0], body


def test_refusals_say_what_was_wrong() -> None:
    """A SPDY upgrade without a Host header (h11 will not take it) and a request with no
    WebSocket upgrade get a 400 that says what was wrong, not a closed connection; an unknown
    token over SPDY, a 404 that says so."""
    from skiff.cri.streaming.server import StreamServer

    server = StreamServer(None, None)  # type: ignore[arg-type]   # refusals reach neither
    try:
        status, body = refused(server, b"POST /exec/x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                                       b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400") and b"Host" in body, (status, body)
        status, body = refused(server, b"GET /exec/x HTTP/1.1\r\nHost: here\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400") and b"Connection: Upgrade" in body, (status, body)
        status, body = refused(server, b"GET /exec/x HTTP/1.1\r\nHost: here\r\nConnection: Upgrade\r\n"
                                       b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 404") and b"used already" in body, (status, body)
    finally:
        server.close()


def test_the_client_reads_frames_that_came_with_the_servers_101() -> None:
    """skiff's own client (client.py): a server's first messages may arrive in the same read as
    its 101; WebSocketPeer.messages starts with them."""
    import threading

    from skiff.cri.streaming import client

    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                ws = WSConnection(ConnectionType.SERVER)
                while not any(isinstance(e, Request) for e in ws.events()):
                    ws.receive_data(conn.recv(65536))
                conn.sendall(ws.send(AcceptConnection(subprotocol="v4.channel.k8s.io"))   # all in one write
                             + ws.send(Message(data=b"\x01early")) + ws.send(CloseConnection(code=1000)))
                conn.recv(65536)   # the client's answer to the close
        server = threading.Thread(target=serve)
        server.start()
        peer, accepted = client._open(f"http://127.0.0.1:{listener.getsockname()[1]}/exec/x", ["v4.channel.k8s.io"])
        with peer.sock:
            assert accepted == "v4.channel.k8s.io" and list(peer.messages()) == [b"\x01early"]
            peer.close()
        server.join()
