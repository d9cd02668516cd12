//! Query parameters of audit-event request URIs (`/api/v1/.../exec?command=sh&command=-c`).

/// Every `(key, value)` pair of the URI's query, URL-decoded (`+` is a space), in order.
pub fn params(uri: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

/// The first value of query parameter `key` (what Falco's `ka.uri.param[key]` gives).
pub fn param(uri: &str, key: &str) -> Option<String> {
    params(uri).find(|(k, _)| k == key).map(|(_, v)| v)
}

/// All values of `key`, in order: an exec's whole argv is `command=a&command=b`.
pub fn all(uri: &str, key: &str) -> Vec<String> {
    params(uri).filter(|(k, _)| k == key).map(|(_, v)| v).collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_collects() {
        let uri = "/api/v1/namespaces/d/pods/p/exec?command=sh&command=-c&command=cat%20%2Fetc%2Fshadow&container=c";
        assert_eq!(param(uri, "command").as_deref(), Some("sh"));
        assert_eq!(all(uri, "command"), ["sh", "-c", "cat /etc/shadow"]);
        assert_eq!(param("/x?a=b+c%2", "a").as_deref(), Some("b c%2"));
        assert_eq!(param("/x", "a"), None);
        assert_eq!(param("/x?a", "a").as_deref(), Some(""));
    }
}
