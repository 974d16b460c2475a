"""Nimbus Python runtime bootstrap.

Runs inside a function instance. Fd 0 is the instance channel to the Nimbus server (a Unix
socket carrying length-prefixed frames, see protocol.rs); stdin itself is /dev/null. This
file loads the user's handler once, then answers invoke frames for the life of the process,
so module-level state and imports survive between invocations, as on AWS Lambda.
"""

import contextvars
import inspect
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback

INVOKE, RESULT, ERROR, LOG, READY, INIT_ERROR = 1, 2, 3, 4, 5, 6
REQUEST, RESPONSE_HEAD, RESPONSE_CHUNK, RESPONSE_END = 7, 8, 9, 10
INITIALIZE, PRE_STOP, PING = 11, 12, 14
_HEADER = struct.Struct(">IBII")
# The largest result a call may return: model::limits::PAYLOAD_BYTES_MAX, as on Lambda (a
# test in runtimes.rs checks the two agree). A larger one is the function's error, and
# the instance stays.
_RESPONSE_MAX_BYTES = 6291456

_send_lock = threading.Lock()
_sock = _rfile = None


def _take_stdin():
    """Moves the socket on fd 0 to a new descriptor and puts /dev/null in its place, so a
    handler reading stdin gets EOF instead of protocol bytes."""
    fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return socket.socket(fileno=fd)


def _open_channel():
    global _sock, _rfile
    _sock = _take_stdin()
    _rfile = _sock.makefile("rb", buffering=256 * 1024)

# The invocation a piece of code runs for; log lines are attributed with it.
_current = contextvars.ContextVar("nimbus_invocation", default=0)


def _send(kind, ident, meta, body):
    head = _HEADER.pack(9 + len(meta) + len(body), kind, ident, len(meta))
    with _send_lock:
        if len(body) < 65536:
            _sock.sendall(head + meta + body)
        else:
            # Large bodies go out as they are rather than being copied into one buffer.
            _sock.sendall(head + meta)
            _sock.sendall(body)


def _frame(kind, ident, meta, body):
    return _HEADER.pack(9 + len(meta) + len(body), kind, ident, len(meta)) + meta + body


def _recv():
    head = _rfile.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    length, kind, ident, meta_len = _HEADER.unpack(head)
    rest = _rfile.read(length - 9)
    return kind, ident, rest[:meta_len], rest[meta_len:]


class _Capture:
    """Replaces sys.stdout / sys.stderr: each complete line becomes a log frame that
    carries the invocation it was written from."""

    def __init__(self, stream):
        self._stream = stream.encode()
        self._partial = {}
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        ident = _current.get()
        pending = self._partial.get(ident, "") + text
        if "\n" in pending:
            lines, _, pending = pending.rpartition("\n")
            for line in lines.split("\n"):
                _send(LOG, ident, self._stream, line.encode("utf-8", "replace"))
        if pending:
            self._partial[ident] = pending
        else:
            self._partial.pop(ident, None)
        return len(text)

    def flush_invocation(self, ident):
        rest = self._partial.pop(ident, None)
        if rest:
            _send(LOG, ident, self._stream, rest.encode("utf-8", "replace"))

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True

    def fileno(self):
        raise OSError("the function's output is captured by Nimbus and has no file descriptor")


class _LogHandler(logging.Handler):
    """Sends `logging` records as log frames with their level."""

    def emit(self, record):
        try:
            _send(LOG, _current.get(), record.levelname.encode(), self.format(record).encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)


def _xray_trace_id(traceparent):
    """`Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}` of a W3C traceparent
    (`00-{32 hex trace}-{16 hex span}-{flags}`), or of a fresh trace without one."""
    parts = (traceparent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        trace, span, sampled = parts[1], parts[2], int(parts[3] or "0", 16) & 1
    else:
        trace, span, sampled = os.urandom(16).hex(), os.urandom(8).hex(), 0
    return "Root=1-%s-%s;Parent=%s;Sampled=%d" % (trace[:8], trace[8:], span, sampled)


class CognitoIdentity:
    __slots__ = ["cognito_identity_id", "cognito_identity_pool_id"]

    def __init__(self, identity_id=None, pool_id=None):
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id


class Client:
    __slots__ = ["installation_id", "app_title", "app_version_name", "app_version_code",
                 "app_package_name"]

    def __init__(self, fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))


