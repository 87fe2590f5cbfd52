//! `type = "syslog"`: RFC 5424 messages to the local syslog socket, or to a remote collector over
//! UDP or TCP (RFC 6587 octet-counting framing).
//!
//! ```toml
//! [sinks.siem]
//! type = "syslog"
//! transport = "tcp"               # "unix" (default), "udp" or "tcp"
//! address = "192.0.2.10:6514"     # a socket path for unix (default /dev/log), host:port otherwise
//! facility = "local0"             # default "daemon"
//! format = "ecs"                  # the MSG part: "alert" (default), "ecs" or "ocsf"
//! queue = 1024                    # tcp: frames held while the collector is away
//! ```
//!
//! One message per finding: `<PRI>1 TIMESTAMP HOST scanwatch PID KIND [scanwatch@32473 ...] MSG`,
//! the severity mapped critical→crit, high→err, medium→warning, low→notice, info→info, the
//! structured data naming the kind, severity, source and alert id, MSG the rendered JSON.
//!
//! TCP never blocks the pipeline: frames go through a bounded queue to a writer thread that
//! connects, reconnects with exponential backoff (0.5 s … 30 s) and resends the frame a broken
//! connection failed on. A full queue fails the write, so the sink set retries and counts the drop.
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Sink, SinkConfig, SinkConfigError, SinkError};
use crate::alert::Alert;
use crate::output::Format;
use crate::vocab::Severity;

/// The private enterprise number of the structured-data id (RFC 5612's documentation number).
pub const SD_ID: &str = "scanwatch@32473";
/// Largest message sent over UDP / a unix datagram socket (longer MSG parts are cut).
pub const MAX_DATAGRAM: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Unix,
    Udp,
    Tcp,
}

/// `[sinks.NAME]` with `type = "syslog"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    #[serde(default)]
    pub transport: Transport,
    pub address: Option<String>,
    #[serde(default = "default_facility")]
    pub facility: String,
    #[serde(default = "default_app")]
    pub app_name: String,
    pub hostname: Option<String>,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_facility() -> String {
    "daemon".into()
}
fn default_app() -> String {
    "scanwatch".into()
}
fn default_queue() -> usize {
    1024
}

/// Facility names of RFC 5424 §6.2.1 and their codes.
const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0), ("user", 1), ("mail", 2), ("daemon", 3), ("auth", 4), ("syslog", 5), ("lpr", 6), ("news", 7),
    ("uucp", 8), ("cron", 9), ("authpriv", 10), ("ftp", 11), ("ntp", 12), ("security", 13), ("console", 14),
    ("local0", 16), ("local1", 17), ("local2", 18), ("local3", 19), ("local4", 20), ("local5", 21),
    ("local6", 22), ("local7", 23),
];

pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

impl SyslogConfig {
    pub fn parse(t: &toml::Table) -> Result<Arc<dyn SinkConfig>, SinkConfigError> {
        let c: SyslogConfig = toml::Value::Table(t.clone()).try_into().map_err(|e| SinkConfigError::from_toml(&e))?;
        if facility_code(&c.facility).is_none() {
            let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
            return Err(SinkConfigError::new("facility", format!("unknown facility {:?} (one of: {})", c.facility, names.join(", "))));
        }
        if c.app_name.is_empty() || c.app_name.len() > 48 || !c.app_name.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(SinkConfigError::new("app_name", "1 to 48 printable ASCII characters without spaces"));
        }
        if let Some(h) = &c.hostname {
            if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| (33..=126).contains(&b)) {
                return Err(SinkConfigError::new("hostname", "1 to 255 printable ASCII characters without spaces"));
            }
        }
        match (c.transport, &c.address) {
            (Transport::Unix, _) => {}
            (_, None) => return Err(SinkConfigError::new("address", "missing (host:port of the collector)")),
            (_, Some(a)) => {
                if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(SinkConfigError::new("address", format!("{a:?} is not host:port")));
                }
            }
        }
        if c.queue == 0 || c.queue > 1 << 20 {
            return Err(SinkConfigError::new("queue", "must be 1 ..= 1048576"));
        }
        Ok(Arc::new(c))
    }

    fn socket_path(&self) -> PathBuf {
        PathBuf::from(self.address.clone().unwrap_or_else(|| "/dev/log".into()))
    }
}

