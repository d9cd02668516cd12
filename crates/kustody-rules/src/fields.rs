//! The field catalogue: every `ka.*` field of Falco's k8saudit plugin plus the json plugin's
//! `jevt.*`/`json.*`, resolved to a compact [`Field`] id at compile time.

/// Container lists of a pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl Family {
    pub fn json_key(self) -> &'static str {
        match self {
            Family::Containers => "containers",
            Family::InitContainers => "initContainers",
            Family::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// Per-container attributes (`ka.req.pod.containers.<attr>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CAttr {
    Name,
    Image,
    ImageRepository,
    Command,
    Args,
    Privileged,
    AllowPrivilegeEscalation,
    ReadOnlyFs,
    RunAsUser,
    EffRunAsUser,
    RunAsGroup,
    EffRunAsGroup,
    ProcMount,
    AddCapabilities,
    HostPort,
}

const CATTRS: &[(&str, CAttr)] = &[
    ("name", CAttr::Name),
    ("image", CAttr::Image),
    ("image.repository", CAttr::ImageRepository),
    ("command", CAttr::Command),
    ("args", CAttr::Args),
    ("privileged", CAttr::Privileged),
    ("allow_privilege_escalation", CAttr::AllowPrivilegeEscalation),
    ("read_only_fs", CAttr::ReadOnlyFs),
    ("run_as_user", CAttr::RunAsUser),
    ("eff_run_as_user", CAttr::EffRunAsUser),
    ("run_as_group", CAttr::RunAsGroup),
    ("eff_run_as_group", CAttr::EffRunAsGroup),
    ("proc_mount", CAttr::ProcMount),
    ("add_capabilities", CAttr::AddCapabilities),
    ("host_port", CAttr::HostPort),
];

/// A field id. Arguments (`[n]`, `[key]`, `[/pointer]`) live beside it in [`FieldRef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    AuditId,
    Stage,
    AuthDecision,
    AuthReason,
    AuthOpenshiftDecision,
    AuthOpenshiftUsername,
    ValidationsAdmissionPolicyFailure,
    SecurityPodViolations,
    UserName,
    UserGroups,
    ImpUserName,
    Verb,
    Uri,
    UriParam,
    TargetName,
    TargetNamespace,
    TargetResource,
    TargetSubresource,
    TargetPodName,
    ReqBindingSubjects,
    ReqBindingRole,
    ReqBindingSubjectHasName,
    ReqBindingUserNames,
    ReqBindingServiceAccountNames,
    ReqBindingServiceAccountNsNames,
    ReqBindingGroupNames,
    ReqConfigmapName,
    ReqConfigmapObj,
    ReqContainerImage,
    ReqContainerImageRepository,
    ReqContainerPrivileged,
    ReqContainerHostNetwork,
    ReqPodHostIpc,
    ReqPodHostNetwork,
    ReqPodHostPid,
    ReqPodRunAsUser,
    ReqPodRunAsGroup,
    ReqPodFsGroup,
    ReqPodSupplementalGroups,
    ReqPodContainer(Family, CAttr),
    ReqRoleRules,
    ReqRoleRulesApiGroups,
    ReqRoleRulesNonResourceUrls,
    ReqRoleRulesVerbs,
    ReqRoleRulesResources,
    ReqServiceType,
    ReqServicePorts,
    ReqPodVolumesHostpath,
    ReqVolumeHostpath,
    ReqPodVolumesFlexvolumeDriver,
    ReqPodVolumesVolumeType,
    RespName,
    ResponseCode,
    ResponseReason,
    UserAgent,
    SourceIps,
    ClusterName,
    JsonValue,
    JsonObj,
    JsonRawTime,
    /// kustody extensions: the pod spec of any workload (see [`pod_spec`](crate::extract)).
    PodSpecContainer(Family, CAttr),
    PodSpecVolumesHostpath,
    PodSpecVolumesHostpathDirs,
    PodSpecHostNetwork,
    PodSpecHostPid,
    PodSpecHostIpc,
    PodSpecServiceAccount,
    PodSpecImageRegistries,
    PodSpecUnpinnedImages,
    /// Every value of a query parameter, in order, joined by spaces (an exec's whole argv).
    UriParams,
}

/// What argument a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    None,
    /// Optional `[n]`: one element of a list field.
    OptionalIndex,
    /// Required `[key]`.
    RequiredKey,
    /// Required `[/json/pointer]`.
    Pointer,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldInfo {
    pub field: Field,
    pub is_list: bool,
    pub arg: ArgKind,
}