class ClientContext:
    __slots__ = ["client", "custom", "env"]

    def __init__(self, fields):
        client = fields.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = fields.get("custom")
        self.env = fields.get("env")


def _client_context(text):
    if not text:
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    return ClientContext(fields) if isinstance(fields, dict) else None


class Context:
    """The Lambda-compatible context object (also what Function Compute handlers use)."""

    def __init__(self, meta):
        self.aws_request_id = self.request_id = meta["request_id"]
        self._deadline_ms = meta["deadline_ms"]
        self.attempt = meta.get("attempt", 1)
        # The call's W3C trace context, to pass on to what the function calls.
        self.traceparent = meta.get("traceparent")
        self.function_name = _FUNCTION_NAME
        self.function_version = _FUNCTION_VERSION
        self.memory_limit_in_mb = _MEMORY_MB
        # As Lambda names it: with the qualifier when the call named one.
        self.invoked_function_arn = meta.get("invoked_function_arn") or (
            "arn:aws:lambda:%s:%s:function:%s" % (
                os.environ.get("AWS_REGION", "us-east-1"),
                os.environ.get("NIMBUS_ACCOUNT_ID", "000000000000"), _FUNCTION_NAME))
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/" + _FUNCTION_NAME)
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", _INSTANCE_ID)
        # The call's trace in X-Ray's form, where Lambda's runtimes put it for each call
        # (the AWS SDKs' recursion detection and Powertools' Tracer read it there).
        # A call that continues a chain (a bucket event's) carries its hop count as
        # `Lineage`: botocore sends the variable back as X-Amzn-Trace-Id, and the object
        # store stops a chain that loops.
        trace_id = _xray_trace_id(self.traceparent)
        if meta.get("lineage"):
            trace_id += ";Lineage=nimbus:%d" % meta["lineage"]
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
        # As Lambda's Python runtime: an identity object (Cognito's, empty here) and the
        # caller's X-Amz-Client-Context as an object with client, custom and env.
        self.identity = CognitoIdentity()
        self.client_context = _client_context(meta.get("client_context"))
        self.logger = _CONTEXT_LOGGER

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _error_body(exc, error_type=None, message=None):
    tb = traceback.format_tb(exc.__traceback__) if exc.__traceback__ else []
    return json.dumps({
        "errorType": error_type or type(exc).__name__,
        "errorMessage": message if message is not None else str(exc),
        "stackTrace": tb,
    }).encode()


def _too_large(size):
    return json.dumps({
        "errorType": "Function.ResponseSizeTooLarge",
        "errorMessage": "Response payload size (%d bytes) exceeded maximum allowed payload "
                        "size (%d bytes)." % (size, _RESPONSE_MAX_BYTES),
        "stackTrace": [],
    }).encode()


def _run_hook(ident, meta):
    """Runs the initializer or pre-stop hook named in `meta`: `def hook(context)`."""
    token = _current.set(ident)
    try:
        try:
            m = json.loads(meta)
            hook = _load_handler(m["handler"])
            ctx = Context(m)
            if os.environ.get("NIMBUS_CONVENTIONS") == "fc":
                _fc_context(ctx)
            result = hook(ctx)
            if inspect.isawaitable(result):
                result = _await([None], ident, result)
            reply = (RESULT, b"json", b"null")
        except _InitFailure as f:
            reply = (ERROR, b"", _error_body(f.cause or f, f.error_type, f.message))
        except Exception as e:
            reply = (ERROR, b"", _error_body(e))
        _stdout.flush_invocation(ident)
        _stderr.flush_invocation(ident)
        _send(reply[0], ident, reply[1], reply[2])
    finally:
        _current.reset(token)


