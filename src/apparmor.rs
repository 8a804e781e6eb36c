//! AppArmor confinement of segments: the profile ([`PROFILE_TEXT`]), the
//! kernel check ([`ProfileLoader::available`]) and an idempotent installer
//! ([`ProfileInstaller::install`]). Every call blocks: use `spawn_blocking`.
//!
//! How a segment gets the profile: libvirt's AppArmor driver moves every
//! domain's process to a profile named `libvirt-<uuid>` just before it
//! executes the init, whatever a static `<seclabel>` names, and generates that
//! profile only for a dynamic `<seclabel>`, from
//! `/etc/apparmor.d/libvirt/TEMPLATE.lxc`. So segments carry a dynamic label,
//! and the installer replaces the template with [`LIBVIRT_TEMPLATE_TEXT`], a
//! trampoline whose exec rule runs the init under [`PROFILE_NAME`]. The
//! segments' Docker containers run under [`DOCKER_PROFILE_NAME`], which the
//! installer loads too: dockerd inside a segment cannot load a profile.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::atomic;
use serde::Deserialize;
use tempfile::NamedTempFile;

/// Name of the profile, used as the domain's `<seclabel>` label.
pub const PROFILE_NAME: &str = "segment-agent-segment";
/// Text of the profile (`apparmor/segment-agent-segment` in the source tree).
pub const PROFILE_TEXT: &str = include_str!("../apparmor/segment-agent-segment");
/// Profile of the Docker containers in segments: runc in a segment may move
/// them to this name only, and the segment's dockerd cannot load it itself.
pub const DOCKER_PROFILE_NAME: &str = "docker-default";
/// Text of the containers' profile (`apparmor/docker-default`).
pub const DOCKER_PROFILE_TEXT: &str = include_str!("../apparmor/docker-default");
/// Every profile the agent installs and loads, as (name, text).
pub const PROFILES: [(&str, &str); 2] = [
    (PROFILE_NAME, PROFILE_TEXT),
    (DOCKER_PROFILE_NAME, DOCKER_PROFILE_TEXT),
];

/// libvirt's template of per-domain LXC profiles (`apparmor/libvirt/TEMPLATE.lxc`).
pub const LIBVIRT_TEMPLATE_TEXT: &str = include_str!("../apparmor/libvirt/TEMPLATE.lxc");
/// Where libvirt's AppArmor driver (libvirt-daemon-system) keeps its templates
/// and the profiles it generates, relative to the profile directory.
pub const LIBVIRT_TEMPLATE_DIR: &str = "libvirt";
/// File name of the LXC template in [`LIBVIRT_TEMPLATE_DIR`].
pub const LIBVIRT_TEMPLATE_FILE: &str = "TEMPLATE.lxc";

/// Default profile directory: the one the boot-time `apparmor.service` loads,
/// so the profile is back in the kernel before libvirt restarts segments.
pub const DEFAULT_PROFILE_DIR: &str = "/etc/apparmor.d";
/// Default `apparmor_parser` binary.
pub const DEFAULT_PARSER: &str = "/sbin/apparmor_parser";
/// Kernel parameter that reads `Y` when AppArmor is enabled.
pub const DEFAULT_ENABLED_PARAM: &str = "/sys/module/apparmor/parameters/enabled";
/// AppArmor's securityfs directory, present when the LSM is active.
pub const DEFAULT_SECURITYFS_DIR: &str = "/sys/kernel/security/apparmor";

/// Whether segments are confined (the `apparmor` setting of the agent config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApparmorMode {
    /// Install and load the profile; every segment runs under it.
    #[default]
    Enforce,
    /// No profile; segments run unconfined (hosts without AppArmor).
    Off,
}