const SIMPLE: &[(&str, Field, bool, ArgKind)] = {
    use ArgKind::*;
    use Field::*;
    &[
        ("ka.auditid", AuditId, false, None),
        ("ka.stage", Stage, false, None),
        ("ka.auth.decision", AuthDecision, false, None),
        ("ka.auth.reason", AuthReason, false, None),
        ("ka.auth.openshift.decision", AuthOpenshiftDecision, false, None),
        ("ka.auth.openshift.username", AuthOpenshiftUsername, false, None),
        ("ka.validations.admission.policy.failure", ValidationsAdmissionPolicyFailure, false, None),
        ("ka.security.pod.violations", SecurityPodViolations, false, None),
        ("ka.user.name", UserName, false, None),
        ("ka.user.groups", UserGroups, true, None),
        ("ka.impuser.name", ImpUserName, false, None),
        ("ka.verb", Verb, false, None),
        ("ka.uri", Uri, false, None),
        ("ka.uri.param", UriParam, false, RequiredKey),
        ("ka.target.name", TargetName, false, None),
        ("ka.target.namespace", TargetNamespace, false, None),
        ("ka.target.resource", TargetResource, false, None),
        ("ka.target.subresource", TargetSubresource, false, None),
        ("ka.target.pod.name", TargetPodName, false, None),
        ("ka.req.binding.subjects", ReqBindingSubjects, true, None),
        ("ka.req.binding.role", ReqBindingRole, false, None),
        ("ka.req.binding.subject.has_name", ReqBindingSubjectHasName, false, RequiredKey),
        ("ka.req.binding.subjects.user_names", ReqBindingUserNames, true, None),
        ("ka.req.binding.subjects.serviceaccount_names", ReqBindingServiceAccountNames, true, None),
        ("ka.req.binding.subjects.serviceaccount_ns_names", ReqBindingServiceAccountNsNames, true, None),
        ("ka.req.binding.subjects.group_names", ReqBindingGroupNames, true, None),
        ("ka.req.configmap.name", ReqConfigmapName, false, None),
        ("ka.req.configmap.obj", ReqConfigmapObj, false, None),
        ("ka.req.container.image", ReqContainerImage, false, None),
        ("ka.req.container.image.repository", ReqContainerImageRepository, false, None),
        ("ka.req.container.privileged", ReqContainerPrivileged, false, None),
        ("ka.req.container.host_network", ReqContainerHostNetwork, false, None),
        ("ka.req.pod.host_ipc", ReqPodHostIpc, false, None),
        ("ka.req.pod.host_network", ReqPodHostNetwork, false, None),
        ("ka.req.pod.host_pid", ReqPodHostPid, false, None),
        ("ka.req.pod.run_as_user", ReqPodRunAsUser, false, None),
        ("ka.req.pod.run_as_group", ReqPodRunAsGroup, false, None),
        ("ka.req.pod.fs_group", ReqPodFsGroup, false, None),
        ("ka.req.pod.supplemental_groups", ReqPodSupplementalGroups, true, None),
        ("ka.req.role.rules", ReqRoleRules, true, None),
        ("ka.req.role.rules.apiGroups", ReqRoleRulesApiGroups, true, OptionalIndex),
        ("ka.req.role.rules.nonResourceURLs", ReqRoleRulesNonResourceUrls, true, OptionalIndex),
        ("ka.req.role.rules.verbs", ReqRoleRulesVerbs, true, OptionalIndex),
        ("ka.req.role.rules.resources", ReqRoleRulesResources, true, OptionalIndex),
        ("ka.req.service.type", ReqServiceType, false, None),
        ("ka.req.service.ports", ReqServicePorts, true, OptionalIndex),
        ("ka.req.pod.volumes.hostpath", ReqPodVolumesHostpath, true, OptionalIndex),
        ("ka.req.volume.hostpath", ReqVolumeHostpath, false, RequiredKey),
        ("ka.req.pod.volumes.flexvolume_driver", ReqPodVolumesFlexvolumeDriver, true, OptionalIndex),
        ("ka.req.pod.volumes.volume_type", ReqPodVolumesVolumeType, true, OptionalIndex),
        ("ka.resp.name", RespName, false, None),
        ("ka.response.code", ResponseCode, false, None),
        ("ka.response.reason", ResponseReason, false, None),
        ("ka.useragent", UserAgent, false, None),
        ("ka.sourceips", SourceIps, true, OptionalIndex),
        ("ka.cluster.name", ClusterName, false, None),
        ("jevt.value", JsonValue, false, Pointer),
        ("json.value", JsonValue, false, Pointer),
        ("jevt.obj", JsonObj, false, None),
        ("json.obj", JsonObj, false, None),
        ("jevt.rawtime", JsonRawTime, false, None),
        ("json.rawtime", JsonRawTime, false, None),
    ]
};

