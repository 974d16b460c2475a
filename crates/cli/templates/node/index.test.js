// Tests of the handler without a server: run them with `node --test`.
const test = require('node:test');
const assert = require('node:assert');

const { handler } = require('./index');

test('greets whoever the event names', async () => {
  assert.deepStrictEqual(await handler({ name: 'Ada' }, {}), { message: 'Hello, Ada!' });
});

test('greets the world without a name', async () => {
  assert.deepStrictEqual(await handler({}, {}), { message: 'Hello, world!' });
});
