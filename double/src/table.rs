//! Server-side printing: pods as a `meta.k8s.io/v1` `Table`, which kubectl
//! asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) and
//! prints as `NAME READY STATUS RESTARTS AGE` (and, with `-o wide`, `IP`
//! and `NODE`), as the apiserver's pod printer does.

use http::HeaderMap;
use serde_json::{Value, json};

/// Whether the client asked for a `Table`.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

/// A `Table` of `pods` at resourceVersion `rv`.
pub fn pods<'a>(pods: impl IntoIterator<Item = &'a Value>, rv: &str) -> Value {
    let column = |name: &str, kind: &str, format: &str, priority: u8, description: &str| json!({ "name": name, "type": kind, "format": format, "description": description, "priority": priority });
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv },
        "columnDefinitions": [
            column("Name", "string", "name", 0, "Name must be unique within a namespace."),
            column("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted."),
            column("Age", "string", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            column("IP", "string", "", 1, "IP address allocated to the pod."),
            column("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "string", "", 1, "nominatedNodeName is set when this pod preempts other pods on the node."),
            column("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        "rows": pods.into_iter().map(row).collect::<Vec<_>>(),
    })
}

/// One pod's row, with the object's metadata as kubectl expects it.
fn row(pod: &Value) -> Value {
    let statuses = pod["status"]["containerStatuses"].as_array();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    let restarts: u64 = statuses.map_or(0, |s| {
        s.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
    });
    let text = |v: &Value| v.as_str().unwrap_or("<none>").to_string();
    json!({
        "cells": [
            text(&pod["metadata"]["name"]),
            format!("{ready}/{total}"),
            text(&pod["status"]["phase"]),
            restarts.to_string(),
            age(pod["metadata"]["creationTimestamp"].as_str()),
            text(&pod["status"]["podIP"]),
            text(&pod["spec"]["nodeName"]),
            "<none>",
            "<none>",
        ],
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": pod["metadata"],
        },
    })
}

/// How long ago `created` was, as kubectl prints it (`45s`, `3m12s`, `2h`).
fn age(created: Option<&str>) -> String {
    let Some(created) = created.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let seconds = jiff::Timestamp::now()
        .duration_since(created)
        .as_secs()
        .max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..600 => format!("{}m{}s", seconds / 60, seconds % 60),
        600..10_800 => format!("{}m", seconds / 60),
        10_800..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}
