// A Deno program using only the platform WebSocket: exec with
// v5.channel.k8s.io (stdin written, then closed with channel 255), and a
// port-forward round trip with v4.channel.k8s.io, through kubegate.
// Usage: deno run --allow-net deno_stream.ts http://127.0.0.1:PORT POD ECHO_PORT
const [base, pod, echoPort] = Deno.args;
const ws = base.replace(/^http/, "ws");
const STDIN = 0, STDOUT = 1, STDERR = 2, ERROR = 3, CLOSE = 255;

function open(path: string, protocol: string): Promise<WebSocket> {
  const socket = new WebSocket(`${ws}${path}`, [protocol]);
  socket.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = (e) => reject(new Error(`websocket failed: ${(e as ErrorEvent).message}`));
  });
}

function frame(channel: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length + 1);
  out[0] = channel;
  out.set(data, 1);
  return out;
}

async function exec() {
  const command = ["sh", "-c", "cat; echo to-stderr >&2; exit 6"]
    .map((c) => `command=${encodeURIComponent(c)}`).join("&");
  const socket = await open(`/api/v1/namespaces/default/pods/${pod}/exec?${command}&stdin=true&stdout=true&stderr=true`, "v5.channel.k8s.io");
  if (socket.protocol !== "v5.channel.k8s.io") throw new Error(`negotiated ${socket.protocol}`);
  const channels: string[] = ["", "", "", ""];
  const done = new Promise<void>((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data as ArrayBuffer);
      if (data.length > 0 && data[0] <= ERROR) channels[data[0]] += new TextDecoder().decode(data.slice(1));
    };
    socket.onclose = () => resolve();
  });
  socket.send(frame(STDIN, new TextEncoder().encode("from deno")));
  socket.send(new Uint8Array([CLOSE, STDIN]));
  await done;
  const status = JSON.parse(channels[ERROR]);
  console.log("exec stdout", channels[STDOUT]);
  console.log("exec stderr", channels[STDERR].trim());
  console.log("exec status", status.status, status.details?.causes?.[0]?.message ?? "");
}

async function portForward() {
  const socket = await open(`/api/v1/namespaces/default/pods/${pod}/portforward?ports=${echoPort}`, "v4.channel.k8s.io");
  const payload = new TextEncoder().encode("round trip from deno");
  let received = new Uint8Array(0);
  let portFrames = 0;
  const echoed = new Promise<void>((resolve) => {
    socket.onmessage = (event) => {
      const data = new Uint8Array(event.data as ArrayBuffer);
      if (portFrames < 2) {
        portFrames++; // each channel opens with the port number
        if (portFrames === 2) socket.send(frame(0, payload));
        return;
      }
      if (data[0] !== 0) return;
      const next = new Uint8Array(received.length + data.length - 1);
      next.set(received);
      next.set(data.slice(1), received.length);
      received = next;
      if (received.length >= payload.length) resolve();
    };
  });
  await echoed;
  socket.close();
  console.log("port-forward", new TextDecoder().decode(received) === "round trip from deno" ? "ok" : "MISMATCH");
}

await exec();
await portForward();
