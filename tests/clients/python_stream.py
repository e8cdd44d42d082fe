"""The Python `kubernetes` client's exec and port-forward through kubegate.

Usage: python3 python_stream.py http://127.0.0.1:PORT POD ECHO_PORT
Prints one line per step; exits non-zero on any failure.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client
from kubernetes.stream import portforward, stream


def main(url: str, pod: str, echo_port: int) -> None:
    configuration = client.Configuration()
    configuration.host = url
    api = client.CoreV1Api(client.ApiClient(configuration))

    session = stream(
        api.connect_get_namespaced_pod_exec,
        pod,
        "default",
        command=["sh", "-c", "head -c 11; echo to-stderr >&2; exit 7"],
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    session.write_stdin("from python")
    stdout, stderr = "", ""
    while session.is_open():
        session.update(timeout=5)
        stdout += session.read_stdout()
        stderr += session.read_stderr()
    session.close()
    print("exec stdout", stdout, flush=True)
    print("exec stderr", stderr.strip(), flush=True)
    print("exec exit", session.returncode, flush=True)

    def echo_through(payload: bytes) -> bytes:
        """One port-forward WebSocket: `payload` to the echo, and back."""
        forward = portforward(api.connect_get_namespaced_pod_portforward, pod, "default", ports=str(echo_port))
        sock = forward.socket(echo_port)
        sock.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            echoed += chunk
        sock.close()
        if forward.error(echo_port):
            print("port-forward error", forward.error(echo_port), flush=True)
        return echoed

    payload = bytes(range(256)) * 64
    echoed = echo_through(payload)
    print("port-forward", "ok" if echoed == payload else "MISMATCH", len(echoed), flush=True)

    # Many connections, each its own port-forward WebSocket: 50 one after
    # another, then 20 at once.
    def connection(i: int) -> bool:
        payload = bytes((i * 7 + j) % 256 for j in range(4096 + i * 13))
        return echo_through(payload) == payload

    exact = sum(connection(i) for i in range(50))
    with ThreadPoolExecutor(20) as pool:
        exact += sum(pool.map(connection, range(50, 70)))
    print("port-forward connections", exact, "of 70 byte-exact", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
