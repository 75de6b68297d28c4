"""A small client for the qemu-ga wire protocol, spoken over a QEMU chardev socket.

It talks to the agent directly (no QMP in between): 0xFF + guest-sync-delimited to resynchronise,
then one JSON request at a time, replies are one JSON object per line (see
/work/shared/reference/qemu-guest-agent.md).
"""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any, Callable


class QgaError(Exception):
    """An error reply from the agent: {"error": {"class": ..., "desc": ...}}."""

    def __init__(self, cls: str, desc: str):
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


class QgaTimeout(Exception):
    """A bounded wait ran out; the message carries the guest's console tail."""


class QgaClient:
    def __init__(self, path: str, diagnostics: Callable[[], str] = lambda: ""):
        self.path = path
        self.diagnostics = diagnostics
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def _fail(self, what: str) -> QgaTimeout:
        return QgaTimeout(f"{what}\n--- guest console (tail) ---\n{self.diagnostics()}")

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF or when the deadline passed."""
        left = deadline - time.monotonic()
        if left <= 0 or self.eof:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def sync(self, timeout: float = 60.0, attempt: float = 3.0) -> None:
        """Resynchronise: 0xFF + guest-sync-delimited with a random id, skip everything up to the
        0xFF-prefixed reply carrying that id. Retried every `attempt` seconds until `timeout`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            sync_id = random.randrange(1, 2**62)
            req = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
            self.sock.sendall(b"\xff" + json.dumps(req).encode())
            attempt_end = min(end, time.monotonic() + attempt)
            while True:
                while b"\xff" not in self.buf:
                    self.buf = b""
                    if not self._fill(attempt_end):
                        break
                if b"\xff" not in self.buf:
                    break
                self.buf = self.buf.split(b"\xff", 1)[1]
                line = self._read_line(attempt_end)
                if line is None:
                    break
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if reply == {"return": sync_id}:
                    return
            if self.eof:
                raise self._fail(f"agent socket {self.path} closed during sync")
        raise self._fail(f"no guest-sync-delimited reply from the agent within {timeout:.0f} s")

    def send(self, command: str, arguments: dict | None = None, req_id: Any = None) -> None:
        req: dict[str, Any] = {"execute": command}
        if arguments is not None:
            req["arguments"] = arguments
        if req_id is not None:
            req["id"] = req_id
        self.sock.sendall(json.dumps(req).encode() + b"\n")

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 30.0) -> Any:
        """Run one command; return its "return" value or raise QgaError for an error reply."""
        self.next_id += 1
        req_id = f"test-{self.next_id}"
        self.send(command, arguments, req_id)
        end = time.monotonic() + timeout
        while True:
            line = self._read_line(end)
            if line is None:
                state = "closed the connection" if self.eof else f"did not answer within {timeout:.0f} s"
                raise self._fail(f"agent {state} for {command} {json.dumps(arguments)}")
            reply = json.loads(line)
            if reply.get("id") != req_id:
                continue
            if "error" in reply:
                raise QgaError(reply["error"].get("class", "?"), reply["error"].get("desc", "?"))
            return reply["return"]

    def read_until_eof(self, timeout: float) -> bytes | None:
        """Everything the agent sends until the connection closes; None if it stays open."""
        end = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(end) and not self.eof:
                return None
        data, self.buf = self.buf, b""
        return data
