//! HTTPS: TLS with optional client certificates, authentication, impersonation, and the
//! translation between hyper and [`Api`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{parse_info, parse_query, Api, Caller, Reply, Request};
use crate::pki::{identity_from_cert, Issued};
use crate::rbac::UserInfo;
use crate::status::ApiError;

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn json_response(code: u16, v: &Value, audit_id: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{v}\n")));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    h.insert("cache-control", hyper::header::HeaderValue::from_static("no-cache, private"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(audit_id) {
        h.insert("audit-id", v);
    }
    r
}

pub fn tls_acceptor(ca_der: &[u8], serving: &Issued) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(serving.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der.clone())),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Accept connections until the listener's task is aborted.
pub async fn serve(api: Arc<Api>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let api = api.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity_from_cert(c.as_ref()).map(|id| (id, sha256_hex(c.as_ref()))));
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let cert_identity = cert_identity.clone();
                async move { Ok::<_, Infallible>(handle(api, req, peer, cert_identity).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

fn header<'a>(req: &'a hyper::Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    api: Arc<Api>,
    mut hreq: hyper::Request<Incoming>,
    peer: SocketAddr,
    cert: Option<((String, Vec<String>), String)>,
) -> Response<Body> {
    let websocket = header(&hreq, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut hreq));
    let uri = hreq.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let (path, q) = uri.split_once('?').unwrap_or((&uri, ""));
    let mut req = Request {
        method: hreq.method().as_str().to_string(),
        path: path.to_string(),
        query: parse_query(q),
        uri: uri.clone(),
        content_type: header(&hreq, "content-type").unwrap_or("application/json").to_string(),
        body: Bytes::new(),
        websocket,
    };
    let user_agent = header(&hreq, "user-agent").unwrap_or("").to_string();
    let bearer = header(&hreq, "authorization").and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let imp_user = header(&hreq, "impersonate-user").map(String::from);
    let imp_groups: Vec<String> =
        hreq.headers().get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok().map(String::from)).collect();
    let (parts, body) = hreq.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => req.body = b.to_bytes(),
        Err(_) => {
            let e = ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY} bytes"),
            );
            return json_response(413, &e.to_status(), "");
        }
    }
    // Authentication.
    let user = match (&bearer, &cert) {
        (Some(t), _) => api.user_for_token(t),
        (None, Some(((cn, groups), fp))) => {
            let mut u = UserInfo::new(cn, &[]);
            u.groups = groups.clone();
            u.groups.push("system:authenticated".into());
            u.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("X509SHA256={fp}")]);
            Some(u)
        }
        (None, None) if api.anonymous => Some(UserInfo::new("system:anonymous", &["system:unauthenticated"])),
        (None, None) => None,
    };
    let Some(user) = user else {
        let e = ApiError::unauthorized();
        let info = parse_info(&req);
        let caller = Caller {
            user: UserInfo::new("", &[]),
            impersonated: None,
            source_ip: peer.ip().to_string(),
            user_agent,
            internal: false,
        };
        let mut rec = api.audit_record(&caller, &req.uri, Api::facts(&info, &req));
        rec.user = UserInfo { username: String::new(), uid: String::new(), groups: vec![], extra: Default::default() };
        rec.code = 401;
        rec.status = Some(e.to_status());
        rec.response_object = Some(e.to_status());
        api.audit.write(&rec, "ResponseStarted");
        return json_response(401, &e.to_status(), &rec.id);
    };
    let mut caller = Caller { user, impersonated: None, source_ip: peer.ip().to_string(), user_agent, internal: false };
    // Impersonation.
    if let Some(target) = imp_user {
        if let Err(e) = impersonate(&api, &mut caller, &target, &imp_groups) {
            let info = parse_info(&req);
            let mut rec = api.audit_record(&caller, &req.uri, Api::facts(&info, &req));
            rec.code = e.code;
            rec.status = Some(e.to_status());
            rec.decision = Some((false, String::new()));
            api.audit.write(&rec, "ResponseComplete");
            return json_response(e.code, &e.to_status(), &rec.id);
        }
    }
    let info = parse_info(&req);
    if let (Some(up), true) = (on_upgrade, info.resource == "pods" && (info.sub == "exec" || info.sub == "attach")) {
        return crate::exec::serve(api, caller, req, info, parts_headers(&parts), up).await;
    }
    let reply = api.handle(&caller, &req).await;
    to_response(reply)
}

fn parts_headers(parts: &hyper::http::request::Parts) -> hyper::HeaderMap {
    parts.headers.clone()
}

fn impersonate(api: &Api, caller: &mut Caller, target: &str, groups: &[String]) -> Result<(), ApiError> {
    use crate::rbac::{authorize, Attributes};
    let check = |resource: &str, ns: &str, name: &str| -> Result<(), ApiError> {
        let a = Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            group: String::new(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        };
        if authorize(&api.store, &caller.user, &a).0 {
            Ok(())
        } else {
            let mut e = ApiError::forbidden_resource(
                &caller.user.username,
                "impersonate",
                &crate::resources::PODS,
                None,
                None,
                Some(name),
            );
            e.message = format!(
                "{resource} \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}\" in API group \"\" at the cluster scope",
                caller.user.username
            );
            e.details = Some(json!({"name": name, "kind": resource}));
            Err(e)
        }
    };
    let mut imp = if let Some(rest) = target.strip_prefix("system:serviceaccount:") {
        let (ns, name) = rest.split_once(':').unwrap_or(("", rest));
        check("serviceaccounts", ns, name)?;
        UserInfo::new(target, &["system:serviceaccounts", &format!("system:serviceaccounts:{ns}")])
    } else {
        check("users", "", target)?;
        UserInfo::new(target, &[])
    };
    for g in groups {
        check("groups", "", g)?;
        imp.groups.push(g.clone());
    }
    if target != "system:anonymous" {
        imp.groups.push("system:authenticated".into());
    }
    caller.impersonated = Some(imp);
    Ok(())
}

pub fn to_response(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Json(code, v) => json_response(code, &v, ""),
        Reply::Text(code, ct, b) => {
            let mut r = Response::new(full(b));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
                r.headers_mut().insert("content-type", v);
            }
            r
        }
        Reply::Stream(code, ct, rx) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
                r.headers_mut().insert("content-type", v);
            }
            r.headers_mut().insert("cache-control", hyper::header::HeaderValue::from_static("no-cache, private"));
            r
        }
    }
}
