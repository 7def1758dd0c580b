//! The shared engine: one PostgreSQL database for every station of a factory.
//!
//! The sync `postgres` client (rust-postgres) keeps the station's threads as they are. A lost
//! connection (the server restarted, the network dropped) is retried: the engine reconnects
//! with backoff for up to [`PgSettings::reconnect_window`] and runs the whole transaction again
//! — every ledger step is idempotent per MAC, so a step whose commit was lost in flight is
//! simply found done. When the window runs out the step fails with
//! [`LedgerError::Unreachable`]; nothing is marked done without its verified MD5.

use super::db::{ledger_error, Abort, DbErr, DbRow, Mode, Tx, Val};
use super::error::{LedgerError, Result};
use super::PgSettings;
#[cfg(unix)]
use postgres::config::Host;
use postgres::config::SslMode;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Config, NoTls};
use std::error::Error as StdError;
use std::time::{Duration, Instant};

/// The advisory lock every writing transaction holds: allocations from all stations are
/// serialised, so a counter or a manifest row is never handed out twice.
const WRITE_LOCK: i64 = 0x6470_736b_6974; // "dpskit"

pub(crate) struct PgDb {
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    settings: PgSettings,
    client: Option<Client>,
}

impl PgDb {
    /// Connects once; a server that cannot be reached now is an error (the station refuses
    /// to start rather than fall back to anything local).
    pub fn connect(settings: &PgSettings) -> Result<PgDb> {
        let mut config: Config = settings.url.parse().map_err(|e| {
            LedgerError::Refused(format!("[ledger] url: not a PostgreSQL URL ({e}); write it like postgresql://dpskit@db.factory.lan/ledger?sslmode=require"))
        })?;
        if let Some(pw) = settings.password() {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("dpskit");
        // A Unix socket is this machine: no TLS there.
        #[cfg(unix)]
        let local = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        #[cfg(not(unix))]
        let local = false;
        let tls = if config.get_ssl_mode() == SslMode::Disable || local {
            None
        } else {
            Some(tls_connector(settings)?)
        };
        let mut db = PgDb {
            config,
            tls,
            settings: settings.clone(),
            client: None,
        };
        db.client = Some(db.open().map_err(|e| {
            LedgerError::Unreachable(format!(
                "cannot reach the shared ledger at {} ({}); the station does not start without it (a local fallback could hand out duplicate IDs) — check the server, [ledger] url and the password",
                settings.url,
                chain(&e)
            ))
        })?);
        Ok(db)
    }

    fn open(&self) -> std::result::Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
    }

    /// Reconnects with backoff until `deadline`.
    fn reconnect(&mut self, deadline: Instant, during: &str) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.open() {
                Ok(c) => {
                    self.client = Some(c);
                    return Ok(());
                }
                Err(e) if Instant::now() + wait < deadline => {
                    let _ = e;
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(LedgerError::Unreachable(format!(
                        "{during}: lost the connection to {} and could not reconnect within {} s ({}); {}",
                        self.settings.url,
                        self.settings.reconnect_window.as_secs(),
                        chain(&e),
                        super::error::UNCHANGED
                    )))
                }
            }
        }
    }

    pub fn transact<T>(
        &mut self,
        during: &str,
        mode: Mode,
        mut f: impl FnMut(&mut dyn Tx) -> std::result::Result<T, Abort>,
    ) -> Result<T> {
        let mut deadline: Option<Instant> = None;
        loop {
            if self.client.as_ref().is_none_or(Client::is_closed) {
                let d = *deadline
                    .get_or_insert_with(|| Instant::now() + self.settings.reconnect_window);
                self.reconnect(d, during)?;
            }
            let client = self.client.as_mut().expect("connected above");
            match run(client, mode, &mut f) {
                Ok(v) => return Ok(v),
                Err(Abort::Db(DbErr::Lost(_))) => {
                    // Run the whole step again on a new connection.
                    self.client = None;
                    deadline.get_or_insert_with(|| Instant::now() + self.settings.reconnect_window);
                }
                Err(a) => return Err(ledger_error("PostgreSQL", during, a)),
            }
        }
    }
}

