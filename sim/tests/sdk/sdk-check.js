#!/usr/bin/env node
// Checks that the official Kuzzle SDK (v7), unchanged, works against a node at HOST PORT over
// WebSocket: connect, server.now(), realtime.subscribe + publish (the notification arrives),
// realtime.count, disconnect. Exit 0 on success, 1 with a message naming the failed step.
'use strict';

const { Kuzzle, WebSocket } = require('kuzzle-sdk');

const [host, portText] = process.argv.slice(2);
const port = Number(portText);
if (!host || !Number.isInteger(port) || port <= 0) {
  console.error('usage: node sdk-check.js HOST PORT');
  process.exit(1);
}

// The whole check must finish quickly; a hang is a failure, not a wait.
const OVERALL_MS = 15000;
let step = 'start';
const timer = setTimeout(() => fail(new Error(`timed out after ${OVERALL_MS} ms`)), OVERALL_MS);

function fail(err) {
  console.error(`sdk-check FAILED at step "${step}": ${err && err.message ? err.message : err}`);
  process.exit(1);
}

function within(ms, what, promise) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)),
  ]);
}

async function main() {
  const kuzzle = new Kuzzle(new WebSocket(host, { port, autoReconnect: false }));
  kuzzle.on('networkError', (e) => console.error(`sdk networkError: ${e && e.message}`));

  step = 'connect';
  await within(5000, 'connect', kuzzle.connect());

  step = 'server.now';
  const now = await within(5000, 'server.now', kuzzle.server.now());
  if (typeof now !== 'number' || Math.abs(now - Date.now()) > 60000) {
    throw new Error(`server.now() returned ${JSON.stringify(now)}`);
  }

  step = 'realtime.subscribe';
  const index = 'sdk-check-index';
  const collection = `sdk-check-${process.pid}`;
  let resolveNote;
  const noteArrived = new Promise((resolve) => {
    resolveNote = resolve;
  });
  const roomId = await within(
    5000,
    'realtime.subscribe',
    kuzzle.realtime.subscribe(index, collection, {}, (notification) => resolveNote(notification)),
  );
  if (typeof roomId !== 'string' || roomId === '') {
    throw new Error(`subscribe returned room id ${JSON.stringify(roomId)}`);
  }

  step = 'realtime.publish';
  const message = { hello: 'sdk', n: 7 };
  const published = await within(5000, 'realtime.publish', kuzzle.realtime.publish(index, collection, message));
  if (published !== true) {
    throw new Error(`publish returned ${JSON.stringify(published)}`);
  }

  step = 'notification';
  const note = await within(5000, 'the notification', noteArrived);
  if (note.type !== 'document' || note.action !== 'publish' || note.scope !== 'in') {
    throw new Error(`unexpected notification ${JSON.stringify(note)}`);
  }
  if (JSON.stringify(note.result._source) !== JSON.stringify(message)) {
    throw new Error(`notification carries ${JSON.stringify(note.result._source)}, expected ${JSON.stringify(message)}`);
  }

  step = 'realtime.count';
  const count = await within(5000, 'realtime.count', kuzzle.realtime.count(roomId));
  if (count !== 1) {
    throw new Error(`count returned ${JSON.stringify(count)}, expected 1`);
  }

  step = 'disconnect';
  kuzzle.disconnect();
  clearTimeout(timer);
  console.log(`sdk-check OK: ${host}:${port} (now, subscribe, publish, notification, count, disconnect)`);
  process.exit(0);
}

main().catch(fail);
