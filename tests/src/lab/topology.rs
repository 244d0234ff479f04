//! The network of a lab: namespaces, veths, routes, and the iptables rules of kube-proxy and
//! of Istio's sidecar injection.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use super::{
    LabError,
    names::{
        CLIENT_IP, NODE_IP, NODEPORT_INGRESS, NODEPORT_PRODUCTPAGE, Names, POD_GATEWAY, PROXY_UID,
        Pod, SIDECAR_INBOUND_PORT, pod,
    },
};
use crate::netns::ip;

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| LabError::Command {
                command: command.clone(),
                message: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| LabError::Command {
        command: command.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_(args: &[&str]) -> Result<String, LabError> {
    ip(args).map_err(|e| LabError::Command {
        command: format!("ip {}", args.join(" ")),
        message: e.to_string(),
    })
}

fn in_ns(ns: &str, cmd: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    run("ip", &args, stdin)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    in_ns(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")], None).map(|_| ())
}

pub fn create_netns(name: &str) -> Result<(), LabError> {
    ip_(&["netns", "add", name])?;
    ip_(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// The client ↔ node link's interface name at both ends, as on a VM and a node.
pub const UPLINK: &str = "eth0";

/// Client ↔ node link without delay: a veth pair.
pub fn uplink_veth(names: &Names) -> Result<(), LabError> {
    let (client, node) = (names.netns("client"), names.netns("node"));
    ip_(&[
        "-n", &node, "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK, "netns",
        &client,
    ])?;
    Ok(())
}

/// Waits until `ifname` exists in `ns` (a delay line's TAP device, created by its process).
pub fn wait_link(ns: &str, ifname: &str, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if ip(&["-n", ns, "link", "show", "dev", ifname]).is_ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Addresses and routes of the client ↔ node link, whichever devices carry it.
pub fn uplink(names: &Names) -> Result<(), LabError> {
    let (client, node) = (names.netns("client"), names.netns("node"));
    for (ns, addr) in [(&node, NODE_IP), (&client, CLIENT_IP)] {
        ip_(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            UPLINK,
        ])?;
        ip_(&["-n", ns, "link", "set", UPLINK, "up"])?;
    }
    // A node's default route leaves by its uplink; hopprobe finds the uplink by it.
    ip_(&[
        "-n",
        &node,
        "route",
        "add",
        "default",
        "via",
        &CLIENT_IP.to_string(),
        "dev",
        UPLINK,
    ])?;
    sysctl(&node, "net.ipv4.ip_forward", "1")?;
    Ok(())
}

fn mac_of(ns: &str, ifname: &str) -> Result<String, LabError> {
    let out = ip_(&["-n", ns, "-o", "link", "show", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| LabError::Command {
            command: format!("ip -n {ns} link show {ifname}"),
            message: "no MAC address in the output".into(),
        })
}

/// A pod's veth, addresses and routes, wired as AWS VPC CNI does: a /32 on the pod's `eth0`, a
/// default route via 169.254.1.1 answered by a static neighbour entry, a host route per pod.
pub fn pod_network(names: &Names, pod: &Pod) -> Result<(), LabError> {
    let (node, ns) = (names.netns("node"), names.netns(pod.service));
    let host = names.host_veth(pod);
    ip_(&[
        "-n", &node, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip_(&["-n", &node, "link", "set", &host, "up"])?;
    let ip4 = pod.ip().to_string();
    ip_(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip4}/32"),
        "dev",
        "eth0",
    ])?;
    ip_(&["-n", &ns, "link", "set", "eth0", "up"])?;
    let gw = POD_GATEWAY.to_string();
    ip_(&[
        "-n", &ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ])?;
    ip_(&[
        "-n", &ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ])?;
    let mac = mac_of(&node, &host)?;
    ip_(&[
        "-n",
        &ns,
        "neigh",
        "add",
        &gw,
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    ip_(&[
        "-n",
        &node,
        "route",
        "add",
        &format!("{ip4}/32"),
        "dev",
        &host,
    ])?;
    Ok(())
}

/// kube-proxy's iptables mode: a DNAT per ClusterIP; NodePorts marked for masquerade (the
/// default `externalTrafficPolicy: Cluster`) and DNATed to their pod.
pub fn kube_proxy_rules(pods: &[Pod], ingress: bool) -> String {
    let mut r = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         -A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n\
         -A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n",
    );
    for p in pods {
        r.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp --dport {} -j DNAT --to-destination {}:{}\n",
            p.cluster_ip(),
            p.port(),
            p.ip(),
            p.port()
        ));
    }
    r.push_str(&format!(
        "-A KUBE-SERVICES -d {NODE_IP}/32 -j KUBE-NODEPORTS\n"
    ));
    let mut nodeports = vec![(NODEPORT_PRODUCTPAGE, pod("productpage"))];
    if ingress {
        nodeports.push((NODEPORT_INGRESS, pod(super::names::INGRESS_SERVICE)));
    }
    for (port, p) in nodeports {
        r.push_str(&format!(
            "-A KUBE-NODEPORTS -p tcp --dport {port} -j KUBE-MARK-MASQ\n\
             -A KUBE-NODEPORTS -p tcp --dport {port} -j DNAT --to-destination {}:{}\n",
            p.ip(),
            p.port()
        ));
    }
    r.push_str("COMMIT\n");
    r
}

/// Istio's injection, per-destination: inbound traffic to the app port goes to the sidecar's
/// inbound port; calls to each upstream Service go to that service's outbound port; the
/// sidecar's own traffic (its uid) is left alone. A port per destination lets any proxy stand in
/// for the built-in one without needing SO_ORIGINAL_DST.
pub fn sidecar_rules(pod: &Pod, upstreams: &[Pod]) -> String {
    let mut r = String::from(
        "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
         -A PREROUTING -p tcp -j ISTIO_INBOUND\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n",
    );
    r.push_str(&format!(
        "-A ISTIO_INBOUND -p tcp --dport {} -j REDIRECT --to-ports {SIDECAR_INBOUND_PORT}\n",
        pod.port()
    ));
    r.push_str(&format!(
        "-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN\n"
    ));
    for up in upstreams {
        r.push_str(&format!(
            "-A ISTIO_OUTPUT -d {}/32 -p tcp --dport {} -j REDIRECT --to-ports {}\n",
            up.cluster_ip(),
            up.port(),
            up.outbound_port()
        ));
    }
    r.push_str("COMMIT\n");
    r
}

pub fn apply_rules(ns: &str, rules: &str) -> Result<(), LabError> {
    in_ns(ns, &["iptables-restore", "--noflush"], Some(rules)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_dnats_services_and_masquerades_nodeports() {
        let rules = kube_proxy_rules(&[pod("productpage"), pod("details")], false);
        assert!(rules.contains(
            "-d 10.96.0.11/32 -p tcp --dport 9080 -j DNAT --to-destination 10.78.0.11:9080"
        ));
        assert!(rules.contains("--dport 30080 -j KUBE-MARK-MASQ"));
        assert!(!rules.contains("30081"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn sidecar_exempts_its_uid_before_redirecting() {
        let rules = sidecar_rules(&pod("productpage"), &[pod("details"), pod("reviews")]);
        let exempt = rules.find("--uid-owner 1337 -j RETURN").expect("exempt");
        let redirect = rules.find("-d 10.96.0.11/32").expect("redirect");
        assert!(exempt < redirect);
        assert!(rules.contains("--dport 9080 -j REDIRECT --to-ports 15006"));
        assert!(
            rules.contains("-d 10.96.0.12/32 -p tcp --dport 9080 -j REDIRECT --to-ports 15102")
        );
    }
}
