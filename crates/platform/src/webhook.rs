//! Webhook destinations: an asynchronous invocation's record POSTed as JSON.
//!
//! A destination URL is a tenant's input, and the server stands inside the operator's
//! network: without a check, a webhook to `169.254.169.254` or `localhost:5432` would make
//! the server a proxy into places the tenant cannot reach. So unless the server allows
//! private webhooks, a URL whose host is (or resolves to) a loopback, private, link-local,
//! shared or otherwise non-public address is refused, at deploy and again at delivery
//! (every resolved address is checked, so DNS cannot smuggle one in).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a webhook may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `ip` is an address a tenant's webhook may not reach unless private webhooks
/// are allowed: anything but a public unicast address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT; 0.0.0.0/8; 192.0.0.0/24; 198.18.0.0/15.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32 documentation.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Checks a webhook URL as given: an `http(s)` URL whose host is not a private address
/// (a name is checked when it is resolved, at delivery).
pub fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}`: a webhook is an http or https URL"));
    }
    if allow_private {
        return Ok(());
    }
    let Some(host) = parsed.host_str() else {
        return Err(format!("`{url}` has no host"));
    };
    // An IPv6 literal comes bracketed.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let private = match literal.parse::<IpAddr>() {
        Ok(ip) => is_private(ip),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if private {
        return Err(format!(
            "`{url}` points at a private or loopback address; webhooks go to public addresses unless the server runs with --allow-private-webhooks"
        ));
    }
    Ok(())
}

/// Resolves names like the system does, keeping only public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to private or loopback addresses; webhooks go to public addresses unless the server runs with --allow-private-webhooks"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// POSTs `body` to `url`; any 2xx answer means it was taken.
pub(crate) async fn post(url: &str, body: Vec<u8>, allow_private: bool) -> Result<(), String> {
    static OPEN: OnceLock<reqwest::Client> = OnceLock::new();
    static PUBLIC: OnceLock<reqwest::Client> = OnceLock::new();
    check_url(url, allow_private)?;
    let client = if allow_private {
        OPEN.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .build()
                .expect("a client with a timeout builds")
        })
    } else {
        PUBLIC.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .dns_resolver(Arc::new(PublicOnly))
                // A redirect could lead to a private address the resolver never sees as
                // an IP literal; webhooks do not follow them.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client with a timeout builds")
        })
    };
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("it answered {}", res.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_loopback_destinations_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:9000/",
            "http://api.localhost/",
        ] {
            let refused = check_url(url, false).expect_err(url);
            assert!(refused.contains("--allow-private-webhooks"), "{refused}");
            check_url(url, true).unwrap();
        }
        for url in [
            "https://hooks.example.com/x",
            "http://93.184.216.34/",
            "http://[2606:4700::1]/",
        ] {
            check_url(url, false).unwrap();
        }
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }

    #[tokio::test]
    async fn names_are_resolved_to_public_addresses_only() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        // `localhost` is in every hosts file and resolves to loopback only.
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("private or loopback"), "{err}");
        // A literal private address never reaches a resolver: the URL check refuses it.
        let err = post("http://127.0.0.1:9/hook", b"{}".to_vec(), false)
            .await
            .expect_err("refused");
        assert!(err.contains("--allow-private-webhooks"), "{err}");
    }
}
