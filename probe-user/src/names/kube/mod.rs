//! Names from the Kubernetes API: this node's pods (by pod UID, container ID and pod IP) and
//! the cluster's Services (by ClusterIP, and by endpoint IP from EndpointSlices).
//!
//! One watcher per kind keeps [`KubeIndex`] current. Start-up waits until every kind has been
//! listed once, so the first output already has names; credentials the API server rejects
//! (401, 403) stop hopprobe before anything is attached, with the RBAC it needs in the message;
//! an API server that cannot be reached or does not answer within the timeout does too.
//! After start-up a failing watch logs a warning, keeps the names it has and retries with
//! backoff: losing the API server must not stop the measurements.

pub mod index;

use std::{
    collections::HashSet,
    fmt::Debug,
    path::Path,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

pub use index::{KubeIndex, Names};

/// The RBAC hopprobe needs, as said in every permission error.
pub const RBAC_NEEDED: &str = "get, list and watch on pods, services and \
    endpointslices.discovery.k8s.io (deploy/kubernetes/rbac.yaml, or the Helm chart)";

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers (in-cluster, then `KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Only pods scheduled here are watched (`spec.nodeName`).
    pub node: String,
    /// Longest wait for the API server at start-up, and for each connection.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no Kubernetes client configuration: {0} (in a pod, mount the service account token; \
         elsewhere set KUBECONFIG)"
    )]
    Config(String),
    #[error(
        "the API server at {url} refused to let hopprobe {what} (HTTP {code} {reason}: \
         {message}); it needs {RBAC_NEEDED}"
    )]
    Denied {
        url: String,
        what: &'static str,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("the API server at {url} did not let hopprobe {what} within {timeout:?}: {last_error}")]
    Timeout {
        url: String,
        what: String,
        timeout: Duration,
        last_error: String,
    },
    #[error("starting the Kubernetes client for {url}: {message}")]
    Client { url: String, message: String },
}

impl KubeError {
    /// Bad configuration is a usage error (2), refused credentials a missing privilege (3),
    /// anything else a runtime failure (1): the exit codes `hopprobe run` documents.
    pub fn exit_code(&self) -> i32 {
        match self {
            KubeError::Config(_) => crate::exit::USAGE,
            KubeError::Denied { .. } => crate::exit::UNSUPPORTED,
            KubeError::Timeout { .. } | KubeError::Client { .. } => crate::exit::FAILURE,
        }
    }
}

/// The client configuration: in-cluster (service account) when running in a pod, else
/// `KUBECONFIG` or `~/.kube/config` (kube's usual inference).
pub async fn infer_config() -> Result<Config, KubeError> {
    Config::infer()
        .await
        .map_err(|e| KubeError::Config(e.to_string()))
}

/// The configuration in a kubeconfig file (its current context).
pub async fn config_from_file(path: &Path) -> Result<Config, KubeError> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))
}

/// Shared, always-current names. Cloning shares the same index.
#[derive(Debug, Clone, Default)]
pub struct KubeNames(Arc<RwLock<KubeIndex>>);

impl KubeNames {
    pub fn read<T>(&self, f: impl FnOnce(&KubeIndex) -> T) -> T {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut KubeIndex) -> T) -> T {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The running watchers; dropping it stops them.
#[derive(Debug)]
pub struct KubeSource {
    pub names: KubeNames,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How one kind of object goes into the index.
trait Indexed: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const WHAT: &'static str;
    fn key(&self) -> Option<String>;
    fn upsert(&self, idx: &mut KubeIndex);
    fn remove(key: &str, idx: &mut KubeIndex);
    fn keys(idx: &KubeIndex) -> HashSet<String>;
}

impl Indexed for Pod {
    const WHAT: &'static str = "list and watch pods";
    fn key(&self) -> Option<String> {
        self.metadata.uid.clone()
    }
    fn upsert(&self, idx: &mut KubeIndex) {
        idx.upsert_pod(self);
    }
    fn remove(key: &str, idx: &mut KubeIndex) {
        idx.remove_pod(key);
    }
    fn keys(idx: &KubeIndex) -> HashSet<String> {
        idx.pod_keys()
    }
}

fn ns_name<K: Resource>(k: &K) -> Option<String> {
    let m = k.meta();
    Some(format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref()?
    ))
}

impl Indexed for Service {
    const WHAT: &'static str = "list and watch services";
    fn key(&self) -> Option<String> {
        ns_name(self)
    }
    fn upsert(&self, idx: &mut KubeIndex) {
        idx.upsert_service(self);
    }
    fn remove(key: &str, idx: &mut KubeIndex) {
        idx.remove_service(key);
    }
    fn keys(idx: &KubeIndex) -> HashSet<String> {
        idx.service_keys()
    }
}

impl Indexed for EndpointSlice {
    const WHAT: &'static str = "list and watch endpointslices";
    fn key(&self) -> Option<String> {
        ns_name(self)
    }
    fn upsert(&self, idx: &mut KubeIndex) {
        idx.upsert_slice(self);
    }
    fn remove(key: &str, idx: &mut KubeIndex) {
        idx.remove_slice(key);
    }
    fn keys(idx: &KubeIndex) -> HashSet<String> {
        idx.slice_keys()
    }
}

/// What a watcher tells start-up.
enum Startup {
    Listed(&'static str),
    Denied(KubeError),
}

/// A 401/403 from the API server, however the watcher wrapped it.
fn denied(e: &watcher::Error) -> Option<&kube::core::Status> {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s,
        _ => return None,
    };
    matches!(status.code, 401 | 403).then_some(&**status)
}

/// Connects, lists and starts watching; returns once every kind has been listed once.
pub async fn start(mut config: Config, opts: &KubeOptions) -> Result<KubeSource, KubeError> {
    let url = config.cluster_url.to_string();
    // A connection that never completes must not hang start-up; the watchers' own idle
    // timeout covers a watch that goes quiet later.
    config.connect_timeout = Some(opts.timeout);
    let client = Client::try_from(config).map_err(|e| KubeError::Client {
        url: url.clone(),
        message: e.to_string(),
    })?;
    let names = KubeNames::default();
    let last_error = Arc::new(Mutex::new(String::from("no answer")));
    let (tx, mut rx) = mpsc::channel(8);
    let pods = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node));
    let mut source = KubeSource {
        names: names.clone(),
        tasks: vec![
            tokio::spawn(follow(
                Api::<Pod>::all(client.clone()),
                pods,
                names.clone(),
                tx.clone(),
                last_error.clone(),
                url.clone(),
            )),
            tokio::spawn(follow(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                names.clone(),
                tx.clone(),
                last_error.clone(),
                url.clone(),
            )),
            tokio::spawn(follow(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
                names.clone(),
                tx,
                last_error.clone(),
                url.clone(),
            )),
        ],
    };
    let mut waiting: Vec<&'static str> = vec![Pod::WHAT, Service::WHAT, EndpointSlice::WHAT];
    let wait = async {
        while !waiting.is_empty() {
            match rx.recv().await {
                Some(Startup::Listed(what)) => waiting.retain(|w| *w != what),
                Some(Startup::Denied(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    };
    match tokio::time::timeout(opts.timeout, wait).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let last_error = last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for t in &source.tasks {
                t.abort();
            }
            source.tasks.clear();
            return Err(KubeError::Timeout {
                url,
                what: waiting.join(", "),
                timeout: opts.timeout,
                last_error,
            });
        }
    }
    let (pods, services) = names.read(|i| (i.pod_count(), i.service_count()));
    info!(
        node = %opts.node,
        pods,
        services,
        "Kubernetes API: names for this node's pods and the cluster's services"
    );
    Ok(source)
}

async fn follow<K: Indexed>(
    api: Api<K>,
    config: watcher::Config,
    names: KubeNames,
    startup: mpsc::Sender<Startup>,
    last_error: Arc<Mutex<String>>,
    url: String,
) {
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    let mut failing = false;
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(ev) => {
                if failing {
                    info!(what = K::WHAT, "Kubernetes API watch recovered");
                    failing = false;
                }
                ev
            }
            Err(e) => {
                if !listed {
                    if let Some(s) = denied(&e) {
                        let _ = startup
                            .send(Startup::Denied(KubeError::Denied {
                                url: url.clone(),
                                what: K::WHAT,
                                code: s.code,
                                reason: s.reason.clone(),
                                message: s.message.clone(),
                            }))
                            .await;
                        return;
                    }
                    *last_error.lock().unwrap_or_else(PoisonError::into_inner) =
                        format!("{}: {e}", K::WHAT);
                } else if !failing {
                    // Once per outage: the backoff retries, and names already known stay.
                    warn!(what = K::WHAT, error = %e, "Kubernetes API watch failed; keeping the names known so far and retrying");
                }
                failing = true;
                continue;
            }
        };
        match event {
            Event::Init => seen.clear(),
            Event::InitApply(obj) => {
                if let Some(k) = obj.key() {
                    seen.insert(k);
                }
                names.write(|idx| obj.upsert(idx));
            }
            Event::InitDone => {
                names.write(|idx| {
                    for gone in K::keys(idx).difference(&seen) {
                        K::remove(gone, idx);
                    }
                });
                seen.clear();
                if !listed {
                    listed = true;
                    let _ = startup.send(Startup::Listed(K::WHAT)).await;
                }
            }
            Event::Apply(obj) => names.write(|idx| obj.upsert(idx)),
            Event::Delete(obj) => {
                if let Some(k) = obj.key() {
                    names.write(|idx| K::remove(&k, idx));
                }
            }
        }
    }
}
