//! The table of resources the stand-in serves, and how each is named in URLs
//! and in error messages.

/// One API resource (a plural under a group/version).
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural as used in URLs and in `details.kind` of NotFound/AlreadyExists/Conflict.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether `metadata.generation` is kept (resources with a spec).
    pub has_generation: bool,
    /// Field selector labels the real server supports for this resource.
    pub field_labels: &'static [&'static str],
    /// Discovery: `shortNames` (`kubectl get cm`).
    pub short_names: &'static [&'static str],
    /// Discovery: `categories` (`kubectl get all`).
    pub categories: &'static [&'static str],
    /// The strategy's `AllowCreateOnUpdate`: a PUT to a missing name creates it.
    pub allow_create_on_update: bool,
    /// The strategy's `AllowUnconditionalUpdate`: a PUT without
    /// `metadata.resourceVersion` overwrites; otherwise it is a 422.
    pub allow_unconditional_update: bool,
}

pub const JOBS: Resource = Resource {
    group: "batch",
    version: "v1",
    plural: "jobs",
    kind: "Job",
    namespaced: true,
    has_generation: true,
    field_labels: &["metadata.name", "metadata.namespace", "status.successful"],
    allow_create_on_update: false,
    allow_unconditional_update: true,
    short_names: &[],
    categories: &["all"],
};
pub const PODS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
    has_generation: true,
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    allow_create_on_update: false,
    allow_unconditional_update: true,
    short_names: &["po"],
    categories: &["all"],
};
pub const CONFIGMAPS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "configmaps",
    kind: "ConfigMap",
    namespaced: true,
    has_generation: false,
    field_labels: &["metadata.name", "metadata.namespace"],
    allow_create_on_update: false,
    allow_unconditional_update: true,
    short_names: &["cm"],
    categories: &[],
};
pub const EVENTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    has_generation: false,
    // core/v1 Event's field-label conversion (pkg/apis/core/v1/conversion.go).
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    allow_create_on_update: true,
    allow_unconditional_update: true,
    short_names: &["ev"],
    categories: &[],
};
/// The same stored Events as [`EVENTS`], seen through events.k8s.io/v1
/// (`crate::events_v1` converts).
pub const EVENTS_V1: Resource = Resource {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    has_generation: false,
    // AddFieldLabelConversionsForEvent (pkg/apis/events/v1/conversion.go).
    field_labels: &[
        "metadata.name",
        "metadata.namespace",
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "type",
    ],
    allow_create_on_update: true,
    allow_unconditional_update: true,
    short_names: &["ev"],
    categories: &[],
};
pub const LEASES: Resource = Resource {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
    has_generation: false,
    field_labels: &["metadata.name", "metadata.namespace"],
    allow_create_on_update: true,
    allow_unconditional_update: false,
    short_names: &[],
    categories: &[],
};
pub const NAMESPACES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
    has_generation: false,
    field_labels: &["metadata.name", "status.phase"],
    allow_create_on_update: false,
    allow_unconditional_update: true,
    short_names: &["ns"],
    categories: &[],
};

pub static ALL: &[&Resource] = &[
    &JOBS,
    &PODS,
    &CONFIGMAPS,
    &EVENTS,
    &LEASES,
    &EVENTS_V1,
    &NAMESPACES,
];

impl Resource {
    /// Finds a resource by group, version and plural.
    pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        ALL.iter()
            .copied()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// `apiVersion` as written in objects: `batch/v1`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `jobs.batch`, or `configmaps` for the core group (as in NotFound messages).
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Job.batch`, or `ConfigMap` for the core group (as in Invalid messages).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Whether the resource has a `/status` subresource.
    pub fn has_status(&self) -> bool {
        matches!(self.plural, "jobs" | "pods" | "namespaces")
    }

    /// Discovery's `singularName`: the kind in lower case.
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// The list kind, `JobList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}
