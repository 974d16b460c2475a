// The function: Nimbus calls exports.handler(event, context) once per invocation.

// Module state lives as long as the instance, so work done here (clients, configuration)
// is paid once per cold start, not once per call.
const GREETING = 'Hello';

// Greets whoever the event names. `event` is the decoded JSON of the call.
exports.handler = async (event) => {
  const name = (event && event.name) || 'world';
  return { message: `${GREETING}, ${name}!` };
};
