//! The test cluster's Kubernetes API over real HTTPS: discovery, CRUD, selectors, pagination,
//! patches, watches, errors, authentication, RBAC, impersonation and the audit log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail by panicking"
)]

use std::time::Duration;

use kustody_testcluster::client::{cluster, rt, Client};
use kustody_testcluster::{Pod, TestCluster};
use serde_json::{json, Value};

#[test]
fn discovery_documents() {
    let Some(c) = cluster(TestCluster::builder()) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        let v = cl.req("GET", "/version", None).await.unwrap().json();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "36");
        let api = cl.req("GET", "/api", None).await.unwrap().json();
        assert_eq!(api["kind"], "APIVersions");
        assert_eq!(api["versions"], json!(["v1"]));
        let apis = cl.req("GET", "/apis", None).await.unwrap().json();
        let groups: Vec<&str> =
            apis["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        for g in [
            "apps",
            "batch",
            "networking.k8s.io",
            "rbac.authorization.k8s.io",
            "discovery.k8s.io",
            "authorization.k8s.io",
            "authentication.k8s.io",
        ] {
            assert!(groups.contains(&g), "{g} missing from {groups:?}");
        }
        let core = cl.req("GET", "/api/v1", None).await.unwrap().json();
        let names: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        for r in [
            "pods",
            "pods/exec",
            "pods/attach",
            "pods/log",
            "pods/ephemeralcontainers",
            "nodes",
            "events",
            "services",
            "endpoints",
            "serviceaccounts",
            "serviceaccounts/token",
            "secrets",
            "configmaps",
            "namespaces",
        ] {
            assert!(names.contains(&r), "{r} missing");
        }
        let apps = cl.req("GET", "/apis/apps/v1", None).await.unwrap().json();
        assert_eq!(apps["groupVersion"], "apps/v1");
        let r = cl.req("GET", "/apis/nope/v1", None).await.unwrap();
        assert_eq!(r.status, 404);
    });
}

#[test]
fn crud_and_status_errors_match_kube_apiserver() {
    let Some(c) = cluster(TestCluster::builder().namespace("t")) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}});
        let r = cl.req("POST", "/api/v1/namespaces", Some(&ns)).await.unwrap();
        assert_eq!(r.status, 409);
        let s = r.json();
        assert_eq!(s["reason"], "AlreadyExists");
        assert_eq!(s["message"], "namespaces \"t\" already exists");
        assert_eq!(s["details"], json!({"name": "t", "kind": "namespaces"}));

        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"}, "spec": {"containers": []}});
        let r = cl.req("POST", "/api/v1/namespaces/t/pods", Some(&bad)).await.unwrap();
        assert_eq!(r.status, 422);
        assert_eq!(r.json()["message"], "Pod \"bad\" is invalid: spec.containers: Required value");
        assert_eq!(r.json()["details"]["causes"][0]["reason"], "FieldValueRequired");

        let r = cl.req("GET", "/api/v1/namespaces/t/pods/nope", None).await.unwrap();
        assert_eq!((r.status, r.json()["message"].as_str().unwrap()), (404, "pods \"nope\" not found"));
        let r = cl.req("GET", "/apis/apps/v1/namespaces/t/deployments/nope", None).await.unwrap();
        assert_eq!(r.json()["message"], "deployments.apps \"nope\" not found");

        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"a": "1"}});
        let created = cl.req("POST", "/api/v1/namespaces/t/configmaps", Some(&cm)).await.unwrap();
        assert_eq!(created.status, 201);
        let created = created.json();
        assert_eq!(created["metadata"]["namespace"], "t");
        assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
        let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();

        // update with the current resourceVersion, then again with the stale one
        let mut upd = created.clone();
        upd["data"]["a"] = json!("2");
        let r = cl.req("PUT", "/api/v1/namespaces/t/configmaps/c1", Some(&upd)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.json()["metadata"]["resourceVersion"], json!(rv));
        let r = cl.req("PUT", "/api/v1/namespaces/t/configmaps/c1", Some(&upd)).await.unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.json()["reason"], "Conflict");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("Operation cannot be fulfilled on configmaps \"c1\": the object has been modified"));

        let r = cl
            .req_ct(
                "PATCH",
                "/api/v1/namespaces/t/configmaps/c1",
                "application/merge-patch+json",
                b"{not json".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json()["message"],
            "error decoding patch: invalid character 'n' looking for beginning of object key string"
        );
        let r = cl.req_ct("PATCH", "/api/v1/namespaces/t/configmaps/c1", "text/plain", b"{}".to_vec()).await.unwrap();
        assert_eq!(r.status, 415);

        // generateName, dry run, delete returning a Status
        let g = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "s-"}, "stringData": {}});
        let r = cl.req("POST", "/api/v1/namespaces/t/secrets?dryRun=All", Some(&g)).await.unwrap();
        assert_eq!(r.status, 201);
        assert!(c.list("secrets", Some("t")).is_empty(), "dry run stored an object");
        let r = cl.req("POST", "/api/v1/namespaces/t/secrets", Some(&g)).await.unwrap().json();
        let name = r["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("s-") && name.len() == 7, "{name}");
        let r = cl.req("DELETE", &format!("/api/v1/namespaces/t/secrets/{name}"), None).await.unwrap();
        assert_eq!(r.json()["status"], "Success");
        assert_eq!(r.json()["details"]["name"], name);

        // namespace that does not exist
        let r = cl.req("POST", "/api/v1/namespaces/ghost/configmaps", Some(&cm)).await.unwrap();
        assert_eq!((r.status, r.json()["message"].as_str().unwrap()), (404, "namespaces \"ghost\" not found"));
        // pod with an unknown service account is refused by admission
        let p = Pod::new("x").service_account("ghost").to_object("t");
        let r = cl.req("POST", "/api/v1/namespaces/t/pods", Some(&p)).await.unwrap();
        assert_eq!(r.status, 403);
        assert!(r.json()["message"].as_str().unwrap().contains("serviceaccount \"ghost\" not found"));
    });
}

