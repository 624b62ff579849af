//! The OCI runtime `config.json` for a container: oci-spec's default spec
//! (the same defaults `runc spec` writes: namespaces, /proc /dev /sys mounts,
//! masked and read-only paths, capabilities) with the container's process,
//! mounts, network namespace and cgroup limits filled in.

use crate::container::Container;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::Path;

pub fn build(c: &Container, dir: &Path, netns: Option<&str>, uid: u32, gid: u32) -> Result<Value> {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    let cfg = &c.config;
    if cfg.args.is_empty() {
        bail!("no command specified");
    }
    v["root"] = json!({"path": dir.join("rootfs"), "readonly": false});
    v["hostname"] = json!(cfg.hostname);
    let p = &mut v["process"];
    p["terminal"] = json!(cfg.tty);
    p["args"] = json!(cfg.args);
    p["env"] = json!(cfg.env);
    p["cwd"] = json!(if cfg.workdir.is_empty() {
        "/"
    } else {
        &cfg.workdir
    });
    p["user"] = json!({"uid": uid, "gid": gid});
    // Docker does not set no_new_privileges by default (setuid tools work).
    p["noNewPrivileges"] = json!(false);
    if let Some(m) = v["mounts"].as_array_mut() {
        for (name, dest) in [
            ("hosts", "/etc/hosts"),
            ("hostname", "/etc/hostname"),
            ("resolv.conf", "/etc/resolv.conf"),
        ] {
            // Build containers have none: nothing may leak into their layers.
            if !dir.join(name).exists() {
                continue;
            }
            m.push(json!({
                "destination": dest, "type": "bind", "source": dir.join(name),
                "options": ["rbind", "rprivate"]
            }));
        }
        for b in &cfg.binds {
            let mut opts = vec!["rbind", "rprivate"];
            if b.readonly {
                opts.push("ro");
            }
            m.push(json!({"destination": b.container, "type": "bind", "source": b.host, "options": opts}));
        }
    }
    let linux = &mut v["linux"];
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        match cfg.network.as_str() {
            "host" => ns.retain(|n| n["type"] != "network"),
            _ => {
                ns.retain(|n| n["type"] != "network");
                match netns {
                    Some(path) => ns.push(json!({"type": "network", "path": path})),
                    None => ns.push(json!({"type": "network"})),
                }
            }
        }
    }
    linux["cgroupsPath"] = json!(c.cgroup_path());
    let mut res = linux["resources"].take();
    if !res.is_object() {
        res = json!({});
    }
    if let Some(m) = cfg.memory {
        // Memory+swap equal to memory: no swap, as docker does by default.
        res["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(cpus) = cfg.cpus {
        let period = 100_000u64;
        res["cpu"] = json!({"quota": (cpus * period as f64) as i64, "period": period});
    }
    if let Some(n) = cfg.pids_limit {
        res["pids"] = json!({"limit": n});
    }
    linux["resources"] = res;
    Ok(v)
}

/// Final argv from the image's Entrypoint/Cmd and the user's overrides.
pub fn command(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&str>,
    user_args: &[String],
) -> Vec<String> {
    let ep: Vec<String> = match entrypoint {
        Some("") => vec![],
        Some(e) => vec![e.to_string()],
        None => image_entrypoint.to_vec(),
    };
    let cmd: Vec<String> = if !user_args.is_empty() {
        user_args.to_vec()
    } else if entrypoint.is_some() {
        vec![]
    } else {
        image_cmd.to_vec()
    };
    ep.into_iter().chain(cmd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn entrypoint_and_cmd() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command(&s(&["/ep"]), &s(&["a"]), None, &[]),
            s(&["/ep", "a"])
        );
        assert_eq!(
            command(&s(&["/ep"]), &s(&["a"]), None, &s(&["b"])),
            s(&["/ep", "b"])
        );
        assert_eq!(
            command(&s(&["/ep"]), &s(&["a"]), Some("/x"), &[]),
            s(&["/x"])
        );
        assert_eq!(command(&[], &s(&["sh"]), None, &s(&["ls"])), s(&["ls"]));
    }
}
