// Loaded with `node -r ./preload.js` before Kuzzle: gives this node its own loopback address.
//
// Kuzzle's cluster assumes one node per host: it picks the host's first private non-loopback IPv4
// address, binds its ZeroMQ sockets on every interface and its HTTP/WebSocket listener on every
// address. To run several nodes on one machine, each on its own 127.0.0.X with the same ports
// (exactly like a real cluster: one IP per node), four places of Kuzzle's compiled code are
// rewritten as they load, to use the address in KUZZLE_REAL_IP. Nothing on disk is changed.
// A pattern that is not found is an error naming the file: a Kuzzle upgrade fails loudly here
// rather than running a cluster that silently binds elsewhere.
"use strict";

const Module = require("module");
const net = require("net");
const path = require("path");

const ip = process.env.KUZZLE_REAL_IP;
if (!ip || !net.isIPv4(ip)) {
  throw new Error(
    `kuzzle-real preload: KUZZLE_REAL_IP must be this node's IPv4 address (e.g. 127.0.0.2), got ${JSON.stringify(ip)}`,
  );
}

// File (relative to kuzzle/dist/lib) -> [pattern, replacement, expected count].
const REWRITES = {
  // The node's own address (its ID card's `ip`, what peers connect to) instead of getIP()'s
  // choice; getIP's argument is still evaluated, its result ignored.
  "cluster/node.js": [[/this\.ip = getIP\(/g, `this.ip = ((_) => ${JSON.stringify(ip)})(`, 1]],
  // ZeroMQ PUB (sync port) and ROUTER (command port) binds: this address, not every interface.
  "cluster/publisher.js": [[/tcp:\/\/\*:/g, `tcp://${ip}:`, 1]],
  "cluster/command.js": [[/tcp:\/\/\*:/g, `tcp://${ip}:`, 1]],
  // uWS App.listen(port, cb) -> listen(host, port, cb).
  "core/network/protocols/httpwsProtocol.js": [
    [/this\.server\.listen\(entrypoint\.config\.port,/g, `this.server.listen(${JSON.stringify(ip)}, entrypoint.config.port,`, 1],
  ],
};

const MARK = `${path.sep}kuzzle${path.sep}dist${path.sep}lib${path.sep}`;

const compile = Module.prototype._compile;
Module.prototype._compile = function kuzzleRealCompile(content, filename) {
  const at = filename.lastIndexOf(MARK);
  if (at !== -1) {
    const rel = filename.slice(at + MARK.length).split(path.sep).join("/");
    const rewrites = REWRITES[rel];
    if (rewrites) {
      for (const [pattern, replacement, expected] of rewrites) {
        const found = (content.match(pattern) || []).length;
        if (found !== expected) {
          throw new Error(
            `kuzzle-real preload: ${filename}: expected ${expected} match(es) of ${pattern}, found ${found}; ` +
              "this Kuzzle version differs from 2.56.0: update test-support/kuzzle-real/preload.js",
          );
        }
        content = content.replace(pattern, replacement);
      }
    }
  }
  return compile.call(this, content, filename);
};
