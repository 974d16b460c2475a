"""A FastAPI app: Nimbus serves it as an ASGI app."""

from fastapi import FastAPI

app = FastAPI()


# The function URL (/fn/{{name}}/) reaches the app at `/`; a route in nimbus.yaml reaches
# it with its full path, so the app answers on both.
@app.get("/")
@app.get("/{{name}}")
def hello():
    return {"message": "Hello from {{name}}!"}
