"""A Flask app: Nimbus serves it as a WSGI app, one request per call."""

from flask import Flask

app = Flask(__name__)


# The function URL (/fn/{{name}}/) reaches the app at `/`; a route in nimbus.yaml reaches
# it with its full path, so the app answers on both.
@app.get("/")
@app.get("/{{name}}")
def hello():
    return {"message": "Hello from {{name}}!"}
