//! VM definitions: the declarative spec (TOML from files, JSON through the
//! API), its validation (errors name the field) and its translation into
//! `ferro run` arguments.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A validation or parse error; `field` is a path such as `disks[1].path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// One VM definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    /// Generated (v4) at define time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// QEMU-style size: `512M`, `2G` (plain numbers are MiB).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Absent: the default guest (kernel, initramfs and firmware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub autostart: bool,
}

fn default_arch() -> String {
    "riscv64".into()
}
fn default_cpus() -> u32 {
    1
}
fn default_memory() -> String {
    "512M".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: PathBuf,
    /// `raw` or `qcow2`; probed by the VMM when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// An existing (or new) TAP device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// A bridge: the VMM creates a TAP and adds it to this bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Generated (52:54:00:xx:xx:xx) at define time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Restart policy, written as Docker's: `no`, `on-failure[:N]`, `always`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a crash or a failure exit; at most `max` times in a row
    /// when given.
    OnFailure { max: Option<u32> },
    /// Restart whenever the VM stops by itself (not after an API stop).
    Always,
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RestartPolicy> for String {
    fn from(p: RestartPolicy) -> String {
        p.to_string()
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Self::No),
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure { max: None }),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse::<u32>()
                    .map(|n| Self::OnFailure { max: Some(n) })
                    .map_err(|_| format!("{s:?}: the retry count must be a number")),
                None => Err(format!(
                    "{s:?}: expected \"no\", \"on-failure\", \"on-failure:N\" or \"always\""
                )),
            },
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::No => f.write_str("no"),
            Self::Always => f.write_str("always"),
            Self::OnFailure { max: None } => f.write_str("on-failure"),
            Self::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
        }
    }
}

impl RestartPolicy {
    /// Whether a VM that ended by itself with `crashed`/`failed` (true) or a
    /// clean stop (false) is restarted, given the restarts already done in a
    /// row.
    pub fn should_restart(&self, failed: bool, restarts_in_row: u32) -> bool {
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max } => failed && max.is_none_or(|m| restarts_in_row < m),
        }
    }
}

/// Restart back-off: 100 ms doubling per restart in a row, capped at 30 s.
pub fn backoff(restarts_in_row: u32) -> std::time::Duration {
    let ms = 100u64.saturating_mul(1u64 << restarts_in_row.min(20));
    std::time::Duration::from_millis(ms.min(30_000))
}

/// Parses a TOML definition; errors name the field.
pub fn from_toml(text: &str) -> Result<VmSpec, SpecError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        // toml's message carries a source excerpt; keep its first line.
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        let msg = match inner.span() {
            Some(sp) => {
                let line = text[..sp.start.min(text.len())].matches('\n').count() + 1;
                format!("{msg} (line {line})")
            }
            None => msg,
        };
        err(field, msg)
    })
}

/// Parses a JSON definition; errors name the field.
pub fn from_json(text: &[u8]) -> Result<VmSpec, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let spec: VmSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        err(field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| err("", format!("trailing data after the definition: {e}")))?;
    Ok(spec)
}

/// Parses TOML or JSON (JSON when the text starts with `{`).
pub fn parse(text: &[u8]) -> Result<VmSpec, SpecError> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        from_json(text)
    } else {
        let s = std::str::from_utf8(text).map_err(|e| err("", format!("not UTF-8: {e}")))?;
        from_toml(s)
    }
}

