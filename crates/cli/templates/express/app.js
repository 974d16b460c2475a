// An Express app: Nimbus serves it on the port it gives the instance, as a (req, res)
// handler; exporting the app is enough (no app.listen).
const express = require('express');

const app = express();

// The function URL (/fn/{{name}}/) reaches the app at `/`; a route in nimbus.yaml reaches
// it with its full path, so the app answers on both.
app.get(['/', '/{{name}}'], (req, res) => {
  res.json({ message: 'Hello from {{name}}!' });
});

exports.handler = app;
