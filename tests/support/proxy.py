"""A tiny reverse proxy for tests: ``python -m tests.support.proxy <port> <upstream base URL>``.

It forwards every request to the upstream and appends the peer's address to ``X-Forwarded-For`` and
sets ``X-Forwarded-Proto``, as nginx's ``proxy_add_x_forwarded_for`` does: what a client wrote in the
header itself stays in front, so only the last entry (the one this proxy added) can be trusted.
"""

from __future__ import annotations

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})


def _handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            prior = self.headers.get("X-Forwarded-For")
            peer = self.client_address[0]
            headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
            headers["X-Forwarded-Proto"] = "http"
            connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _forward  # noqa: N815 - http.server names its handlers so

    return Forward


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(upstream))
    print(f"proxy listening on 127.0.0.1:{port} for {upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
