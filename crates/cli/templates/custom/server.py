"""A single-file HTTP server: Nimbus starts it with the port to serve on and proxies
requests to it."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps the connection open, so Nimbus reuses it from request to request.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.reply(200, {"message": "Hello from {{name}}!", "path": self.path})

    def reply(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # The standard library logs requests to stderr, which Nimbus records at level
        # error; stdout is level info.
        print(format % args, flush=True)


def serve(port):
    """Serves on 127.0.0.1:`port` (0 picks a free port); the caller runs the server."""
    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


if __name__ == "__main__":
    serve(int(sys.argv[1])).serve_forever()