def _load_handler(handler=None):
    handler = handler or os.environ["NIMBUS_HANDLER"]
    if ":" in handler:
        module_name, _, func_name = handler.partition(":")
    else:
        module_name, _, func_name = handler.rpartition(".")
    module_name = module_name.replace("/", ".")
    try:
        import importlib
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise _InitFailure(e, "Runtime.UserCodeSyntaxError", "Syntax error in module '%s': %s" % (module_name, e))
    except ImportError as e:
        raise _InitFailure(e, "Runtime.ImportModuleError", "Unable to import module '%s': %s" % (module_name, e))
    except Exception as e:
        raise _InitFailure(e, None, None)
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise _InitFailure(None, "Runtime.HandlerNotFound", "Handler '%s' missing on module '%s'" % (func_name, module_name))
    return func


class _InitFailure(Exception):
    def __init__(self, cause, error_type, message):
        super().__init__(message)
        self.cause, self.error_type, self.message = cause, error_type, message


class _Object:
    """An attribute bag, as Function Compute's context nests its fields."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _fc_context(ctx):
    """Adds Function Compute's context fields to `ctx` (its handlers read
    `context.function.name`, `context.request_id`, `context.credentials`, ...)."""
    env = os.environ
    ctx.function = _Object(
        name=_FUNCTION_NAME, handler=env.get("NIMBUS_HANDLER", ""),
        memory=int(_MEMORY_MB), timeout=int(env.get("NIMBUS_TIMEOUT_MS", "3000")) // 1000,
        initializer=None)
    ctx.service = _Object(name="default", log_project="", log_store="",
                          qualifier=_FUNCTION_VERSION, version_id=_FUNCTION_VERSION)
    ctx.region = env.get("AWS_REGION", "")
    ctx.account_id = env.get("NIMBUS_ACCOUNT_ID", "")
    # No cloud credentials are handed out; FC's fields are there, empty.
    ctx.credentials = _Object(access_key_id=None, access_key_secret=None, security_token=None,
                              accessKeyId=None, accessKeySecret=None, securityToken=None)
    return ctx


def _decode_event(body):
    # Function Compute hands the event over as the bytes that came (`json.loads(event)`).
    if os.environ.get("NIMBUS_CONVENTIONS") == "fc":
        return bytes(body)
    # An empty payload is `{}` as on Lambda, so handlers can call event.get().
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        return body


def _encode_result(result):
    if isinstance(result, (bytes, bytearray, memoryview)):
        return b"bytes", bytes(result)
    if isinstance(result, str):
        return b"text", result.encode("utf-8")
    return b"json", json.dumps(result, separators=(",", ":")).encode()


def _await(loop_holder, ident, awaitable):
    """Runs an async handler's coroutine: on this thread's loop when calls run one at a
    time, else on the shared background loop (the call's id travels with it)."""
    global asyncio
    import asyncio

    if _BACKGROUND_LOOP is not None:
        async def with_ident():
            _current.set(ident)
            return await awaitable

        return asyncio.run_coroutine_threadsafe(with_ident(), _BACKGROUND_LOOP).result()
    if loop_holder[0] is None:
        loop_holder[0] = asyncio.new_event_loop()
    return loop_holder[0].run_until_complete(awaitable)


def _run_on(loop, coroutine):
    """Runs a coroutine to completion on `loop`, which may be running on another thread."""
    if loop.is_running():
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    return loop.run_until_complete(coroutine)


def _start_background_loop():
    """An event loop on its own thread, shared by concurrent async calls."""
    global asyncio
    import asyncio

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="nimbus-asyncio", daemon=True).start()
    return loop


_BACKGROUND_LOOP = None


def _run(handler, loop_holder, ident, meta, body):
    token = _current.set(ident)
    try:
        try:
            ctx = Context(json.loads(meta))
            if os.environ.get("NIMBUS_CONVENTIONS") == "fc":
                _fc_context(ctx)
            result = handler(_decode_event(body), ctx)
            if inspect.isawaitable(result):
                result = _await(loop_holder, ident, result)
            try:
                kind, data = _encode_result(result)
            except (TypeError, ValueError) as e:
                reply = (ERROR, b"", _error_body(e, "Runtime.MarshalError",
                                                 "Unable to marshal response: %s" % e))
            else:
                if len(data) > _RESPONSE_MAX_BYTES:
                    reply = (ERROR, b"", _too_large(len(data)))
                else:
                    reply = (RESULT, kind, data)
        except Exception as e:
            reply = (ERROR, b"", _error_body(e))
        _stdout.flush_invocation(ident)
        _stderr.flush_invocation(ident)
        _send(reply[0], ident, reply[1], reply[2])
    finally:
        _current.reset(token)


