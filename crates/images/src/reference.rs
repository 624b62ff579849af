//! Image names: the local spelling (`repo:tag`, `:latest` added when no
//! tag or digest is given) and the registry reference oci-client needs.

/// Adds `:latest` to a name without a tag or digest.
pub fn normalize(name: &str) -> String {
    if name.contains('@') {
        return name.to_string();
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Splits `repo:tag` into its parts (for display).
pub fn split(name: &str) -> (String, String) {
    if let Some((r, d)) = name.split_once('@') {
        return (r.to_string(), d.to_string());
    }
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_string(),
            name[slash + i + 1..].to_string(),
        ),
        None => (name.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("127.0.0.1:5000/bb"), "127.0.0.1:5000/bb:latest");
        assert_eq!(normalize("127.0.0.1:5000/bb:v1"), "127.0.0.1:5000/bb:v1");
        assert_eq!(
            split("127.0.0.1:5000/bb:v1"),
            ("127.0.0.1:5000/bb".into(), "v1".into())
        );
    }
}
