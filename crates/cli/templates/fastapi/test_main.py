"""Tests of the app without a server: run them with `python3 -m pytest` where
requirements.txt is installed. (FastAPI's TestClient would need httpx as well; the
endpoint is a plain function, so it is called directly.)"""

from main import app, hello


def test_answers_hello():
    assert hello() == {"message": "Hello from {{name}}!"}


def test_serves_the_function_url_and_the_route():
    paths = {route.path for route in app.routes}
    assert {"/", "/{{name}}"} <= paths