impl SinkConfig for SyslogConfig {
    fn build(&self) -> Result<Box<dyn Sink>, SinkError> {
        let hostname = self.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
        });
        let hostname = if hostname.is_empty() { "-".to_string() } else { hostname.replace(' ', "_") };
        let header = Header {
            facility: facility_code(&self.facility).unwrap_or(3),
            hostname,
            app_name: self.app_name.clone(),
            procid: std::process::id(),
        };
        let out = match self.transport {
            Transport::Unix => Out::Unix { path: self.socket_path(), sock: None },
            Transport::Udp => {
                let addr = resolve(self.address.as_deref().unwrap_or_default())?;
                let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| SinkError::Other("bind address".into()))?;
                let s = UdpSocket::bind(bind)?;
                s.connect(addr)?;
                Out::Udp(s)
            }
            Transport::Tcp => Out::Tcp(TcpWriter::start(self.address.clone().unwrap_or_default(), self.queue)),
        };
        Ok(Box::new(SyslogSink { header, format: self.format, out }))
    }
}

fn resolve(a: &str) -> Result<SocketAddr, SinkError> {
    a.to_socket_addrs()?.next().ok_or_else(|| SinkError::Other(format!("{a}: no address")))
}

/// The fixed parts of every message.
#[derive(Debug, Clone)]
pub struct Header {
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub procid: u32,
}

/// Syslog severity of a finding's severity.
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message for `alert` with `msg` as its MSG part.
pub fn format_message(h: &Header, alert: &Alert, msg: &str) -> String {
    let pri = u16::from(h.facility) * 8 + u16::from(syslog_severity(alert.severity));
    let mut sd = format!(
        "[{SD_ID} kind=\"{}\" severity=\"{}\" alert_id=\"{}\" direction=\"{}\"",
        alert.kind.as_str(),
        alert.severity.as_str(),
        sd_escape(&alert.alert_id),
        match alert.direction {
            crate::vocab::Direction::Inbound => "inbound",
            crate::vocab::Direction::Outbound => "outbound",
        },
    );
    if let Some(ip) = alert.source.ip {
        sd.push_str(&format!(" src=\"{ip}\""));
    }
    if let Some(p) = &alert.source.process {
        sd.push_str(&format!(" pid=\"{}\" exe=\"{}\"", p.tgid, sd_escape(p.exe.as_deref().unwrap_or(&p.comm))));
    }
    sd.push(']');
    let time = if alert.time.is_empty() { "-" } else { alert.time.as_str() };
    format!("<{pri}>1 {time} {} {} {} {} {sd} {msg}", h.hostname, h.app_name, h.procid, alert.kind.as_str())
}

enum Out {
    Unix { path: PathBuf, sock: Option<UnixSock> },
    Udp(UdpSocket),
    Tcp(TcpWriter),
}

enum UnixSock {
    Dgram(UnixDatagram),
    Stream(UnixStream),
}

pub struct SyslogSink {
    header: Header,
    format: Format,
    out: Out,
}

impl SyslogSink {
    /// Frames the TCP writer could not keep (queue full) and reconnects so far (TCP only).
    pub fn tcp_stats(&self) -> Option<(u64, u64)> {
        match &self.out {
            Out::Tcp(t) => Some((t.stats.dropped.load(Ordering::Relaxed), t.stats.reconnects.load(Ordering::Relaxed))),
            _ => None,
        }
    }
}

fn cut(mut m: String, max: usize) -> String {
    if m.len() > max {
        let mut i = max;
        while !m.is_char_boundary(i) {
            i -= 1;
        }
        m.truncate(i);
    }
    m
}

