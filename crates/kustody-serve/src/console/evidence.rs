//! The evidence pages: the bundles collected by the server (`DATA_DIR/evidence`), a bundle's
//! manifest — who collected it, from where, each artifact's size and SHA-256 — and a verify
//! button that recomputes every hash (`kustody verify`'s library call). Artifact contents are
//! never shown: only their names and hashes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kustody_collect::bundle::{Manifest, MANIFEST, MANIFEST_SHA};
use serde::Deserialize;

use super::html::{esc, page, q};
use super::{forbidden, session, viewer};
use crate::http::AppState;

/// Largest manifest read for display.
const MAX_MANIFEST: u64 = 32 << 20;
/// Bundles listed at most.
const MAX_LISTED: usize = 1000;

fn root(s: &AppState) -> PathBuf {
    s.data_dir.join("evidence")
}

/// A bundle's name: one path component of the evidence directory, nothing hidden.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

fn bundle_path(s: &AppState, name: &str) -> Option<PathBuf> {
    plain_name(name).then(|| root(s).join(name)).filter(|p| p.is_dir())
}

fn read_manifest(dir: &Path) -> Result<(Manifest, String), String> {
    let p = dir.join(MANIFEST);
    let len = std::fs::metadata(&p).map_err(|e| format!("{MANIFEST}: {e}"))?.len();
    if len > MAX_MANIFEST {
        return Err(format!("{MANIFEST} is over {MAX_MANIFEST} bytes"));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{MANIFEST}: {e}"))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| format!("{MANIFEST}: {e}"))?;
    let sha = std::fs::read_to_string(dir.join(MANIFEST_SHA))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    Ok((m, sha))
}

fn who(m: &Manifest) -> String {
    m.collector.get("username").and_then(|u| u.as_str()).unwrap_or("?").to_owned()
}

fn targets(m: &Manifest) -> String {
    let pods: Vec<String> = m
        .targets
        .iter()
        .filter_map(|t| {
            let ns = t.get("namespace").and_then(|v| v.as_str())?;
            let name = t.get("name").and_then(|v| v.as_str())?;
            Some(super::entities::pod_link(&format!("{ns}/{name}")))
        })
        .collect();
    pods.join(", ")
}

#[derive(Debug, Default, Deserialize)]
pub struct EvidenceQuery {
    bundle: Option<String>,
}

pub async fn evidence(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(eq): Query<EvidenceQuery>) -> Response {
    let back = eq.bundle.as_deref().map_or_else(|| "/evidence".to_owned(), |b| format!("/evidence?bundle={}", q(b)));
    let sess = match session(&s, &headers, &back) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v = viewer(&sess);
    let Some(name) = eq.bundle.filter(|b| !b.is_empty()) else {
        let dir = root(&s);
        let rows = tokio::task::spawn_blocking(move || list(&dir)).await.unwrap_or_default();
        return page(StatusCode::OK, "Evidence", Some(&v), &list_html(&rows));
    };
    let Some(dir) = bundle_path(&s, &name) else {
        return page(
            StatusCode::NOT_FOUND,
            "Evidence",
            Some(&v),
            &format!(r#"<h1>No bundle `{}`</h1><p><a href="/evidence">All bundles</a></p>"#, esc(&name)),
        );
    };
    let got = tokio::task::spawn_blocking(move || read_manifest(&dir)).await.unwrap_or_else(|e| Err(e.to_string()));
    let (m, sha) = match got {
        Ok(x) => x,
        Err(e) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Evidence",
                Some(&v),
                &format!(r#"<h1>Bundle {}</h1><p class="error">{}</p>"#, esc(&name), esc(&e)),
            )
        }
    };
    let mut b = format!(
        r#"<h1>Bundle <span class="mono">{}</span></h1><div class="grid"><div class="card"><dl><dt>Case</dt><dd>{}</dd><dt>Collected by</dt><dd class="mono">{}</dd><dt>Command</dt><dd class="mono">{}</dd></dl></div><div class="card"><dl><dt>Pods</dt><dd>{}</dd><dt>Cluster</dt><dd class="mono">{}</dd><dt>Started · finished</dt><dd>{} · {}</dd><dt>Manifest SHA-256</dt><dd class="mono" id="manifest-sha">{}</dd></dl></div></div>"#,
        esc(&name),
        esc(m.case.as_deref().unwrap_or("–")),
        esc(&who(&m)),
        esc(&m.command.join(" ")),
        targets(&m),
        esc(m.cluster.get("server").and_then(|x| x.as_str()).unwrap_or("–")),
        esc(&m.started),
        esc(&m.finished),
        esc(&sha),
    );
    b.push_str(&format!(
        r#"<form id="verify" method="post" action="/evidence/verify"><input type="hidden" name="csrf" value="{}"><input type="hidden" name="bundle" value="{}"><button class="primary" type="submit">Verify every hash</button></form>"#,
        esc(&sess.csrf),
        esc(&name)
    ));
    b.push_str(&format!(
        r#"<h2>Artifacts ({})</h2><table id="artifacts"><thead><tr><th>Path</th><th>Size</th><th>SHA-256</th><th>Source</th><th>Notes</th></tr></thead><tbody>"#,
        m.artifacts.len()
    ));
    for a in &m.artifacts {
        let source = serde_json::to_value(&a.source)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let mut notes: Vec<String> = a.redacted.iter().map(|r| format!("redacted: {r}")).collect();
        notes.extend(a.notes.iter().cloned());
        b.push_str(&format!(
            r#"<tr><td class="mono">{}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td class="muted">{}</td></tr>"#,
            esc(&a.path),
            a.size,
            esc(&a.sha256),
            esc(&source),
            esc(&notes.join("; "))
        ));
    }
    b.push_str("</tbody></table>");
    b.push_str(&format!(
        r#"<h2>Not collected ({})</h2><table id="failures"><thead><tr><th>Item</th><th>Reason</th><th>At</th></tr></thead><tbody>"#,
        m.failures.len()
    ));
    for f in &m.failures {
        b.push_str(&format!(
            r#"<tr><td class="mono">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&f.item),
            esc(&f.reason),
            esc(&f.at)
        ));
    }
    if m.failures.is_empty() {
        b.push_str(r#"<tr><td colspan="3" class="muted">Nothing: every item was collected.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    page(StatusCode::OK, &format!("Bundle {name}"), Some(&v), &b)
}

/// (name, manifest or why not, manifest sha) of each bundle, newest first.
type Listed = (String, Result<Manifest, String>, String);

fn list(dir: &Path) -> Vec<Listed> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter()
        .take(MAX_LISTED)
        .map(|(_, p)| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match read_manifest(&p) {
                Ok((m, sha)) => (name, Ok(m), sha),
                Err(e) => (name, Err(e), String::new()),
            }
        })
        .collect()
}

fn list_html(rows: &[Listed]) -> String {
    let mut b = String::from(
        r#"<h1>Evidence</h1><table id="bundles"><thead><tr><th>Bundle</th><th>Case</th><th>Pods</th><th>Collected by</th><th>Finished</th><th>Artifacts</th><th>Not collected</th></tr></thead><tbody>"#,
    );
    for (name, m, _) in rows {
        let link = format!(r#"<a class="mono" href="/evidence?bundle={}">{}</a>"#, q(name), esc(name));
        match m {
            Ok(m) => b.push_str(&format!(
                "<tr><td>{link}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(m.case.as_deref().unwrap_or("–")),
                targets(m),
                esc(&who(m)),
                esc(&m.finished),
                m.artifacts.len(),
                m.failures.len()
            )),
            Err(e) => b.push_str(&format!(
                r#"<tr><td>{link}</td><td colspan="6" class="error">{}</td></tr>"#,
                esc(e)
            )),
        }
    }
    if rows.is_empty() {
        b.push_str(r#"<tr><td colspan="7" class="muted">No bundle collected by this server yet.</td></tr>"#);
    }
    b.push_str("</tbody></table>");
    b
}

#[derive(Debug, Default, Deserialize)]
pub struct VerifyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    bundle: String,
}

/// Recomputes every artifact's hash against the manifest, and the manifest's own.
pub async fn verify(State(s): State<Arc<AppState>>, headers: HeaderMap, Form(f): Form<VerifyForm>) -> Response {
    let sess = match session(&s, &headers, "/evidence") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if !super::session::csrf_ok(&sess, Some(&f.csrf)) {
        return forbidden(&sess, "verify without the page's token (CSRF)");
    }
    let v = viewer(&sess);
    let Some(dir) = bundle_path(&s, &f.bundle) else {
        return page(StatusCode::NOT_FOUND, "Evidence", Some(&v), &format!("<h1>No bundle `{}`</h1>", esc(&f.bundle)));
    };
    let t0 = std::time::Instant::now();
    let Ok(r) = tokio::task::spawn_blocking(move || kustody_collect::verify::verify(&dir)).await else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Evidence", Some(&v), "<p class=\"error\">verify failed</p>");
    };
    tracing::info!(user = %sess.identity.name, bundle = %f.bundle, clean = r.clean(), "bundle verified from the console");
    let mut b = format!(
        r#"<h1>Verify <a class="mono" href="/evidence?bundle={}">{}</a></h1><p id="verdict" class="{}">{}</p><p>Manifest SHA-256 <span class="mono">{}</span> ({}); {} of {} artifacts match; {} failures recorded at collection · {:.2} s</p>"#,
        q(&f.bundle),
        esc(&f.bundle),
        if r.clean() { "live" } else { "error" },
        if r.clean() { "Intact: every hash matches." } else { "NOT intact: see below." },
        esc(&r.manifest_sha256),
        if r.manifest_hash_ok { "matches MANIFEST.json.sha256" } else { "does NOT match MANIFEST.json.sha256" },
        r.ok,
        r.checked,
        r.failures_recorded,
        t0.elapsed().as_secs_f64()
    );
    for (title, items) in
        [("Changed", &r.changed), ("Missing", &r.missing), ("Not in the manifest", &r.extra), ("Errors", &r.errors)]
    {
        if !items.is_empty() {
            let li: String = items.iter().map(|i| format!("<li class=\"mono\">{}</li>", esc(i))).collect();
            b.push_str(&format!(r#"<h2>{title}</h2><ul class="error">{li}</ul>"#));
        }
    }
    page(if r.clean() { StatusCode::OK } else { StatusCode::CONFLICT }, "Verify", Some(&v), &b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundle_names_are_one_plain_component() {
        assert!(super::plain_name("incident-1-shop-web-20261202T101010Z"));
        for bad in ["", "..", ".hidden", "a/b", "../etc", "a\\b", "a\0b"] {
            assert!(!super::plain_name(bad), "{bad}");
        }
    }
}
