// Owns: forcing loopback binding for Node servers that have no host option
// (e.g. @modelcontextprotocol/server-everything, which calls app.listen(PORT)).
// Usage: node --require ./loopback-preload.cjs <server.js> ...
// Patches net.Server.prototype.listen so a listen() call without an explicit
// host binds BIND_HOST (default 127.0.0.1) instead of all interfaces.
// Also prints `LISTENING <host>:<port>` to stderr once each TCP server is
// listening (a readiness signal that also reports the real port for PORT=0).
// listen(port) binds at once, as Node does when no host is given, so code
// that reads server.address() right after listen() keeps working.
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
    if (typeof args[1] !== "string") {
      // Bind now, as listen(port) without a host does, so that a caller
      // reading server.address() right after listen() gets the port.
      const bound = bindNow(a0 === undefined || a0 === null ? 0 : Number(a0));
      if (bound) {
        this.once("listening", announce);
        return orig.apply(this, [bound, ...args.slice(1)]);
      }
      args.splice(1, 0, HOST);
    }
    if (a0 === undefined || a0 === null) args[0] = 0;
  }
  this.once("listening", announce);
  return orig.apply(this, args);
};

function announce() {
  const a = this.address();
  if (a && typeof a === "object") process.stderr.write(`LISTENING ${a.address}:${a.port}\n`);
}

// A TCP server handle bound to HOST:port, or null (then listen() binds later).
function bindNow(port) {
  try {
    const { TCP, constants } = process.binding("tcp_wrap");
    const handle = new TCP(constants.SERVER);
    const err = HOST.includes(":") ? handle.bind6(HOST, port, 0) : handle.bind(HOST, port);
    if (err === 0) return handle;
    handle.close();
  } catch (_) {
    // No tcp_wrap binding on this Node: fall back to binding at listen().
  }
  return null;
}