/// VM names: used in paths and URLs, so a conservative alphabet.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 64 {
        return Err(err("name", "must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || name.starts_with(['-', '.'])
    {
        return Err(err(
            "name",
            format!("{name:?}: use letters, digits, '.', '_' and '-' (not first)"),
        ));
    }
    Ok(())
}

fn check_abs(field: &str, p: &Path) -> Result<(), SpecError> {
    if !p.is_absolute() {
        return Err(err(
            field,
            format!("{}: must be an absolute path", p.display()),
        ));
    }
    if p.to_str().is_none() {
        return Err(err(field, "path is not UTF-8"));
    }
    Ok(())
}

fn check_ifname(field: &str, v: &str) -> Result<(), SpecError> {
    if v.is_empty() || v.len() > 15 || v.contains(['/', ',', ' ']) {
        return Err(err(
            field,
            format!("{v:?}: interface names are 1 to 15 bytes, no '/', ',' or spaces"),
        ));
    }
    Ok(())
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A random locally administered MAC in QEMU's 52:54:00 prefix.
pub fn random_mac() -> String {
    let r: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2])
}

impl VmSpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name(&self.name)?;
        let max_cpus = match (self.arch.as_str(), self.accel.as_deref()) {
            ("riscv64", None | Some("emu")) => 8,
            ("x86_64", None | Some("kvm")) => 64,
            ("riscv64" | "x86_64", Some(a)) => {
                return Err(err(
                    "accel",
                    format!(
                        "{a:?} does not run {} guests (riscv64: emu, x86_64: kvm)",
                        self.arch
                    ),
                ))
            }
            (a, _) => return Err(err("arch", format!("{a:?}: expected riscv64 or x86_64"))),
        };
        if !(1..=max_cpus).contains(&self.cpus) {
            return Err(err(
                "cpus",
                format!("{}: {} guests take 1 to {max_cpus}", self.cpus, self.arch),
            ));
        }
        let mem = vmm::parse_memory(&self.memory).map_err(|e| err("memory", format!("{e:#}")))?;
        if !(16 << 20..=1 << 40).contains(&mem) {
            return Err(err("memory", format!("{}: must be 16M to 1T", self.memory)));
        }
        for (f, p) in [
            ("kernel", &self.kernel),
            ("firmware", &self.firmware),
            ("initrd", &self.initrd),
        ] {
            if let Some(p) = p {
                check_abs(f, p)?;
            }
        }
        if self.kernel.is_none() && self.initrd.is_some() {
            return Err(err(
                "initrd",
                "needs kernel (without kernel the default guest boots with its own initramfs)",
            ));
        }
        if let Some(c) = &self.cmdline {
            if c.len() > 4096 || c.contains('\0') {
                return Err(err("cmdline", "at most 4096 bytes, no NUL"));
            }
        }
        if self.disks.len() > 16 {
            return Err(err("disks", "at most 16 disks"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            check_abs(&format!("disks[{i}].path"), &d.path)?;
            if let Some(f) = &d.format {
                if f != "raw" && f != "qcow2" {
                    return Err(err(
                        format!("disks[{i}].format"),
                        format!("{f:?}: expected raw or qcow2"),
                    ));
                }
            }
            if let Some(s) = &d.serial {
                if s.len() > 20 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                    return Err(err(
                        format!("disks[{i}].serial"),
                        "at most 20 printable ASCII characters, no ','",
                    ));
                }
            }
            if self.disks[..i].iter().any(|o| o.path == d.path) {
                return Err(err(
                    format!("disks[{i}].path"),
                    format!("{} is already disks of this VM", d.path.display()),
                ));
            }
        }
        if self.nics.len() > 8 {
            return Err(err("nics", "at most 8 NICs"));
        }
        for (i, n) in self.nics.iter().enumerate() {
            match (&n.tap, &n.bridge) {
                (Some(t), None) => check_ifname(&format!("nics[{i}].tap"), t)?,
                (None, Some(b)) => check_ifname(&format!("nics[{i}].bridge"), b)?,
                _ => {
                    return Err(err(
                        format!("nics[{i}]"),
                        "give exactly one of tap and bridge",
                    ))
                }
            }
            if let Some(m) = &n.mac {
                match parse_mac(m) {
                    Some(b) if b[0] & 1 == 0 => {}
                    Some(_) => {
                        return Err(err(
                            format!("nics[{i}].mac"),
                            format!("{m}: a multicast address cannot be a NIC's"),
                        ))
                    }
                    None => {
                        return Err(err(
                            format!("nics[{i}].mac"),
                            format!("{m:?}: expected six hex pairs like 52:54:00:12:34:56"),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills what define generates: the UUID and NIC MACs. Values kept from
    /// `previous` (a redefinition) win over fresh ones, so an edit does not
    /// change a VM's identity.
    pub fn normalize(&mut self, previous: Option<&VmSpec>) {
        if self.uuid.is_none() {
            self.uuid = Some(
                previous
                    .and_then(|p| p.uuid)
                    .unwrap_or_else(uuid::Uuid::new_v4),
            );
        }
        for (i, n) in self.nics.iter_mut().enumerate() {
            if n.mac.is_none() {
                let old = previous
                    .and_then(|p| p.nics.get(i))
                    .and_then(|o| o.mac.clone());
                n.mac = Some(old.unwrap_or_else(random_mac));
            }
        }
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid.unwrap_or_default()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render as TOML: {e}\n"))
    }

    /// `ferro run …` arguments (without the program name) for this VM in
    /// managed mode, with its control files in `paths`.
    pub fn run_args(&self, paths: &RunPaths) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
            a.push(k.into());
            a.push(v.as_ref().to_owned());
        };
        push("--name", &self.name);
        push("--uuid", &self.uuid().to_string());
        push("--arch", &self.arch);
        if let Some(x) = &self.accel {
            push("--accel", x);
        }
        push("--cpus", &self.cpus.to_string());
        push("--memory", &self.memory);
        if let Some(p) = &self.kernel {
            push("--kernel", p);
        }
        if let Some(p) = &self.firmware {
            push("--firmware", p);
        }
        if let Some(p) = &self.initrd {
            push("--initrd", p);
        }
        if let Some(c) = &self.cmdline {
            push("--append", c);
        }
        for d in &self.disks {
            // QEMU's ',,' escape for commas in the path.
            let mut s = d.path.to_string_lossy().replace(',', ",,");
            if let Some(f) = &d.format {
                s.push_str(&format!(",format={f}"));
            }
            if d.readonly {
                s.push_str(",readonly=on");
            }
            if let Some(ser) = &d.serial {
                s.push_str(&format!(",serial={ser}"));
            }
            push("--disk", &s);
        }
        for n in &self.nics {
            let mut s = match (&n.tap, &n.bridge) {
                (Some(t), _) => format!("tap={t}"),
                (_, Some(b)) => format!("bridge={b}"),
                _ => String::new(),
            };
            if let Some(m) = &n.mac {
                s.push_str(&format!(",mac={m}"));
            }
            push("--net", &s);
        }
        push("--control", &paths.control);
        push("--console-socket", &paths.console);
        push("--serial-log", &paths.serial_log);
        push("--status-file", &paths.status);
        push("--snapshot-dir", &paths.snapshots);
        a
    }
}

/// The files of one VM's run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub control: PathBuf,
    pub console: PathBuf,
    pub serial_log: PathBuf,
    pub status: PathBuf,
    pub pid: PathBuf,
    pub vmm_log: PathBuf,
    pub snapshots: PathBuf,
}

impl RunPaths {
    /// `run_dir` holds the sockets and status; `vm_dir` the persistent files.
    pub fn new(run_dir: &Path, vm_dir: &Path) -> Self {
        RunPaths {
            dir: run_dir.to_path_buf(),
            control: run_dir.join("control.sock"),
            console: run_dir.join("console.sock"),
            serial_log: vm_dir.join("serial.log"),
            status: run_dir.join("status.json"),
            pid: run_dir.join("pid"),
            vmm_log: vm_dir.join("vmm.log"),
            snapshots: vm_dir.join("snapshots"),
        }
    }
}

/// The fuzz target's body (fuzz/fuzz_targets/vm_definition.rs): any bytes
/// through the parser; whatever parses and validates must translate, render
/// and parse back to the same definition.
pub fn fuzz_definition(data: &[u8]) {
    let Ok(mut s) = parse(data) else { return };
    if s.validate().is_err() {
        return;
    }
    s.normalize(None);
    s.validate()
        .expect("normalize keeps a valid definition valid");
    let paths = RunPaths::new(Path::new("/r"), Path::new("/v"));
    let _ = s.run_args(&paths);
    let j = serde_json::to_vec(&s).expect("serializes");
    assert_eq!(from_json(&j).expect("JSON round trip"), s);
    assert_eq!(from_toml(&s.to_toml()).expect("TOML round trip"), s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's body over a small corpus and seeded mutations of it.
    #[test]
    fn fuzz_body_over_a_corpus() {
        use rand::{Rng, SeedableRng};
        let corpus: Vec<Vec<u8>> = vec![
            FULL.as_bytes().to_vec(),
            b"name = \"a\"\n".to_vec(),
            br#"{"name":"b","nics":[{"tap":"t"}],"restart":"always"}"#.to_vec(),
            b"name = \"c\"\n[[disks]]\npath = \"/x,y\"\nreadonly = true\n".to_vec(),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for c in &corpus {
            fuzz_definition(c);
            for _ in 0..300 {
                let mut m = c.clone();
                const BYTES: &[u8] = b"\"=[]{},:\n0aZ";
                for _ in 0..rng.gen_range(1..4) {
                    if m.is_empty() {
                        break;
                    }
                    let i = rng.gen_range(0..m.len());
                    match rng.gen_range(0..3) {
                        0 => m[i] = rng.gen(),
                        1 => {
                            m.remove(i);
                        }
                        _ => m.insert(i, BYTES[rng.gen_range(0..BYTES.len())]),
                    }
                }
                fuzz_definition(&m);
            }
        }
    }

    const FULL: &str = r#"
name = "web-1"
uuid = "6f1e7c1a-9d52-4c0e-8a57-0b8e3c1d2e3f"
arch = "riscv64"
cpus = 2
memory = "1G"
kernel = "/boot/Image"
initrd = "/boot/initrd.img"
cmdline = "console=ttyS0 root=/dev/vda"
restart = "on-failure:5"
autostart = true

[[disks]]
path = "/var/lib/images/web,1.qcow2"
format = "qcow2"

[[disks]]
path = "/var/lib/images/data.raw"
readonly = true
serial = "DATA1"

[[nics]]
bridge = "br0"
mac = "52:54:00:aa:bb:cc"

[[nics]]
tap = "tap7"
"#;

    #[test]
    fn full_definition_parses_and_validates() {
        let s = from_toml(FULL).unwrap();
        s.validate().unwrap();
        assert_eq!(s.cpus, 2);
        assert_eq!(s.restart, RestartPolicy::OnFailure { max: Some(5) });
        assert!(s.autostart);
        assert_eq!(s.disks.len(), 2);
        assert!(s.disks[1].readonly);
        // JSON round trip through the API representation.
        let j = serde_json::to_vec(&s).unwrap();
        assert_eq!(from_json(&j).unwrap(), s);
        assert_eq!(parse(&j).unwrap(), s);
        assert_eq!(from_toml(&s.to_toml()).unwrap(), s);
    }

    #[test]
    fn minimal_definition_takes_defaults() {
        let mut s = from_toml("name = \"a\"\n").unwrap();
        s.validate().unwrap();
        assert_eq!(
            (s.arch.as_str(), s.cpus, s.memory.as_str()),
            ("riscv64", 1, "512M")
        );
        assert!(s.uuid.is_none() && s.kernel.is_none());
        assert_eq!(s.restart, RestartPolicy::No);
        s.normalize(None);
        assert!(s.uuid.is_some());
    }

    #[test]
    fn normalize_generates_and_keeps_identity() {
        let mut s = from_toml("name=\"a\"\n[[nics]]\ntap=\"t0\"\n[[nics]]\ntap=\"t1\"\n").unwrap();
        s.normalize(None);
        let mac0 = s.nics[0].mac.clone().unwrap();
        assert!(parse_mac(&mac0).is_some() && mac0.starts_with("52:54:00:"));
        assert_ne!(s.nics[0].mac, s.nics[1].mac);
        s.validate().unwrap();
        let mut again = from_toml("name=\"a\"\ncpus=2\n[[nics]]\ntap=\"t0\"\n").unwrap();
        again.normalize(Some(&s));
        assert_eq!(again.uuid, s.uuid);
        assert_eq!(again.nics[0].mac.as_deref(), Some(mac0.as_str()));
    }

    fn field_of(toml_text: &str) -> String {
        match from_toml(toml_text) {
            Err(e) => e.field,
            Ok(s) => s.validate().expect_err(toml_text).field,
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("name = \"a\"\nbogus = 1\n", "bogus"),
            ("name = \"a\"\ncpus = \"two\"\n", "cpus"),
            ("name = \"a\"\ncpus = 0\n", "cpus"),
            ("name = \"a\"\ncpus = 9\n", "cpus"),
            ("name = \"a\"\ncpus = -1\n", "cpus"),
            ("name = \"a\"\nmemory = \"12X\"\n", "memory"),
            ("name = \"a\"\nmemory = \"1M\"\n", "memory"),
            ("name = \"a/b\"\n", "name"),
            ("name = \"\"\n", "name"),
            ("cpus = 1\n", "."),
            ("name = \"a\"\narch = \"arm\"\n", "arch"),
            ("name = \"a\"\naccel = \"kvm\"\n", "accel"),
            ("name = \"a\"\nkernel = \"Image\"\n", "kernel"),
            ("name = \"a\"\ninitrd = \"/x\"\n", "initrd"),
            ("name = \"a\"\nuuid = \"nope\"\n", "uuid"),
            ("name = \"a\"\nrestart = \"sometimes\"\n", "restart"),
            ("name = \"a\"\nrestart = \"on-failure:x\"\n", "restart"),
            (
                "name = \"a\"\n[[disks]]\npath = \"/a\"\nformat = \"vmdk\"\n",
                "disks[0].format",
            ),
            (
                "name = \"a\"\n[[disks]]\npath = \"/a\"\n[[disks]]\npath = \"b\"\n",
                "disks[1].path",
            ),
            (
                "name = \"a\"\n[[disks]]\npath = \"/a\"\nsize = 3\n",
                "disks[0].size",
            ),
            (
                "name = \"a\"\n[[disks]]\npath = \"/a\"\nreadonly = \"yes\"\n",
                "disks[0].readonly",
            ),
            (
                "name = \"a\"\n[[nics]]\nmac = \"52:54:00:00:00:01\"\n",
                "nics[0]",
            ),
            (
                "name = \"a\"\n[[nics]]\ntap = \"t\"\nbridge = \"b\"\n",
                "nics[0]",
            ),
            (
                "name = \"a\"\n[[nics]]\ntap = \"t\"\nmac = \"zz\"\n",
                "nics[0].mac",
            ),
            (
                "name = \"a\"\n[[nics]]\ntap = \"t\"\nmac = \"01:00:00:00:00:01\"\n",
                "nics[0].mac",
            ),
            (
                "name = \"a\"\n[[nics]]\ntap = \"a/very/long/name\"\n",
                "nics[0].tap",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(field_of(text), field, "{text}");
        }
        // The message names the unknown key too.
        let e = from_toml("name = \"a\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = from_json(br#"{"name":"a","disks":[{"path":"/x","readonly":3}]}"#).unwrap_err();
        assert_eq!(e.field, "disks[0].readonly");
        assert!(from_json(br#"{"name":"a"} {"#).is_err());
        assert!(from_json(b"{").is_err());
        assert!(parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn restart_policy() {
        for s in ["no", "always", "on-failure", "on-failure:3"] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        let p = RestartPolicy::OnFailure { max: Some(2) };
        assert!(p.should_restart(true, 1) && !p.should_restart(true, 2));
        assert!(!p.should_restart(false, 0));
        assert!(RestartPolicy::Always.should_restart(false, 100));
        assert!(!RestartPolicy::No.should_restart(true, 0));
        assert_eq!(backoff(0).as_millis(), 100);
        assert_eq!(backoff(1).as_millis(), 200);
        assert_eq!(backoff(3).as_millis(), 800);
        assert_eq!(backoff(40).as_millis(), 30_000);
    }

    /// The generated arguments are ones `ferro run` parses back to the same
    /// machine (disks and NICs through the VMM's own parsers).
    #[test]
    fn translation_round_trips_through_the_vmm_parsers() {
        let mut s = from_toml(FULL).unwrap();
        s.normalize(None);
        let paths = RunPaths::new(Path::new("/run/f/x"), Path::new("/var/lib/f/x"));
        let args = s.run_args(&paths);
        let strs: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let val = |k: &str| -> Vec<&str> {
            strs.windows(2)
                .filter(|w| w[0] == k)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(val("--name"), ["web-1"]);
        assert_eq!(val("--uuid"), ["6f1e7c1a-9d52-4c0e-8a57-0b8e3c1d2e3f"]);
        assert_eq!(val("--cpus"), ["2"]);
        assert_eq!(val("--memory"), ["1G"]);
        assert_eq!(val("--append"), ["console=ttyS0 root=/dev/vda"]);
        assert_eq!(val("--control"), ["/run/f/x/control.sock"]);
        assert_eq!(val("--console-socket"), ["/run/f/x/console.sock"]);
        assert_eq!(val("--status-file"), ["/run/f/x/status.json"]);
        assert_eq!(val("--serial-log"), ["/var/lib/f/x/serial.log"]);
        assert_eq!(val("--snapshot-dir"), ["/var/lib/f/x/snapshots"]);
        let disks: Vec<_> = val("--disk")
            .into_iter()
            .map(|d| vmm::virtio::DiskSpec::parse(d).unwrap())
            .collect();
        assert_eq!(disks[0].path, Path::new("/var/lib/images/web,1.qcow2"));
        assert_eq!(disks[0].format, Some(vmm::virtio::DiskFormat::Qcow2));
        assert!(!disks[0].read_only && disks[1].read_only);
        assert_eq!(disks[1].serial.as_deref(), Some("DATA1"));
        let nets: Vec<_> = val("--net")
            .into_iter()
            .map(|n| vmm::virtio::NetSpec::parse(n).unwrap())
            .collect();
        assert_eq!(
            nets[0].backend,
            vmm::virtio::NetBackend::Bridge("br0".into())
        );
        assert_eq!(nets[0].mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(nets[1].backend, vmm::virtio::NetBackend::Tap("tap7".into()));
        assert!(nets[1].mac.is_some());
        // `ferro run` itself accepts the whole command line.
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: vmm::RunArgs,
        }
        let w = <Wrap as clap::Parser>::try_parse_from(
            std::iter::once(std::ffi::OsString::from("run")).chain(args.iter().cloned()),
        )
        .unwrap_or_else(|e| panic!("ferro run rejects {strs:?}: {e}"));
        assert_eq!(w.a.cpus, 2);
        assert_eq!(
            w.a.control.as_deref(),
            Some(Path::new("/run/f/x/control.sock"))
        );
        assert_eq!(w.a.virtio.disk.len(), 2);
        assert_eq!(
            w.a.snapshot_dir.as_deref(),
            Some(Path::new("/var/lib/f/x/snapshots"))
        );
        // The default guest: no boot files at all.
        let mut d = from_toml("name=\"d\"\n").unwrap();
        d.normalize(None);
        let a = d.run_args(&paths);
        assert!(!a
            .iter()
            .any(|x| x == "--kernel" || x == "--firmware" || x == "--append"));
    }
}
