// The Kubernetes API from Deno, through kubegate, with its access token:
// list pods, follow a log, exec with stdin (v5.channel.k8s.io, stdin closed
// with channel 255), and port-forward round trips (v4.channel.k8s.io).
//
//   KUBEGATE_TOKEN=… deno run --allow-net --allow-env examples/deno/kubegate.ts \
//     http://127.0.0.1:8001 nginx [PORT]
//
// Deno has fetch and WebSocket built in; nothing else is imported.
const [base, pod, port] = Deno.args;
const token = Deno.env.get("KUBEGATE_TOKEN") ?? "";
const STDIN = 0, STDOUT = 1, STDERR = 2, ERROR = 3, CLOSE = 255;
const headers: HeadersInit = token ? { Authorization: `Bearer ${token}` } : {};

function protocols(protocol: string): string[] {
  if (!token) return [protocol];
  const encoded = btoa(token).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return [protocol, `base64url.bearer.authorization.k8s.io.${encoded}`];
}

async function check(response: Response): Promise<Response> {
  if (!response.ok) throw new Error(`${response.status}: ${(await response.json()).message}`);
  return response;
}

async function listPods(): Promise<string[]> {
  const response = await check(await fetch(`${base}/api/v1/namespaces/default/pods`, { headers }));
  return (await response.json()).items.map((p: { metadata: { name: string } }) => p.metadata.name);
}

async function followLog(count: number): Promise<string[]> {
  const response = await check(await fetch(`${base}/api/v1/namespaces/default/pods/${pod}/log?follow=true`, { headers }));
  const lines: string[] = [];
  let buffer = "";
  for await (const chunk of response.body!.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    const parts = buffer.split("\n");
    buffer = parts.pop()!;
    lines.push(...parts);
    if (lines.length >= count) break;
  }
  return lines.slice(0, count);
}

function open(path: string, protocol: string): Promise<WebSocket> {
  const socket = new WebSocket(`${base.replace(/^http/, "ws")}${path}`, protocols(protocol));
  socket.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error(`WebSocket to ${path} was refused`));
  });
}

function frame(channel: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length + 1);
  out[0] = channel;
  out.set(data, 1);
  return out;
}

async function exec(command: string[], stdin: string) {
  const query = command.map((c) => `command=${encodeURIComponent(c)}`).join("&");
  const socket = await open(`/api/v1/namespaces/default/pods/${pod}/exec?${query}&stdin=true&stdout=true&stderr=true`, "v5.channel.k8s.io");
  const text = ["", "", "", ""];
  const closed = new Promise<void>((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data as ArrayBuffer);
      if (data.length > 0 && data[0] <= ERROR) text[data[0]] += new TextDecoder().decode(data.slice(1));
    };
    socket.onclose = () => resolve();
  });
  socket.send(frame(STDIN, new TextEncoder().encode(stdin)));
  socket.send(new Uint8Array([CLOSE, STDIN]));
  await closed;
  return { stdout: text[STDOUT], stderr: text[STDERR], status: JSON.parse(text[ERROR]) };
}

async function portForward(message: string): Promise<string> {
  const socket = await open(`/api/v1/namespaces/default/pods/${pod}/portforward?ports=${port}`, "v4.channel.k8s.io");
  let opened = 0;
  let received = "";
  const reply = await new Promise<string>((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data as ArrayBuffer);
      if (opened < 2) {
        if (++opened === 2) socket.send(frame(0, new TextEncoder().encode(message)));
        return;
      }
      if (data[0] !== 0) return;
      received += new TextDecoder().decode(data.slice(1));
      if (received.length >= message.length) resolve(received);
    };
  });
  socket.close();
  return reply;
}

console.log("pods", (await listPods()).join(","));
console.log("log", (await followLog(1))[0]);
const result = await exec(["sh", "-c", "cat; echo to-stderr >&2; exit 6"], "from deno");
console.log("exec stdout", result.stdout);
console.log("exec stderr", result.stderr.trim());
console.log("exec status", result.status.status, result.status.details?.causes?.[0]?.message ?? "");
if (port) {
  console.log("port-forward", (await portForward("round trip from deno")) === "round trip from deno" ? "ok" : "MISMATCH");
  // Every connection is a new WebSocket; kubegate carries them all as
  // streams on one session to the pod. 50 one after another, 20 at once.
  const messages = Array.from({ length: 70 }, (_, i) => `connection ${i};`.repeat(50 + i));
  let exact = 0;
  for (const message of messages.slice(0, 50)) if ((await portForward(message)) === message) exact++;
  const together = await Promise.all(messages.slice(50).map(portForward));
  exact += together.filter((reply, i) => reply === messages[50 + i]).length;
  console.log("port-forward connections", exact, "of", messages.length, "byte-exact");
}