/// Errors of AppArmor availability checks, loading and installation.
#[derive(Debug, thiserror::Error)]
pub enum ApparmorError {
    /// The kernel has no usable AppArmor.
    #[error("AppArmor is not available on this host")]
    Unavailable {
        /// Which check failed.
        #[source]
        reason: UnavailableReason,
    },
    /// `apparmor_parser` (the path) could not be started.
    #[error("cannot run {}", .0.display())]
    ParserSpawn(PathBuf, #[source] io::Error),
    /// `apparmor_parser` ran and refused the profile.
    #[error("{} could not load the profile ({status}): {stderr}", parser.display())]
    ParserFailed {
        /// The parser binary.
        parser: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The installed profile (the path) could not be read.
    #[error("cannot read profile {}", .0.display())]
    ReadInstalled(PathBuf, #[source] io::Error),
    /// The profile (the path) could not be written.
    #[error("cannot write profile {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
    /// libvirt's AppArmor template directory (the path) is missing: libvirtd
    /// has no AppArmor driver, so it could not confine a segment.
    #[error(
        "{} does not exist: libvirt's AppArmor support (libvirt-daemon-system) is not installed",
        .0.display()
    )]
    NoLibvirtTemplates(PathBuf),
}

/// Why [`ApparmorError::Unavailable`] was returned; each names the path checked.
#[derive(Debug, thiserror::Error)]
pub enum UnavailableReason {
    /// The module parameter is unreadable: AppArmor is not in this kernel.
    #[error("cannot read {}", .0.display())]
    ParamUnreadable(PathBuf, #[source] io::Error),
    /// The module parameter holds something other than `Y` (`apparmor=0` at boot).
    #[error("{} reads {:?}, not \"Y\"", .0.display(), .1)]
    Disabled(PathBuf, String),
    /// No AppArmor directory in securityfs (not mounted, or another LSM).
    #[error("{} does not exist", .0.display())]
    NoSecurityfs(PathBuf),
}

/// Loads profiles into the kernel; [`ApparmorParser`] is the real one.
pub trait ProfileLoader: Send + Sync {
    /// Ok when the kernel has AppArmor enabled, else [`ApparmorError::Unavailable`].
    fn available(&self) -> Result<(), ApparmorError>;
    /// Loads the profile in `profile_path`, replacing one of the same name.
    fn load(&self, profile_path: &Path) -> Result<(), ApparmorError>;
}

/// The real loader: reads AppArmor's state from sysfs, runs `apparmor_parser`.
#[derive(Debug, Clone)]
pub struct ApparmorParser {
    parser: PathBuf,
    enabled_param: PathBuf,
    securityfs_dir: PathBuf,
}

impl ApparmorParser {
    /// A loader with the given parser binary, module parameter file and
    /// securityfs directory (tests point them into a temporary directory).
    pub fn new(parser: PathBuf, enabled_param: PathBuf, securityfs_dir: PathBuf) -> Self {
        Self {
            parser,
            enabled_param,
            securityfs_dir,
        }
    }
}

impl Default for ApparmorParser {
    /// [`DEFAULT_PARSER`], [`DEFAULT_ENABLED_PARAM`] and [`DEFAULT_SECURITYFS_DIR`].
    fn default() -> Self {
        let (parser, param) = (DEFAULT_PARSER.into(), DEFAULT_ENABLED_PARAM.into());
        Self::new(parser, param, DEFAULT_SECURITYFS_DIR.into())
    }
}

impl ProfileLoader for ApparmorParser {
    fn available(&self) -> Result<(), ApparmorError> {
        let (path, dir) = (self.enabled_param.clone(), &self.securityfs_dir);
        let reason = match fs::read_to_string(&path) {
            Err(e) => UnavailableReason::ParamUnreadable(path, e),
            Ok(v) if v.trim() != "Y" => UnavailableReason::Disabled(path, v.trim().into()),
            Ok(_) if !dir.is_dir() => UnavailableReason::NoSecurityfs(dir.clone()),
            Ok(_) => return Ok(()),
        };
        Err(ApparmorError::Unavailable { reason })
    }