fn run<T>(
    client: &mut Client,
    mode: Mode,
    f: &mut impl FnMut(&mut dyn Tx) -> std::result::Result<T, Abort>,
) -> std::result::Result<T, Abort> {
    let mut tx = client.transaction().map_err(classify)?;
    if mode == Mode::Write {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(classify)?;
    }
    let out = f(&mut PgTx(&mut tx))?;
    tx.commit().map_err(classify)?;
    Ok(out)
}

/// Root CAs for TLS to the server: `[ledger] ca_file`, else the roots dpskit bundles for
/// Azure (DigiCert Global Root G2, Microsoft RSA Root 2017 — what Azure Database for
/// PostgreSQL presents).
fn tls_connector(s: &PgSettings) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    let pems: Vec<(String, Vec<u8>)> = match &s.ca_file {
        Some(path) => vec![(
            path.display().to_string(),
            std::fs::read(path).map_err(|e| {
                LedgerError::Refused(format!(
                    "[ledger] ca_file: cannot read {} ({e}); give the PEM file of the server's CA",
                    path.display()
                ))
            })?,
        )],
        None => crate::blob::roots::BUNDLED
            .iter()
            .filter(|r| r.usable)
            .map(|r| (r.name.to_string(), r.pem.as_bytes().to_vec()))
            .collect(),
    };
    for (origin, pem) in pems {
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                LedgerError::Refused(format!("[ledger] ca_file: {origin}: not PEM ({e})"))
            })?;
            roots.add(cert).map_err(|e| {
                LedgerError::Refused(format!(
                    "[ledger] ca_file: {origin}: not a CA certificate ({e})"
                ))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(LedgerError::Refused(format!(
                "[ledger] ca_file: {origin} holds no PEM certificate"
            )));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LedgerError::Refused(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// An error and its causes on one line (the server's message is in the source).
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cur = c.source();
    }
    s
}

fn classify(e: postgres::Error) -> DbErr {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 23xxx integrity constraints; P0001 RAISE EXCEPTION from a rule trigger.
        if code.starts_with("23") || code == "P0001" {
            return DbErr::Rule(db.message().to_string());
        }
        // 08xxx connection exceptions; 57P01-03 the server is shutting down or starting.
        if code.starts_with("08") || code.starts_with("57P") {
            return DbErr::Lost(Box::new(e));
        }
        return DbErr::Failed(Box::new(e));
    }
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return DbErr::Lost(Box::new(e));
    }
    DbErr::Failed(Box::new(e))
}

/// `?1` → `$1`: the ledger's SQL is written once with SQLite's numbered parameters.
fn dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Val::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Val::Int(i) => i.to_string().to_sql(ty, out),
            Val::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        // `accepts` takes every type; `to_sql` converts or fails per value.
        self.to_sql(ty, out)
    }
}

struct PgTx<'a, 'b>(&'a mut postgres::Transaction<'b>);

fn params(p: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Tx for PgTx<'_, '_> {
    fn exec(&mut self, sql: &str, p: &[Val]) -> std::result::Result<u64, DbErr> {
        self.0.execute(&dollar(sql), &params(p)).map_err(classify)
    }

    fn query(&mut self, sql: &str, p: &[Val]) -> std::result::Result<Vec<DbRow>, DbErr> {
        let rows = self.0.query(&dollar(sql), &params(p)).map_err(classify)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut vals = Vec::with_capacity(row.len());
            for (i, col) in row.columns().iter().enumerate() {
                let t = col.type_();
                let v = if *t == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i)
                        .map(|v| v.map_or(Val::Null, Val::Int))
                } else if *t == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)
                        .map(|v| v.map_or(Val::Null, |n| Val::Int(n.into())))
                } else if *t == Type::BOOL {
                    row.try_get::<_, Option<bool>>(i)
                        .map(|v| v.map_or(Val::Null, |b| Val::Int(b.into())))
                } else {
                    row.try_get::<_, Option<String>>(i)
                        .map(|v| v.map_or(Val::Null, Val::Text))
                };
                vals.push(v.map_err(classify)?);
            }
            out.push(DbRow(vals));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> std::result::Result<(), DbErr> {
        self.0.batch_execute(sql).map_err(classify)
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_parameters() {
        assert_eq!(
            super::dollar("SELECT ?1, '?', ?12 FROM t WHERE a = ?2"),
            "SELECT $1, '?', $12 FROM t WHERE a = $2"
        );
    }
}
