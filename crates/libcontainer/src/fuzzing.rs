//! Fuzz entry points (used by fuzz/fuzz_targets/oci_config.rs) and a unit
//! test that replays a small hostile corpus through them.

/// config.json bytes through parsing, validation and everything the
/// runtime derives from a spec before touching the host: mount options,
/// cgroup path, capability sets and the compiled seccomp filter.
pub fn config(data: &[u8]) {
    let Ok(spec) = crate::config::parse(data) else {
        return;
    };
    for m in spec.mounts().iter().flatten() {
        let _ = crate::rootfs::parse_options(m.options().as_deref().unwrap_or_default());
    }
    if let Some(l) = spec.linux() {
        let _ = libcgroups::cgroup_path(l.cgroups_path().as_deref(), "fuzz");
        if let Some(sc) = l.seccomp() {
            let _ = crate::seccomp::build(sc, true);
        }
    }
    if let Some(c) = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
    {
        let _ = crate::caps::CapSets::from_spec(c);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_corpus() {
        let good = serde_json::to_vec(&crate::spec::default_spec(false).unwrap()).unwrap();
        super::config(&good);
        assert!(crate::config::parse(&good).is_ok());
        let corpus: &[&[u8]] = &[
            b"",
            b"{",
            b"null",
            b"{\"ociVersion\": \"1.0.2\"}",
            b"{\"ociVersion\": \"2.0\", \"root\": {\"path\": \"r\"}, \"linux\": {}}",
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"process":{"cwd":"rel","args":["x"]},"linux":{}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"process":{"cwd":"/","args":[]},"linux":{}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"cgroupsPath":"/a/../../b"}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["nope","read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]}]}}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"mounts":[{"destination":"x","type":"tmpfs"}],"linux":{}}"#,
            br#"{"ociVersion":"1.0.2","root":{"path":"r"},"hostname":"h","linux":{"namespaces":[{"type":"user"}]}}"#,
        ];
        // Every entry but the two-comparison seccomp profile is invalid.
        for (i, c) in corpus.iter().enumerate() {
            super::config(c);
            let valid = i == 10;
            assert_eq!(
                crate::config::parse(c).is_ok(),
                valid,
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
