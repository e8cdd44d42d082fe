// The Kubernetes API from a web page, through kubegate: plain fetch() for
// requests, and the platform WebSocket for exec and port-forward. The page
// names its kubegate and access token in the query string
// (?kubegate=http://127.0.0.1:8001&token=…); by default it uses the
// kubegate that served it, with no token.
const params = new URLSearchParams(location.search);
export const base = params.get('kubegate') ?? location.origin;
const token = params.get('token') ?? '';

const STDIN = 0, STDOUT = 1, STDERR = 2, ERROR = 3, CLOSE = 255;

export function headers() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// Browsers cannot set headers on a WebSocket, so the token travels as a
// subprotocol, as Kubernetes browser clients already send it.
function protocols(protocol) {
  if (!token) return [protocol];
  const encoded = btoa(token).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  return [protocol, `base64url.bearer.authorization.k8s.io.${encoded}`];
}

async function check(response) {
  if (response.ok) return response;
  const body = await response.text();
  let message = body;
  try { message = JSON.parse(body).message; } catch {}
  throw new Error(`${response.status}: ${message}`);
}

/** The names of the pods in `namespace`. */
export async function listPods(namespace = 'default') {
  const response = await check(await fetch(`${base}/api/v1/namespaces/${namespace}/pods`, { headers: headers() }));
  return (await response.json()).items.map((pod) => pod.metadata.name);
}

/** Follows a pod's log for `count` lines, calling `onLine` for each. */
export async function followLog(pod, count, onLine = () => {}, namespace = 'default') {
  const response = await check(await fetch(`${base}/api/v1/namespaces/${namespace}/pods/${pod}/log?follow=true`, { headers: headers() }));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const lines = [];
  let buffer = '';
  while (lines.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0 && lines.length < count) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      lines.push(line);
      onLine(line);
    }
  }
  await reader.cancel();
  return lines;
}

function open(path, protocol) {
  const url = `${base.replace(/^http/, 'ws')}${path}`;
  const socket = new WebSocket(url, protocols(protocol));
  socket.binaryType = 'arraybuffer';
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error(`WebSocket to ${path} was refused`));
  });
}

function frame(channel, bytes) {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = channel;
  out.set(bytes, 1);
  return out;
}

/** Runs `command` in `pod` with `stdin`, closed after writing (v5). */
export async function exec(pod, command, stdin, namespace = 'default') {
  const query = command.map((c) => `command=${encodeURIComponent(c)}`).join('&');
  const socket = await open(`/api/v1/namespaces/${namespace}/pods/${pod}/exec?${query}&stdin=true&stdout=true&stderr=true`, 'v5.channel.k8s.io');
  const text = ['', '', '', ''];
  const decoder = new TextDecoder();
  const closed = new Promise((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data);
      if (data.length && data[0] <= ERROR) text[data[0]] += decoder.decode(data.slice(1));
    };
    socket.onclose = resolve;
  });
  socket.send(frame(STDIN, new TextEncoder().encode(stdin)));
  socket.send(new Uint8Array([CLOSE, STDIN]));
  await closed;
  return { stdout: text[STDOUT], stderr: text[STDERR], status: text[ERROR] ? JSON.parse(text[ERROR]) : {} };
}

/** Sends `message` to `port` in `pod` and returns what comes back. */
export async function portForward(pod, port, message, namespace = 'default') {
  const socket = await open(`/api/v1/namespaces/${namespace}/pods/${pod}/portforward?ports=${port}`, 'v4.channel.k8s.io');
  const payload = new TextEncoder().encode(message);
  let opened = 0;
  let received = '';
  const decoder = new TextDecoder();
  const reply = await new Promise((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data);
      // Each channel opens with the port number; then data on channel 0.
      if (opened < 2) {
        if (++opened === 2) socket.send(frame(0, payload));
        return;
      }
      if (data[0] !== 0) return;
      received += decoder.decode(data.slice(1));
      if (received.length >= message.length) resolve(received);
    };
  });
  socket.close();
  return reply;
}

const RESIZE = 4;

/**
 * Opens an interactive terminal (`exec -it`) in `pod`: `onOutput(bytes)`
 * gets what the process writes, `onExit(status)` its `metav1.Status` when
 * it ends. Returns `send(text)` for keystrokes, `resize(columns, rows)`
 * (the v5 resize channel) and `close()`.
 */
export async function terminal(pod, command, { onOutput, onExit }, namespace = 'default') {
  const query = command.map((c) => `command=${encodeURIComponent(c)}`).join('&');
  const socket = await open(`/api/v1/namespaces/${namespace}/pods/${pod}/exec?${query}&stdin=true&stdout=true&tty=true`, 'v5.channel.k8s.io');
  const encoder = new TextEncoder();
  let status = '';
  socket.onmessage = (event) => {
    const data = new Uint8Array(event.data);
    if (data[0] === STDOUT || data[0] === STDERR) onOutput(data.slice(1));
    if (data[0] === ERROR) status += new TextDecoder().decode(data.slice(1));
  };
  socket.onclose = () => onExit(status ? JSON.parse(status) : { status: 'Failure', message: 'the connection closed' });
  return {
    send: (text) => socket.send(frame(STDIN, encoder.encode(text))),
    resize: (columns, rows) => socket.send(frame(RESIZE, encoder.encode(JSON.stringify({ Width: columns, Height: rows })))),
    close: () => socket.close(),
  };
}

/** The exit code a `metav1.Status` from the error channel carries. */
export function exitCode(status) {
  if (status.status === 'Success') return 0;
  const cause = status.details?.causes?.find((c) => c.reason === 'ExitCode');
  return cause ? Number(cause.message) : null;
}

/** The recordings kubegate serves (--serve-recordings), oldest first. */
export async function listRecordings() {
  const response = await check(await fetch(`${base}/kubegate/recordings`, { headers: headers() }));
  return (await response.json()).items;
}

/** One recording's asciicast text, by the name the list gives. */
export async function recording(name) {
  const response = await check(await fetch(`${base}/kubegate/recordings/${name}`, { headers: headers() }));
  return response.text();
}
