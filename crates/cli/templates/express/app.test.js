// Tests of the app without Nimbus (on a port of its own): run them with `npm install`
// and `node --test`.
const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const { once } = require('node:events');

const { handler } = require('./app');

test('answers on the function URL and the route', async () => {
  const server = http.createServer(handler).listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    for (const path of ['/', '/{{name}}']) {
      const res = await fetch(`http://127.0.0.1:${server.address().port}${path}`);
      assert.strictEqual(res.status, 200, path);
      assert.deepStrictEqual(await res.json(), { message: 'Hello from {{name}}!' });
    }
  } finally {
    server.close();
  }
});
