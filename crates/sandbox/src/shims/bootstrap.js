// Nimbus Node.js runtime bootstrap.
//
// Runs inside a function instance. Fd 0 is the instance channel to the Nimbus server (a Unix
// socket carrying length-prefixed frames, see protocol.rs). This file loads the user's
// handler once, then answers invoke frames for the life of the process, so module-level
// state survives between invocations, as on AWS Lambda. Both handler styles work:
// `async (event, context)` and `(event, context, callback)`.
'use strict';

const net = require('net');
const path = require('path');
const util = require('util');
const { AsyncLocalStorage } = require('async_hooks');

const INVOKE = 1, RESULT = 2, ERROR = 3, LOG = 4, READY = 5, INIT_ERROR = 6;
const INITIALIZE = 11, PRE_STOP = 12, PING = 14;
let started = process.hrtime.bigint();
const env = process.env;
let FUNCTION_NAME, FUNCTION_VERSION, MEMORY_MB, INSTANCE_ID, CODE_DIR;

// Reads the function's settings from the environment (again, after a stem cell was
// specialized).
function configure() {
  FUNCTION_NAME = env.NIMBUS_FUNCTION_NAME || '';
  FUNCTION_VERSION = env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST';
  MEMORY_MB = env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128';
  INSTANCE_ID = env.NIMBUS_INSTANCE_ID || '';
  CODE_DIR = env.NIMBUS_CODE_DIR || process.cwd();
  if (env.NIMBUS_OPT_DIR) {
    // Layers, where Lambda's Node.js runtime looks; read again here because a stem cell
    // started before it knew its function.
    const major = process.versions.node.split('.')[0];
    env.NODE_PATH = [`${env.NIMBUS_OPT_DIR}/nodejs/node${major}/node_modules`,
      `${env.NIMBUS_OPT_DIR}/nodejs/node_modules`].join(':');
    require('module').Module._initPaths();
  }
}

const sock = new net.Socket({ fd: 0, readable: true, writable: true });
sock.setNoDelay && sock.setNoDelay(true);
const current = new AsyncLocalStorage();
const EMPTY = Buffer.alloc(0);
// The largest result a call may return: model::limits::PAYLOAD_BYTES_MAX, as on Lambda (a
// test in runtimes.rs checks the two agree). A larger one is the function's error, and the
// instance stays.
const RESPONSE_MAX_BYTES = 6291456;

function send(kind, id, meta, body) {
  const m = typeof meta === 'string' ? Buffer.from(meta) : meta;
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  const head = Buffer.allocUnsafe(13);
  head.writeUInt32BE(9 + m.length + b.length, 0);
  head.writeUInt8(kind, 4);
  head.writeUInt32BE(id, 5);
  head.writeUInt32BE(m.length, 9);
  if (b.length < 65536) {
    sock.write(Buffer.concat([head, m, b]));
  } else {
    // Large bodies go out as they are rather than being copied into one buffer.
    sock.cork();
    sock.write(Buffer.concat([head, m]));
    sock.write(b);
    sock.uncork();
  }
}

function log(level, text) {
  const id = current.getStore() || 0;
  for (const line of String(text).replace(/\n$/, '').split('\n')) {
    send(LOG, id, level, Buffer.from(line));
  }
}

// Everything a handler prints becomes log frames attributed to its invocation.
for (const [name, level] of [['log', 'INFO'], ['info', 'INFO'], ['warn', 'WARN'], ['error', 'ERROR'], ['debug', 'DEBUG'], ['trace', 'TRACE']]) {
  console[name] = (...args) => log(level, util.format(...args));
}
process.stdout.write = (chunk, encoding, cb) => { log('stdout', chunk); if (typeof cb === 'function') cb(); return true; };
process.stderr.write = (chunk, encoding, cb) => { log('stderr', chunk); if (typeof cb === 'function') cb(); return true; };

const logger = {
  debug: (...a) => log('DEBUG', util.format(...a)),
  info: (...a) => log('INFO', util.format(...a)),
  warn: (...a) => log('WARN', util.format(...a)),
  error: (...a) => log('ERROR', util.format(...a)),
};

function errorBody(err, type, message) {
  const e = err instanceof Error ? err : null;
  return Buffer.from(JSON.stringify({
    errorType: type || (e ? (e.name || 'Error') : 'Error'),
    errorMessage: message !== undefined ? message : (e ? e.message : (typeof err === 'string' ? err : JSON.stringify(err))),
    stackTrace: e && e.stack ? e.stack.split('\n').slice(1).map((l) => l.trim()) : [],
  }));
}