    fn load(&self, profile_path: &Path) -> Result<(), ApparmorError> {
        let parser = self.parser.clone();
        let mut command = Command::new(&parser);
        let output = match command.arg("-r").arg("-W").arg(profile_path).output() {
            Ok(output) => output,
            Err(e) => return Err(ApparmorError::ParserSpawn(parser, e)),
        };
        if output.status.success() {
            return Ok(());
        }
        let (status, stderr) = (output.status, String::from_utf8_lossy(&output.stderr));
        let stderr = stderr.trim().to_owned();
        Err(ApparmorError::ParserFailed {
            parser,
            status,
            stderr,
        })
    }
}

/// Outcome of [`ProfileInstaller::install`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The installed files already held the [`PROFILES`]: nothing written or loaded.
    Unchanged,
    /// A profile was loaded into the kernel, then written to disk.
    Loaded,
}

/// Installs each of the [`PROFILES`] as `<dir>/<name>` and loads it, then
/// [`LIBVIRT_TEMPLATE_TEXT`] as `<dir>/libvirt/TEMPLATE.lxc`.
#[derive(Debug)]
pub struct ProfileInstaller<L: ProfileLoader> {
    dir: PathBuf,
    loader: L,
}

impl<L: ProfileLoader> ProfileInstaller<L> {
    /// An installer writing into `dir` (normally [`DEFAULT_PROFILE_DIR`]).
    pub fn new(dir: PathBuf, loader: L) -> Self {
        Self { dir, loader }
    }

    /// Where the profile named `name` is installed.
    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where libvirt's LXC template is installed.
    pub fn template_path(&self) -> PathBuf {
        self.dir
            .join(LIBVIRT_TEMPLATE_DIR)
            .join(LIBVIRT_TEMPLATE_FILE)
    }

    /// Installs the profiles ([`Self::install_profiles`]), then the template
    /// ([`Self::install_template`]): the template's exec rule names the
    /// segment profile, so it is in the kernel before any segment can use it.
    pub fn install(&self) -> Result<InstallOutcome, ApparmorError> {
        let outcome = self.install_profiles()?;
        self.install_template()?;
        Ok(outcome)
    }

    /// Installs each of the [`PROFILES`] ([`Self::install_profile`]);
    /// `Loaded` when any was loaded.
    pub fn install_profiles(&self) -> Result<InstallOutcome, ApparmorError> {
        let mut outcome = InstallOutcome::Unchanged;
        for (name, text) in PROFILES {
            if self.install_profile(name, text)? == InstallOutcome::Loaded {
                outcome = InstallOutcome::Loaded;
            }
        }
        Ok(outcome)
    }

    /// Writes libvirt's LXC template unless it already holds exactly
    /// [`LIBVIRT_TEMPLATE_TEXT`]. Nothing is loaded: virt-aa-helper compiles
    /// the template into each domain's profile when the domain starts. Fails
    /// when libvirt's template directory is missing (no AppArmor driver in
    /// libvirtd: segments would not be confined).
    pub fn install_template(&self) -> Result<(), ApparmorError> {
        let path = self.template_path();
        let dir = self.dir.join(LIBVIRT_TEMPLATE_DIR);
        if !dir.is_dir() {
            return Err(ApparmorError::NoLibvirtTemplates(dir));
        }
        match fs::read(&path) {
            Ok(bytes) if bytes == LIBVIRT_TEMPLATE_TEXT.as_bytes() => return Ok(()),
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ApparmorError::ReadInstalled(path, e));
            }
            _ => {}
        }
        let staged = stage(&dir, LIBVIRT_TEMPLATE_FILE, LIBVIRT_TEMPLATE_TEXT, &path)?;
        staged
            .persist(&path)
            .map_err(|e| write_err(&path)(e.error))?;
        sync_dir(&dir);
        tracing::info!(path = %path.display(), "libvirt's LXC AppArmor template installed");
        Ok(())
    }

    /// Loads, then writes, profile `name` unless the installed file already
    /// holds exactly `text`; then it does neither.
    ///
    /// The installed file records what the kernel was given, so it changes
    /// only after a successful load: the text goes to a hidden, fsynced temp
    /// file in the same directory (`apparmor.service` skips dot files), is
    /// loaded from there, then renamed over the profile. A failed load or a
    /// crash before the rename leaves the old file (or none), so the next
    /// install differs and loads again; no marker file is needed.
    pub fn install_profile(&self, name: &str, text: &str) -> Result<InstallOutcome, ApparmorError> {
        let path = self.profile_path(name);
        match fs::read(&path) {
            Ok(bytes) if bytes == text.as_bytes() => {
                tracing::debug!(path = %path.display(), "AppArmor profile unchanged");
                return Ok(InstallOutcome::Unchanged);
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ApparmorError::ReadInstalled(path, e));
            }
            _ => {}
        }
        let staged = stage(&self.dir, name, text, &path)?;
        self.loader.load(staged.path())?;
        staged
            .persist(&path)
            .map_err(|e| write_err(&path)(e.error))?;
        sync_dir(&self.dir);
        tracing::info!(profile = name, path = %path.display(), "AppArmor profile loaded");
        Ok(InstallOutcome::Loaded)
    }
}

