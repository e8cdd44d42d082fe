"""The Python `kubernetes` client through kubegate: list, create, watch.

Usage: python3 python_client.py http://127.0.0.1:PORT
Prints one line per step; exits non-zero on any failure.
"""

import sys

from kubernetes import client, watch


def main(url: str) -> None:
    configuration = client.Configuration()
    configuration.host = url
    api = client.CoreV1Api(client.ApiClient(configuration))

    pods = api.list_namespaced_pod("default")
    print("listed", ",".join(sorted(p.metadata.name for p in pods.items)), flush=True)

    api.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="from-python"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox")]),
        ),
    )
    print("created from-python", flush=True)

    stream = watch.Watch()
    for event in stream.stream(
        api.list_namespaced_pod,
        "default",
        resource_version=pods.metadata.resource_version,
        timeout_seconds=30,
    ):
        name = event["object"].metadata.name
        print("event", event["type"], name, flush=True)
        if name == "from-python":
            stream.stop()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
