"""A small FastAPI app: path and query parameters, JSON bodies, headers, cookies."""

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

app = FastAPI()
started = {"value": False}


@app.on_event("startup")
async def startup():
    started["value"] = True


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q, "started": started["value"]}


@app.post("/items")
async def create_item(request: Request, response: Response):
    body = await request.json()
    response.set_cookie("created", str(body.get("name")))
    response.status_code = 201
    return {"created": body, "agent": request.headers.get("user-agent")}


@app.get("/go")
async def go():
    return RedirectResponse("/items/7")


@app.get("/numbers/{n}")
async def numbers(n: int):
    async def gen():
        for i in range(n):
            yield f"{i}\n"

    return StreamingResponse(gen(), media_type="text/plain")