class _WebResponse:
    """Collects a web app's response and sends it as head, chunk and end frames. Small
    responses leave in one write."""

    def __init__(self, ident):
        self.ident = ident
        self.head = None
        self.pending = []
        self.pending_bytes = 0

    def start(self, status, headers):
        self.head = json.dumps({"status": status, "headers": headers}).encode()

    def chunk(self, data):
        if not data:
            return
        if self.head is None:
            raise RuntimeError("the app sent body bytes before its status and headers")
        self.pending.append(_frame(RESPONSE_CHUNK, self.ident, b"", bytes(data)))
        self.pending_bytes += len(data)
        if self.pending_bytes >= 65536:
            self.flush()

    def flush(self):
        frames = []
        if self.head is not None:
            frames.append(_frame(RESPONSE_HEAD, self.ident, self.head, b""))
            self.head = b""  # sent; later chunks follow it
        frames.extend(self.pending)
        self.pending, self.pending_bytes = [], 0
        if frames:
            with _send_lock:
                _sock.sendall(b"".join(frames))

    def end(self):
        _stdout.flush_invocation(self.ident)
        _stderr.flush_invocation(self.ident)
        self.pending.append(_frame(RESPONSE_END, self.ident, b"", b""))
        self.flush()


def _header_pairs(m):
    return [(k, v) for k, v in m["headers"]]


def _serve_wsgi(app, ident, meta, body):
    import io
    from urllib.parse import unquote_to_bytes

    m = json.loads(meta)
    environ = {
        "REQUEST_METHOD": m["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(m["path"]).decode("latin-1"),
        "QUERY_STRING": m["query"],
        "SERVER_NAME": m.get("server_name", "localhost"),
        "SERVER_PORT": str(m.get("server_port", 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": m.get("remote_addr", ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": m.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "nimbus.request_id": m["request_id"],
    }
    for name, value in _header_pairs(m):
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = value
            continue
        key = "HTTP_" + key
        environ[key] = environ[key] + "," + value if key in environ else value
    environ.setdefault("CONTENT_LENGTH", str(len(body)))
    response = _WebResponse(ident)

    def start_response(status, headers, exc_info=None):
        # Once the head has left, an error can no longer change it (PEP 3333).
        if exc_info and response.head == b"":
            raise exc_info[1].with_traceback(exc_info[2])
        response.start(int(status.split(" ", 1)[0]), [[k, v] for k, v in headers])
        return response.chunk

    token = _current.set(ident)
    try:
        try:
            result = app(environ, start_response)
            try:
                for data in result:
                    response.chunk(data)
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()
            if response.head is None:
                raise RuntimeError("the WSGI app returned without calling start_response")
        except Exception as e:
            # Before the head left this is the answer; after, it cuts the response off.
            _stdout.flush_invocation(ident)
            _stderr.flush_invocation(ident)
            if response.head == b"":
                response.flush()
            _send(ERROR, ident, b"", _error_body(e))
            return
        response.end()
    finally:
        _current.reset(token)


async def _serve_asgi(app, ident, meta, body, state):
    from urllib.parse import unquote

    m = json.loads(meta)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": m["method"],
        "scheme": m.get("scheme", "http"),
        "path": unquote(m["path"]),
        "raw_path": m["path"].encode("latin-1", "replace"),
        "query_string": m["query"].encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in _header_pairs(m)],
        "client": (m.get("remote_addr", ""), int(m.get("remote_port", 0))),
        "server": (m.get("server_name", "localhost"), int(m.get("server_port", 80))),
        "state": dict(state),
        "extensions": {},
    }
    response = _WebResponse(ident)
    done = asyncio.Event()
    sent_body = False

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The request body is complete; the next event is the end of the exchange.
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        kind = message["type"]
        if kind == "http.response.start":
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
            response.start(int(message["status"]), headers)
        elif kind == "http.response.body":
            response.chunk(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    _current.set(ident)
    try:
        await app(scope, receive, send)
        if response.head is None:
            raise RuntimeError("the ASGI app returned without sending a response")
    except Exception as e:
        _stdout.flush_invocation(ident)
        _stderr.flush_invocation(ident)
        if response.head == b"":
            response.flush()
        _send(ERROR, ident, b"", _error_body(e))
        return
    finally:
        done.set()
    response.end()


def _asgi_lifespan(loop, app):
    """Runs the ASGI lifespan startup if the app supports it; an app without lifespan
    support raises or never answers, and is served without it."""
    state = {}
    started = asyncio.Event()
    outcome = {}
    queue = asyncio.Queue()

    async def receive():
        return await queue.get()

    async def send(message):
        outcome["type"] = message["type"]
        outcome["message"] = message.get("message", "")
        started.set()

    async def run():
        try:
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, receive, send)
        except Exception:
            pass
        finally:
            started.set()

    async def start():
        loop.create_task(run())
        await queue.put({"type": "lifespan.startup"})
        try:
            await asyncio.wait_for(started.wait(), 10)
        except asyncio.TimeoutError:
            pass

    _run_on(loop, start())
    if outcome.get("type") == "lifespan.startup.failed":
        raise RuntimeError("ASGI lifespan startup failed: %s" % outcome.get("message"))
    return state


def _specialize():
    """A prewarmed process ("stem cell") waits here for the function it is to become: its
    environment and working directory arrive in one frame."""
    frame = _recv()
    if frame is None:
        sys.exit(0)
    spec = json.loads(frame[2])
    os.environ.clear()
    os.environ.update({k: v for k, v in spec["env"]})
    os.chdir(spec["cwd"])
    if spec.get("uid") is not None:
        # A sandboxed stem runs as root until now; the function runs as its own uid.
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])


