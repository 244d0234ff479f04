//! What a lab is made of, and parsing of the flags that set it.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// The Bookinfo-shaped services, in the order a page request reaches them.
pub const SERVICES: [&str; 4] = ["productpage", "details", "reviews", "ratings"];

/// Which services each one calls, in order, per request.
pub fn calls(service: &str) -> &'static [&'static str] {
    match service {
        "productpage" => &["details", "reviews"],
        "reviews" => &["ratings"],
        _ => &[],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mesh {
    /// No mesh: apps talk to each other through the Services directly.
    None,
    /// Istio-style sidecars: iptables in each pod sends inbound and outbound traffic through a
    /// proxy process in its own container.
    Sidecar,
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mesh::None => "none",
            Mesh::Sidecar => "sidecar",
        })
    }
}

/// The one TLS version the lab's TLS endpoints (ingress and mTLS) accept, both sides pinned so
/// that a run measures that version's handshake and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum TlsVersion {
    #[default]
    #[value(name = "1.3")]
    #[serde(rename = "1.3")]
    V1_3,
    #[value(name = "1.2")]
    #[serde(rename = "1.2")]
    V1_2,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_3 => "1.3",
            TlsVersion::V1_2 => "1.2",
        })
    }
}

/// `on` / `off`, as `--tls-resumption` takes it.
pub fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

/// A service time: fixed, or drawn per request from a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delay {
    Fixed(Duration),
    /// Exponential with this mean.
    Exp(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
}

impl Delay {
    pub const ZERO: Delay = Delay::Fixed(Duration::ZERO);

    /// The smallest value it can take: what a latency is guaranteed to include.
    pub fn min(&self) -> Duration {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Exp(_) => Duration::ZERO,
            Delay::Uniform(lo, _) => lo,
        }
    }

    pub fn mean(&self) -> Duration {
        match *self {
            Delay::Fixed(d) | Delay::Exp(d) => d,
            Delay::Uniform(lo, hi) => (lo + hi) / 2,
        }
    }

    /// One draw, from a uniform sample `u` in [0, 1).
    pub fn sample(&self, u: f64) -> Duration {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Exp(mean) => mean.mul_f64(-(1.0 - u).ln()),
            Delay::Uniform(lo, hi) => lo + (hi - lo).mul_f64(u),
        }
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        match *self {
            Delay::Fixed(d) => write!(f, "{}", h(d)),
            Delay::Exp(d) => write!(f, "exp:{}", h(d)),
            Delay::Uniform(lo, hi) => write!(f, "uniform:{}..{}", h(lo), h(hi)),
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 5ms: {e}"))
}

impl FromStr for Delay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(mean) = s.strip_prefix("exp:") {
            return Ok(Delay::Exp(duration(mean)?));
        }
        if let Some(range) = s.strip_prefix("uniform:") {
            let (lo, hi) = range
                .split_once("..")
                .ok_or_else(|| format!("`{s}`: write a uniform delay as uniform:2ms..8ms"))?;
            let (lo, hi) = (duration(lo)?, duration(hi)?);
            if lo > hi {
                return Err(format!("`{s}`: the lower bound is above the upper one"));
            }
            return Ok(Delay::Uniform(lo, hi));
        }
        Ok(Delay::Fixed(duration(s)?))
    }
}

/// `productpage=5ms,reviews=exp:2ms` → per-service values; unknown services are an error.
pub fn per_service<T: FromStr<Err = String>>(s: &str) -> Result<BTreeMap<String, T>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected service=value"))?;
        let name = name.trim();
        if !SERVICES.contains(&name) {
            return Err(format!(
                "unknown service `{name}` (the lab has {})",
                SERVICES.join(", ")
            ));
        }
        out.insert(name.to_owned(), value.trim().parse()?);
    }
    Ok(out)
}

/// A count that must be at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers(pub u32);

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<u32>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Workers(n)),
            _ => Err(format!("`{s}` is not a worker count between 1 and 1024")),
        }
    }
}

/// Sidecar delays per direction: `2ms` for both, or `inbound=2ms,outbound=1ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SidecarDelay {
    pub inbound: Delay,
    pub outbound: Delay,
}

impl FromStr for SidecarDelay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.contains('=') {
            let d: Delay = s.parse()?;
            return Ok(Self {
                inbound: d,
                outbound: d,
            });
        }
        let mut out = Self {
            inbound: Delay::ZERO,
            outbound: Delay::ZERO,
        };
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("inbound", v)) => out.inbound = v.parse()?,
                Some(("outbound", v)) => out.outbound = v.parse()?,
                _ => return Err(format!("`{item}`: expected inbound=… or outbound=…")),
            }
        }
        Ok(out)
    }
}

