// WebSocket echo server on Node.js and ws: accepts on --addr HOST:PORT, sends every binary
// message back and replies to pings (ws sends the pong by default).
//
// Settings for many idle connections, as the ws README advises: per-message deflate off
// (it costs memory per connection), no client set (clientTracking: false), and bufferutil
// installed for masking.
'use strict';

const { WebSocketServer } = require('ws');

const MAX_MESSAGE_BYTES = 64 * 1024;

function parseAddr(argv) {
  const index = argv.indexOf('--addr');
  const value = index >= 0 ? argv[index + 1] : undefined;
  const match = value && /^(.*):(\d+)$/.exec(value);
  if (!match) {
    console.error('usage: node server.js --addr HOST:PORT');
    process.exit(2);
  }
  return { host: match[1], port: Number(match[2]) };
}

const { host, port } = parseAddr(process.argv.slice(2));
const server = new WebSocketServer({
  host,
  port,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: MAX_MESSAGE_BYTES,
});

server.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    if (isBinary) {
      socket.send(data, { binary: true });
    }
  });
  socket.on('error', () => socket.terminate());
});

server.on('error', (error) => {
  console.error(`peer-node-ws: ${error.message}`);
  process.exit(1);
});
