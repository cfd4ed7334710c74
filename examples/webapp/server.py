"""A small HTTP API with a health endpoint."""

import os
import pathlib
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8077"))  # taskmux assigns it (port = "auto")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok"
        else:
            body = pathlib.Path("data.json").read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"api: {fmt % args}", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as C-c does
    with ThreadingHTTPServer(("127.0.0.1", PORT), Handler) as server:
        print(f"api listening on http://127.0.0.1:{PORT}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("api: stopped", flush=True)
