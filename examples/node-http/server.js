// A bare Node.js HTTP handler: (req, res), as http.createServer takes it.
let hits = 0;

exports.handler = (req, res) => {
  hits += 1;
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    console.log(`${req.method} ${req.url} (${body.length} bytes)`);
    res.setHeader('content-type', 'application/json');
    res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/']);
    res.end(JSON.stringify({ method: req.method, url: req.url, hits, received: body.length }));
  });
};
