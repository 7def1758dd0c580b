//! A throw-away PostgreSQL cluster for the shared-ledger tests: `initdb` into a temporary
//! folder, `pg_ctl start` listening only on a Unix socket inside it (no TCP port at all), a
//! password (SCRAM) so the station's password file is really used, and `pg_ctl stop` when
//! dropped. Needs Debian's `postgresql` package (scripts/setup.sh installs it); a missing
//! server FAILS the test, it never skips. As root (CI), the cluster runs as the `postgres`
//! user through `runuser`: initdb and the server refuse to run as root.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const USER: &str = "dpskit";
pub const PASSWORD: &str = "ledger-test-password";

pub struct PgCluster {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the server's tools as this user (when the tests run as root).
    as_user: Option<String>,
    /// Server options beyond the Unix socket (TLS on a loopback port).
    extra: String,
    /// The server's port: names its Unix socket too.
    port: u16,
}

/// The server's binaries: `$DPSKIT_PG_BIN`, else the newest /usr/lib/postgresql/N/bin.
fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DPSKIT_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb); run scripts/setup.sh (Debian's postgresql package) or set DPSKIT_PG_BIN")
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// (uid, gid) of a system user, from `id`.
fn ids_of(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(user).output().unwrap();
        assert!(
            out.status.success(),
            "no {user} user; install Debian's postgresql package (scripts/setup.sh)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

impl PgCluster {
    /// initdb + start; waits until the server accepts connections.
    pub fn start() -> PgCluster {
        let c = PgCluster::init(String::new());
        c.pg_ctl_start();
        c
    }

    /// Also listens on an ephemeral loopback port with TLS only (`hostssl`), its server
    /// certificate (for localhost and 127.0.0.1) issued by a private CA. Returns the cluster,
    /// the CA's PEM file and the port.
    pub fn start_tls() -> (PgCluster, PathBuf, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = PgCluster::init(String::new());
        let ids = dpskit_rehearsal::emulator::certs::load_or_create(&c.dir.path().join("ca"), &[])
            .unwrap();
        let (cert, key) = (
            c.dir.path().join("server.crt"),
            c.dir.path().join("server.key"),
        );
        std::fs::copy(&ids.server_cert, &cert).unwrap();
        std::fs::copy(&ids.server_key, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(user) = &c.as_user {
            let (uid, gid) = ids_of(user);
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
            }
        }
        // TCP connections must use TLS: every `host` rule becomes `hostssl`.
        let hba = c.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, text).unwrap();
        c.port = port;
        c.extra = format!(
            " -c listen_addresses='127.0.0.1' -c port={port} -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
            cert.display(),
            key.display()
        );
        c.pg_ctl_start();
        (c, ids.ca_cert, port)
    }

    fn init(extra: String) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("dpskit-pg")
            .tempdir()
            .unwrap();
        let as_user = is_root().then(|| "postgres".to_string());
        if let Some(user) = &as_user {
            let (uid, gid) = ids_of(user);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = PgCluster {
            dir,
            bin: bin_dir(),
            as_user,
            extra,
            port: 5432,
        };
        let pwfile = c.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(c.socket_dir()).unwrap();
        if let Some(user) = &c.as_user {
            let (uid, gid) = ids_of(user);
            std::os::unix::fs::chown(c.socket_dir(), Some(uid), Some(gid)).unwrap();
        }
        let out = c.tool(
            "initdb",
            &[
                "-D",
                c.data_dir().to_str().unwrap(),
                "-U",
                USER,
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(name);
        let mut cmd = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_connections=60{}",
            self.socket_dir().display(),
            self.extra
        );
        let log = self.dir.path().join("server.log");
        let out = self.tool(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn pg_ctl_stop(&self) -> Output {
        let data = self.data_dir();
        let data = data.to_str().unwrap();
        self.tool("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"])
    }

    /// Stops the server at once (connections are cut, as in a crash or a restart).
    pub fn stop(&self) {
        let out = self.pg_ctl_stop();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again after [`PgCluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// The URL a station file names (no password in it).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A password file as a station has it: mode 0600.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ledger.pass");
        std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn config(&self, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.user(USER)
            .password(PASSWORD)
            .host_path(self.socket_dir())
            .port(self.port)
            .dbname(db);
        c
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        self.config(db).connect(postgres::NoTls).unwrap()
    }

    /// A fresh, empty database.
    pub fn create_db(&self, name: &str) {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
    }

    /// Waits until the server answers again (after a restart).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.config("postgres").connect(postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
    }
}
