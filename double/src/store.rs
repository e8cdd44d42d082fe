//! The double's state: pods with resourceVersions, the event history that
//! watches resume from, and per-pod logs that `follow` streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// How many past events a watch can resume from.
const HISTORY: usize = 1000;

/// A change to a pod, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion after the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The pod after the change (before it, for `DELETED`).
    pub object: Arc<Value>,
}

impl Event {
    /// The watch-stream line for this event, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&json!({ "type": self.kind, "object": &*self.object }))
            .unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Whether the event is about a pod in `namespace` (all if `None`)
    /// named `name` (any if `None`).
    pub fn matches(&self, namespace: Option<&str>, name: Option<&str>) -> bool {
        let meta = &self.object["metadata"];
        namespace.is_none_or(|ns| meta["namespace"] == ns) && name.is_none_or(|n| meta["name"] == n)
    }
}

/// Why a store operation failed.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The pod exists already.
    AlreadyExists,
    /// The pod does not exist.
    NotFound,
    /// The object is not a pod the double can store.
    Invalid(String),
    /// The resourceVersion asked for is too old.
    Gone,
}

type Key = (String, String);

/// A pod's log so far, and a receiver for every pod's new lines.
pub type LogFollow = (Vec<String>, broadcast::Receiver<(Key, String)>);

#[derive(Default)]
struct Inner {
    rv: u64,
    uid: u64,
    pods: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Event>,
    logs: HashMap<Key, Vec<String>>,
}

