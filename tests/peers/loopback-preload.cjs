// Owns: forcing loopback binding for Node servers that have no host option
// (e.g. @modelcontextprotocol/server-everything, which calls app.listen(PORT)).
// Usage: node --require ./loopback-preload.cjs <server.js> ...
// Patches net.Server.prototype.listen so a listen() call without an explicit
// host binds BIND_HOST (default 127.0.0.1) instead of all interfaces.
// Also prints `LISTENING <host>:<port>` to stderr once each TCP server is
// listening (a readiness signal that also reports the real port for PORT=0).
"use strict";
const net = require("node:net");
const HOST = process.env.BIND_HOST || "127.0.0.1";
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  if (a0 !== null && typeof a0 === "object" && !Array.isArray(a0)) {
    // listen(options[, cb]) — TCP only (skip handles / unix paths)
    if (a0.path === undefined && a0.handle === undefined && a0._handle === undefined && a0.fd === undefined && !a0.host) {
      args[0] = { ...a0, host: HOST };
    }
  } else if (typeof a0 === "number" || (typeof a0 === "string" && /^\d+$/.test(a0)) || a0 === undefined || a0 === null) {
    // listen([port][, host][, backlog][, cb])
    if (typeof args[1] !== "string") args.splice(1, 0, HOST);
    if (a0 === undefined || a0 === null) args[0] = 0;
  }
  this.once("listening", () => {
    const a = this.address();
    if (a && typeof a === "object") process.stderr.write(`LISTENING ${a.address}:${a.port}\n`);
  });
  return orig.apply(this, args);
};
