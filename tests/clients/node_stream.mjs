// @kubernetes/client-node's Exec and PortForward through kubegate.
// Usage: node node_stream.mjs http://127.0.0.1:PORT POD ECHO_PORT
// Prints one line per step; exits non-zero on any failure.
import net from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import * as k8s from '@kubernetes/client-node';

const [url, pod, echoPort] = process.argv.slice(2);
const kc = new k8s.KubeConfig();
kc.loadFromOptions({
  // client-node refuses a plain-http server unless skipTLSVerify is set,
  // though there is no TLS to verify on http://localhost.
  clusters: [{ name: 'kubegate', server: url, skipTLSVerify: true }],
  users: [{ name: 'nobody' }],
  contexts: [{ name: 'kubegate', cluster: 'kubegate', user: 'nobody' }],
  currentContext: 'kubegate',
});

function collector() {
  const chunks = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(Buffer.from(chunk));
      done();
    },
  });
  stream.text = () => Buffer.concat(chunks).toString();
  return stream;
}

async function exec() {
  const stdout = collector();
  const stderr = collector();
  const stdin = new PassThrough();
  const status = await new Promise((resolve, reject) => {
    new k8s.Exec(kc)
      .exec('default', pod, 'main', ['sh', '-c', 'cat; echo to-stderr >&2; exit 4'], stdout, stderr, stdin, false, resolve)
      .then(() => stdin.end('from node'))
      .catch(reject);
  });
  console.log('exec stdout', stdout.text());
  console.log('exec stderr', stderr.text().trim());
  console.log('exec status', status.status, status.details?.causes?.[0]?.message ?? '');
}

// Connects to the local end of a port-forward, sends `payload` and resolves
// with its echo.
function echoThrough(port, payload) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let length = 0;
    const client = net.connect(port, '127.0.0.1', () => client.write(payload));
    client.on('data', (chunk) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= payload.length) {
        client.destroy();
        resolve(Buffer.concat(chunks));
      }
    });
    client.on('error', reject);
  });
}

async function portForward() {
  const forward = new k8s.PortForward(kc);
  const server = net.createServer((socket) => {
    forward.portForward('default', pod, [Number(echoPort)], socket, null, socket).catch((e) => {
      console.log('port-forward error', e.message);
      socket.destroy();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const payload = Buffer.alloc(100_000, 'k');
  const echoed = await echoThrough(port, payload);
  console.log('port-forward', echoed.equals(payload) ? 'ok' : 'MISMATCH', echoed.length);
  // Many connections, each its own port-forward WebSocket: 50 one after
  // another, then 20 at once.
  const payloadOf = (i) => Buffer.from(Array.from({ length: 4096 + i * 13 }, (_, j) => (i * 7 + j) % 256));
  let exact = 0;
  for (let i = 0; i < 50; i++) {
    if ((await echoThrough(port, payloadOf(i))).equals(payloadOf(i))) exact++;
  }
  const together = await Promise.all(
    Array.from({ length: 20 }, (_, k) => echoThrough(port, payloadOf(50 + k)).then((e) => e.equals(payloadOf(50 + k)))),
  );
  exact += together.filter(Boolean).length;
  server.close();
  console.log('port-forward connections', exact, 'of 70 byte-exact');
}

await exec();
await portForward();
process.exit(0);