/// Writes `text` to a fsynced hidden temporary file `.<name>.*` in `dir`, to
/// be renamed over `path` (the error names `path`). Hidden: neither
/// `apparmor.service` nor virt-aa-helper reads dot files.
fn stage(dir: &Path, name: &str, text: &str, path: &Path) -> Result<NamedTempFile, ApparmorError> {
    // apparmor_parser and virt-aa-helper run as root; 0644 matches the other profiles.
    atomic::stage(dir, &format!(".{name}."), text.as_bytes(), 0o644, None).map_err(write_err(path))
}

/// Makes a rename in `dir` durable. Harmless if it fails: a rename lost in a
/// crash means one more write (and load) at the next start.
fn sync_dir(dir: &Path) {
    if let Err(e) = atomic::sync_dir(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot fsync AppArmor dir");
    }
}

/// Maps an I/O error while writing the profile `path` to [`ApparmorError::Write`].
fn write_err(path: &Path) -> impl Fn(io::Error) -> ApparmorError {
    let path = path.to_owned();
    move |e| ApparmorError::Write(path.clone(), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstallOutcome::{Loaded, Unchanged};
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use tempfile::TempDir;

    const NEW: &str = PROFILE_TEXT;
    const OLD: &str = "profile segment-agent-segment {}\n";

    /// Records the file and text of each load; fails on demand.
    #[derive(Default)]
    struct FakeLoader {
        fail: AtomicBool,
        loads: Mutex<Vec<(PathBuf, String)>>,
    }

    impl ProfileLoader for FakeLoader {
        fn available(&self) -> Result<(), ApparmorError> {
            Ok(())
        }
        fn load(&self, path: &Path) -> Result<(), ApparmorError> {
            let text = fs::read_to_string(path).unwrap();
            self.loads.lock().unwrap().push((path.to_owned(), text));
            match self.fail.load(SeqCst) {
                false => Ok(()),
                true => Err(write_err(path)(io::Error::other("fake failure"))),
            }
        }
    }

    #[test]
    fn install_loads_only_changed_text_and_retries_failed_loads() {
        let dir = TempDir::new().unwrap();
        let installer = ProfileInstaller::new(dir.path().to_owned(), FakeLoader::default());
        // (step, text written beforehand, load fails, outcome, loads so far, text after)
        #[rustfmt::skip]
        let steps = [
            ("first install, load fails", None, true, None, 1, None),
            ("restart retries the load", None, false, Some(Loaded), 2, Some(NEW)),
            ("restart, same text", None, false, Some(Unchanged), 2, Some(NEW)),
            ("new agent version", Some(OLD), false, Some(Loaded), 3, Some(NEW)),
            ("new version, load fails", Some(OLD), true, None, 4, Some(OLD)),
            ("restart retries again", None, false, Some(Loaded), 5, Some(NEW)),
        ];
        for (step, before, fail, outcome, loads, after) in steps {
            if let Some(text) = before {
                fs::write(installer.profile_path(PROFILE_NAME), text).unwrap();
            }
            installer.loader.fail.store(fail, SeqCst);
            let result = installer.install_profile(PROFILE_NAME, PROFILE_TEXT);
            assert_eq!(result.ok(), outcome, "{step}");
            let recorded = installer.loader.loads.lock().unwrap();
            assert_eq!(recorded.len(), loads, "{step}");
            let (staged, text) = recorded.last().unwrap();
            let staged_in = staged.parent();
            assert_eq!(staged_in, Some(dir.path()), "{step}: staged alongside");
            assert_eq!(text, NEW, "{step}");
            let on_disk = fs::read_to_string(installer.profile_path(PROFILE_NAME)).ok();
            assert_eq!(on_disk.as_deref(), after, "{step}");
            let files = fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, usize::from(after.is_some()), "{step}: leftovers");
        }
        let meta = fs::metadata(installer.profile_path(PROFILE_NAME)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }

    /// Runs `load`, retrying while a fork in a parallel test still holds the
    /// freshly written script open for writing (ETXTBSY).
    fn load_retrying(loader: &ApparmorParser, profile: &Path) -> Result<(), ApparmorError> {
        for _ in 0..100 {
            match loader.load(profile) {
                Err(ApparmorError::ParserSpawn(_, e)) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => return result,
            }
        }
        panic!("fake parser stayed busy");
    }

    #[test]
    fn load_runs_the_parser_with_replace_and_write_cache() {
        for code in [0, 1] {
            // A fake apparmor_parser that records its argv and exits with `code`.
            let dir = TempDir::new().unwrap();
            let (script, argv) = (dir.path().join("apparmor_parser"), dir.path().join("argv"));
            let record = format!("printf '%s\\n' \"$@\" > '{}'", argv.display());
            let body = format!("#!/bin/sh\n{record}\necho 'parser says no' >&2\nexit {code}\n");
            fs::write(&script, body).unwrap();
            fs::set_permissions(&script, Permissions::from_mode(0o755)).unwrap();
            let loader = ApparmorParser::new(script, "/x".into(), "/x".into());
            let profile = dir.path().join("profile");
            let result = load_retrying(&loader, &profile);
            let args = fs::read_to_string(&argv).unwrap();
            let expected = format!("-r\n-W\n{}\n", profile.display());
            assert_eq!(args, expected, "exit {code}");
            match (code, result) {
                (0, Ok(())) => {}
                (1, Err(ApparmorError::ParserFailed { status, stderr, .. })) => {
                    assert_eq!(status.code(), Some(1));
                    assert_eq!(stderr, "parser says no");
                }
                (_, other) => panic!("exit {code}: unexpected {other:?}"),
            }
        }
        let loader = ApparmorParser::new("/nonexistent/parser".into(), "/x".into(), "/x".into());
        let err = loader.load(Path::new("/profile")).unwrap_err();
        assert!(matches!(err, ApparmorError::ParserSpawn(..)), "{err:?}");
    }

    #[test]
    fn availability_follows_the_sysfs_files() {
        // (case, module parameter, securityfs dir exists, expected reason)
        #[rustfmt::skip]
        let cases = [
            ("enabled", Some("Y\n"), true, None),
            ("disabled at boot", Some("N\n"), true, Some("reads \"N\", not \"Y\"")),
            ("empty parameter", Some(""), true, Some("reads \"\", not \"Y\"")),
            ("not in the kernel", None, true, Some("cannot read")),
            ("securityfs missing", Some("Y\n"), false, Some("apparmor does not exist")),
        ];
        for (case, param, securityfs, expected) in cases {
            let dir = TempDir::new().unwrap();
            let (param_path, securityfs_dir) = (dir.path().join("p"), dir.path().join("apparmor"));
            if let Some(content) = param {
                fs::write(&param_path, content).unwrap();
            }
            if securityfs {
                fs::create_dir(&securityfs_dir).unwrap();
            }
            let loader = ApparmorParser::new("/x".into(), param_path, securityfs_dir);
            let reason = loader.available().err().map(|err| {
                assert!(matches!(err, ApparmorError::Unavailable { .. }), "{case}");
                assert_eq!(err.to_string(), "AppArmor is not available on this host");
                std::error::Error::source(&err).unwrap().to_string()
            });
            assert_eq!(reason.is_some(), expected.is_some(), "{case}: {reason:?}");
            let (reason, expected) = (reason.unwrap_or_default(), expected.unwrap_or_default());
            assert!(reason.contains(expected), "{case}: {reason}");
        }
    }

    #[test]
    fn mode_reads_lowercase_names_and_defaults_to_enforce() {
        use serde::de::{IntoDeserializer, value};
        let parse = |text: &str| {
            let de: value::StrDeserializer<'_, value::Error> = text.into_deserializer();
            ApparmorMode::deserialize(de).ok()
        };
        assert_eq!(parse("enforce"), Some(ApparmorMode::Enforce));
        assert_eq!(parse("off"), Some(ApparmorMode::Off));
        assert_eq!((parse("Enforce"), parse("complain")), (None, None));
        assert_eq!(ApparmorMode::default(), ApparmorMode::Enforce);
    }

    #[test]
    fn profile_texts_define_the_named_profiles() {
        for (name, text) in PROFILES {
            assert!(text.contains(&format!("\nprofile {name} flags=")), "{name}");
        }
        // runc in a segment may move containers to docker-default, or to it
        // stacked on the segment's profile (what no-new-privileges allows),
        // and nowhere else.
        assert!(PROFILE_TEXT.contains(&format!("\n  change_profile -> {DOCKER_PROFILE_NAME},\n")));
        let stack = format!("\n  change_profile -> \"{DOCKER_PROFILE_NAME}//&{PROFILE_NAME}\",\n");
        assert!(PROFILE_TEXT.contains(&stack));
        assert_eq!(PROFILE_TEXT.matches("change_profile").count(), 2);
        let docker_peer = format!("signal (receive) peer={PROFILE_NAME},");
        assert!(DOCKER_PROFILE_TEXT.contains(&docker_peer));
    }

    #[test]
    fn template_is_a_trampoline_to_the_profile() {
        // virt-aa-helper replaces LIBVIRT_TEMPLATE with libvirt-<uuid>.
        let header = "\nprofile LIBVIRT_TEMPLATE flags=(attach_disconnected,mediate_deleted) {\n";
        assert!(LIBVIRT_TEMPLATE_TEXT.contains(header));
        let rules: Vec<&str> = LIBVIRT_TEMPLATE_TEXT
            .split_once(header)
            .unwrap()
            .1
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let exec = format!("/** Px -> {PROFILE_NAME},");
        assert_eq!(
            rules,
            [exec.as_str(), "ptrace (readby) peer=libvirtd,", "}"]
        );
    }

    #[test]
    fn install_loads_the_profile_then_writes_the_template() {
        let dir = TempDir::new().unwrap();
        let installer = ProfileInstaller::new(dir.path().to_owned(), FakeLoader::default());
        let template = installer.template_path();
        // No libvirt AppArmor driver: the profiles load, then install fails closed.
        let err = installer.install().unwrap_err();
        assert!(
            matches!(err, ApparmorError::NoLibvirtTemplates(_)),
            "{err:?}"
        );
        assert!(err.to_string().contains("libvirt-daemon-system"), "{err}");
        let loaded: Vec<String> = installer
            .loader
            .loads
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.1.clone())
            .collect();
        assert_eq!(loaded, [PROFILE_TEXT, DOCKER_PROFILE_TEXT]);
        for (name, text) in PROFILES {
            assert_eq!(
                fs::read_to_string(installer.profile_path(name)).unwrap(),
                text
            );
        }
        // libvirt-daemon-system's own template is replaced, with no leftovers.
        fs::create_dir(dir.path().join("libvirt")).unwrap();
        fs::write(&template, "profile LIBVIRT_TEMPLATE { file, }\n").unwrap();
        assert_eq!(installer.install().unwrap(), Unchanged);
        assert_eq!(
            fs::read_to_string(&template).unwrap(),
            LIBVIRT_TEMPLATE_TEXT
        );
        let meta = fs::metadata(&template).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let files = fs::read_dir(dir.path().join("libvirt")).unwrap().count();
        assert_eq!(files, 1, "leftover staged files");
        // Same text: the file is left alone (same inode), nothing loaded again.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(installer.install().unwrap(), Unchanged);
        assert_eq!(fs::metadata(&template).unwrap().ino(), meta.ino());
        assert_eq!(installer.loader.loads.lock().unwrap().len(), 2);
        // A failed profile load leaves the template untouched.
        fs::write(&template, "stock\n").unwrap();
        fs::write(installer.profile_path(PROFILE_NAME), OLD).unwrap();
        installer.loader.fail.store(true, SeqCst);
        assert!(installer.install().is_err());
        assert_eq!(fs::read_to_string(&template).unwrap(), "stock\n");
    }
}
