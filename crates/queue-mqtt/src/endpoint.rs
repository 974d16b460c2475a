//! Where and as whom an MQTT trigger connects: its URL read into host, port, TLS and
//! credentials, its client id, its subscription's filter. Pure code, tested here.

use model::queue::redact_url;

/// A broker's address and credentials, as the trigger's URL gives them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `mqtts://` or `ssl://`: TLS, with the system's roots.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Client ids longer than this are shortened (with a hash, so that they stay distinct):
/// MQTT 3.1.1 only promises 23 bytes, but every broker in use takes far more, and a
/// readable id helps whoever reads the broker's logs.
const CLIENT_ID_MAX: usize = 64;

/// Reads `mqtt://[user[:password]@]host[:port][/]` (also `tcp://`, and `mqtts://` or
/// `ssl://` for TLS). Errors show the URL without its password.
pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
    let shown = || redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not shown: without a scheme, a password in it could not be told apart.
        return Err("is not a URL (mqtt://host:1883)".to_string());
    };
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        other => {
            return Err(format!(
                "`{}`: the scheme `{other}` is not MQTT's (mqtt, mqtts, tcp, ssl)",
                shown()
            ));
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.is_empty() && tail != "/" {
        return Err(format!(
            "`{}`: an MQTT URL has no path or query (the topic is the trigger's `topic`)",
            shown()
        ));
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (name, pass) = match u.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (u, None),
            };
            let name = decode(name).ok_or_else(|| format!("`{}`: a bad %-escape", shown()))?;
            let pass = match pass {
                Some(p) => Some(decode(p).ok_or_else(|| format!("`{}`: a bad %-escape", shown()))?),
                None => None,
            };
            (Some(name), pass)
        }
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("`{}`: an IPv6 address lacks its `]`", shown()));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{}`: junk after the host", shown())),
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{}` names no host", shown()));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`{}`: `{p}` is not a port", shown())),
        },
    };
    Ok(Endpoint {
        tls,
        host,
        port,
        username,
        password,
    })
}

/// `%XX` escapes decoded (a password may hold `@`, `:` or `/` that way); `None` for a bad
/// escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The client id of this node's member: the member's name where brokers take it as is,
/// else a shortened, cleaned form with a hash of the whole. Stable per node, so that a
/// restarted node resumes its session (and gets what it held unacknowledged).
pub(crate) fn client_id(member: &str) -> String {
    let clean: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean == member && clean.len() <= CLIENT_ID_MAX {
        return clean;
    }
    let hash = model::hash::stable_hash(&[member.as_bytes()]);
    let keep: String = clean.chars().take(CLIENT_ID_MAX - 17).collect();
    format!("{keep}-{hash:016x}")
}

/// The filter to subscribe to: the topic itself, or its shared subscription in the
/// trigger's group (`$share/GROUP/topic`) so that every node's trigger splits it. A topic
/// that names its own share group keeps it.
pub(crate) fn filter(topic: &str, shared: bool, group: &str) -> String {
    if !shared || topic.starts_with("$share/") {
        return topic.to_string();
    }
    // A share group's name may not hold `/`, `+` or `#`.
    let group: String = group
        .chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '-' } else { c })
        .collect();
    format!("$share/{group}/{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_credentials() {
        assert_eq!(
            parse("mqtt://localhost").unwrap(),
            Endpoint {
                tls: false,
                host: "localhost".into(),
                port: 1883,
                username: None,
                password: None
            }
        );
        let e = parse("mqtts://user:p%40ss%3Aw@broker.example:9883/").unwrap();
        assert!(e.tls);
        assert_eq!(e.host, "broker.example");
        assert_eq!(e.port, 9883);
        assert_eq!(e.username.as_deref(), Some("user"));
        assert_eq!(e.password.as_deref(), Some("p@ss:w"));
        let e = parse("ssl://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("::1", 8883, true));
        let e = parse("tcp://[::1]:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert_eq!(
            parse("TCP://token@h:1").unwrap().username.as_deref(),
            Some("token")
        );
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for bad in [
            "amqp://u:secret@h",
            "mqtt://u:secret@h:0",
            "mqtt://u:secret@h:99999",
            "mqtt://u:secret@",
            "mqtt://u:secret@h/topic",
            "mqtt://u:secret@h?client_id=x",
            "mqtt://u:secret@[::1",
            "u:secret@h",
            "mqtt://u:sec%zzret@h",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("secret") && !e.contains("sec%"), "{bad}: {e}");
        }
    }

    #[test]
    fn client_ids_are_stable_short_and_distinct() {
        assert_eq!(client_id("nimbus-f-mqtt-node1"), "nimbus-f-mqtt-node1");
        let long = format!("nimbus-{}-mqtt-node1", "f".repeat(100));
        let id = client_id(&long);
        assert!(id.len() <= CLIENT_ID_MAX, "{id}");
        assert_eq!(id, client_id(&long));
        let other = format!("nimbus-{}-mqtt-node2", "f".repeat(100));
        assert_ne!(id, client_id(&other));
        // Cleaned names never collide with the name they were cleaned into.
        assert_ne!(client_id("a.b"), client_id("a-b"));
        assert!(
            client_id("a.b")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
    }

    #[test]
    fn shared_filters_name_the_group_unless_the_topic_does() {
        assert_eq!(filter("a/+/b", true, "g"), "$share/g/a/+/b");
        assert_eq!(filter("a/#", false, "g"), "a/#");
        assert_eq!(filter("$share/mine/a", true, "g"), "$share/mine/a");
        assert_eq!(filter("x", true, "g/h+#"), "$share/g-h--/x");
    }
}