def main(stem=False):
    global _FUNCTION_NAME, _FUNCTION_VERSION, _MEMORY_MB, _INSTANCE_ID, _CONTEXT_LOGGER
    global _stdout, _stderr
    _open_channel()
    if stem or os.environ.get("NIMBUS_STEM") == "1":
        _specialize()
    started = time.perf_counter()
    _FUNCTION_NAME = os.environ.get("NIMBUS_FUNCTION_NAME", "")
    _FUNCTION_VERSION = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    _MEMORY_MB = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    _INSTANCE_ID = os.environ.get("NIMBUS_INSTANCE_ID", "")
    code_dir = os.environ.get("NIMBUS_CODE_DIR", os.getcwd())
    sys.path.insert(0, code_dir)
    opt = os.environ.get("NIMBUS_OPT_DIR")
    if opt:
        # Layers, right after the function's own code (before the system's packages, so
        # a layer's copy of a package wins), where Lambda's Python runtime looks.
        sys.path[1:1] = [opt + "/python",
                         "%s/python/lib/python%d.%d/site-packages" % (opt, *sys.version_info[:2])]

    _stdout, _stderr = _Capture("stdout"), _Capture("stderr")
    sys.stdout, sys.stderr = _stdout, _stderr
    root = logging.getLogger()
    handler = _LogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    _CONTEXT_LOGGER = logging.getLogger("nimbus.function")
    _CONTEXT_LOGGER.setLevel(logging.INFO)

    global _BACKGROUND_LOOP
    kind_of_function = os.environ.get("NIMBUS_TYPE", "handler")
    concurrency = max(1, int(os.environ.get("NIMBUS_CONCURRENCY", "1")))
    executor = None
    if concurrency > 1:
        # Calls run at once: handlers and WSGI apps on a thread each, coroutines on one
        # shared event loop.
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="nimbus-call")
        _BACKGROUND_LOOP = _start_background_loop()
    loop_holder = [None]
    state = {}
    try:
        func = _load_handler()
        if kind_of_function == "asgi":
            global asyncio
            import asyncio
            loop_holder[0] = _BACKGROUND_LOOP or asyncio.new_event_loop()
            state = _asgi_lifespan(loop_holder[0], func)
    except _InitFailure as f:
        cause = f.cause if f.cause is not None else f
        _send(INIT_ERROR, 0, b"", _error_body(cause, f.error_type, f.message))
        sys.exit(1)
    except Exception as e:
        _send(INIT_ERROR, 0, b"", _error_body(e))
        sys.exit(1)
    init_ms = (time.perf_counter() - started) * 1000
    _send(READY, 0, json.dumps({"init_ms": init_ms}).encode(), b"")

    while True:
        frame = _recv()
        if frame is None:
            return
        kind, ident, meta, body = frame
        if kind in (INITIALIZE, PRE_STOP):
            _run_hook(ident, meta)
        elif kind == PING:
            _send(RESULT, ident, b"json", b"null")
        elif kind == INVOKE and executor:
            executor.submit(_run, func, loop_holder, ident, meta, body)
        elif kind == INVOKE:
            _run(func, loop_holder, ident, meta, body)
        elif kind == REQUEST and kind_of_function == "wsgi" and executor:
            executor.submit(_serve_wsgi, func, ident, meta, body)
        elif kind == REQUEST and kind_of_function == "wsgi":
            _serve_wsgi(func, ident, meta, body)
        elif kind == REQUEST and kind_of_function == "asgi" and executor:
            asyncio.run_coroutine_threadsafe(_serve_asgi(func, ident, meta, body, state), loop_holder[0])
        elif kind == REQUEST and kind_of_function == "asgi":
            loop_holder[0].run_until_complete(_serve_asgi(func, ident, meta, body, state))
        elif kind == REQUEST:
            _send(ERROR, ident, b"", json.dumps({
                "errorType": "Runtime.InvalidRequest",
                "errorMessage": "a %s function does not serve web requests" % kind_of_function,
                "stackTrace": [],
            }).encode())