/// Everything `lab up` sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    /// Prefix of every namespace and of the lab's cgroup; one lab per name.
    pub name: String,
    pub mesh: Mesh,
    pub ingress: bool,
    pub sidecar_delay: SidecarDelay,
    pub ingress_delay: Delay,
    pub app_delay: BTreeMap<String, Delay>,
    pub app_workers: BTreeMap<String, Workers>,
    /// A proxy command to run instead of the built-in sidecar; `{config}` is replaced by the
    /// path of the rendered `sidecar_template`.
    pub sidecar_cmd: Option<String>,
    pub sidecar_template: Option<String>,
    pub ingress_cmd: Option<String>,
    pub ingress_template: Option<String>,
    /// One-way delay on the client ↔ node link (a delay line in both directions, see `wire`; zero: a plain veth). What a
    /// request spends outside the node grows by four of these with a connection per request
    /// (the handshake's round trip and the request's).
    #[serde(default)]
    pub link_delay: Duration,
    /// The ingress terminates HTTPS on its NodePort (plaintext behind it unless `mtls`).
    #[serde(default)]
    pub ingress_tls: bool,
    /// Sidecar to sidecar (and ingress to productpage's sidecar) over mutual TLS with the
    /// lab's CA, strictly: a plaintext connection to a sidecar's inbound port is refused.
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub tls_version: TlsVersion,
    /// Session resumption (tickets and session caches) on both sides of every TLS hop.
    #[serde(default = "resumption_default")]
    pub tls_resumption: bool,
}

fn resumption_default() -> bool {
    true
}

