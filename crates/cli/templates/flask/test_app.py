"""Tests of the app without a server (Flask's test client): run them with
`python3 -m pytest` where requirements.txt is installed."""

from app import app


def test_answers_on_the_function_url_and_the_route():
    client = app.test_client()
    for path in ("/", "/{{name}}"):
        res = client.get(path)
        assert res.status_code == 200, path
        assert res.get_json() == {"message": "Hello from {{name}}!"}