# What instances commonly import, loaded once in the fork server so that every forked
# instance starts with it (copy-on-write) instead of importing it again.
_PRELOAD = (
    "asyncio", "base64", "concurrent.futures", "datetime", "decimal", "hashlib", "hmac", "io",
    "logging.handlers", "random", "re", "urllib.parse", "uuid",
)
_FORKED, _EXITED = 1, 2
_REPORT = struct.Struct("=Iii")


def _zygote():
    """The Python fork server ("zygote"). It has imported this shim and the common standard
    library once; for each request on its control socket (fd 0, SOCK_SEQPACKET) it forks a
    child that becomes a prewarmed instance process. A request is a 4-byte token with three
    descriptors attached (the instance's channel, stdout and stderr); the answer is
    (FORKED, token, pid). When a child exits the zygote reaps it and reports
    (EXITED, pid, wait status), since only a parent can learn a child's exit status."""
    import gc
    import importlib
    import select
    import signal

    control = _take_stdin()
    for name in _PRELOAD:
        importlib.import_module(name)
    # Wake the select loop on SIGCHLD through a pipe (the handler itself does nothing).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # Objects that exist now are never collected again: the collector would otherwise touch
    # them in every child and copy the pages they share with the zygote.
    gc.collect()
    gc.freeze()

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            control.sendall(_REPORT.pack(_EXITED, pid, status))

    def become_instance(fds):
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        control.close()
        # Its own process group, as a spawned instance has, so killing the instance kills
        # whatever it forks and nothing of the zygote. In a session of its own, too: an
        # idle instance may be stopped (SIGSTOP), and if the zygote died then, the kernel
        # would send a group it left orphaned in the zygote's session SIGHUP, which ends it.
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        main(stem=True)

    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            reap()
        if control not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(control, 64, 3)
        if not message:
            # The server is gone. Instances end when their channels close.
            os._exit(0)
        if len(message) != 4 or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        (token,) = struct.unpack("=I", message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                become_instance(fds)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                # Never return into the zygote's loop; skip the zygote's exit handlers.
                os._exit(code)
        for fd in fds:
            os.close(fd)
        control.sendall(_REPORT.pack(_FORKED, token, pid))


if __name__ == "__main__":
    if os.environ.get("NIMBUS_ZYGOTE") == "1":
        _zygote()
    else:
        main()
