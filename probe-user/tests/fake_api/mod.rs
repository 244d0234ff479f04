//! A fake Kubernetes API server for tests: plain HTTP on loopback, serving list and watch for
//! pods (honouring a `spec.nodeName` field selector, as the real one does), Services and
//! EndpointSlices, and a kubeconfig that points at it. Tests push watch events while a client
//! is connected, or make every request answer 403.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::broadcast};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Service,
    EndpointSlice,
}

impl Kind {
    fn of_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/pods" => Some(Kind::Pod),
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            _ => None,
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pod => ("v1", "PodList"),
            Kind::Service => ("v1", "ServiceList"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }
}

#[derive(Default)]
struct State {
    objects: Vec<(Kind, Value)>,
    resource_version: u64,
    /// Every request's path and query, in order.
    requests: Vec<String>,
    deny: bool,
    /// Every event with its resource version: a watch from version N gets those after N first,
    /// as from a real API server, so nothing between a list and its watch is lost.
    log: Vec<(u64, Kind, Value)>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, Kind, Value)>,
}

/// The node a pod object is scheduled on.
fn node_of(obj: &Value) -> Option<&str> {
    obj.pointer("/spec/nodeName").and_then(Value::as_str)
}

fn selected(kind: Kind, obj: &Value, node: Option<&str>) -> bool {
    kind != Kind::Pod || node.is_none() || node_of(obj) == node
}

fn full(status: StatusCode, body: Value) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

impl FakeApi {
    /// Starts serving on a thread of its own (for callers without a runtime), listening on
    /// 127.0.0.1 of network namespace `netns` (the caller's when `None`).
    pub fn start_on_thread(netns: Option<std::fs::File>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(ns) = netns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = tx.send(FakeApi::start().await);
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("fake API server")
    }

    /// Starts serving on an ephemeral loopback port, in the current runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, _) = broadcast::channel(64);
        let api = FakeApi {
            addr,
            state: Arc::default(),
            events,
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: probe\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: probe\n\
             current-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn deny_everything(&self) {
        self.state.lock().expect("lock").deny = true;
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("lock").requests.clone()
    }

    /// Adds (or replaces, by uid or namespace/name) an object and tells watchers.
    pub fn apply(&self, kind: Kind, obj: Value) {
        let ev = {
            let mut s = self.state.lock().expect("lock");
            s.resource_version += 1;
            let mut obj = obj;
            obj["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            let key = |o: &Value| {
                (
                    o["metadata"]["namespace"].clone(),
                    o["metadata"]["name"].clone(),
                )
            };
            let existed = s
                .objects
                .iter()
                .any(|(k, o)| *k == kind && key(o) == key(&obj));
            s.objects
                .retain(|(k, o)| !(*k == kind && key(o) == key(&obj)));
            s.objects.push((kind, obj.clone()));
            let ev = json!({"type": if existed { "MODIFIED" } else { "ADDED" }, "object": obj});
            let rv = s.resource_version;
            s.log.push((rv, kind, ev.clone()));
            (s.resource_version, ev)
        };
        let _ = self.events.send((ev.0, kind, ev.1));
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let ev = {
            let mut s = self.state.lock().expect("lock");
            s.resource_version += 1;
            let rv = s.resource_version;
            let at = s.objects.iter().position(|(k, o)| {
                *k == kind
                    && o["metadata"]["namespace"] == namespace
                    && o["metadata"]["name"] == name
            });
            let Some(at) = at else { return };
            let (_, mut obj) = s.objects.remove(at);
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let ev = json!({"type": "DELETED", "object": obj});
            s.log.push((rv, kind, ev.clone()));
            (rv, ev)
        };
        let _ = self.events.send((ev.0, kind, ev.1));
    }

    fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let mut s = self.state.lock().expect("lock");
        s.requests.push(format!("{path}?{query}"));
        if s.deny {
            return full(
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource at {path}"),
                       "reason": "Forbidden", "code": 403}),
            );
        }
        let Some(kind) = Kind::of_path(&path) else {
            return full(
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let node = param("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned));
        if param("watch").as_deref() == Some("true") {
            let from: u64 = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let rx = self.events.subscribe();
            let backlog: Vec<Result<Frame<Bytes>, Infallible>> = s
                .log
                .iter()
                .filter(|(rv, k, ev)| {
                    *rv > from && *k == kind && selected(*k, &ev["object"], node.as_deref())
                })
                .map(|(_, _, ev)| Ok(Frame::data(Bytes::from(format!("{ev}\n")))))
                .collect();
            let sent_up_to = s.resource_version;
            drop(s);
            let live = futures_util::stream::unfold(rx, move |mut rx| {
                let node = node.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((rv, k, ev))
                                if rv > sent_up_to
                                    && k == kind
                                    && selected(k, &ev["object"], node.as_deref()) =>
                            {
                                let line = Bytes::from(format!("{ev}\n"));
                                return Some((Ok::<_, Infallible>(Frame::data(line)), rx));
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            let stream = futures_util::stream::iter(backlog).chain(live);
            let mut r = Response::new(StreamBody::new(stream.boxed()).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "application/json".parse().expect("header"));
            return r;
        }
        let (api_version, list_kind) = kind.list_kind();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, o)| *k == kind && selected(*k, o, node.as_deref()))
            .map(|(_, o)| o.clone())
            .collect();
        full(
            StatusCode::OK,
            json!({"apiVersion": api_version, "kind": list_kind,
                   "metadata": {"resourceVersion": s.resource_version.to_string()}, "items": items}),
        )
    }
}

/// A pod object as the API server returns it.
pub fn pod(uid: &str, name: &str, node: &str, ip: &str, containers: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"uid": uid, "namespace": "shop", "name": name},
        "spec": {"nodeName": node, "containers": containers.iter().map(|(n, _)| json!({"name": n})).collect::<Vec<_>>()},
        "status": {
            "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": containers.iter().map(|(n, id)| json!({
                "name": n, "containerID": if id.is_empty() { String::new() } else { format!("containerd://{id}") },
                "image": "img", "imageID": "", "ready": true, "restartCount": 0
            })).collect::<Vec<_>>(),
        }
    })
}

pub fn service(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [{"port": port}]}
    })
}

pub fn endpoint_slice(name: &str, service: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ips}]
    })
}

/// The systemd-driver cgroup path kubelet makes for a container.
pub fn cgroup_path(uid: &str, container_id: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
        uid.replace('-', "_")
    )
}
