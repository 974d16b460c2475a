"""Tests of the server without Nimbus (on a port of its own): run them with
`python3 -m pytest`."""

import json
import threading
import urllib.request

from server import serve


def test_answers_hello_with_the_path():
    server = serve(0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
        with urllib.request.urlopen(url) as res:
            assert res.status == 200
            assert json.load(res) == {"message": "Hello from {{name}}!", "path": "/{{name}}"}
    finally:
        server.shutdown()
        server.server_close()
