#!/usr/bin/env node
// Checks that the official Kuzzle SDK (v7), unchanged, works against a node (or a gateway) at
// HOST PORT over both of its protocols:
// - WebSocket: connect, server.now(), realtime.subscribe + publish (the notification arrives),
//   realtime.count;
// - HTTP: connect (the SDK reads GET /_publicApi to build its URLs), server.now(),
//   server.info() (GET /), realtime.publish (POST /:index/:collection/_publish) reaching the
//   WebSocket subscriber above;
// - with PEER_HOST PEER_PORT (another node linked to the first by Redis): realtime.publish over
//   HTTP on HOST PORT reaches a WebSocket subscriber on the peer.
// Prints `sdk-check OK: ...` and one `sdk-check route: ...` line per publish (which node answered
// the publish, which node notified the subscriber); exit 0 on success, 1 with a message naming
// the failed step.
'use strict';

const { isDeepStrictEqual } = require('node:util');
const { Kuzzle, WebSocket, Http } = require('kuzzle-sdk');

const [host, portText, peerHost, peerPortText] = process.argv.slice(2);
const port = Number(portText);
const peerPort = peerHost === undefined ? undefined : Number(peerPortText);
if (!host || !Number.isInteger(port) || port <= 0 || (peerHost !== undefined && !(Number.isInteger(peerPort) && peerPort > 0))) {
  console.error('usage: node sdk-check.js HOST PORT [PEER_HOST PEER_PORT]');
  process.exit(1);
}

// The whole check must finish quickly; a hang is a failure, not a wait.
const OVERALL_MS = 25000;
let step = 'start';
const timer = setTimeout(() => fail(new Error(`timed out after ${OVERALL_MS} ms`)), OVERALL_MS);

function fail(err) {
  console.error(`sdk-check FAILED at step "${step}": ${err && err.message ? err.message : err}`);
  process.exit(1);
}

function within(ms, what, promise) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

async function connected(protocol, what) {
  const kuzzle = new Kuzzle(protocol);
  kuzzle.on('networkError', (e) => console.error(`sdk networkError (${what}): ${e && e.message}`));
  await within(5000, `${what} connect`, kuzzle.connect());
  return kuzzle;
}

async function checkNow(kuzzle, what) {
  const now = await within(5000, `${what} server.now`, kuzzle.server.now());
  if (typeof now !== 'number' || Math.abs(now - Date.now()) > 60000) {
    throw new Error(`${what} server.now() returned ${JSON.stringify(now)}`);
  }
}

// A WebSocket subscription to every document of (index, collection); `next()` resolves with the
// next notification.
async function subscriber(kuzzle, index, collection) {
  const queue = [];
  const waiting = [];
  const roomId = await within(
    5000,
    'realtime.subscribe',
    kuzzle.realtime.subscribe(index, collection, {}, (n) => {
      const w = waiting.shift();
      if (w) w(n);
      else queue.push(n);
    }),
  );
  if (typeof roomId !== 'string' || roomId === '') {
    throw new Error(`subscribe returned room id ${JSON.stringify(roomId)}`);
  }
  const next = () => (queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r)));
  return { roomId, next };
}

function checkNote(note, message) {
  if (note.type !== 'document' || note.action !== 'publish' || note.scope !== 'in') {
    throw new Error(`unexpected notification ${JSON.stringify(note)}`);
  }
  // JSON objects are unordered: the key order may change on the way.
  if (!isDeepStrictEqual(note.result._source, message)) {
    throw new Error(`notification carries ${JSON.stringify(note.result._source)}, expected ${JSON.stringify(message)}`);
  }
}

// Publish `message` with `kuzzle` (raw query, so the answering node is known), then wait for it
// on `sub`; prints which node answered and which notified.
async function publishReaches(kuzzle, what, sub, index, collection, message) {
  step = `${what} realtime.publish`;
  const res = await within(
    5000,
    step,
    kuzzle.query({ controller: 'realtime', action: 'publish', index, collection, body: message }),
  );
  if (res.status !== 200 || !res.result || res.result.published !== true) {
    throw new Error(`publish answered ${JSON.stringify(res)}`);
  }
  step = `${what} notification`;
  const note = await within(5000, `the notification of the ${what} publish`, sub.next());
  checkNote(note, message);
  console.log(`sdk-check route: ${what} publish answered by ${res.node}, notified by ${note.node}`);
}

async function main() {
  const index = 'sdk-check-index';
  const collection = `sdk-check-${process.pid}`;

  // WebSocket.
  step = 'connect';
  const ws = await connected(new WebSocket(host, { port, autoReconnect: false }), 'websocket');
  step = 'server.now';
  await checkNow(ws, 'websocket');
  step = 'realtime.subscribe';
  const sub = await subscriber(ws, index, collection);
  step = 'realtime.publish';
  const message = { hello: 'sdk', n: 7 };
  const published = await within(5000, 'realtime.publish', ws.realtime.publish(index, collection, message));
  if (published !== true) {
    throw new Error(`publish returned ${JSON.stringify(published)}`);
  }
  step = 'notification';
  checkNote(await within(5000, 'the notification', sub.next()), message);
  step = 'realtime.count';
  const count = await within(5000, 'realtime.count', ws.realtime.count(sub.roomId));
  if (count !== 1) {
    throw new Error(`count returned ${JSON.stringify(count)}, expected 1`);
  }

  // HTTP.
  step = 'http connect';
  const http = await connected(new Http(host, { port }), 'http');
  const route = http.protocol.routes.realtime && http.protocol.routes.realtime.publish;
  if (!route || route.verb !== 'POST' || route.url !== '/:index/:collection/_publish') {
    throw new Error(`the public API gave realtime:publish the route ${JSON.stringify(route)}`);
  }
  step = 'http server.now';
  await checkNow(http, 'http');
  step = 'http server.info';
  const info = await within(5000, 'http server.info', http.server.info());
  if (!info || !info.serverInfo || typeof info.serverInfo.kuzzle.version !== 'string') {
    throw new Error(`server.info() returned ${JSON.stringify(info)}`);
  }
  step = 'http realtime.publish';
  const viaSdk = await within(5000, step, http.realtime.publish(index, collection, { via: 'http' }));
  if (viaSdk !== true) {
    throw new Error(`publish returned ${JSON.stringify(viaSdk)}`);
  }
  checkNote(await within(5000, 'the notification of the HTTP publish', sub.next()), { via: 'http' });
  await publishReaches(http, 'http', sub, index, collection, { via: 'http', n: 2 });

  // HTTP here, WebSocket subscriber on the peer.
  let peer = null;
  if (peerHost !== undefined) {
    step = 'peer connect';
    peer = await connected(new WebSocket(peerHost, { port: peerPort, autoReconnect: false }), 'peer websocket');
    step = 'peer realtime.subscribe';
    const peerCollection = `${collection}-peer`;
    const peerSub = await subscriber(peer, index, peerCollection);
    await publishReaches(http, 'http-to-peer', peerSub, index, peerCollection, { via: 'http', to: 'peer' });
    await publishReaches(ws, 'websocket-to-peer', peerSub, index, peerCollection, { via: 'websocket', to: 'peer' });
  }

  step = 'disconnect';
  ws.disconnect();
  http.disconnect();
  if (peer) peer.disconnect();
  clearTimeout(timer);
  const peerText = peer ? `, peer ${peerHost}:${peerPort}` : '';
  console.log(`sdk-check OK: ${host}:${port}${peerText} (websocket: now, subscribe, publish, notification, count; http: publicApi, now, info, publish)`);
  process.exit(0);
}

main().catch(fail);
