//! IDs that kubelet and the container runtime write into cgroup paths and pod status.

/// IDs parsed from a kubelet-made cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIds {
    pub pod_uid: String,
    pub container_id: Option<String>,
}

/// Parses both kubelet cgroup drivers:
/// systemd `…/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
/// (also `crio-`, `docker-`), and cgroupfs `…/kubepods/burstable/pod<uid>/<id>`.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIds> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (i, uid) = parts.iter().enumerate().find_map(|(i, p)| {
        let p = p.strip_suffix(".slice").unwrap_or(p);
        let at = p.rfind("pod")?;
        let uid = &p[at + 3..];
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.matches('-').count() == 4).then_some((i, uid))
    })?;
    let container_id = parts.get(i + 1).map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        c.rsplit('-').next().unwrap_or(c).to_owned()
    });
    Some(CgroupIds {
        pod_uid: uid,
        container_id,
    })
}

/// The bare container ID of a `containerStatuses[].containerID`, which names the runtime first
/// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`): the cgroup path carries only the ID.
/// `None` for an empty field (a container that has not started yet) or an ID with characters
/// no runtime uses, so a malformed status can never match a cgroup.
pub fn container_id_from_status(field: &str) -> Option<String> {
    let id = match field.split_once("://") {
        Some((_runtime, id)) => id,
        None => field,
    };
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "82c0a928-1df8-41d3-8c76-d2323d47e853";

    #[test]
    fn parses_the_systemd_driver_layout() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod82c0a928_1df8_41d3_8c76_d2323d47e853.slice/cri-containerd-ac39119b.scope";
        let ids = parse_cgroup_path(p).expect("parsed");
        assert_eq!(ids.pod_uid, UID);
        assert_eq!(ids.container_id.as_deref(), Some("ac39119b"));
    }

    #[test]
    fn parses_the_cgroupfs_layout_and_pod_level_cgroups() {
        let p = format!("/kubepods/besteffort/pod{UID}/0123abcd");
        let ids = parse_cgroup_path(&p).expect("parsed");
        assert_eq!(
            (ids.pod_uid.as_str(), ids.container_id.as_deref()),
            (UID, Some("0123abcd"))
        );
        let pod_only = parse_cgroup_path(&format!("/kubepods/pod{UID}")).expect("parsed");
        assert_eq!(pod_only.container_id, None);
        assert_eq!(parse_cgroup_path("/system.slice/sshd.service"), None);
    }

    #[test]
    fn status_container_ids_lose_their_runtime_prefix() {
        let id = "4f1c0e2d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";
        for field in [
            format!("containerd://{id}"),
            format!("cri-o://{id}"),
            format!("docker://{id}"),
            id.to_owned(),
        ] {
            assert_eq!(
                container_id_from_status(&field).as_deref(),
                Some(id),
                "{field}"
            );
        }
        assert_eq!(container_id_from_status(""), None);
        assert_eq!(container_id_from_status("containerd://"), None);
        assert_eq!(container_id_from_status("containerd://../etc"), None);
        assert_eq!(
            container_id_from_status("containerd://ABC123").as_deref(),
            Some("abc123")
        );
    }

    #[test]
    fn a_status_id_matches_the_id_in_either_drivers_cgroup_path() {
        let id = "ac39119b0e";
        let status = container_id_from_status(&format!("containerd://{id}"));
        let systemd = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
            UID.replace('-', "_")
        );
        let cgroupfs = format!("/kubepods/pod{UID}/{id}");
        for p in [systemd, cgroupfs] {
            assert_eq!(
                parse_cgroup_path(&p).and_then(|i| i.container_id),
                status,
                "{p}"
            );
        }
    }
}