// A path for messages: relative to the code directory when inside it, as the user knows
// their files by those names.
function shown(file) {
  const rel = path.relative(CODE_DIR, file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

// Where a SyntaxError is in the user's code: `file:line:column`, or '' when unknown. Node
// puts `file:line`, the source line and a caret under the column at the top of the stack
// of a SyntaxError thrown while compiling a module; a SyntaxError thrown by running code
// (JSON.parse at load time) has only ordinary frames, and the first in the user's code is
// the place.
function syntaxErrorPlace(e) {
  const lines = String(e.stack || '').split('\n');
  const top = /^(.+):(\d+)$/.exec(lines[0]);
  if (top) {
    const caret = lines[2] === undefined ? -1 : lines[2].indexOf('^');
    return `${shown(top[1])}:${top[2]}${caret >= 0 ? `:${caret + 1}` : ''}`;
  }
  for (const line of lines) {
    const frame = /^at (?:.* \()?(\/.*):(\d+):(\d+)\)?$/.exec(line.trim());
    if (frame && shown(frame[1]) !== frame[1]) return `${shown(frame[1])}:${frame[2]}:${frame[3]}`;
  }
  return '';
}

// The file of module `moduleName` in the code: `.js`, then `.mjs` (an ES module), then
// `.cjs`, as Lambda looks for them; without any, the bare path (for the error message).
function moduleFile(moduleName) {
  const base = path.resolve(CODE_DIR, moduleName);
  for (const ext of ['.js', '.mjs', '.cjs']) {
    try {
      if (require('fs').statSync(base + ext).isFile()) return base + ext;
    } catch (_) { /* not this one */ }
  }
  return base;
}

// A load failure as the typed error Lambda gives for it.
function loadError(e, moduleName, file) {
  if (e instanceof SyntaxError) {
    const place = syntaxErrorPlace(e);
    return {
      cause: e,
      type: 'Runtime.UserCodeSyntaxError',
      message: `Syntax error in module '${moduleName}': ${e.message}${place ? ` (${place})` : ''}`,
    };
  }
  if (e && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
    // The first line of the message names the module that was not found; the rest is
    // Node's "Require stack", which names the handler file too and so must not be what
    // decides whether the handler itself is missing.
    const missing = String(e.message).split('\n')[0];
    if (missing === `Cannot find module '${file}'`) {
      return {
        cause: e,
        type: 'Runtime.ImportModuleError',
        message: `Unable to import module '${moduleName}': Cannot find module '${moduleName}' (no ${moduleName}.js, .mjs or .cjs, nor ${moduleName}/index.js in the function's code)`,
      };
    }
    // A dependency is missing: name it and the user's files that required it, innermost
    // first (the stack ends with this shim, which is not theirs).
    const from = (e.requireStack || []).filter((f) => f !== __filename).map(shown);
    return {
      cause: e,
      type: 'Runtime.ImportModuleError',
      message: `Unable to import module '${moduleName}': ${missing}${from.length ? ` (required by ${from.join(', required by ')})` : ''}`,
    };
  }
  return { cause: e };
}

function handlerOf(mod, handler, funcName) {
  const fn = mod && mod[funcName];
  if (typeof fn !== 'function') {
    throw { cause: null, type: 'Runtime.HandlerNotFound', message: `${handler} is undefined or not exported` };
  }
  return fn;
}

// The handler function, or a promise of it when its module is an ES module that only
// `import()` loads (one with top-level await).
function loadHandler(name) {
  const handler = name || env.NIMBUS_HANDLER;
  const dot = handler.lastIndexOf('.');
  const moduleName = handler.slice(0, dot);
  const funcName = handler.slice(dot + 1);
  const file = moduleFile(moduleName);
  let mod;
  try {
    mod = require(file);
  } catch (e) {
    if (e && (e.code === 'ERR_REQUIRE_ASYNC_MODULE' || e.code === 'ERR_REQUIRE_ESM')) {
      return import(require('url').pathToFileURL(file).href).then(
        (m) => handlerOf(m, handler, funcName),
        (e2) => { throw loadError(e2, moduleName, file); },
      );
    }
    throw loadError(e, moduleName, file);
  }
  return handlerOf(mod, handler, funcName);
}

// Function Compute's context fields (`context.function.name`, `context.credentials`, ...).
function fcContext(ctx) {
  ctx.function = {
    name: FUNCTION_NAME, handler: env.NIMBUS_HANDLER || '', memory: Number(MEMORY_MB),
    timeout: Math.floor(Number(env.NIMBUS_TIMEOUT_MS || 3000) / 1000), initializer: null,
  };
  ctx.service = { name: 'default', logProject: '', logStore: '', qualifier: FUNCTION_VERSION, versionId: FUNCTION_VERSION };
  ctx.region = env.AWS_REGION || '';
  ctx.accountId = env.NIMBUS_ACCOUNT_ID || '';
  // No cloud credentials are handed out; FC's fields are there, empty.
  ctx.credentials = { accessKeyId: null, accessKeySecret: null, securityToken: null };
  return ctx;
}

function decodeEvent(body) {
  // Function Compute hands the event over as the bytes that came (`JSON.parse(event)`).
  if (env.NIMBUS_CONVENTIONS === 'fc') return Buffer.from(body);
  // An empty payload is `{}` as on Lambda; a payload that is not JSON arrives as a Buffer.
  if (body.length === 0) return {};
  try { return JSON.parse(body.toString('utf8')); } catch (_) { return body; }
}

function encodeResult(result) {
  if (Buffer.isBuffer(result) || result instanceof Uint8Array) return ['bytes', Buffer.from(result)];
  if (typeof result === 'string') return ['text', Buffer.from(result)];
  const json = JSON.stringify(result === undefined ? null : result);
  return ['json', Buffer.from(json === undefined ? 'null' : json)];
}

// The call's trace in X-Ray's form (`Root=1-{8 hex}-{24 hex};Parent=…;Sampled=…`), from
// its W3C traceparent, or a fresh one without.
function xrayTraceId(traceparent) {
  const parts = (traceparent || '').split('-');
  let trace, span, sampled;
  if (parts.length === 4 && parts[1].length === 32 && parts[2].length === 16) {
    [trace, span, sampled] = [parts[1], parts[2], parseInt(parts[3] || '0', 16) & 1];
  } else {
    const c = require('crypto');
    [trace, span, sampled] = [c.randomBytes(16).toString('hex'), c.randomBytes(8).toString('hex'), 0];
  }
  return `Root=1-${trace.slice(0, 8)}-${trace.slice(8)};Parent=${span};Sampled=${sampled}`;
}

function makeContext(meta) {
  const deadline = meta.deadline_ms;
  // Where Lambda's runtimes put it for each call (the SDKs and Powertools read it).
  // A call that continues a chain (a bucket event's) carries its hop count as `Lineage`,
  // which the AWS SDK sends back as X-Amzn-Trace-Id: the object store stops a loop.
  env._X_AMZN_TRACE_ID = xrayTraceId(meta.traceparent) +
    (meta.lineage ? `;Lineage=nimbus:${meta.lineage}` : '');
  return {
    awsRequestId: meta.request_id,
    requestId: meta.request_id,
    attempt: meta.attempt || 1,
    // The call's W3C trace context, to pass on to what the function calls.
    traceparent: meta.traceparent || null,
    functionName: FUNCTION_NAME,
    functionVersion: FUNCTION_VERSION,
    memoryLimitInMB: MEMORY_MB,
    // As Lambda names it: with the qualifier when the call named one.
    invokedFunctionArn: meta.invoked_function_arn
      || `arn:aws:lambda:${env.AWS_REGION || 'us-east-1'}:${env.NIMBUS_ACCOUNT_ID || '000000000000'}:function:${FUNCTION_NAME}`,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || `/aws/lambda/${FUNCTION_NAME}`,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME || INSTANCE_ID,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    logger,
    // The caller's X-Amz-Client-Context, decoded, as Lambda's Node runtime gives it.
    clientContext: parseClientContext(meta.client_context),
    identity: undefined,
  };
}

function parseClientContext(text) {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    return undefined;
  }
}

function invoke(fn, id, meta, body) {
  current.run(id, () => {
    let settled = false;
    const finish = (err, result) => {
      if (settled) return;
      settled = true;
      if (err !== null && err !== undefined) {
        send(ERROR, id, EMPTY, errorBody(err));
        return;
      }
      let encoded;
      try {
        encoded = encodeResult(result);
      } catch (e) {
        send(ERROR, id, EMPTY, errorBody(e, 'Runtime.MarshalError', `Unable to stringify response body: ${e.message}`));
        return;
      }
      if (encoded[1].length > RESPONSE_MAX_BYTES) {
        send(ERROR, id, EMPTY, errorBody(null, 'Function.ResponseSizeTooLarge',
          `Response payload size (${encoded[1].length} bytes) exceeded maximum allowed payload size (${RESPONSE_MAX_BYTES} bytes).`));
        return;
      }
      send(RESULT, id, encoded[0], encoded[1]);
    };
    try {
      const context = makeContext(JSON.parse(meta.toString('utf8')));
      if (env.NIMBUS_CONVENTIONS === 'fc') fcContext(context);
      // Legacy context methods some handlers still call.
      context.succeed = (r) => finish(null, r);
      context.fail = (e) => finish(e === undefined ? new Error('failed') : e);
      context.done = (e, r) => finish(e, r);
      const callback = (e, r) => finish(e, r);
      const out = fn(decodeEvent(body), context, callback);
      if (out && typeof out.then === 'function') {
        out.then((r) => finish(null, r), (e) => finish(e === undefined || e === null ? new Error(String(e)) : e));
      } else if (fn.length < 3) {
        finish(null, out);
      }
    } catch (e) {
      finish(e);
    }
  });
}

// The initializer and pre-stop hooks: `(context)` returning a promise, or
// `(context, callback)` as on Function Compute.
function runHook(id, meta) {
  current.run(id, () => {
    let settled = false;
    const finish = (err) => {
      if (settled) return;
      settled = true;
      if (err !== null && err !== undefined) send(ERROR, id, EMPTY, errorBody(err));
      else send(RESULT, id, 'json', Buffer.from('null'));
    };
    try {
      const m = JSON.parse(meta.toString('utf8'));
      let hook;
      try {
        hook = loadHandler(m.handler);
      } catch (f) {
        finish(f.cause instanceof Error ? f.cause : new Error(f.message));
        return;
      }
      const run = (h) => {
        const ctx = makeContext(m);
        if (env.NIMBUS_CONVENTIONS === 'fc') fcContext(ctx);
        const out = h(ctx, (e) => finish(e));
        if (out && typeof out.then === 'function') out.then(() => finish(null), (e) => finish(e || new Error('hook failed')));
        else if (h.length < 2) finish(null);
      };
      // A hook in an ES module that only import() loads comes as a promise.
      if (hook && typeof hook.then === 'function') {
        hook.then(run, (f) => finish(f.cause instanceof Error ? f.cause : new Error(f.message)));
      } else {
        run(hook);
      }
    } catch (e) {
      finish(e);
    }
  });
}

function main() {
  const initError = (f) => {
    send(INIT_ERROR, 0, EMPTY, errorBody(f.cause !== undefined ? f.cause : f, f.type, f.message));
    sock.end(() => process.exit(1));
  };
  let loaded;
  try {
    loaded = loadHandler();
  } catch (f) {
    initError(f);
    return;
  }
  if (loaded && typeof loaded.then === 'function') loaded.then(start, initError);
  else start(loaded);
}

function start(fn) {
  const ready = () => {
    const initMs = Number(process.hrtime.bigint() - started) / 1e6;
    send(READY, 0, JSON.stringify({ init_ms: initMs }), EMPTY);
  };
  const http = env.NIMBUS_TYPE === 'http';

  let buf = EMPTY;
  sock.on('data', (chunk) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    while (buf.length >= 4) {
      const len = buf.readUInt32BE(0);
      if (buf.length < 4 + len) break;
      const kind = buf.readUInt8(4);
      const id = buf.readUInt32BE(5);
      const metaLen = buf.readUInt32BE(9);
      const meta = buf.subarray(13, 13 + metaLen);
      const body = buf.subarray(13 + metaLen, 4 + len);
      buf = buf.subarray(4 + len);
      if (kind === INVOKE && !http) invoke(fn, id, meta, body);
      else if (kind === INITIALIZE || kind === PRE_STOP) runHook(id, meta);
      else if (kind === PING) send(RESULT, id, 'json', Buffer.from('null'));
    }
  });
  sock.on('end', () => process.exit(0));
  sock.on('error', () => process.exit(1));

  if (http) {
    // An HTTP function: a (req, res) handler or an Express app, served on $PORT; the
    // gateway proxies requests to it and this channel carries logs and hooks.
    const server = require('http').createServer({ noDelay: true, keepAliveTimeout: 120000 }, (req, res) => fn(req, res));
    server.on('error', (e) => {
      send(INIT_ERROR, 0, EMPTY, errorBody(e, 'Runtime.ListenError'));
      sock.end(() => process.exit(1));
    });
    server.listen(Number(env.PORT), '127.0.0.1', ready);
  } else {
    ready();
  }
}

if (env.NIMBUS_STEM === '1') {
  // A prewarmed process ("stem cell"): wait for the one frame that says which function to
  // become (its environment and working directory), then start as usual.
  let pending = EMPTY;
  const onFirstFrame = (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    if (pending.length < 4 || pending.length < 4 + pending.readUInt32BE(0)) return;
    sock.removeListener('data', onFirstFrame);
    const metaLen = pending.readUInt32BE(9);
    const spec = JSON.parse(pending.subarray(13, 13 + metaLen).toString('utf8'));
    for (const k of Object.keys(env)) delete env[k];
    for (const [k, v] of spec.env) env[k] = v;
    process.chdir(spec.cwd);
    if (spec.uid != null) {
      // A sandboxed stem runs as root until now; the function runs as its own uid.
      process.setgroups([]);
      process.setgid(spec.gid);
      process.setuid(spec.uid);
    }
    started = process.hrtime.bigint();
    configure();
    main();
  };
  sock.on('data', onFirstFrame);
  sock.on('end', () => process.exit(0));
} else {
  configure();
  main();
}