#[test]
fn selectors_pagination_and_patches() {
    let Some(c) = cluster(TestCluster::builder().namespace("s")) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        for i in 0..7 {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "labels": {"idx": i.to_string(), "parity": if i % 2 == 0 { "even" } else { "odd" }}}});
            assert_eq!(cl.req("POST", "/api/v1/namespaces/s/configmaps", Some(&cm)).await.unwrap().status, 201);
        }
        let names = |v: &Value| -> Vec<String> { v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect() };
        let even = cl.req("GET", "/api/v1/namespaces/s/configmaps?labelSelector=parity%3Deven", None).await.unwrap().json();
        assert_eq!(names(&even), ["cm-0", "cm-2", "cm-4", "cm-6"]);
        assert!(even["items"][0].get("kind").is_none(), "list items carry no kind, as in kube-apiserver");
        let set = cl.req("GET", "/api/v1/namespaces/s/configmaps?labelSelector=idx+in+(1,3),parity!%3Deven", None).await.unwrap().json();
        assert_eq!(names(&set), ["cm-1", "cm-3"]);
        let by_name = cl.req("GET", "/api/v1/namespaces/s/configmaps?fieldSelector=metadata.name%3Dcm-5", None).await.unwrap().json();
        assert_eq!(names(&by_name), ["cm-5"]);
        let bad = cl.req("GET", "/api/v1/namespaces/s/configmaps?fieldSelector=data.x%3D1", None).await.unwrap();
        assert_eq!((bad.status, bad.json()["message"].as_str().unwrap()), (400, "field label not supported: data.x"));

        // pages of 3: 3 + 3 + 2 (kube-root-ca.crt is there too)
        let mut all = Vec::new();
        let mut cont = String::new();
        let mut pages = 0;
        loop {
            let path = format!("/api/v1/namespaces/s/configmaps?limit=3{}", if cont.is_empty() { String::new() } else { format!("&continue={cont}") });
            let page = cl.req("GET", &path, None).await.unwrap().json();
            pages += 1;
            all.extend(names(&page));
            match page["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => {
                    assert!(page["metadata"]["remainingItemCount"].as_u64().unwrap() > 0);
                    cont = c.replace('=', "%3D");
                }
                _ => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(all.len(), 8);

        // merge, strategic and JSON patches
        let p = "/api/v1/namespaces/s/configmaps/cm-0";
        let r = cl.req_ct("PATCH", p, "application/merge-patch+json", br#"{"metadata":{"labels":{"parity":null,"q":"1"}}}"#.to_vec()).await.unwrap();
        assert_eq!(r.json()["metadata"]["labels"], json!({"idx": "0", "q": "1"}));
        // owners must exist, or the garbage collector deletes the dependent (as in Kubernetes)
        let u1 = c.get("configmaps", "s", "cm-1").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let u2 = c.get("configmaps", "s", "cm-2").unwrap()["metadata"]["uid"].as_str().unwrap().to_string();
        let own = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm-1", "uid": u1}, {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm-2", "uid": u2}]}});
        cl.req_ct("PATCH", p, "application/strategic-merge-patch+json", own.to_string().into_bytes()).await.unwrap();
        let r = cl.req_ct("PATCH", p, "application/strategic-merge-patch+json", format!(r#"{{"metadata":{{"ownerReferences":[{{"$patch":"delete","uid":"{u1}"}}],"labels":{{"s":"2"}}}}}}"#).into_bytes()).await.unwrap();
        let refs = r.json()["metadata"]["ownerReferences"].clone();
        assert_eq!(refs.as_array().unwrap().len(), 1);
        assert_eq!(refs[0]["uid"], u2.as_str());
        assert_eq!(r.json()["metadata"]["labels"]["q"], "1");
        let r = cl.req_ct("PATCH", p, "application/json-patch+json", br#"[{"op":"add","path":"/data","value":{"k":"v"}},{"op":"remove","path":"/metadata/labels/q"}]"#.to_vec()).await.unwrap();
        assert_eq!(r.json()["data"]["k"], "v");
        assert!(r.json()["metadata"]["labels"].get("q").is_none());
        let r = cl.req_ct("PATCH", p, "application/json-patch+json", br#"[{"op":"test","path":"/data/k","value":"other"}]"#.to_vec()).await.unwrap();
        assert_eq!(r.status, 422);
    });
}

#[test]
fn watch_streams_changes_from_a_resource_version_with_bookmarks() {
    let Some(c) = cluster(TestCluster::builder().namespace("w")) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        let list = cl.req("GET", "/api/v1/namespaces/w/configmaps", None).await.unwrap().json();
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let watcher = {
            let cl = cl.clone();
            let path = format!("/api/v1/namespaces/w/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&labelSelector=app%3Dx");
            tokio::spawn(async move { cl.watch(&path, 5, Duration::from_secs(5)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"app": "x"}}});
        cl.req("POST", "/api/v1/namespaces/w/configmaps", Some(&cm)).await.unwrap();
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "labels": {"app": "y"}}});
        cl.req("POST", "/api/v1/namespaces/w/configmaps", Some(&other)).await.unwrap();
        cl.req_ct("PATCH", "/api/v1/namespaces/w/configmaps/a", "application/merge-patch+json", br#"{"data":{"k":"v"}}"#.to_vec()).await.unwrap();
        // leaving the selector reads as DELETED to this watcher
        cl.req_ct("PATCH", "/api/v1/namespaces/w/configmaps/a", "application/merge-patch+json", br#"{"metadata":{"labels":{"app":"z"}}}"#.to_vec()).await.unwrap();
        let events = watcher.await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).filter(|t| *t != "BOOKMARK").collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"], "{events:#?}");
        let bookmark = events.iter().find(|e| e["type"] == "BOOKMARK").expect("a bookmark within 5 s");
        assert_eq!(bookmark["object"]["kind"], "ConfigMap");
        let rvs: Vec<u64> = events.iter().filter(|e| e["type"] != "BOOKMARK").map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()).collect();
        assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
        // a watch without resourceVersion starts with the current state
        let initial = cl.watch("/api/v1/namespaces/w/configmaps?watch=true", 3, Duration::from_millis(500)).await.unwrap();
        let names: Vec<&str> = initial.iter().map(|e| e["object"]["metadata"]["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"a") && names.contains(&"b"), "{names:?}");
        assert!(initial.iter().all(|e| e["type"] == "ADDED"));
    });
}

