#!/usr/bin/env node
// N official-SDK WebSocket clients subscribed to one (index, collection), as long-lived Kuzzle
// users are: default SDK options (autoReconnect, a fixed 1 s reconnectionDelay, autoResubscribe,
// the {"p":1} ping every 2 s). Used by the tests that restart, crash or add nodes under load.
//
// usage: node subscribers.js HOST PORT N INDEX COLLECTION
// Prints `READY N` once every client is subscribed. Then reads commands on stdin, one a line:
//   mark    -> every client's notification count is remembered; prints `MARKED`
//   counts  -> prints one line `COUNTS {json}`: per client, notifications since the mark
//   report  -> prints one line `REPORT {json}` with, per client, notifications since the mark and
//              in all, and the counts of disconnections, reconnections and errors; then exits 0.
// A client that cannot connect or subscribe within 20 s makes the process exit 1 with a message.
'use strict';

const { Kuzzle, WebSocket } = require('kuzzle-sdk');

const [host, portText, nText, index, collection] = process.argv.slice(2);
const port = Number(portText);
const n = Number(nText);
if (!host || !Number.isInteger(port) || !Number.isInteger(n) || n <= 0 || !index || !collection) {
  console.error('usage: node subscribers.js HOST PORT N INDEX COLLECTION');
  process.exit(1);
}

const clients = [];
let errors = [];

function within(ms, what, promise) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

async function start(i) {
  const kuzzle = new Kuzzle(new WebSocket(host, { port }));
  const c = { kuzzle, total: 0, mark: 0, disconnected: 0, reconnected: 0 };
  kuzzle.on('disconnected', () => {
    c.disconnected += 1;
  });
  kuzzle.on('reconnected', () => {
    c.reconnected += 1;
  });
  kuzzle.on('networkError', (e) => {
    errors.push(`client ${i}: networkError ${e && e.message}`);
  });
  await within(20000, `client ${i} connect`, kuzzle.connect());
  await within(
    20000,
    `client ${i} subscribe`,
    kuzzle.realtime.subscribe(index, collection, {}, () => {
      c.total += 1;
    }),
  );
  clients.push(c);
}

async function main() {
  const started = [];
  for (let i = 0; i < n; i += 1) started.push(start(i));
  await Promise.all(started);
  console.log(`READY ${clients.length}`);
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const cmd = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (cmd === 'mark') {
        for (const c of clients) c.mark = c.total;
        console.log('MARKED');
      } else if (cmd === 'counts') {
        console.log(`COUNTS ${JSON.stringify({ since_mark: clients.map((c) => c.total - c.mark) })}`);
      } else if (cmd === 'report') {
        const report = {
          since_mark: clients.map((c) => c.total - c.mark),
          total: clients.map((c) => c.total),
          disconnected: clients.reduce((s, c) => s + c.disconnected, 0),
          reconnected: clients.reduce((s, c) => s + c.reconnected, 0),
          errors: errors.slice(0, 20),
        };
        console.log(`REPORT ${JSON.stringify(report)}`);
        for (const c of clients) c.kuzzle.disconnect();
        process.exit(0);
      }
    }
  });
  // The test ends the process by closing stdin if it fails before `report`.
  process.stdin.on('end', () => process.exit(0));
}

main().catch((e) => {
  console.error(`subscribers FAILED: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