/// Pods, events and logs, shared by every connection of the double.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    log_lines: broadcast::Sender<(Key, String)>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::new(Inner {
                rv: 1000,
                ..Inner::default()
            }),
            events: broadcast::channel(4096).0,
            log_lines: broadcast::channel(4096).0,
        }
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written
        // in a way that matters to a test double; carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates a pod in `namespace`.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] or [`StoreError::Invalid`].
    pub fn create(&self, namespace: &str, mut pod: Value) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let meta = pod
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| StoreError::Invalid("metadata is required".into()))?;
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) => format!("{prefix}{:05x}", inner.uid + 1),
            _ => {
                return Err(StoreError::Invalid(
                    "metadata.name: Required value: name or generateName is required".into(),
                ));
            }
        };
        let key = (namespace.to_string(), name.clone());
        if inner.pods.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        inner.uid += 1;
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(namespace));
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", inner.uid)),
        );
        meta.insert("creationTimestamp".into(), json!(now()));
        if let Some(object) = pod.as_object_mut() {
            object.insert("kind".into(), json!("Pod"));
            object.insert("apiVersion".into(), json!("v1"));
            let spec = object
                .entry("spec")
                .or_insert_with(|| json!({ "containers": [] }));
            if let Some(spec) = spec.as_object_mut() {
                spec.entry("nodeName")
                    .or_insert_with(|| json!("kubegate-double"));
            }
            // Every container runs, ready, from the start.
            let statuses: Vec<Value> = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(index, c)| {
                    let image = c["image"].as_str().unwrap_or_default();
                    let id = inner.uid * 16 + index as u64;
                    json!({
                        "name": c["name"], "image": image, "imageID": format!("{image}@sha256:{id:064x}"),
                        "containerID": format!("containerd://{id:064x}"),
                        "ready": true, "started": true, "restartCount": 0, "lastState": {},
                        "state": { "running": { "startedAt": now() } },
                    })
                })
                .collect();
            object.insert(
                "status".into(),
                json!({
                    "phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.0.0.1", "startTime": now(),
                    "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now() }],
                    "containerStatuses": statuses,
                }),
            );
        }
        inner.logs.entry(key.clone()).or_default();
        Ok(self.commit(&mut inner, key, "ADDED", pod))
    }

    /// The pod `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The pods in `namespace` (all if `None`) named `name` (any if `None`),
    /// with the resourceVersion of the list.
    pub fn list(&self, namespace: Option<&str>, name: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let pods = inner
            .pods
            .iter()
            .filter(|((ns, n), _)| {
                namespace.is_none_or(|want| want == ns) && name.is_none_or(|want| want == n)
            })
            .map(|(_, pod)| pod.clone())
            .collect();
        (pods, inner.rv)
    }

    /// Applies a JSON merge patch (RFC 7386) to a pod; strategic-merge and
    /// apply patches of the simple objects the double holds merge the same.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn patch(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let mut pod = (**inner.pods.get(&key).ok_or(StoreError::NotFound)?).clone();
        merge_patch(&mut pod, patch);
        // Identity fields are the server's.
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["namespace"] = json!(namespace);
        Ok(self.commit(&mut inner, key, "MODIFIED", pod))
    }

    /// Deletes a pod, returning it as it was.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`].
    pub fn delete(&self, namespace: &str, name: &str) -> Result<Arc<Value>, StoreError> {
        let mut inner = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let pod = inner.pods.remove(&key).ok_or(StoreError::NotFound)?;
        inner.logs.remove(&key);
        inner.rv += 1;
        let mut gone = (*pod).clone();
        gone["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let event = Event {
            rv: inner.rv,
            kind: "DELETED",
            object: Arc::new(gone),
        };
        self.publish(&mut inner, event.clone());
        Ok(event.object)
    }

    fn commit(
        &self,
        inner: &mut Inner,
        key: Key,
        kind: &'static str,
        mut pod: Value,
    ) -> Arc<Value> {
        inner.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let pod = Arc::new(pod);
        inner.pods.insert(key, pod.clone());
        let event = Event {
            rv: inner.rv,
            kind,
            object: pod.clone(),
        };
        self.publish(inner, event);
        pod
    }

    fn publish(&self, inner: &mut Inner, event: Event) {
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    /// Starts a watch: the events it must replay first, and a receiver for
    /// what follows, taken under one lock so nothing falls between them.
    /// With no `since`, every existing pod is replayed as `ADDED`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Gone`] when `since` is older than the history kept.
    pub fn watch(
        &self,
        since: Option<u64>,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), StoreError> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        let backlog = match since {
            None | Some(0) => inner
                .pods
                .values()
                .map(|pod| Event {
                    rv: inner.rv,
                    kind: "ADDED",
                    object: pod.clone(),
                })
                .collect(),
            Some(rv) => {
                let oldest = inner.history.front().map_or(inner.rv, |e| e.rv - 1);
                if rv < oldest {
                    return Err(StoreError::Gone);
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
        };
        Ok((backlog, receiver))
    }

    /// Appends a line to a pod's log.
    pub fn append_log(&self, namespace: &str, name: &str, line: &str) {
        let key = (namespace.to_string(), name.to_string());
        let mut inner = self.lock();
        if let Some(lines) = inner.logs.get_mut(&key) {
            lines.push(line.to_string());
            let _ = self.log_lines.send((key, line.to_string()));
        }
    }

    /// A pod's log so far, and a receiver for new lines (of every pod).
    pub fn follow_log(&self, namespace: &str, name: &str) -> Option<LogFollow> {
        let inner = self.lock();
        let lines = inner
            .logs
            .get(&(namespace.to_string(), name.to_string()))?
            .clone();
        Some((lines, self.log_lines.subscribe()))
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(object) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                object.remove(key);
            } else {
                merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Now, as Kubernetes writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Value {
        json!({ "metadata": { "name": name }, "spec": { "containers": [{ "name": "c", "image": "busybox" }] } })
    }

    #[test]
    fn pods_get_resource_versions_and_events() {
        let store = Store::default();
        let (_, mut events) = store.watch(Some(store.resource_version())).unwrap();
        let created = store.create("default", pod("a")).unwrap();
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(
            store.create("default", pod("a")).unwrap_err(),
            StoreError::AlreadyExists
        );
        let patched = store
            .patch(
                "default",
                "a",
                &json!({ "metadata": { "labels": { "x": "1" } } }),
            )
            .unwrap();
        assert_eq!(patched["metadata"]["labels"]["x"], "1");
        store.delete("default", "a").unwrap();
        let kinds: Vec<_> = (0..3).map(|_| events.try_recv().unwrap().kind).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    }

    #[test]
    fn a_watch_resumes_from_a_resource_version() {
        let store = Store::default();
        store.create("default", pod("a")).unwrap();
        let rv = store.resource_version();
        store.create("default", pod("b")).unwrap();
        let (backlog, _) = store.watch(Some(rv)).unwrap();
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].object["metadata"]["name"], "b");
        let (everything, _) = store.watch(None).unwrap();
        assert_eq!(everything.len(), 2);
        assert_eq!(store.watch(Some(1)).unwrap_err(), StoreError::Gone);
    }
}