impl Sink for SyslogSink {
    fn write(&mut self, alert: &Alert) -> Result<(), SinkError> {
        let msg = crate::output::render_line(alert, self.format)?;
        let line = format_message(&self.header, alert, &msg);
        match &mut self.out {
            Out::Udp(s) => {
                s.send(cut(line, MAX_DATAGRAM).as_bytes())?;
            }
            Out::Unix { path, sock } => {
                if sock.is_none() {
                    *sock = Some(connect_unix(path)?);
                }
                let r = match sock.as_mut() {
                    Some(UnixSock::Dgram(d)) => d.send(cut(line, MAX_DATAGRAM).as_bytes()).map(|_| ()),
                    Some(UnixSock::Stream(s)) => {
                        let mut l = line;
                        l.push('\n');
                        s.write_all(l.as_bytes())
                    }
                    None => Ok(()),
                };
                if let Err(e) = r {
                    // The daemon restarted: reconnect on the next attempt.
                    *sock = None;
                    return Err(e.into());
                }
            }
            Out::Tcp(t) => t.send(format!("{} {line}", line.len()))?,
        }
        Ok(())
    }
}

fn connect_unix(path: &PathBuf) -> std::io::Result<UnixSock> {
    let d = UnixDatagram::unbound()?;
    match d.connect(path) {
        Ok(()) => Ok(UnixSock::Dgram(d)),
        // A stream-type log socket.
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(UnixSock::Stream(UnixStream::connect(path)?)),
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct TcpStats {
    dropped: AtomicU64,
    reconnects: AtomicU64,
    /// The sink was dropped (reload, shutdown): the writer gives up on an unreachable collector.
    closed: std::sync::atomic::AtomicBool,
}

/// The TCP connection lives in its own thread behind a bounded queue.
struct TcpWriter {
    tx: SyncSender<String>,
    stats: Arc<TcpStats>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl TcpWriter {
    fn start(address: String, queue: usize) -> TcpWriter {
        let (tx, rx) = sync_channel::<String>(queue);
        let stats = Arc::new(TcpStats::default());
        let st = stats.clone();
        let spawned = std::thread::Builder::new().name("syslog-tcp".into()).spawn(move || tcp_loop(&address, &rx, &st));
        if let Err(e) = spawned {
            eprintln!("scanwatch: WARNING syslog tcp writer thread not started: {e}");
        }
        TcpWriter { tx, stats }
    }

    fn send(&self, frame: String) -> Result<(), SinkError> {
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err(SinkError::Other("syslog collector unreachable and the send queue is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => Err(SinkError::Other("syslog tcp writer stopped".into())),
        }
    }
}

impl Drop for TcpWriter {
    fn drop(&mut self) {
        self.stats.closed.store(true, Ordering::Relaxed);
    }
}

fn tcp_loop(address: &str, rx: &Receiver<String>, stats: &TcpStats) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    while let Ok(frame) = rx.recv() {
        loop {
            if conn.is_none() {
                match connect_tcp(address) {
                    Ok(c) => {
                        if warned {
                            eprintln!("scanwatch: syslog collector {address} reachable again");
                        }
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                        warned = false;
                    }
                    Err(e) => {
                        if stats.closed.load(Ordering::Relaxed) {
                            // The sink is gone and so is the collector: what is left is lost.
                            let left = 1 + rx.try_iter().count();
                            eprintln!("scanwatch: WARNING syslog collector {address} unreachable at close: {left} findings not delivered");
                            return;
                        }
                        if !warned {
                            eprintln!("scanwatch: WARNING syslog collector {address}: {e}; retrying with backoff, buffering");
                            warned = true;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.write_all(frame.as_bytes()) {
                Ok(()) => break,
                Err(e) => {
                    eprintln!("scanwatch: WARNING syslog collector {address}: {e}; reconnecting");
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
    }
}

fn connect_tcp(address: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
