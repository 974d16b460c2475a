"""A small Flask app: routes, cookies, redirects, binary downloads and uploads."""

from flask import Flask, Response, jsonify, make_response, redirect, request

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(hello="flask", path=request.path)


@app.get("/hello/<name>")
def hello(name):
    return f"Hello, {name}!"


@app.get("/login")
def login():
    response = make_response(jsonify(ok=True))
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark")
    return response


@app.get("/whoami")
def whoami():
    return jsonify(session=request.cookies.get("session"), theme=request.cookies.get("theme"))


@app.get("/old")
def old():
    return redirect("/hello/redirected", code=302)


@app.get("/blob/<int:size>")
def blob(size):
    data = bytes(i % 256 for i in range(size))
    return Response(data, mimetype="application/octet-stream")


@app.get("/stream/<int:chunks>")
def stream(chunks):
    def generate():
        for i in range(chunks):
            yield f"chunk {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.post("/upload")
def upload():
    data = request.get_data()
    return jsonify(size=len(data), first=data[:1].hex(), last=data[-1:].hex())
