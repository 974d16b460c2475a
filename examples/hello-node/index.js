// A Lambda-style Node.js handler: it runs unchanged on AWS Lambda and on Nimbus.

// Module-level state lives as long as the instance: it is kept warm between calls.
let invocations = 0;

exports.handler = async (event, context) => {
  invocations += 1;
  const name = (event && event.name) || 'world';
  console.log(`greeting ${name} (call ${invocations} of this instance)`);
  return {
    message: `${process.env.GREETING || 'Hello'}, ${name}!`,
    requestId: context.awsRequestId,
    invocations,
  };
};