/// kustody's own fields, for workloads whose pod spec sits in a template (Deployments,
/// DaemonSets, StatefulSets, ReplicaSets, Jobs, CronJobs) as well as bare Pods. Documented in
/// docs/FALCO-COMPAT.md; Falco does not have them.
const EXTENSIONS: &[(&str, Field, bool, ArgKind)] = {
    use ArgKind::*;
    use Field::*;
    &[
        ("kustody.podspec.volumes.hostpath", PodSpecVolumesHostpath, true, OptionalIndex),
        ("kustody.podspec.volumes.hostpath_dirs", PodSpecVolumesHostpathDirs, true, None),
        ("kustody.podspec.host_network", PodSpecHostNetwork, false, None),
        ("kustody.podspec.host_pid", PodSpecHostPid, false, None),
        ("kustody.podspec.host_ipc", PodSpecHostIpc, false, None),
        ("kustody.podspec.service_account", PodSpecServiceAccount, false, None),
        ("kustody.podspec.image_registries", PodSpecImageRegistries, true, None),
        ("kustody.podspec.unpinned_images", PodSpecUnpinnedImages, true, None),
        ("kustody.uri.params", UriParams, false, RequiredKey),
    ]
};

const PODSPEC_FAMILIES: &[(&str, Family)] = &[
    ("kustody.podspec.containers.", Family::Containers),
    ("kustody.podspec.initContainers.", Family::InitContainers),
    ("kustody.podspec.ephemeralContainers.", Family::EphemeralContainers),
];

const FAMILIES: &[(&str, Family)] = &[
    ("ka.req.pod.containers.", Family::Containers),
    ("ka.req.pod.initContainers.", Family::InitContainers),
    ("ka.req.pod.ephemeralContainers.", Family::EphemeralContainers),
];

/// Looks a field name up.
pub fn lookup(name: &str) -> Option<FieldInfo> {
    for (prefix, family) in PODSPEC_FAMILIES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (_, attr) = CATTRS.iter().find(|(n, _)| *n == rest)?;
            return Some(FieldInfo {
                field: Field::PodSpecContainer(*family, *attr),
                is_list: true,
                arg: ArgKind::OptionalIndex,
            });
        }
    }
    if let Some((_, field, is_list, arg)) = SIMPLE.iter().chain(EXTENSIONS).find(|(n, ..)| *n == name) {
        return Some(FieldInfo { field: *field, is_list: *is_list, arg: *arg });
    }
    for (prefix, family) in FAMILIES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (_, attr) = CATTRS.iter().find(|(n, _)| *n == rest)?;
            if *family == Family::EphemeralContainers && *attr == CAttr::HostPort {
                return None;
            }
            return Some(FieldInfo {
                field: Field::ReqPodContainer(*family, *attr),
                is_list: true,
                arg: ArgKind::OptionalIndex,
            });
        }
    }
    None
}

/// Every field name, for listings and docs.
pub fn all_names() -> Vec<String> {
    let mut out: Vec<String> = SIMPLE.iter().map(|(n, ..)| (*n).to_owned()).collect();
    for (prefix, family) in FAMILIES {
        for (attr_name, attr) in CATTRS {
            if *family == Family::EphemeralContainers && *attr == CAttr::HostPort {
                continue;
            }
            out.push(format!("{prefix}{attr_name}"));
        }
    }
    out.extend(EXTENSIONS.iter().map(|(n, ..)| (*n).to_owned()));
    for (prefix, _) in PODSPEC_FAMILIES {
        out.extend(CATTRS.iter().map(|(a, _)| format!("{prefix}{a}")));
    }
    out
}

/// The argument of a field reference, validated against its [`ArgKind`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Arg {
    None,
    Index(usize),
    Key(String),
    /// Unescaped JSON pointer segments (`~1` → `/`, `~0` → `~`).
    Pointer(Vec<String>),
}

/// A resolved field with its argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRef {
    pub field: Field,
    pub arg: Arg,
    /// True when the extracted value is a list (a list field without an index argument).
    pub is_list: bool,
    /// The name as written, for messages and output.
    pub display: String,
}