#[test]
fn authentication_rbac_reviews_and_impersonation() {
    let Some(c) = cluster(TestCluster::builder().namespace("r")) else { return };
    let reader = c
        .add_user(
            "reader",
            &["readers"],
            json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]),
            Some("r"),
        )
        .unwrap();
    let sa_token = c.service_account_token("r", "limited").unwrap();
    rt().block_on(async {
        let cl = Client::token(&c, &reader);
        assert_eq!(cl.req("GET", "/api/v1/namespaces/r/pods", None).await.unwrap().status, 200);
        let r = cl.req("GET", "/api/v1/namespaces/r/secrets", None).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["message"], "secrets is forbidden: User \"reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"r\"");
        assert_eq!(r.json()["details"], json!({"kind": "secrets"}));
        let r = cl.req("GET", "/api/v1/pods", None).await.unwrap();
        assert_eq!(r.json()["message"], "pods is forbidden: User \"reader\" cannot list resource \"pods\" at the cluster scope".replace("\" at", "\" in API group \"\" at"));
        let r = cl.req("DELETE", "/api/v1/namespaces/r/pods/x", None).await.unwrap();
        assert_eq!(r.json()["message"], "pods \"x\" is forbidden: User \"reader\" cannot delete resource \"pods\" in API group \"\" in the namespace \"r\"");

        // self-subject reviews
        let ssr = cl.req("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))).await.unwrap();
        assert_eq!(ssr.status, 201);
        assert_eq!(ssr.json()["status"]["userInfo"]["username"], "reader");
        assert!(ssr.json()["status"]["userInfo"]["groups"].as_array().unwrap().contains(&json!("readers")));
        let ssar = |verb: &str, res: &str| json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "r", "verb": verb, "resource": res}}});
        let a = cl.req("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", Some(&ssar("list", "pods"))).await.unwrap().json();
        assert_eq!(a["status"]["allowed"], true);
        assert!(a["status"]["reason"].as_str().unwrap().starts_with("RBAC: allowed by RoleBinding"));
        let d = cl.req("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", Some(&ssar("create", "pods"))).await.unwrap().json();
        assert_eq!(d["status"]["allowed"], false);
        let rules = cl.req("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            Some(&json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "r"}}))).await.unwrap().json();
        let rr = rules["status"]["resourceRules"].as_array().unwrap();
        assert!(rr.iter().any(|r| r["resources"] == json!(["pods", "pods/log"])), "{rr:?}");
        assert!(rr.iter().any(|r| r["resources"] == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])));

        // a pod's identity: service-account token
        let sa = Client::token(&c, &sa_token);
        let who = sa.req("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))).await.unwrap().json();
        assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:r:limited");
        assert!(who["status"]["userInfo"]["groups"].as_array().unwrap().contains(&json!("system:serviceaccounts:r")));
        let r = sa.req("GET", "/api/v1/namespaces/r/secrets", None).await.unwrap();
        assert_eq!(r.json()["message"], "secrets is forbidden: User \"system:serviceaccount:r:limited\" cannot list resource \"secrets\" in API group \"\" in the namespace \"r\"");

        // unauthenticated and bad tokens
        let r = Client::token(&c, "not-a-token").req("GET", "/api/v1/namespaces", None).await.unwrap();
        assert_eq!((r.status, r.json()["reason"].as_str().unwrap()), (401, "Unauthorized"));
        assert_eq!(Client::anonymous(&c).req("GET", "/api/v1/namespaces", None).await.unwrap().status, 401);

        // client certificates: CN is the user, O the groups
        let cert = c.user_cert("carol", &["auditors", "oncall"]).unwrap();
        let cc = Client::cert(&c, &cert.cert_pem, &cert.key_pem);
        let who = cc.req("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))).await.unwrap().json();
        assert_eq!(who["status"]["userInfo"]["username"], "carol");
        let groups = who["status"]["userInfo"]["groups"].as_array().unwrap();
        assert!(groups.contains(&json!("auditors")) && groups.contains(&json!("oncall")), "{groups:?}");
        assert_eq!(cc.req("GET", "/api/v1/namespaces/r/pods", None).await.unwrap().status, 403);

        // impersonation needs the impersonate verb
        let mut imp = Client::token(&c, &reader);
        imp.headers.push(("Impersonate-User".into(), "system:admin".into()));
        let r = imp.req("GET", "/api/v1/namespaces/r/pods", None).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["message"], "users \"system:admin\" is forbidden: User \"reader\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope");
        let mut admin_as = Client::admin(&c);
        admin_as.headers.push(("Impersonate-User".into(), "reader".into()));
        let r = admin_as.req("GET", "/api/v1/namespaces/r/secrets", None).await.unwrap();
        assert_eq!(r.status, 403, "impersonated requests are authorized as the impersonated user");
    });
    let events = c.audit_events().unwrap();
    let imp =
        events.iter().find(|e| e["impersonatedUser"]["username"] == "reader").expect("impersonated request audited");
    assert_eq!(imp["user"]["username"], kustody_testcluster::HARNESS_USER);
    let denied =
        events.iter().find(|e| e["user"]["username"] == "reader" && e["objectRef"]["resource"] == "secrets").unwrap();
    assert_eq!(denied["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(denied["responseStatus"]["code"], 403);
    let unauth = events.iter().find(|e| e["responseStatus"]["code"] == 401).expect("401 audited");
    assert_eq!(unauth["user"], json!({}));
}

#[test]
fn audit_log_follows_the_policy() {
    let Some(c) = cluster(TestCluster::builder().namespace("a").pod(Pod::new("p"))) else { return };
    let cl = Client::admin(&c);
    rt().block_on(async {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "hunter2"}});
        cl.req("POST", "/api/v1/namespaces/a/secrets", Some(&s)).await.unwrap();
        cl.req("GET", "/api/v1/namespaces/a/secrets/db", None).await.unwrap();
        cl.req("GET", "/api/v1/namespaces/a/pods/p", None).await.unwrap();
    });
    let events = c.audit_events().unwrap();
    assert!(events.iter().all(|e| e["stage"] != "RequestReceived"), "policy omits RequestReceived");
    assert!(events.iter().all(|e| e["apiVersion"] == "audit.k8s.io/v1" && e["kind"] == "Event"));
    let text = std::fs::read_to_string(c.audit_log_path()).unwrap();
    assert!(!text.contains("hunter2"), "a Secret body reached the audit log");
    let secret = events.iter().find(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "secrets").unwrap();
    assert_eq!(secret["level"], "Metadata");
    assert_eq!(secret["objectRef"]["name"], "db");
    let pod_get = events
        .iter()
        .find(|e| e["verb"] == "get" && e["objectRef"]["resource"] == "pods" && e["objectRef"]["name"] == "p")
        .unwrap();
    assert_eq!(pod_get["level"], "RequestResponse");
    assert_eq!(pod_get["responseObject"]["kind"], "Pod");
    assert_eq!(pod_get["userAgent"], "kustody-testcluster-tests/1.0");
    assert_eq!(pod_get["sourceIPs"], json!(["127.0.0.1"]));
    // the components' own writes are there, as their identities
    let bind = events.iter().find(|e| e["objectRef"]["subresource"] == "binding").expect("scheduler binding audited");
    assert_eq!(bind["user"]["username"], "system:kube-scheduler");
    assert!(events
        .iter()
        .any(|e| e["user"]["username"] == "system:node:node-0" && e["objectRef"]["subresource"] == "status"));
    // what kustody reads back from it
    for e in &events {
        for k in [
            "auditID",
            "stage",
            "requestURI",
            "verb",
            "user",
            "sourceIPs",
            "responseStatus",
            "requestReceivedTimestamp",
            "stageTimestamp",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
    }
}