impl LabConfig {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            mesh: Mesh::None,
            ingress: false,
            sidecar_delay: SidecarDelay {
                inbound: Delay::ZERO,
                outbound: Delay::ZERO,
            },
            ingress_delay: Delay::ZERO,
            app_delay: BTreeMap::new(),
            app_workers: BTreeMap::new(),
            sidecar_cmd: None,
            sidecar_template: None,
            ingress_cmd: None,
            ingress_template: None,
            link_delay: Duration::ZERO,
            ingress_tls: false,
            mtls: false,
            tls_version: TlsVersion::V1_3,
            tls_resumption: true,
        }
    }

    /// Whether any hop of the lab speaks TLS (and so whether it needs its CA and certs).
    pub fn any_tls(&self) -> bool {
        self.ingress_tls || self.mtls
    }

    pub fn delay_of(&self, service: &str) -> Delay {
        self.app_delay.get(service).copied().unwrap_or(Delay::ZERO)
    }

    /// Default: 16 workers, enough that the apps do not queue unless asked to.
    pub fn workers_of(&self, service: &str) -> u32 {
        self.app_workers.get(service).map_or(16, |w| w.0)
    }

    /// The least time a page request must take, from the delays injected on its path.
    pub fn min_page_latency(&self, via_ingress: bool) -> Duration {
        let sidecar = self.mesh == Mesh::Sidecar;
        let mut total = Duration::ZERO;
        if via_ingress {
            total += self.ingress_delay.min();
        }
        total += self.min_service_latency("productpage", sidecar);
        total
    }

    /// From the request entering the service's pod to its response leaving it.
    fn min_service_latency(&self, service: &str, sidecar: bool) -> Duration {
        let mut total = self.delay_of(service).min();
        if sidecar {
            total += self.sidecar_delay.inbound.min();
        }
        for callee in calls(service) {
            if sidecar {
                total += self.sidecar_delay.outbound.min();
            }
            total += self.min_service_latency(callee, sidecar);
        }
        total
    }

    /// Names must make valid namespace names and short interface-name-free prefixes.
    pub fn validate(&self) -> Result<(), String> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 12
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "lab name `{}` must be 1-12 lowercase letters or digits",
                self.name
            ));
        }
        if self.sidecar_cmd.is_some() != self.sidecar_template.is_some() {
            return Err("--sidecar-cmd and --sidecar-template go together".into());
        }
        if self.ingress_cmd.is_some() != self.ingress_template.is_some() {
            return Err("--ingress-cmd and --ingress-template go together".into());
        }
        if self.sidecar_cmd.is_some() && self.mesh != Mesh::Sidecar {
            return Err("--sidecar-cmd needs --mesh sidecar".into());
        }
        if self.ingress_cmd.is_some() && !self.ingress {
            return Err("--ingress-cmd needs --ingress".into());
        }
        if self.ingress_tls && !self.ingress {
            return Err("--ingress-tls needs --ingress".into());
        }
        if self.mtls && self.mesh != Mesh::Sidecar {
            return Err(format!(
                "--mtls needs --mesh sidecar (mesh {} has no sidecars to speak it)",
                self.mesh
            ));
        }
        if self.mtls && !self.ingress {
            // Strict mTLS refuses the NodePort straight to productpage (the client is no mesh
            // member, as under Istio's STRICT mode); the ingress is the way in.
            return Err(
                "--mtls needs --ingress: under strict mTLS only the ingress, a mesh \
                        member, reaches productpage from outside"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn parses_delays() {
        assert_eq!("5ms".parse(), Ok(Delay::Fixed(5 * MS)));
        assert_eq!("0".parse(), Ok(Delay::ZERO));
        assert_eq!("exp:2ms".parse(), Ok(Delay::Exp(2 * MS)));
        assert_eq!(
            "uniform:2ms..8ms".parse(),
            Ok(Delay::Uniform(2 * MS, 8 * MS))
        );
        assert!("uniform:8ms..2ms".parse::<Delay>().is_err());
        assert!("fast".parse::<Delay>().is_err());
    }

    #[test]
    fn samples_stay_in_range() {
        let u = Delay::Uniform(2 * MS, 8 * MS);
        assert_eq!(u.sample(0.0), 2 * MS);
        assert_eq!(u.sample(0.5), 5 * MS);
        let e = Delay::Exp(2 * MS);
        assert_eq!(e.sample(0.0), Duration::ZERO);
        assert!(e.sample(0.9) > 4 * MS);
    }

    #[test]
    fn per_service_rejects_unknown_services() {
        let m: BTreeMap<String, Delay> =
            per_service("productpage=5ms,ratings=exp:1ms").expect("ok");
        assert_eq!(m["productpage"], Delay::Fixed(5 * MS));
        let err = per_service::<Delay>("frontend=5ms").expect_err("unknown");
        assert!(err.contains("unknown service `frontend`"), "{err}");
        assert!(per_service::<Workers>("details=0").is_err());
    }

    #[test]
    fn sidecar_delay_per_direction() {
        let both: SidecarDelay = "2ms".parse().expect("ok");
        assert_eq!(both.inbound, both.outbound);
        let split: SidecarDelay = "outbound=1ms".parse().expect("ok");
        assert_eq!(
            (split.inbound, split.outbound),
            (Delay::ZERO, Delay::Fixed(MS))
        );
        assert!("sideways=1ms".parse::<SidecarDelay>().is_err());
    }

    #[test]
    fn minimum_latency_adds_every_delay_on_the_path() {
        let mut c = LabConfig::new("t");
        for (i, s) in SERVICES.iter().enumerate() {
            c.app_delay
                .insert((*s).to_owned(), Delay::Fixed((i as u32 + 1) * MS));
        }
        // productpage 1 + details 2 + reviews 3 + ratings 4.
        assert_eq!(c.min_page_latency(false), 10 * MS);
        c.mesh = Mesh::Sidecar;
        c.sidecar_delay = "inbound=1ms,outbound=2ms".parse().expect("ok");
        c.ingress_delay = Delay::Fixed(5 * MS);
        // + 4 inbound hops × 1 + 3 outbound calls × 2 + ingress 5.
        assert_eq!(c.min_page_latency(true), 10 * MS + 4 * MS + 6 * MS + 5 * MS);
    }

    #[test]
    fn names_and_byo_flags_are_validated() {
        assert!(LabConfig::new("hpl").validate().is_ok());
        assert!(LabConfig::new("Bad-Name").validate().is_err());
        let mut c = LabConfig::new("hpl");
        c.sidecar_cmd = Some("haproxy -f {config}".into());
        assert!(c.validate().is_err(), "needs a template");
        c.sidecar_template = Some("x".into());
        assert!(c.validate().is_err(), "needs mesh sidecar");
        c.mesh = Mesh::Sidecar;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn tls_flags_are_validated() {
        let mut c = LabConfig::new("hpl");
        c.mtls = true;
        let err = c.validate().expect_err("mesh none");
        assert!(err.contains("--mesh sidecar"), "{err}");
        c.mesh = Mesh::Sidecar;
        assert!(c.validate().expect_err("no ingress").contains("--ingress"));
        c.ingress = true;
        assert!(c.validate().is_ok());
        let mut c = LabConfig::new("hpl");
        c.ingress_tls = true;
        assert!(c.validate().is_err(), "needs --ingress");
        assert_eq!(on_off("off"), Ok(false));
        assert!(on_off("maybe").is_err());
    }

    #[test]
    fn old_state_files_read_as_plaintext_with_resumption() {
        let mut v = serde_json::to_value(LabConfig::new("hpl")).expect("json");
        for k in ["ingress_tls", "mtls", "tls_version", "tls_resumption"] {
            v.as_object_mut().expect("object").remove(k);
        }
        let c: LabConfig = serde_json::from_value(v).expect("parses");
        assert!(!c.any_tls() && c.tls_resumption && c.tls_version == TlsVersion::V1_3);
    }
}