/// Why a field name (with its argument) does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("unknown field `{0}`")]
    Unknown(String),
    #[error("field `{0}` does not take an argument")]
    UnexpectedArgument(String),
    #[error("field `{name}` takes a numeric index, not `{arg}`")]
    BadIndex { name: String, arg: String },
    #[error("field `{0}` requires an argument, e.g. `{0}[key]`")]
    MissingKey(String),
    #[error("field `{0}` requires a JSON pointer, e.g. `{0}[/verb]`")]
    MissingPointer(String),
}

/// Resolves `name` with its optional `arg` text.
pub fn resolve(name: &str, arg: Option<&str>) -> Result<FieldRef, FieldError> {
    let info = lookup(name).ok_or_else(|| FieldError::Unknown(name.to_owned()))?;
    let display = match arg {
        Some(a) => format!("{name}[{a}]"),
        None => name.to_owned(),
    };
    let arg = match (info.arg, arg) {
        (ArgKind::None, None) | (ArgKind::OptionalIndex, None) => Arg::None,
        (ArgKind::None, Some(_)) => return Err(FieldError::UnexpectedArgument(name.to_owned())),
        (ArgKind::OptionalIndex, Some(a)) => {
            let valid = !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a == "0" || !a.starts_with('0'));
            let n = a
                .parse::<usize>()
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| FieldError::BadIndex { name: name.to_owned(), arg: a.to_owned() })?;
            Arg::Index(n)
        }
        (ArgKind::RequiredKey, Some(a)) if !a.is_empty() => Arg::Key(a.to_owned()),
        (ArgKind::RequiredKey, _) => return Err(FieldError::MissingKey(name.to_owned())),
        (ArgKind::Pointer, Some(a)) => Arg::Pointer(parse_pointer(a)),
        (ArgKind::Pointer, None) => return Err(FieldError::MissingPointer(name.to_owned())),
    };
    // As in libsinsp, a list field stays list-typed with an index: only `exists`, `in` and
    // `intersects` apply to it.
    Ok(FieldRef { field: info.field, arg, is_list: info.is_list, display })
}

/// RFC 6901: strip the leading `/`, split on `/`, unescape `~1` then `~0`.
pub fn parse_pointer(p: &str) -> Vec<String> {
    let p = p.strip_prefix('/').unwrap_or(p);
    if p.is_empty() {
        return Vec::new();
    }
    p.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_complete() {
        // FACTS.md §2: 100 `ka.*` fields, 61 lists, 53 with an optional index, 3 requiring a key.
        let ka: Vec<String> = all_names().into_iter().filter(|n| n.starts_with("ka.")).collect();
        assert_eq!(ka.len(), 100);
        let infos: Vec<FieldInfo> = ka.iter().filter_map(|n| lookup(n)).collect();
        assert_eq!(infos.iter().filter(|i| i.is_list).count(), 61);
        assert_eq!(infos.iter().filter(|i| i.arg == ArgKind::OptionalIndex).count(), 53);
        assert_eq!(infos.iter().filter(|i| i.arg == ArgKind::RequiredKey).count(), 3);
        assert!(lookup("ka.req.pod.ephemeralContainers.host_port").is_none());
        assert!(lookup("ka.req.pod.initContainers.host_port").is_some());
    }

    #[test]
    fn arguments_are_validated() {
        assert_eq!(resolve("ka.uri.param", None), Err(FieldError::MissingKey("ka.uri.param".into())));
        assert_eq!(resolve("ka.verb", Some("x")), Err(FieldError::UnexpectedArgument("ka.verb".into())));
        assert_eq!(
            resolve("ka.sourceips", Some("01")),
            Err(FieldError::BadIndex { name: "ka.sourceips".into(), arg: "01".into() })
        );
        assert_eq!(resolve("ka.nope", None).unwrap_err().to_string(), "unknown field `ka.nope`");
        assert!(resolve("ka.user.groups", Some("1")).is_err(), "the plugin gives user.groups no index");
        let f = resolve("ka.sourceips", Some("1")).unwrap();
        assert!(f.is_list);
        assert_eq!(f.arg, Arg::Index(1));
        let p = resolve("jevt.value", Some("/a~1b/c~0d")).unwrap();
        assert_eq!(p.arg, Arg::Pointer(vec!["a/b".into(), "c~d".into()]));
    }
}
